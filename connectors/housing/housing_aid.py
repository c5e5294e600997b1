"""住建 住房保障 (housing.housing_aid): Kafka topic `dept.housing.housing_aid.v1`, drops in `landing/housing/housing_aid/`."""
from connectors.base import feed

CONNECTOR = feed("housing.housing_aid", message_key="id_no")
