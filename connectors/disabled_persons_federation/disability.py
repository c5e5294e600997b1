"""残联 残疾人证 (disabled_persons_federation.disability): Kafka topic `dept.disabled_persons_federation.disability.v1`, drops in `landing/disabled_persons_federation/disability/`."""
from connectors.base import feed

CONNECTOR = feed("disabled_persons_federation.disability", message_key="id_no")
