"""民政 资金发放: monthly payments per case."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="civil_affairs", department_zh="民政", feed="assistance_payment", version=1, title_zh="救助资金发放",
    key=("case_no", "month"), mode="delta", cadence_hours=24 * 31,
    fields=(
        F("case_no", "string", "救助家庭编号"),
        F("month", "month", "发放月份"),
        F("amount", "money", "发放金额", min=0),
    ),
)
