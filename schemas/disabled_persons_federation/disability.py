"""残联 残疾人证: disability certificates (grade 1–2 = severe)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="disabled_persons_federation", department_zh="残联", feed="disability", version=1,
    title_zh="残疾人证", key=("id_no",), mode="snapshot", cadence_hours=24 * 31,
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("category", "enum", "残疾类别", values=("视力", "听力", "言语", "肢体", "智力", "精神", "多重")),
        F("grade", "int", "残疾等级", min=1, max=4),
        F("issued_date", "date", "发证日期"),
        F("subsidies", "text_list", "享受补贴", required=False),
    ),
)
