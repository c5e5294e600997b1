"""人社 失业登记: registered unemployment and benefit."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="human_resources", department_zh="人社", feed="unemployment", version=1, title_zh="失业登记",
    key=("id_no", "registered_date"), mode="delta", cadence_hours=24 * 7, order_by=("status_date",),
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("registered_date", "date", "失业登记日期"),
        F("benefit_monthly", "money", "失业保险金月标准", min=0, required=False),
        F("status", "enum", "登记状态", values=("登记", "领取中", "已就业", "注销")),
        F("status_date", "date", "状态变更日期", required=False),
    ),
)
