"""住建 房产登记 (housing.property): Kafka topic `dept.housing.property.v1`, drops in `landing/housing/property/`."""
from connectors.base import feed

CONNECTOR = feed("housing.property", message_key="property_id")
