"""医保 医疗费用结算 (medical_insurance.claim): Kafka topic `dept.medical_insurance.claim.v1`, drops in `landing/medical_insurance/claim/`."""
from connectors.base import feed

CONNECTOR = feed("medical_insurance.claim", message_key="claim_id")
