"""公安 户籍人口: the household register — the population and household backbone of the hub."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="public_security", department_zh="公安", feed="person", version=1, title_zh="户籍人口",
    key=("id_no",), mode="snapshot", cadence_hours=24, order_by=("status_date",),
    fields=(
        F("id_no", "id_no", "公民身份号码", pii="direct"),
        F("name", "string", "姓名", pii="direct"),
        F("gender", "enum", "性别", values=("男", "女"), pii="quasi"),
        F("birth_date", "date", "出生日期", pii="quasi"),
        F("household_no", "string", "户号"),
        F("relation_to_head", "enum", "与户主关系",
          values=("户主", "配偶", "子女", "父母", "孙子女", "兄弟姐妹", "其他")),
        F("region_code", "region_code", "行政区划代码"),
        F("address", "string", "住址", pii="direct", required=False),
        F("hukou_type", "urban_rural", "户口性质"),
        F("status", "enum", "人员状态", values=("正常", "死亡", "迁出", "注销")),
        F("status_date", "date", "状态日期", required=False),
    ),
)
