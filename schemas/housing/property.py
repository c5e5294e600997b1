"""住建 房产登记: property titles by owner (co-owned units have one row per owner)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="housing", department_zh="住建", feed="property", version=1, title_zh="房产登记",
    key=("property_id", "owner_id_no"), mode="snapshot", cadence_hours=24 * 7,
    fields=(
        F("property_id", "string", "不动产单元号"),
        F("owner_id_no", "id_no", "权利人证件号码", pii="direct"),
        F("share", "decimal", "共有份额", min=0, max=1),
        F("usage", "enum", "房屋用途", values=("住宅", "商业", "办公", "其他")),
        F("area_m2", "decimal", "建筑面积", min=0),
        F("address", "string", "坐落", pii="direct", required=False),
        F("registered_date", "date", "登记日期"),
        F("status", "enum", "权属状态", values=("现势", "已注销", "已转移")),
    ),
)
