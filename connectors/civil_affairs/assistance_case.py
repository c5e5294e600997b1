"""民政 救助对象 (civil_affairs.assistance_case): Kafka topic `dept.civil_affairs.assistance_case.v1`, drops in `landing/civil_affairs/assistance_case/`."""
from connectors.base import feed

CONNECTOR = feed("civil_affairs.assistance_case", message_key="case_no")
