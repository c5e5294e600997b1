"""The policy file's contract: assistance standards and warning thresholds for one county and year.

The model only — every section and parameter, its unit, range, meaning and Chinese label (the
field's `title`, `labels_zh`: the one place a threshold is named in Chinese). The files themselves
(one per county and year under `quality/policy/`), loading them and writing new ones are
`quality.policy`. The monitoring build and the warning rules take a validated `Policy`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.errors import ConfigError

Yuan = Annotated[float, Field(ge=0, le=1_000_000)]
Share = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Header(_Strict):
    region_code: str = Field(pattern=r"^\d{6}$", description="GB/T 2260 county code")
    region_name: str = Field(min_length=2, description="the county's name")
    year: int = Field(ge=2000, le=2100, description="the year these standards apply to")
    version: str = Field(min_length=1, description="recorded on every warning; bump it when a figure changes")
    source: str = Field("", description="where the figures come from (the county's published standards)")


#: Header fields a file may leave out (everything else, every parameter included, must be there)
OPTIONAL = {("policy", "source")}


class Standards(_Strict):
    urban_dibao: Yuan = Field(title="城市低保标准（元/人/月）", description="城市低保标准 元/人/月")
    rural_dibao: Yuan = Field(title="农村低保标准（元/人/月）", description="农村低保标准 元/人/月")
    low_income_multiple: float = Field(
        1.5, ge=1, le=5, title="低收入线倍数",
        description="低收入 / 低保边缘 line = multiple × 低保标准")
    tekun_multiple: float = Field(1.3, ge=1, le=5, title="特困标准倍数", description="特困 基本生活标准 = multiple × 低保标准")
    disability_living_subsidy: Yuan = Field(90.0, title="困难残疾人生活补贴", description="困难残疾人生活补贴 元/人/月")
    disability_care_subsidy: Yuan = Field(90.0, title="重度残疾人护理补贴", description="重度残疾人护理补贴 元/人/月")

    @model_validator(mode="after")
    def _positive(self) -> Standards:
        if self.urban_dibao <= 0 or self.rural_dibao <= 0:
            raise ValueError("低保 standards must be positive")
        return self


class Diagnoses(_Strict):
    serious_illness_prefixes: tuple[str, ...] = Field(
        ("C", "N18.5", "N18.6", "Z49", "I21", "I63", "D61", "B20", "F20", "G35"), min_length=1,
        title="大病诊断编码",
        description="ICD-10 code prefixes counted as serious illness (大病/特殊慢病) besides the claim's own flag")

    @field_validator("serious_illness_prefixes")
    @classmethod
    def _icd(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not p or not p[0].isalpha() or not p[0].isupper()]
        if bad:
            raise ValueError(f"not ICD-10 code prefixes: {bad}")
        return v


class Thresholds(_Strict):
    medical_burden_oop_12m: Yuan = Field(
        20000.0, title="近12个月医疗自付阈值（元）",
        description="household out-of-pocket medical cost of claims settled in 12 months (元)")
    medical_burden_income_share: Share = Field(
        0.5, title="医疗自付占家庭年收入比例",
        description="… or this share of the household's 12-month income")
    medical_burden_min_oop: Yuan = Field(
        5000.0, title="按收入比例判断的最低自付金额（元）",
        description="… the share test needs at least this much out-of-pocket (元)")
    income_drop_ratio: Share = Field(
        0.5, title="收入降幅阈值",
        description="household wages of the last 3 months ≤ (1 - ratio) × those of the previous 9 (monthly averages)")
    unemployment_contribution_gap_months: int = Field(
        3, ge=1, le=24, title="断缴月数",
        description="a working-age member's contributions stopped this many months before the window's end")
    unemployment_min_history_months: int = Field(
        6, ge=1, le=60, title="此前连续缴费月数",
        description="… after at least this many months of contributions in the window")
    working_age_min: int = Field(16, ge=14, le=20, title="劳动年龄下限", description="working age: from this age …")
    working_age_max: int = Field(59, ge=50, le=70, title="劳动年龄上限", description="… to this age (inclusive)")
    event_lookback_months: int = Field(
        6, ge=1, le=24, title="事件回溯月数",
        description="earner death, unemployment registration, first serious-illness claim: "
        "within this many months before the snapshot")
    risk_income_multiple: float = Field(
        3.0, ge=1, le=10, title="经济困难门槛（低保标准倍数）",
        description="income_drop / unemployment / medical_burden fire for a household on an "
        "active case, or whose per-capita income of the last 3 months (living members), less 12-month "
        "out-of-pocket / 12, is below this multiple of its 低保 standard")
    dangerous_house_ratings: tuple[str, ...] = Field(
        ("C", "D"), title="危房等级",
        description="rated so and not renovated, however old the rating (a later A/B ends it)")
    repeat_temporary_aid_count: int = Field(
        2, ge=2, le=12, title="临时救助次数", description="临时救助 awards to members within the window below")
    repeat_temporary_aid_window_months: int = Field(
        12, ge=1, le=60, title="临时救助统计月数",
        description="… in months before the snapshot")
    phase_out_expiry_days: int = Field(
        60, ge=1, le=366, title="渐退期到期天数",
        description="渐退期 ending within this many days of the snapshot")
    severe_disability_grades: tuple[int, ...] = Field(
        (1, 2), title="重度残疾等级", description="disability certificate grades (1-4) counted as severe")
    recipient_vehicle_exempt_types: tuple[str, ...] = Field(
        ("残疾人专用车", "二轮摩托车"), title="豁免车辆类型", description="vehicle types a recipient household may own")
    recipient_property_max_residences: int = Field(
        1, ge=0, le=10, title="救助对象最多住宅套数",
        description="residential properties a recipient household may own")
    recipient_high_income_multiple: float = Field(
        1.5, ge=1, le=10, title="收入超标倍数",
        description="a recipient household's per-capita income above this multiple of its 低保 standard")
    duplicate_enrolment_categories: tuple[str, ...] = Field(
        ("低保", "特困", "低保边缘", "低收入", "刚性支出困难"), title="互斥救助类别",
        description="case categories of which a person may be on one active case only: two such cases at once "
        "(the same category twice, or two of them) are a duplicate enrolment; a category not listed (临时救助, "
        "an award on top of any case) never is")
    death_grace_days: int = Field(
        60, ge=0, le=366, title="死亡后仍在保的宽限天数",
        description="a case without payment records still active this long after a death")
    disaster_lookback_months: int = Field(
        6, ge=1, le=24, title="受灾回溯月数", description="应急 受灾登记 within this many months before the snapshot")
    disaster_house_damage: tuple[str, ...] = Field(
        ("倒塌",), title="房屋受损程度",
        description="a member's house so damaged calls for a visit whatever the loss")
    disaster_loss_min: Yuan = Field(
        10000.0, title="家庭直接经济损失阈值（元）",
        description="… or a direct loss of at least this much (元, summed per household)")

    @field_validator("duplicate_enrolment_categories")
    @classmethod
    def _categories(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from schemas.civil_affairs.assistance_case import CONTRACT

        known = next(f.values for f in CONTRACT.fields if f.name == "category")  # the roster's categories
        if set(v) - set(known):
            raise ValueError(f"unknown case categories {sorted(set(v) - set(known))}: the roster's are {', '.join(known)}")
        return v

    @field_validator("disaster_house_damage")
    @classmethod
    def _damage(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if set(v) - {"无", "部分损坏", "倒塌"}:
            raise ValueError("house damage values are among 无, 部分损坏, 倒塌")
        return v

    @field_validator("dangerous_house_ratings")
    @classmethod
    def _ratings(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or set(v) - {"A", "B", "C", "D"}:
            raise ValueError("ratings are among A, B, C, D")
        return v

    @field_validator("severe_disability_grades")
    @classmethod
    def _grades(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or set(v) - {1, 2, 3, 4}:
            raise ValueError("disability grades are 1-4")
        return v

    @model_validator(mode="after")
    def _ages(self) -> Thresholds:
        if self.working_age_min >= self.working_age_max:
            raise ValueError("working_age_min must be below working_age_max")
        return self


class Policy(_Strict):
    policy: Header
    standards: Standards
    diagnoses: Diagnoses = Diagnoses()
    thresholds: Thresholds = Thresholds()
    checksum: str = ""

    @property
    def version(self) -> str:
        return self.policy.version

    def dibao(self, urban: bool) -> float:
        return self.standards.urban_dibao if urban else self.standards.rural_dibao

    def low_income_line(self, urban: bool) -> float:
        return self.dibao(urban) * self.standards.low_income_multiple

    def params(self) -> dict:
        """Flat parameters for SQL binding and for the evidence of each warning."""
        s, t = self.standards, self.thresholds
        return {**s.model_dump(), **t.model_dump(), "serious_illness_prefixes": list(self.diagnoses.serious_illness_prefixes),
                "policy_version": self.version}


class PolicyError(ConfigError):
    """A policy file is missing or invalid, or is another county's; the message says which and why (all
    problems at once). A `ConfigError` (so a `ValueError`): exit 2, an Airflow task fails without retries."""


#: The file's sections in order, with their models.
SECTIONS: dict[str, type[BaseModel]] = {"policy": Header, "standards": Standards, "diagnoses": Diagnoses,
                                        "thresholds": Thresholds}


def missing(raw: dict) -> list[str]:
    """Every section and parameter a policy file lacks (`section.name`): none may be left to a default."""
    out = []
    for sec, model in SECTIONS.items():
        have = raw.get(sec)
        if not isinstance(have, dict):
            out.append(f"[{sec}]")
            continue
        out += [f"{sec}.{k}" for k in model.model_fields if k not in have and (sec, k) not in OPTIONAL]
    return out




#: The sections whose fields are policy parameters (a warning records those it used as its thresholds).
PARAMETER_SECTIONS = ("standards", "diagnoses", "thresholds")


def labels_zh() -> dict[str, str]:
    """Every policy parameter → its Chinese label, declared once with the parameter (its `title`):
    how the review app names the thresholds a warning used."""
    return {name: f.title or name for sec in PARAMETER_SECTIONS for name, f in SECTIONS[sec].model_fields.items()}
