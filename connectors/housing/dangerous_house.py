"""住建 农村危房鉴定 (housing.dangerous_house): Kafka topic `dept.housing.dangerous_house.v1`, drops in `landing/housing/dangerous_house/`."""
from connectors.base import feed

CONNECTOR = feed("housing.dangerous_house", message_key="household_no")
