"""Output datasets for downstream systems: every column, in Chinese and English.

`monitoring/person/`, `monitoring/household/` and `warnings/` are partitioned Hive-style by
`snapshot_date=YYYY-MM-DD/version=N` (date32, int32; in the path only, not in the files); each
version has an immutable manifest `_catalog/snapshots/D/vN.json`, and `_catalog/snapshots/D.json`
points at the current one (switched last: see `safetynet.publish.snapshot`). In these datasets the ID number is
replaced by `person_key`, a keyed pseudonym (HMAC-SHA256 with the hub's secret); the identified
variant, with ID numbers, lives under `identified/` for consumers granted access to it.
Money is `decimal(14,2)` yuan, dates `date32`.
"""

from __future__ import annotations

VERSION = 1

#: The hub's own Kafka topics (created with the feeds' by the production stack's topic job):
#: every warning of a published snapshot, pseudonymised, keyed by warning_id …
WARNINGS_TOPIC = "hub.warnings.v1"
#: … and one notice per published snapshot version, keyed by its date: `{"snapshot_date", "version",
#: "content_sha256", "published_at"}` (the review app loads the new version on hearing one).
SNAPSHOTS_TOPIC = "hub.snapshots.v1"

PERSON: dict[str, tuple[str, str]] = {
    "snapshot_date": ("快照日期", "snapshot date (facts before this day)"),
    "person_key": ("人员假名键", "keyed pseudonym of the ID number (HMAC-SHA256); identified variant: id_no"),
    "id_no": ("公民身份号码", "ID number — identified variant only"),
    "name": ("姓名", "name — identified variant only"),
    "gender": ("性别", "gender"),
    "birth_date": ("出生日期", "birth date — identified variant only"),
    "age": ("年龄", "age in whole years on the snapshot date"),
    "household_no": ("户号", "registration household number"),
    "relation_to_head": ("与户主关系", "relation to the head of household"),
    "region_code": ("行政区划代码", "12-digit statistical division code (community/village)"),
    "street_code": ("街道（乡镇）代码", "9-digit street/town code"),
    "county_code": ("区县代码", "6-digit county code"),
    "hukou_type": ("户口性质", "hukou type (城镇/农村)"),
    "status": ("人员状态", "register status (正常/死亡/迁出/注销)"),
    "status_date": ("状态日期", "date of the status"),
    "alive": ("是否健在", "status is 正常"),
    "working_age": ("是否劳动年龄", "alive and within the policy's working-age range"),
    "wage_months_12m": ("近12个月缴费月数", "months with social-insurance contributions in the 12 months"),
    "wage_12m_avg": ("近12个月月均工资", "average monthly wage over the 12 months (all employers)"),
    "wage_last3_avg": ("近3个月月均工资", "average monthly wage over the last 3 months"),
    "wage_prev9_avg": ("前9个月月均工资", "average monthly wage over the 9 months before those"),
    "wage_last3_total": ("近3个月工资合计", "wages of the last 3 months, total"),
    "wage_prev9_total": ("前9个月工资合计", "wages of the previous 9 months, total"),
    "last_wage_month": ("最近缴费月份", "last month with a contribution"),
    "employer_name": ("最近缴费单位", "employer of the last contribution"),
    "pension_monthly": ("月均养老金", "average monthly pension"),
    "pension_scheme": ("养老保险类型", "pension scheme"),
    "unemployment_status": ("失业登记状态", "status of the latest unemployment registration"),
    "unemployment_registered_date": ("失业登记日期", "date of the latest unemployment registration"),
    "unemployment_benefit": ("失业保险金（月）", "monthly unemployment benefit being drawn"),
    "income_monthly": ("月收入估算", "monthly income estimate: wage + pension + unemployment benefit"),
    "income_last3_monthly": ("近3个月月收入估算", "monthly income of the last 3 months: wages and pension of those months / 3 "
                             "+ unemployment benefit being drawn"),
    "claims_12m": ("近12个月结算次数", "medical settlements in the 12 months"),
    "medical_total_12m": ("近12个月医疗总费用", "medical cost over the 12 months"),
    "oop_12m": ("近12个月个人自付", "out-of-pocket medical cost over the 12 months"),
    "serious_illness": ("是否重特大疾病", "a serious-illness settlement within the lookback"),
    "serious_illness_date": ("重特大疾病结算日期", "date of the latest serious-illness settlement"),
    "serious_illness_code": ("重特大疾病诊断编码", "its ICD-10 code"),
    "serious_illness_name": ("重特大疾病诊断名称", "its diagnosis name"),
    "vehicles_active": ("名下在用机动车数", "registered vehicles in use"),
    "vehicles_non_exempt": ("非豁免机动车数", "vehicles not of an exempt type (policy)"),
    "vehicle_types": ("车辆类型", "types of the vehicles in use"),
    "residences": ("名下住宅套数", "residential properties held (现势)"),
    "properties_other": ("名下非住宅房产数", "non-residential properties held"),
    "disability_category": ("残疾类别", "disability category"),
    "disability_grade": ("残疾等级", "disability grade (1 most severe)"),
    "disability_subsidies": ("享受残疾人补贴", "disability subsidies received"),
    "severe_disability": ("是否重度残疾", "grade among the policy's severe grades"),
    "medical_scheme": ("医保参保险种", "medical insurance scheme"),
    "medical_status": ("医保参保状态", "medical insurance status"),
    "programmes": ("救助记录", "assistance cases: case_no, category, status, start and end dates"),
    "active_cases": ("在保救助案件数", "active (在保/渐退期) cases"),
    "active_categories": ("在保救助类别", "categories of the active cases"),
}

HOUSEHOLD: dict[str, tuple[str, str]] = {
    "snapshot_date": ("快照日期", "snapshot date"),
    "household_no": ("户号", "registration household number"),
    "region_code": ("行政区划代码", "the head's community/village code"),
    "street_code": ("街道（乡镇）代码", "9-digit street/town code"),
    "county_code": ("区县代码", "6-digit county code"),
    "hukou_type": ("户口性质", "the head's hukou type"),
    "members_total": ("登记人数", "registered members"),
    "members_alive": ("健在人数", "living members (正常)"),
    "working_age_members": ("劳动年龄人数", "living members of working age"),
    "earners": ("有工资收入人数", "living members with wages in the 12 months"),
    "deceased_12m": ("近12个月死亡人数", "members who died in the 12 months"),
    "income_monthly": ("家庭月收入估算", "household monthly income estimate"),
    "income_per_capita": ("家庭人均月收入", "monthly income per living member"),
    "income_last3_monthly": ("近3个月家庭月收入", "the living members' monthly income of the last 3 months "
                             "(a deceased member's wages are not counted)"),
    "risk_income_per_capita": ("扣除医疗自付后人均月收入", "(income of the last 3 months − 12-month out-of-pocket / 12) "
                               "per living member: the economic gate of forward rules (刚性支出扣减)"),
    "at_risk": ("是否经济困难（预警门槛）", "on an active case, or risk_income_per_capita below the policy's "
                "risk_income_multiple × the 低保 standard: income_drop, unemployment and medical_burden fire only then"),
    "wage_last3_avg": ("近3个月月均工资（户）", "household wages, monthly average of the last 3 months"),
    "wage_prev9_avg": ("前9个月月均工资（户）", "household wages, monthly average of the previous 9 months"),
    "wage_last3_total": ("近3个月工资合计（户）", "household wages of the last 3 months, total"),
    "wage_prev9_total": ("前9个月工资合计（户）", "household wages of the previous 9 months, total"),
    "oop_12m": ("近12个月医疗个人自付（户）", "household out-of-pocket medical cost over 12 months"),
    "medical_total_12m": ("近12个月医疗总费用（户）", "household medical cost over 12 months"),
    "serious_ill_members": ("重特大疾病人数", "living members with a serious illness"),
    "severe_disabled_members": ("重度残疾人数", "living members with a severe disability"),
    "unemployed_members": ("失业登记人数", "members registered unemployed (登记/领取中)"),
    "vehicles_non_exempt": ("非豁免机动车数（户）", "non-exempt vehicles of all members"),
    "residences": ("住宅套数（户）", "residential properties of all members"),
    "dangerous_house_rating": ("危房鉴定等级", "dangerous-house rating (A–D)"),
    "dangerous_house_assessed_date": ("危房鉴定日期", "assessment date"),
    "dangerous_house_renovated": ("是否已改造", "renovated"),
    "active_case_nos": ("在保救助家庭编号", "active assistance cases of any member"),
    "active_categories": ("在保救助类别", "their categories"),
    "dibao_standard": ("适用低保标准", "低保 standard applied (元/人/月)"),
    "low_income_line": ("低收入线", "low-income line applied (元/人/月)"),
}

WARNING: dict[str, tuple[str, str]] = {
    "snapshot_date": ("快照日期", "snapshot date"),
    "warning_id": ("预警编号", "stable id: same facts → same id across re-runs and replays"),
    "alert_key": ("预警对象键", "rule + household + person: the same concern across snapshots"),
    "rule_id": ("规则编号", "warning rule id"),
    "rule_version": ("规则版本", "rule version"),
    "rule_title_zh": ("规则名称", "rule title"),
    "severity": ("严重程度", "S1 紧急 / S2 重要 / S3 一般"),
    "kind": ("预警类型", "forward (risk) or reverse (eligibility)"),
    "household_no": ("户号", "household concerned"),
    "region_code": ("行政区划代码", "its community/village code"),
    "street_code": ("街道（乡镇）代码", "its street/town code"),
    "subject_key": ("当事人假名键", "pseudonym of the person concerned; identified variant: subject_id_no"),
    "subject_id_no": ("当事人身份号码", "ID number of the person concerned — identified variant only"),
    "summary_zh": ("预警说明", "one-line explanation with figures and thresholds"),
    "thresholds": ("适用阈值", "policy thresholds used (JSON)"),
    "facts": ("触发事实", "facts that fired it: feed, record key, person, field, value, date"),
    "magnitude": ("超出程度", "how far past the threshold (≥ 1)"),
    "score": ("预警分值", "severity weight × magnitude (capped)"),
    "household_score": ("家庭风险分", "sum of the household's warning scores"),
    "household_rank": ("家庭风险排名", "rank of the household by risk score"),
    "top_signals": ("主要风险信号", "the household's top contributing signals"),
    "policy_version": ("政策参数版本", "version of the policy file used"),
    "stale_inputs": ("计算时数据滞后的来源", "feeds the rule reads that were late or missing at the end of the snapshot day"),
}

#: columns of the warning lists for people (`safetynet.publish.export`: `safetynet warnings export` and
#: the review app's export) that are not columns of `WARNING`: shown forms of its columns, the app's own
WARNING_LIST: dict[str, tuple[str, str]] = {
    "subject_id_masked": ("当事人身份号码（脱敏）", "ID number of the person concerned, masked 前6后4 "
                          "(a pseudonymised list: the start of subject_key)"),
    "severity_zh": ("严重程度", "紧急 / 重要 / 一般"),
    "street_name": ("街道（乡镇）", "street/town name"),
    "community_name": ("社区（村）", "community/village name"),
    "status_zh": ("处置状态", "case status in the review app"),
    "categories": ("在保救助类别", "categories of the household's active assistance cases"),
}

DATASETS = {"monitoring/person": PERSON, "monitoring/household": HOUSEHOLD, "warnings": WARNING}

#: columns only the identified variant carries
IDENTIFYING = {"id_no", "name", "birth_date", "subject_id_no"}
