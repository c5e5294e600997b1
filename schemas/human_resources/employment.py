"""人社 社保缴费与工资: monthly contribution base per person and employer (income signal)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="human_resources", department_zh="人社", feed="employment", version=1, title_zh="社保缴费与工资",
    key=("id_no", "month", "employer_credit_code"), mode="delta", cadence_hours=24 * 31,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("month", "month", "缴费月份"),
        F("employer_name", "string", "单位名称"),
        F("employer_credit_code", "credit_code", "统一社会信用代码"),
        F("wage", "money", "缴费工资", min=0),
        F("insurance_types", "text_list", "参保险种", required=False),
    ),
)
