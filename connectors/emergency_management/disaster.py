"""应急 受灾人员 (emergency_management.disaster): Kafka topic `dept.emergency_management.disaster.v1`, drops in `landing/emergency_management/disaster/`."""
from connectors.base import feed

#: The national disaster statistics' own words: 洪水/内涝 are 洪涝, 旱灾 is 干旱; houses are counted
#: as 倒塌, 严重损坏 or 一般损坏 (both damaged, not collapsed) or not damaged.
MAPPING = """
[values.disaster_type]
"洪水" = "洪涝"
"内涝" = "洪涝"
"旱灾" = "干旱"
"地质灾害" = "其他"

[values.house_damage]
"倒塌房屋" = "倒塌"
"严重损坏" = "部分损坏"
"一般损坏" = "部分损坏"
"未损坏" = "无"
"""

CONNECTOR = feed("emergency_management.disaster", message_key="id_no", mapping=MAPPING)
