"""医保 医疗费用结算 (medical_insurance.claim): Kafka topic `dept.medical_insurance.claim.v1`, drops in `landing/medical_insurance/claim/`."""
from connectors.base import feed

#: 是否住院 as settlement systems usually print it (the visit type rather than a yes/no).
MAPPING = """
[values.inpatient]
"住院" = "true"
"门诊" = "false"
"""

CONNECTOR = feed("medical_insurance.claim", message_key="claim_id", mapping=MAPPING)
