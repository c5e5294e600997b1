"""医保 参保登记 (medical_insurance.enrollment): Kafka topic `dept.medical_insurance.enrollment.v1`, drops in `landing/medical_insurance/enrollment/`."""
from connectors.base import feed

#: The schemes' official full names (国家医保局), as enrolment systems print them.
MAPPING = """
[values.scheme]
"职工基本医疗保险" = "职工医保"
"城乡居民基本医疗保险" = "城乡居民医保"
"""

CONNECTOR = feed("medical_insurance.enrollment", message_key="id_no", mapping=MAPPING)
