"""公安 机动车登记 (public_security.vehicle): Kafka topic `dept.public_security.vehicle.v1`, drops in `landing/public_security/vehicle/`."""
from connectors.base import feed

CONNECTOR = feed("public_security.vehicle", message_key="plate_no")
