"""人社 养老金发放 (human_resources.pension): Kafka topic `dept.human_resources.pension.v1`, drops in `landing/human_resources/pension/`."""
from connectors.base import feed

CONNECTOR = feed("human_resources.pension", message_key="id_no")
