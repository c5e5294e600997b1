"""Policy parameters: assistance standards and warning thresholds per region and year.

One TOML file per county and year under `quality/policy/` (`<region>-<year>.toml`), validated on
load; every warning records the `version` of the file it used. A region without a file is a
clear error — thresholds are never guessed. `safetynet policy init` writes a complete file for a
new region with the default thresholds below.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

POLICY_DIR = Path(__file__).resolve().parents[1] / "quality" / "policy"

Yuan = Annotated[float, Field(ge=0, le=1_000_000)]
Share = Annotated[float, Field(gt=0, le=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Header(_Strict):
    region_code: str = Field(pattern=r"^\d{6}$", description="GB/T 2260 county code")
    region_name: str = Field(min_length=2)
    year: int = Field(ge=2000, le=2100)
    version: str = Field(min_length=1)
    source: str = ""


class Standards(_Strict):
    urban_dibao: Yuan = Field(description="城市低保标准 元/人/月")
    rural_dibao: Yuan = Field(description="农村低保标准 元/人/月")
    low_income_multiple: float = Field(1.5, ge=1, le=5, description="低收入线 = multiple × 低保标准")
    tekun_multiple: float = Field(1.3, ge=1, le=5, description="特困 基本生活标准 = multiple × 低保标准")
    disability_living_subsidy: Yuan = 90.0
    disability_care_subsidy: Yuan = 90.0

    @model_validator(mode="after")
    def _positive(self) -> Standards:
        if self.urban_dibao <= 0 or self.rural_dibao <= 0:
            raise ValueError("低保 standards must be positive")
        return self


class Diagnoses(_Strict):
    serious_illness_prefixes: tuple[str, ...] = Field(
        ("C", "N18.5", "N18.6", "Z49", "I21", "I63", "D61", "B20", "F20", "G35"), min_length=1)

    @field_validator("serious_illness_prefixes")
    @classmethod
    def _icd(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [p for p in v if not p or not p[0].isalpha() or not p[0].isupper()]
        if bad:
            raise ValueError(f"not ICD-10 code prefixes: {bad}")
        return v


class Thresholds(_Strict):
    medical_burden_oop_12m: Yuan = 20000.0
    medical_burden_income_share: Share = 0.5
    medical_burden_min_oop: Yuan = 5000.0
    income_drop_ratio: Share = 0.5
    unemployment_contribution_gap_months: int = Field(3, ge=1, le=24)
    unemployment_min_history_months: int = Field(6, ge=1, le=60)
    working_age_min: int = Field(16, ge=14, le=20)
    working_age_max: int = Field(59, ge=50, le=70)
    event_lookback_months: int = Field(6, ge=1, le=24)  # earner death, unemployment registration, first serious illness
    risk_income_multiple: float = Field(3.0, ge=1, le=10)  # the economic gate of income_drop, unemployment, medical_burden
    dangerous_house_ratings: tuple[str, ...] = ("C", "D")
    repeat_temporary_aid_count: int = Field(2, ge=2, le=12)
    repeat_temporary_aid_window_months: int = Field(12, ge=1, le=60)
    phase_out_expiry_days: int = Field(60, ge=1, le=366)
    severe_disability_grades: tuple[int, ...] = (1, 2)
    recipient_vehicle_exempt_types: tuple[str, ...] = ("残疾人专用车", "二轮摩托车")
    recipient_property_max_residences: int = Field(1, ge=0, le=10)
    recipient_high_income_multiple: float = Field(1.5, ge=1, le=10)
    death_grace_days: int = Field(60, ge=0, le=366)
    disaster_lookback_months: int = Field(6, ge=1, le=24)
    disaster_house_damage: tuple[str, ...] = ("倒塌",)
    disaster_loss_min: Yuan = 10000.0

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


class PolicyError(ValueError):
    """A policy file is missing or invalid; the message says which and why (all problems at once)."""


def load(path: str | Path) -> Policy:
    """Load and validate one policy file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise PolicyError(f"policy file {p} does not exist") from None
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {p}: not valid UTF-8 TOML: {e}") from None
    try:
        pol = Policy.model_validate({**raw, "checksum": hashlib.sha256(data).hexdigest()[:16]})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise PolicyError(f"policy file {p} is invalid: {problems}") from None
    return pol


def for_region(region_code: str, year: int, directory: Path = POLICY_DIR) -> Policy:
    """The policy of the county holding `region_code` (6 or 12 digits) for `year`."""
    county = region_code[:6]
    path = directory / f"{county}-{year}.toml"
    if not path.exists():
        have = sorted(x.stem for x in directory.glob("*.toml"))
        raise PolicyError(f"no policy parameters for region {county} and year {year}: expected {path} "
                          f"(have: {', '.join(have) or 'none'}); create one with "
                          f"`safetynet policy init --region {county} --year {year} ...`")
    pol = load(path)
    if pol.policy.region_code != county or pol.policy.year != year:
        raise PolicyError(f"{path} declares region {pol.policy.region_code} year {pol.policy.year}, "
                          f"not {county} {year}")
    return pol


def init_text(region: str, year: int, urban_dibao: float, rural_dibao: float, region_name: str = "") -> str:
    """A complete policy file for a new region with the default thresholds (validated)."""
    t, d = Thresholds(), Diagnoses()

    def val(v: object) -> str:
        if isinstance(v, tuple | list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return repr(v)

    lines = [
        f"# {region_name or region} {year} 年度救助标准与预警阈值 — written by `safetynet policy init`;",
        "# check every figure against the county's published standards before use.",
        "[policy]", f"region_code = {val(region)}", f"region_name = {val(region_name or region)}", f"year = {year}",
        f'version = "{region}-{year}.1"', 'source = "safetynet policy init (default thresholds)"', "",
        "[standards]", f"urban_dibao = {float(urban_dibao)!r}", f"rural_dibao = {float(rural_dibao)!r}",
        *(f"{k} = {val(v)}" for k, v in Standards(urban_dibao=1, rural_dibao=1).model_dump().items()
          if k not in ("urban_dibao", "rural_dibao")), "",
        "[diagnoses]", f"serious_illness_prefixes = {val(d.serious_illness_prefixes)}", "",
        "[thresholds]", *(f"{k} = {val(v)}" for k, v in t.model_dump().items()), "",
    ]
    text = "\n".join(lines)
    Policy.model_validate(tomllib.loads(text))  # never write a file that would not load
    return text
