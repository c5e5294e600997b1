"""人社 养老金发放: monthly pension payments."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="human_resources", department_zh="人社", feed="pension", version=1, title_zh="养老金发放",
    key=("id_no", "month"), mode="delta", cadence_hours=24 * 31,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("month", "month", "发放月份"),
        F("amount", "money", "发放金额", min=0),
        F("scheme", "enum", "养老保险类型", values=("企业职工", "城乡居民", "机关事业")),
    ),
)
