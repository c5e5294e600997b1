"""医保 参保: monthly enrolment status."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="medical_insurance", department_zh="医保", feed="enrollment", version=1, title_zh="参保登记",
    key=("id_no", "month"), mode="delta", cadence_hours=24 * 31,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("scheme", "enum", "参保险种", values=("职工医保", "城乡居民医保")),
        F("status", "enum", "参保状态", values=("参保缴费", "暂停缴费", "终止参保")),
        F("month", "month", "参保月份"),
    ),
)
