"""民政 救助对象: the assistance roster the hub monitors (one case per assisted household)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="civil_affairs", department_zh="民政", feed="assistance_case", version=1, title_zh="救助对象",
    key=("case_no",), mode="snapshot", cadence_hours=24,
    fields=(
        F("case_no", "string", "救助家庭编号"),
        F("applicant_id_no", "id_no", "申请人身份证号", pii="direct"),
        F("category", "enum", "救助类别",
          values=("低保", "特困", "低保边缘", "低收入", "刚性支出困难", "临时救助")),
        F("urban_rural", "urban_rural", "城乡类别"),
        F("region_code", "region_code", "行政区划代码"),
        F("monthly_amount", "money", "月救助金额", min=0),
        F("start_date", "date", "救助开始日期"),
        F("end_date", "date", "救助结束日期", required=False),
        F("status", "enum", "救助状态", values=("在保", "渐退期", "停保")),
        F("members", "members", "家庭成员", pii="direct"),
    ),
)
