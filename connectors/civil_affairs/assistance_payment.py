"""民政 救助资金发放 (civil_affairs.assistance_payment): Kafka topic `dept.civil_affairs.assistance_payment.v1`, drops in `landing/civil_affairs/assistance_payment/`."""
from connectors.base import feed

CONNECTOR = feed("civil_affairs.assistance_payment", message_key="case_no")
