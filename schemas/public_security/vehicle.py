"""公安 机动车登记: vehicles by owner (eligibility check: recipients owning cars)."""
from schemas.contract import Contract, F

CONTRACT = Contract(
    department="public_security", department_zh="公安", feed="vehicle", version=1, title_zh="机动车登记",
    key=("plate_no",), mode="snapshot", cadence_hours=24 * 7,
    fields=(
        F("plate_no", "string", "号牌号码", pii="quasi"),
        F("owner_id_no", "id_no", "所有人身份证号", pii="direct"),
        F("vehicle_type", "enum", "车辆类型",
          values=("小型汽车", "中型汽车", "大型汽车", "二轮摩托车", "三轮汽车", "低速货车", "残疾人专用车",
                  "营运客车", "营运货车")),
        F("registered_date", "date", "初次登记日期"),
        F("status", "enum", "机动车状态", values=("正常", "注销")),
    ),
)
