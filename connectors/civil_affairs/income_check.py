"""民政 家庭经济状况核对 (civil_affairs.income_check): Kafka topic `dept.civil_affairs.income_check.v1`, drops in `landing/civil_affairs/income_check/`."""
from connectors.base import feed

CONNECTOR = feed("civil_affairs.income_check", message_key="case_no")
