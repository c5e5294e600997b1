"""人社 养老金发放 (human_resources.pension): Kafka topic `dept.human_resources.pension.v1`, drops in `landing/human_resources/pension/`."""
from connectors.base import feed

#: The schemes' official full names, as pension payment systems print them.
MAPPING = """
[values.scheme]
"企业职工基本养老保险" = "企业职工"
"城乡居民基本养老保险" = "城乡居民"
"机关事业单位基本养老保险" = "机关事业"
"""

CONNECTOR = feed("human_resources.pension", message_key="id_no", mapping=MAPPING)
