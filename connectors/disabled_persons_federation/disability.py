"""残联 残疾人证 (disabled_persons_federation.disability): Kafka topic `dept.disabled_persons_federation.disability.v1`, drops in `landing/disabled_persons_federation/disability/`."""
from connectors.base import feed

#: Grades as the certificate prints them (一级 … 四级, GB/T 26341).
MAPPING = """
[values.grade]
"一级" = "1"
"二级" = "2"
"三级" = "3"
"四级" = "4"
"""

CONNECTOR = feed("disabled_persons_federation.disability", message_key="id_no", mapping=MAPPING)
