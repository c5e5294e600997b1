"""住建 农村危房鉴定: dangerous-house ratings per household (C/D = dangerous)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="housing", department_zh="住建", feed="dangerous_house", version=1, title_zh="农村危房鉴定",
    key=("household_no",), mode="snapshot", cadence_hours=24 * 31, order_by=("assessed_date",),
    fields=(
        F("household_no", "string", "户号"),
        F("region_code", "region_code", "行政区划代码"),
        F("rating", "enum", "鉴定等级", values=("A", "B", "C", "D")),
        F("assessed_date", "date", "鉴定日期"),
        F("renovated", "bool", "是否已改造"),
    ),
)
