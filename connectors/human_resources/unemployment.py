"""人社 失业登记 (human_resources.unemployment): Kafka topic `dept.human_resources.unemployment.v1`, drops in `landing/human_resources/unemployment/`."""
from connectors.base import feed

CONNECTOR = feed("human_resources.unemployment", message_key="id_no")
