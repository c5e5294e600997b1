"""医保 医疗费用结算: settlements; a correction is an upsert of the same claim_id, a reversal a delete."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="medical_insurance", department_zh="医保", feed="claim", version=1, title_zh="医疗费用结算",
    key=("claim_id",), mode="delta", cadence_hours=24,
    fields=(
        F("claim_id", "string", "结算单号"),
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("settle_date", "date", "结算日期"),
        F("hospital_name", "string", "定点医疗机构"),
        F("inpatient", "bool", "是否住院"),
        F("diagnosis_code", "string", "疾病诊断编码"),
        F("diagnosis_name", "string", "疾病诊断名称", required=False),
        F("total_amount", "money", "医疗费用总额", min=0),
        F("fund_paid", "money", "基金支付", min=0),
        F("out_of_pocket", "money", "个人自付", min=0),
        F("serious_illness", "bool", "大病/特殊慢病", required=False),
    ),
)
