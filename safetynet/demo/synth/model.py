"""Shared constants, code lists and small vectorised helpers of the generator.

Internally every table is a *frame*: a dict of equally long numpy arrays holding codes and
indices (person, household, case, employer …) rather than strings. `safetynet.demo.synth.truth`
turns frames into the contract-typed Arrow tables; nothing stores a string per row until then,
which keeps 10 M persons in a few minutes and a few GB.
"""

from __future__ import annotations

import datetime as dt
import tomllib
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa

from schemas.registry import get

AS_OF = dt.date(2026, 11, 1)  # snapshot date; facts run up to the day before
_EPOCH = dt.date(1970, 1, 1)
NODATE = int(np.iinfo(np.int32).min)  # "no date" in int32 day columns (NULL in the truth)

Frame = dict[str, np.ndarray]
MONEY_T = pa.decimal128(14, 2)


def day(d: dt.date | str) -> int:
    """Days since 1970-01-01 of a date (or ISO string)."""
    if isinstance(d, str):
        d = dt.date.fromisoformat(d)
    return (d - _EPOCH).days


AS_OF_DAY = day(AS_OF)


def _month_list() -> tuple[str, ...]:
    out, y, m = [], 2025, 11
    for _ in range(12):
        out.append(f"{y}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return tuple(out)


#: The 12 fact months before the snapshot (2025-11 … 2026-10); index 11 is the last month.
MONTHS = _month_list()
MONTH_START = np.array([day(f"{m}-01") for m in MONTHS] + [day("2026-11-01")], np.int64)
PAYMENT_MONTHS = range(6, 12)  # assistance payments: the last 6 months
PENSION_MONTHS = range(9, 12)  # pensions: the last 3 months (volume)
ENROLMENT_MONTH = 11  # enrolment: one month per person


def months_ago(n: int, dom: int = 10) -> dt.date:
    """The `dom`-th day of the month `n` months before the snapshot month (n=1 → 2026-10-dom)."""
    y, m = AS_OF.year, AS_OF.month - n
    while m <= 0:
        y, m = y - 1, m + 12
    return dt.date(y, m, dom)


# ---- code lists (from the contracts, so they never drift) -----------------------------------
def _values(feed: str, field: str) -> tuple[str, ...]:
    return get(feed).field(field).values


RELATIONS = _values("public_security.person", "relation_to_head")
PERSON_STATUS = _values("public_security.person", "status")
CATEGORIES = _values("civil_affairs.assistance_case", "category")
CASE_STATUS = _values("civil_affairs.assistance_case", "status")
PENSION_SCHEMES = _values("human_resources.pension", "scheme")
MED_SCHEMES = _values("medical_insurance.enrollment", "scheme")
ENROL_STATUS = _values("medical_insurance.enrollment", "status")
VEHICLE_TYPES = _values("public_security.vehicle", "vehicle_type")
VEHICLE_STATUS = _values("public_security.vehicle", "status")
USAGES = _values("housing.property", "usage")
PROPERTY_STATUS = _values("housing.property", "status")
AID_TYPES = _values("housing.housing_aid", "aid_type")
RATINGS = _values("housing.dangerous_house", "rating")
UNEMP_STATUS = _values("human_resources.unemployment", "status")
CHECK_RESULTS = _values("civil_affairs.income_check", "result")
DIS_CATS = _values("disabled_persons_federation.disability", "category")
SUBSIDIES = ("困难残疾人生活补贴", "重度残疾人护理补贴")
CAT_CODE = {"低保": "DB", "特困": "TK", "低保边缘": "BY", "低收入": "DS", "刚性支出困难": "GZ", "临时救助": "LS"}


REL = {r: i for i, r in enumerate(RELATIONS)}
CAT = {c: i for i, c in enumerate(CATEGORIES)}
CST = {s: i for i, s in enumerate(CASE_STATUS)}
PST = {s: i for i, s in enumerate(PERSON_STATUS)}

# household economic level (drives incomes and who is on the roster)
POOR, NEAR, NORMAL, RICH = 0, 1, 2, 3


# ---- policy ---------------------------------------------------------------------------------
@cache
def load_policy(region: str = "430103", year: int = 2026) -> dict:
    """The region's policy file (standards and rule thresholds), read with tomllib."""
    import quality

    path = Path(quality.__file__).parent / "policy" / f"{region}-{year}.toml"
    with path.open("rb") as f:
        return tomllib.load(f)


# ---- frames -----------------------------------------------------------------------------------
def flen(f: Frame) -> int:
    return len(next(iter(f.values()))) if f else 0


def fconcat(frames: list[Frame]) -> Frame:
    frames = [f for f in frames if f and flen(f)]
    if not frames:
        return {}
    keys = list(frames[0])
    for f in frames[1:]:
        if list(f) != keys:
            raise ValueError(f"frame columns differ: {keys} vs {list(f)}")
    return {k: np.concatenate([f[k] for f in frames]) for k in keys}


def first_per_group(mask: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the first index where `mask` holds (groups are contiguous and ascending); -1 if none."""
    idx = np.flatnonzero(mask)
    out = np.full(n_groups, -1, np.int64)
    if len(idx):
        g = group[idx]
        first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        out[g[first]] = idx[first]
    return out


def rank_in_group(group: np.ndarray) -> np.ndarray:
    """0-based position of each element within its group (any order of groups)."""
    order = np.argsort(group, kind="stable")
    g = group[order]
    start = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    lens = np.diff(np.r_[start, len(g)])
    pos = np.arange(len(g)) - np.repeat(start, lens)
    out = np.empty(len(g), np.int64)
    out[order] = pos
    return out


# ---- Arrow builders ---------------------------------------------------------------------------
def arrow_decimal(unscaled: np.ndarray, typ: pa.DataType, valid: np.ndarray | None = None) -> pa.Array:
    """A decimal128 array from unscaled integers (cents for money) without any Python objects."""
    u = np.ascontiguousarray(unscaled, dtype=np.int64)
    buf = np.empty((len(u), 2), np.int64)
    buf[:, 0] = u
    buf[:, 1] = u >> 63  # sign extension: two's complement 128-bit little-endian
    vb = None
    if valid is not None and not valid.all():
        vb = pa.py_buffer(np.packbits(valid.astype(bool), bitorder="little"))
    return pa.Array.from_buffers(typ, len(u), [vb, pa.py_buffer(buf)], null_count=-1)


def arrow_date(days: np.ndarray) -> pa.Array:
    d = np.asarray(days, np.int64)
    return pa.array(d.astype(np.int32), pa.int32(), mask=d == NODATE).view(pa.date32())


def arrow_fixed(a: np.ndarray) -> pa.Array:
    """A string array from a fixed-width bytes array ('S18' IDs) whose values use every byte."""
    a = np.ascontiguousarray(a)
    w, n = a.dtype.itemsize, len(a)
    offsets = np.arange(0, (n + 1) * w, w, dtype=np.int64)
    return pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(a.view(np.uint8))).cast(pa.string())


def arrow_codes(codes: np.ndarray, values: tuple[str, ...]) -> pa.Array:
    """Strings for integer codes; negative codes are NULL."""
    c = np.asarray(codes, np.int64)
    return pa.array(list(values), pa.string()).take(pa.array(c, pa.int64(), mask=c < 0))


def days_to_ymd(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(days, np.int64).astype("datetime64[D]")
    m = d.astype("datetime64[M]")
    y = d.astype("datetime64[Y]").astype(np.int64) + 1970
    return y, m.astype(np.int64) % 12 + 1, (d - m.astype("datetime64[D]")).astype(np.int64) + 1


def ymd_days(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    months = (np.asarray(y, np.int64) - 1970) * 12 + np.asarray(m, np.int64) - 1
    return months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + np.asarray(d, np.int64) - 1


def age_at(birth_days: np.ndarray, at: dt.date = AS_OF) -> np.ndarray:
    y, m, d = days_to_ymd(birth_days)
    before = (m > at.month) | ((m == at.month) & (d > at.day))
    return at.year - y - before.astype(np.int64)
