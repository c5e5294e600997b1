"""民政 家庭经济状况核对: results of the household means test."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="civil_affairs", department_zh="民政", feed="income_check", version=1, title_zh="家庭经济状况核对",
    key=("case_no", "checked_at"), mode="delta", cadence_hours=24 * 31,
    fields=(
        F("case_no", "string", "救助家庭编号"),
        F("checked_at", "datetime", "核对时间"),
        F("monthly_income_per_capita", "money", "家庭月人均收入", min=0),
        F("assets_total", "money", "家庭财产总额", min=0),
        F("result", "enum", "核对结果", values=("符合", "不符合")),
    ),
)
