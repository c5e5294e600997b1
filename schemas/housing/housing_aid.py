"""住建 公租房/租赁补贴: housing assistance."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="housing", department_zh="住建", feed="housing_aid", version=1, title_zh="住房保障",
    key=("id_no", "aid_type", "start_date"), mode="snapshot", cadence_hours=24 * 31,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("aid_type", "enum", "保障方式", values=("公租房", "租赁补贴")),
        F("amount_monthly", "money", "月保障金额", min=0),
        F("start_date", "date", "开始日期"),
        F("end_date", "date", "结束日期", required=False),
    ),
)
