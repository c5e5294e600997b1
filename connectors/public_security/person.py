"""公安 户籍人口 (public_security.person): Kafka topic `dept.public_security.person.v1`, drops in `landing/public_security/person/`."""
from connectors.base import feed

CONNECTOR = feed("public_security.person", message_key="id_no")
