"""应急 受灾人员: persons registered as affected by a natural disaster (因灾), with the direct loss
and the damage to their house, as the emergency-management bureau's disaster statistics list them."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="emergency_management", department_zh="应急", feed="disaster", version=1, title_zh="受灾人员",
    key=("id_no", "disaster_date"), mode="delta", cadence_hours=24 * 7,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("disaster_date", "date", "受灾日期"),
        F("disaster_type", "enum", "灾害类型", values=("洪涝", "干旱", "地震", "台风", "其他")),
        F("direct_loss", "money", "直接经济损失", min=0),
        F("house_damage", "enum", "房屋受损情况", values=("无", "部分损坏", "倒塌")),
        F("region_code", "region_code", "行政区划代码"),
    ),
)
