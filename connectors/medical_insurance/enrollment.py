"""医保 参保登记 (medical_insurance.enrollment): Kafka topic `dept.medical_insurance.enrollment.v1`, drops in `landing/medical_insurance/enrollment/`."""
from connectors.base import feed

CONNECTOR = feed("medical_insurance.enrollment", message_key="id_no")
