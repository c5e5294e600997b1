"""人社 社保缴费与工资 (human_resources.employment): Kafka topic `dept.human_resources.employment.v1`, drops in `landing/human_resources/employment/`."""
from connectors.base import feed

CONNECTOR = feed("human_resources.employment", message_key="id_no")
