"""Great Expectations quality gate between `clean/` and publish.

Suites (GX 1.x, generated, never hand-written):

* **feed suites** `feed.<department>.<feed>` — one per contract (`suite_for(contract)`): column
  set/order, types, required fields not null, ID validity (format, birth date, GB 11643 check
  character), enum value sets, formats, ranges, key uniqueness;
* **cross-feed suites** `cross.*` — every claim's person exists, every assistance applicant and
  member exists, vehicle/property owners and other person-linked facts exist (report only),
  payments/income checks belong to a known case (report only), no negative money anywhere;
* **output suites** `output.*` — the monitoring person/household tables and the warnings table.

Every expectation carries `meta = {"critical", "feed", "field", "check"}`. A failed *critical*
expectation (or any GX internal error, which GX reports as an ordinary failure with
`exception_info`) blocks publishing the snapshot: `validate(...).ok` is False and
`report.raise_for_critical()` raises `QualityGateError` with the one-screen summary.

Critical: key uniqueness and non-null keys, ID validity (and required ID fields not null),
column set/order and types, row count of the person register, person existence of claims and
assistance applicants/members, no negative money, and on the outputs: unique keys, non-negative
money, region codes inside the policy county, the snapshot date, known rules/severities,
warnings pointing to existing households. Non-critical (a data-quality warning): enum value sets,
formats (region/credit code, month), contract ranges (share, grade, area, money `min=0` within a
feed — the cross-feed money check is the critical one), other required fields not null, and the
report-only links (owners, other person-linked feeds, payment/check cases).

GX runs on pandas (pyarrow-backed `ArrowDtype` columns, so conversion is near zero-copy): GX's
SQL data source cannot validate DuckDB. What GX has no expectation for (the ID check character,
joins) is computed vectorised with pyarrow/numpy as boolean helper columns (`__id_ok_<field>`,
`__person_exists`, …) that expectations then check.

PII: validation runs with `exclude_unexpected_values` and `partial_unexpected_count = 0`, so GX
itself never copies a data value into a result. The gate computes up to 20 example keys per
failed expectation itself, masking ID numbers 前6后4 (`schemas.idno.mask`) and never showing a
name; those masked examples are what the report and Data Docs show. `build_docs` additionally
masks anything shaped like an 18-character ID number in every page before it is written.

Data Docs work offline (an intranet reaches no CDN): the Bootstrap, jQuery, vega … files GX's page
templates load from CDNs are vendored from npm (`safetynet/review/static/vendor/data-docs/`, see
`infra/update-frontend.sh`), copied into the site's `static/vendor/`, and the pages point there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from html import escape as escape_html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import safetynet
from schemas import idno
from safetynet.intake.clean import clean_path
from safetynet.core.store import ObjectStore
from schemas.contract import Contract
from schemas.registry import contracts

if TYPE_CHECKING:  # the GX import takes seconds: only the functions that need it import it
    from great_expectations.core import ExpectationSuiteValidationResult
    from great_expectations.core.expectation_suite import ExpectationSuite

    from quality.policy import Policy

log = logging.getLogger(__name__)

DOCS_PREFIX = "docs/quality/"
MAX_EXAMPLES = 20
PERSON = "public_security.person"
OUTPUTS = ("monitoring.person", "monitoring.household", "warnings")
_OUTPUT_ALIASES = {"person": "monitoring.person", "monitoring_person": "monitoring.person",
                   "household": "monitoring.household", "monitoring_household": "monitoring.household",
                   "warnings": "warnings"}

#: GX never returns data values: counts only (examples are computed here, masked).
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0, "exclude_unexpected_values": True,
                 "include_unexpected_rows": False, "return_unexpected_index_query": False}

CHECK_ZH = {
    "columns": "字段集合与顺序", "rows": "记录数", "type": "字段类型", "not_null": "必填非空",
    "id_format": "身份证号格式", "id_valid": "身份证号有效（出生日期、校验码）", "members_valid": "家庭成员身份证号有效",
    "value_set": "取值在代码表内", "format": "编码格式", "range": "取值范围", "unique_key": "主键唯一",
    "person_exists": "人员在户籍库中存在", "case_exists": "救助家庭编号存在", "no_negative_money": "金额非负",
    "household_exists": "户号在家庭表中存在", "snapshot_date": "快照日期一致", "region_in_county": "区划代码属于本县区",
    "rule_known": "预警规则已登记", "consistency": "数值一致性", "gx_error": "GX 内部错误",
    "feed_health": "数据源健康（隔离率、空快照）",
}

_ID_RE = r"^[0-9]{17}[0-9X]$"
_ID_TEXT_RE = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")
_WEIGHTS = np.asarray(idno.WEIGHTS, np.int64)
_CHECK = np.frombuffer(idno.CHECK.encode(), np.uint8)
_TEXT_SUFFIXES = (".html", ".htm", ".json", ".js", ".css", ".txt", ".md", ".svg")

#: Python scalar type names for `expect_column_values_to_be_of_type` where pandas cannot parse the
#: exact pyarrow dtype name (strings, decimals, lists); exact dtypes are checked elsewhere.
_SCALAR_TYPE = {"string": "str", "id_no": "str", "region_code": "str", "credit_code": "str", "month": "str",
                "enum": "str", "urban_rural": "str", "money": "Decimal", "decimal": "Decimal",
                "text_list": "list", "members": "list"}
_FORMATS = {"region_code": r"^[0-9]{12}$", "credit_code": r"^[0-9A-Z]{18}$",
            "month": r"^[0-9]{4}-(?:0[1-9]|1[0-2])$"}
_URBAN_RURAL = ("城镇", "农村")

#: cross-feed person links: feed → (id fields, critical)
_CRITICAL_PERSON_LINKS = {"medical_insurance.claim": ("id_no",),
                          "civil_affairs.assistance_case": ("applicant_id_no", "members")}
_OWNER_LINKS = {"public_security.vehicle": "owner_id_no", "housing.property": "owner_id_no"}
_CASE_LINKS = ("civil_affairs.assistance_payment", "civil_affairs.income_check")
_CASE_FEED = "civil_affairs.assistance_case"


class QualityGateError(RuntimeError):
    """A critical expectation failed: the snapshot must not be published."""

    def __init__(self, report: QualityReport):
        super().__init__(report.summary())
        self.report = report


# ==== vectorised helpers ==========================================================================

def _plain(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous, dictionary-decoded array."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks() if a.num_chunks != 1 else a.chunk(0)
    if pa.types.is_dictionary(a.type):
        a = a.dictionary_decode()
    if pa.types.is_large_string(a.type):
        a = a.cast(pa.string())
    return a


def id_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Vectorised GB 11643 validity of normalised 18-character ID numbers (null stays null).

    Same rules as `schemas.idno.normalise` on an already normalised number: 17 digits and a
    digit or `X`, a real birth date in 1900–2099, and the check character.
    """
    a = _plain(values)
    if not pa.types.is_string(a.type):
        a = a.cast(pa.string())
    n = len(a)
    fmt = pc.match_substring_regex(a, _ID_RE).fill_null(False).to_numpy(zero_copy_only=False)
    ok = np.zeros(n, dtype=bool)
    pos = np.flatnonzero(fmt)
    if len(pos):
        good = a.filter(pa.array(fmt))
        offs = np.frombuffer(good.buffers()[1], np.int32, count=len(good) + 1, offset=good.offset * 4)
        m = np.frombuffer(good.buffers()[2], np.uint8)[offs[0]:offs[-1]].reshape(len(good), 18)
        digits = m[:, :17].astype(np.int64) - 48
        check_ok = _CHECK[(digits @ _WEIGHTS) % 11] == m[:, 17]
        y = digits[:, 6:10] @ np.array([1000, 100, 10, 1])
        mo = digits[:, 10:12] @ np.array([10, 1])
        d = digits[:, 12:14] @ np.array([10, 1])
        leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        dim = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(mo, 0, 12)] + ((mo == 2) & leap)
        date_ok = (y >= 1900) & (y <= 2099) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim)
        ok[pos] = check_ok & date_ok
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    return pa.array(ok, mask=nulls if nulls.any() else None)


def members_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per list of {id_no, relation}: non-empty and every member's ID number valid (null stays null)."""
    a = _plain(values)
    n = len(a)
    ok = pc.fill_null(pc.greater(pc.list_value_length(a), 0), False).to_numpy(zero_copy_only=False).copy()
    flat = pc.list_flatten(a)
    if len(flat):
        member_ok = pc.fill_null(id_ok(pc.struct_field(flat, "id_no")), False).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(a).to_numpy(zero_copy_only=False)
        ok[parents[~member_ok]] = False
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    return pa.array(ok, mask=nulls if nulls.any() else None) if n else pa.array([], pa.bool_())


def _exists(values: pa.Array, universe: pa.Array) -> pa.Array:
    """values ∈ universe (null stays null)."""
    values = _plain(values)
    res = pc.is_in(values, value_set=_plain(universe).drop_null().unique())
    return pc.if_else(values.is_null(), pa.scalar(None, pa.bool_()), res)


def _to_frame(table: pa.Table) -> pd.DataFrame:
    """pyarrow-backed pandas columns (near zero-copy); `__num_*` shadows as numpy float64, the one
    dtype GX compares vectorised (on any other dtype `between` calls Python per value)."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        cols[name] = col
    df = pa.table(cols).to_pandas(types_mapper=pd.ArrowDtype)
    for name in df.columns:
        if name.startswith("__num_"):
            df[name] = df[name].to_numpy(dtype="float64", na_value=np.nan)
    return df


def _num(f: str) -> str:
    return f"__num_{f}"


def _with_num(t: pa.Table, names: Iterable[str]) -> pa.Table:
    for n in names:
        if n in t.column_names and _num(n) not in t.column_names:
            t = t.append_column(_num(n), pc.cast(_plain(t[n]), pa.float64()))
    return t


def mask_value(value: Any, pii: str = "none") -> str:
    """How a key value is shown: ID numbers 前6后4, other direct identifiers masked, quasi partly."""
    if value is None:
        return "null"
    s = str(value)
    if pii == "direct":
        return idno.mask(s)
    if pii == "quasi":
        return s[:2] + "*" * max(len(s) - 3, 1) + s[-1:] if len(s) > 3 else "*" * len(s)
    return s


def scrub(text: str) -> str:
    """Mask anything shaped like an 18-character ID number (a last line of defence for free text)."""
    return _ID_TEXT_RE.sub(lambda m: idno.mask(m.group(0)), text)


# ==== expectations ================================================================================

def _gx():
    import great_expectations as gx

    return gx


def _exp(gx, cls: str, *, critical: bool, feed: str, field: str | None, check: str, **kw):
    meta = {"critical": bool(critical), "feed": feed, "field": field, "check": check}
    tag = "严重 critical — blocks publishing" if critical else "警告 warning — reported, does not block"
    return getattr(gx.expectations, cls)(meta=meta, notes=f"{tag}: {CHECK_ZH.get(check, check)}", **kw)


class _Builder:
    """Collects expectations, then makes the suite in one go (`ExpectationSuite.add_expectation`
    needs an active GX context; the constructor does not — but it drops an invalid expectation
    with only a log line, so the count is checked)."""

    def __init__(self, name: str, meta: dict, feed: str):
        self.name, self.meta, self.feed, self.exps = name, meta, feed, []

    def add(self, cls: str, critical: bool, fld: str | None, check: str, **kw) -> None:
        self.exps.append(_exp(_gx(), cls, critical=critical, feed=self.feed, field=fld, check=check, **kw))

    def build(self) -> ExpectationSuite:
        s = _gx().ExpectationSuite(name=self.name, expectations=self.exps, meta=self.meta)
        if len(s.expectations) != len(self.exps):
            raise RuntimeError(f"GX rejected {len(self.exps) - len(s.expectations)} expectation(s) of {self.name}")
        return s


def _helper(f: str) -> str:
    return f"__id_ok_{f}"


def suite_for(contract: Contract) -> ExpectationSuite:
    """The GX suite of one feed, generated from its contract.

    Expects the frame of `frame_for(contract, table)` (the contract's columns plus the helper
    columns `__id_ok_<field>` for ID and member fields).
    """
    c = contract
    b = _Builder(f"feed.{c.feed_id}", {"kind": "feed", "feed": c.feed_id, "contract_version": c.version,
                                      "title_zh": c.title_zh, "key": list(c.key)}, c.feed_id)
    add = b.add

    add("ExpectTableColumnsToMatchOrderedList", True, None, "columns",
        column_list=list(c.names) + [_helper(f.name) for f in c.fields if f.kind in ("id_no", "members")]
        + [_num(f.name) for f in c.fields if f.min is not None or f.max is not None])
    add("ExpectTableRowCountToBeBetween", c.feed_id == PERSON, None, "rows", min_value=1)
    for f in c.fields:
        if f.kind in _SCALAR_TYPE:
            add("ExpectColumnValuesToBeOfType", True, f.name, "type", column=f.name, type_=_SCALAR_TYPE[f.kind])
        else:  # an exact pyarrow dtype pandas can parse (date32, timestamp with zone, int32, bool)
            add("ExpectColumnTypeToBe", True, f.name, "type", column=f.name, type_=str(pd.ArrowDtype(f.arrow_type)))
        if f.required:
            add("ExpectColumnValuesToNotBeNull", f.name in c.key or f.kind == "id_no", f.name, "not_null",
                column=f.name)
        if f.kind == "id_no":
            add("ExpectColumnValuesToMatchRegex", True, f.name, "id_format", column=f.name, regex=_ID_RE)
            add("ExpectColumnValuesToBeInSet", True, f.name, "id_valid", column=_helper(f.name), value_set=[True])
        elif f.kind == "members":
            add("ExpectColumnValuesToBeInSet", True, f.name, "members_valid", column=_helper(f.name),
                value_set=[True])
        elif f.kind == "enum" and f.values:
            add("ExpectColumnValuesToBeInSet", False, f.name, "value_set", column=f.name, value_set=list(f.values))
        elif f.kind == "urban_rural":
            add("ExpectColumnValuesToBeInSet", False, f.name, "value_set", column=f.name,
                value_set=list(_URBAN_RURAL))
        elif f.kind in _FORMATS:
            add("ExpectColumnValuesToMatchRegex", False, f.name, "format", column=f.name, regex=_FORMATS[f.kind])
        if f.min is not None or f.max is not None:
            add("ExpectColumnValuesToBeBetween", False, f.name, "range", column=_num(f.name), min_value=f.min,
                max_value=f.max)
    if len(c.key) == 1:
        add("ExpectColumnValuesToBeUnique", True, c.key[0], "unique_key", column=c.key[0])
    else:
        add("ExpectCompoundColumnsToBeUnique", True, ",".join(c.key), "unique_key", column_list=list(c.key))
    return b.build()


def frame_for(contract: Contract, table: pa.Table) -> pd.DataFrame:
    """The pandas frame a feed suite validates: the non-lineage columns plus the helpers
    (`__id_ok_<field>` for ID and member fields, `__num_<field>` float shadows for ranges)."""
    t = table.select([n for n in table.column_names if not n.startswith("_")])
    for f in contract.fields:
        if f.name in t.column_names and f.kind == "id_no":
            t = t.append_column(_helper(f.name), id_ok(t[f.name]))
        elif f.name in t.column_names and f.kind == "members":
            t = t.append_column(_helper(f.name), members_ok(t[f.name]))
    return _to_frame(_with_num(t, [f.name for f in contract.fields if f.min is not None or f.max is not None]))


# ==== validation targets ==========================================================================

@dataclass
class _Target:
    name: str  # suite name
    kind: str  # feed | cross | output
    subject: str  # feed id or output name
    frame: pd.DataFrame
    suite: Any  # ExpectationSuite
    keys: tuple[str, ...] = ()
    pii: dict[str, str] = field(default_factory=dict)
    shows: dict[str, str] = field(default_factory=dict)  # helper column → the column to show instead
    record: Callable[[str, int], str] | None = None  # (feed, row) → masked key of a source record


def _record_formatter(tables: Mapping[str, pa.Table]) -> Callable[[str, int], str]:
    def fmt(feed: str, row: int) -> str:
        c = contracts()[feed]
        r = tables[feed].select(list(c.key)).slice(row, 1).to_pylist()[0]
        pii = {f.name: f.pii for f in c.fields}
        return f"{feed}: " + " ".join(f"{k}={mask_value(r[k], pii.get(k, 'none'))}" for k in c.key)
    return fmt


def _feed_target(c: Contract, table: pa.Table) -> _Target:
    return _Target(f"feed.{c.feed_id}", "feed", c.feed_id, frame_for(c, table), suite_for(c), tuple(c.key),
                   {f.name: f.pii for f in c.fields},
                   {**{_helper(f.name): f.name for f in c.fields if f.kind in ("id_no", "members")},
                    **{_num(f.name): f.name for f in c.fields}})


def _health_target(health: Mapping[str, dict]) -> _Target:
    """One row per feed with a recorded health (`safetynet.intake.health`): healthy, or accepted for
    this run by the operator (`--accept-unhealthy`). An unhealthy feed not accepted is critical."""
    frame = pd.DataFrame({"feed_id": list(health), "ok": [bool(h["ok"]) for h in health.values()],
                          "accepted": [bool(h.get("accepted")) for h in health.values()],
                          "problems": ["; ".join(h.get("problems", [])) for h in health.values()]})
    b = _Builder("health", {"kind": "health", "title_zh": "数据源健康"}, "health")
    b.add("ExpectColumnValuesToBeInSet", True, "ok", "feed_health", column="ok", value_set=[True])
    return _Target("health", "health", "feeds", frame, b.build(), ("feed_id",), {})


def _union(parts: list[tuple[str, str, np.ndarray | None, pa.Array]], exists: Callable[[pa.Array], pa.Array]) -> pa.Table:
    """Rows (feed, field, row, id_no, __exists) over several feeds' ID columns."""
    cols: dict[str, list] = {"__feed": [], "__field": [], "__row": [], "id_no": [], "__exists": []}
    for feed, fld, rows, ids in parts:
        n = len(ids)
        cols["__feed"].append(pa.repeat(pa.scalar(feed, pa.string()), n))
        cols["__field"].append(pa.repeat(pa.scalar(fld, pa.string()), n))
        cols["__row"].append(pa.array(np.arange(n) if rows is None else rows, pa.int64()))
        cols["__exists"].append(exists(ids))
        cols["id_no"].append(_plain(ids).cast(pa.string()))
    if not parts:
        return pa.table({"__feed": pa.array([], pa.string()), "__field": pa.array([], pa.string()),
                         "__row": pa.array([], pa.int64()), "id_no": pa.array([], pa.string()),
                         "__exists": pa.array([], pa.bool_())})
    return pa.table({k: pa.concat_arrays(v) for k, v in cols.items()})


def _link_suite(name: str, critical: bool, check: str, feed: str, meta: dict) -> Any:
    b = _Builder(name, {"kind": "cross", **meta}, feed)
    b.add("ExpectColumnValuesToBeInSet", critical, "id_no" if check == "person_exists" else "case_no", check,
          column="__exists", value_set=[True])
    return b.build()


def _cross_targets(tables: Mapping[str, pa.Table]) -> list[_Target]:
    out: list[_Target] = []
    fmt = _record_formatter(tables)
    link_pii = {"id_no": "direct", "case_no": "none"}
    if PERSON in tables:
        universe = _plain(tables[PERSON]["id_no"])

        def exists(ids: pa.Array) -> pa.Array:
            return _exists(ids, universe)

        def parts_of(feed: str, fields: Iterable[str]) -> list:
            parts = []
            t = tables[feed]
            for fld in fields:
                if fld not in t.column_names:
                    continue
                if pa.types.is_list(t[fld].type):  # members: one row per member
                    col = _plain(t[fld])
                    parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
                    parts.append((feed, fld, parents, pc.struct_field(pc.list_flatten(col), "id_no")))
                else:
                    parts.append((feed, fld, None, t[fld]))
            return parts

        for feed, fields in _CRITICAL_PERSON_LINKS.items():
            if feed in tables:
                short = feed.split(".")[1]
                name = f"cross.{short}_person"
                out.append(_Target(name, "cross", feed, _to_frame(_union(parts_of(feed, fields), exists)),
                                   _link_suite(name, True, "person_exists", feed,
                                               {"links": f"{feed}.{'/'.join(fields)} → {PERSON}.id_no"}),
                                   ("__feed", "__row"), link_pii, {"__exists": "id_no"}, fmt))
        owners = [p for feed, fld in _OWNER_LINKS.items() if feed in tables for p in parts_of(feed, [fld])]
        out.append(_Target("cross.owner_person", "cross", "owners", _to_frame(_union(owners, exists)),
                           _link_suite("cross.owner_person", False, "person_exists", "owners",
                                       {"links": "vehicle/property owner_id_no → person (owners may live elsewhere)"}),
                           ("__feed", "__row"), link_pii, {"__exists": "id_no"}, fmt))
        others = [p for feed, c in contracts().items()
                  if feed in tables and feed != PERSON and feed not in _CRITICAL_PERSON_LINKS and feed not in _OWNER_LINKS
                  for p in parts_of(feed, c.id_fields)]
        out.append(_Target("cross.person_links", "cross", "person_links", _to_frame(_union(others, exists)),
                           _link_suite("cross.person_links", False, "person_exists", "person_links",
                                       {"links": "other person-linked feeds → person"}),
                           ("__feed", "__row"), link_pii, {"__exists": "id_no"}, fmt))
    if _CASE_FEED in tables:
        cases = _plain(tables[_CASE_FEED]["case_no"])
        parts = [(feed, "case_no", None, tables[feed]["case_no"]) for feed in _CASE_LINKS if feed in tables]
        t = _union(parts, lambda ids: _exists(ids, cases)).rename_columns(["__feed", "__field", "__row", "case_no",
                                                                            "__exists"])
        out.append(_Target("cross.case_links", "cross", "case_links", _to_frame(t),
                           _link_suite("cross.case_links", False, "case_exists", "case_links",
                                       {"links": "payments / income checks → assistance_case.case_no"}),
                           ("__feed", "__row"), link_pii, {"__exists": "case_no"}, fmt))
    # no negative money anywhere (critical): every money value of every feed
    feeds, fields, rows, values = [], [], [], []
    for feed, c in contracts().items():
        if feed not in tables:
            continue
        for f in c.fields:
            if f.kind == "money" and f.name in tables[feed].column_names:
                v = pc.cast(_plain(tables[feed][f.name]), pa.float64())
                n = len(v)
                feeds.append(pa.repeat(pa.scalar(feed, pa.string()), n))
                fields.append(pa.repeat(pa.scalar(f.name, pa.string()), n))
                rows.append(pa.array(np.arange(n), pa.int64()))
                values.append(v)
    money = pa.table({"__feed": pa.concat_arrays(feeds) if feeds else pa.array([], pa.string()),
                      "__field": pa.concat_arrays(fields) if fields else pa.array([], pa.string()),
                      "__row": pa.concat_arrays(rows) if rows else pa.array([], pa.int64()),
                      _num("amount"): pa.concat_arrays(values) if values else pa.array([], pa.float64())})
    b = _Builder("cross.money", {"kind": "cross", "links": "every money field of every feed"}, "all")
    b.add("ExpectColumnValuesToBeBetween", True, "amount", "no_negative_money", column=_num("amount"), min_value=0)
    out.append(_Target("cross.money", "cross", "money", _to_frame(money), b.build(), ("__feed", "__row"),
                       {"amount": "none"}, {_num("amount"): "amount"}, fmt))
    return out


# ---- outputs ---------------------------------------------------------------------------------

#: money columns of the outputs that may be negative: income less rigid medical spending (刚性支出扣减)
SIGNED_MONEY = frozenset({"risk_income_per_capita"})


def _region_regex(county: str | None) -> str:
    return f"^{county}[0-9]{{6}}$" if county else r"^[0-9]{12}$"


def output_suite(name: str, table: pa.Table | None = None, *, county: str | None = None,
                 has_household: bool = True) -> ExpectationSuite:
    """The suite of one output table: `monitoring.person`, `monitoring.household` or `warnings`.

    Expects the frame of `output_frame(...)` (helpers `__snapshot_ok`, `__household_exists`, …).
    `table` only tells which decimal (money) columns there are.
    """
    from quality.rules import RULES

    name = _OUTPUT_ALIASES.get(name, name)
    b = _Builder(f"output.{name}", {"kind": "output", "table": name, "county": county}, name)
    add = b.add

    money = ([f.name for f in table.schema if pa.types.is_decimal(f.type) and f.name not in SIGNED_MONEY]
             if table is not None else [])
    add("ExpectColumnValuesToBeInSet", True, "snapshot_date", "snapshot_date", column="__snapshot_ok", value_set=[True])
    if name == "monitoring.person":
        add("ExpectTableColumnsToMatchSet", True, None, "columns", exact_match=False,
            column_set=["snapshot_date", "id_no", "household_no", "region_code", "county_code", "age", "alive",
                        "income_monthly"])
        add("ExpectColumnValuesToNotBeNull", True, "id_no", "not_null", column="id_no")
        add("ExpectColumnValuesToBeUnique", True, "id_no", "unique_key", column="id_no")
        add("ExpectColumnValuesToBeInSet", True, "id_no", "id_valid", column=_helper("id_no"), value_set=[True])
        add("ExpectColumnValuesToNotBeNull", True, "household_no", "not_null", column="household_no")
        if has_household:
            add("ExpectColumnValuesToBeInSet", True, "household_no", "household_exists", column="__household_exists",
                value_set=[True])
        add("ExpectColumnValuesToBeBetween", False, "age", "range", column=_num("age"), min_value=0, max_value=130)
    elif name == "monitoring.household":
        add("ExpectTableColumnsToMatchSet", True, None, "columns", exact_match=False,
            column_set=["snapshot_date", "household_no", "region_code", "county_code", "members_total",
                        "members_alive", "income_per_capita", "dibao_standard", "low_income_line"])
        add("ExpectColumnValuesToNotBeNull", True, "household_no", "not_null", column="household_no")
        add("ExpectColumnValuesToBeUnique", True, "household_no", "unique_key", column="household_no")
        add("ExpectColumnValuesToBeBetween", True, "members_total", "range", column=_num("members_total"),
            min_value=1)
        add("ExpectColumnPairValuesAToBeGreaterThanB", False, "members_alive", "consistency",
            column_A="members_total", column_B="members_alive", or_equal=True)
        add("ExpectColumnPairValuesAToBeGreaterThanB", False, "low_income_line", "consistency",
            column_A="low_income_line", column_B="dibao_standard", or_equal=True)
    elif name == "warnings":
        from quality.evaluation import SCHEMA

        add("ExpectTableColumnsToMatchSet", True, None, "columns", exact_match=True, column_set=list(SCHEMA.names)
            + ["__snapshot_ok", "__rule_ok", _helper("subject_id_no")] + (["__household_exists"] if has_household else [])
            + [_num(c) for c in ["score"] + money])
        add("ExpectColumnValuesToNotBeNull", True, "warning_id", "not_null", column="warning_id")
        add("ExpectColumnValuesToBeUnique", True, "warning_id", "unique_key", column="warning_id")
        add("ExpectColumnValuesToBeInSet", True, "rule_id", "rule_known", column="rule_id",
            value_set=sorted({r.id for r in RULES}))
        add("ExpectColumnValuesToBeInSet", True, "severity", "value_set", column="severity", value_set=["S1", "S2", "S3"])
        add("ExpectColumnValuesToBeInSet", True, "rule_version", "rule_known", column="__rule_ok", value_set=[True])
        add("ExpectColumnValuesToNotBeNull", True, "household_no", "not_null", column="household_no")
        if has_household:
            add("ExpectColumnValuesToBeInSet", True, "household_no", "household_exists", column="__household_exists",
                value_set=[True])
        add("ExpectColumnValuesToBeInSet", True, "subject_id_no", "id_valid", column=_helper("subject_id_no"),
            value_set=[True])
        add("ExpectColumnValuesToNotBeNull", False, "summary_zh", "not_null", column="summary_zh")
        add("ExpectColumnValuesToNotBeNull", False, "policy_version", "not_null", column="policy_version")
        add("ExpectColumnValuesToBeInSet", False, "kind", "value_set", column="kind", value_set=["forward", "reverse"])
        add("ExpectColumnValuesToBeBetween", False, "score", "range", column=_num("score"), min_value=0)
    else:
        raise KeyError(f"unknown output {name!r}; known: {', '.join(OUTPUTS)}")
    add("ExpectColumnValuesToMatchRegex", True, "region_code", "region_in_county", column="region_code",
        regex=_region_regex(county))
    if name != "warnings":
        add("ExpectColumnValuesToMatchRegex", True, "county_code", "region_in_county", column="county_code",
            regex=f"^{county}$" if county else r"^[0-9]{6}$")
    for m in money:
        add("ExpectColumnValuesToBeBetween", True, m, "no_negative_money", column=_num(m), min_value=0)
    return b.build()


def output_frame(name: str, table: pa.Table, snapshot_date: dt.date, *,
                 household: pa.Table | None = None) -> pd.DataFrame:
    """The frame an output suite validates: the table plus its helper columns."""
    from quality.rules import RULES

    name = _OUTPUT_ALIASES.get(name, name)
    t = table
    snap = (pc.equal(t["snapshot_date"], pa.scalar(snapshot_date, pa.date32())) if "snapshot_date" in t.column_names
            else pa.nulls(t.num_rows, pa.bool_()))
    t = t.append_column("__snapshot_ok", pc.fill_null(snap, False))
    if name == "monitoring.person" and "id_no" in t.column_names:
        t = t.append_column(_helper("id_no"), id_ok(t["id_no"]))
    if name == "warnings":
        known = {(r.id, r.version, r.severity) for r in RULES}
        triples = zip(t["rule_id"].to_pylist(), t["rule_version"].to_pylist(), t["severity"].to_pylist(), strict=True)
        t = t.append_column("__rule_ok", pa.array([x in known for x in triples], pa.bool_()))
        t = t.append_column(_helper("subject_id_no"), id_ok(t["subject_id_no"]))
    if household is not None and name in ("monitoring.person", "warnings"):
        t = t.append_column("__household_exists", _exists(t["household_no"], household["household_no"]))
    nums = {"monitoring.person": ["age"], "monitoring.household": ["members_total"], "warnings": ["score"]}.get(name, [])
    return _to_frame(_with_num(t, nums + [f.name for f in table.schema if pa.types.is_decimal(f.type)]))


def _output_targets(outputs: Mapping[str, pa.Table], snapshot_date: dt.date, county: str | None) -> list[_Target]:
    outs = {_OUTPUT_ALIASES.get(k, k): v for k, v in outputs.items()}
    hh = outs.get("monitoring.household")
    keys = {"monitoring.person": ("id_no",), "monitoring.household": ("household_no",), "warnings": ("warning_id",)}
    pii = {"id_no": "direct", "name": "direct", "subject_id_no": "direct", "address": "direct"}
    out = []
    for name in OUTPUTS:
        if name in outs:
            t = outs[name]
            out.append(_Target(f"output.{name}", "output", name,
                               output_frame(name, t, snapshot_date, household=hh),
                               output_suite(name, t, county=county, has_household=hh is not None),
                               keys[name], pii, {_helper("id_no"): "id_no", _helper("subject_id_no"): "subject_id_no",
                                                 "__household_exists": "household_no", "__rule_ok": "rule_id",
                                                 "__snapshot_ok": "snapshot_date",
                                                 **{_num(f.name): f.name for f in t.schema}}))
    return out


# ==== the report ==================================================================================

@dataclass
class Failure:
    suite: str
    feed: str
    field: str | None
    expectation: str
    check: str
    critical: bool
    unexpected_count: int | None
    element_count: int | None
    examples: list[str]  # masked keys, at most MAX_EXAMPLES
    message: str = ""  # observed value or the exception message (GX internal errors)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class SuiteResult:
    name: str
    kind: str  # feed | cross | output
    subject: str
    rows: int
    success: bool
    statistics: dict
    seconds: float
    failures: list[Failure] = field(default_factory=list)

    @property
    def critical_ok(self) -> bool:
        return not any(f.critical for f in self.failures)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "subject": self.subject, "rows": self.rows,
                "success": self.success, "critical_ok": self.critical_ok, "statistics": self.statistics,
                "seconds": round(self.seconds, 3), "failures": [f.as_dict() for f in self.failures]}


@dataclass
class QualityReport:
    snapshot_date: dt.date
    suites: list[SuiteResult]
    seconds: float
    validated_at: str
    county: str | None = None
    missing: list[str] = field(default_factory=list)  # feeds without a clean table
    _context: Any = field(default=None, repr=False, compare=False)
    _results: dict = field(default_factory=dict, repr=False, compare=False)  # name → (identifier, result, suite)

    @property
    def failures(self) -> list[Failure]:
        return [f for s in self.suites for f in s.failures]

    @property
    def critical_failures(self) -> list[Failure]:
        return [f for f in self.failures if f.critical]

    @property
    def warnings(self) -> list[Failure]:
        return [f for f in self.failures if not f.critical]

    @property
    def ok(self) -> bool:
        """True when no critical expectation failed (warnings do not block publishing)."""
        return not self.critical_failures

    def suite(self, name: str) -> SuiteResult:
        for s in self.suites:
            if s.name == name:
                return s
        raise KeyError(name)

    def results(self) -> list[ExpectationSuiteValidationResult]:
        """The GX validation results (already sanitised: masked examples, no data values)."""
        return [r for _, r, _ in self._results.values()]

    def as_dict(self) -> dict:
        return {"snapshot_date": self.snapshot_date.isoformat(), "ok": self.ok, "county": self.county,
                "validated_at": self.validated_at, "seconds": round(self.seconds, 3), "missing": self.missing,
                "suites": [s.as_dict() for s in self.suites],
                "counts": {"suites": len(self.suites),
                           "expectations": sum(s.statistics.get("evaluated_expectations", 0) for s in self.suites),
                           "critical_failures": len(self.critical_failures), "warnings": len(self.warnings)}}

    def raise_for_critical(self) -> None:
        if not self.ok:
            raise QualityGateError(self)

    def summary(self, max_lines: int = 18) -> str:
        """One screen, Chinese and English: the verdict, the counts and the failed expectations."""
        d = self.as_dict()["counts"]
        verdict = "通过 PASSED — may publish" if self.ok else "未通过 BLOCKED — snapshot not published"
        lines = [f"质量门禁 Quality gate · 快照 snapshot {self.snapshot_date} · {verdict}",
                 f"{d['suites']} 套件 suites, {d['expectations']} 项期望 expectations; "
                 f"严重失败 critical failures: {d['critical_failures']}, 警告 warnings: {d['warnings']}; "
                 f"{self.seconds:.1f} s"]
        if self.missing:
            lines.append(f"缺少数据 missing clean tables: {', '.join(self.missing)}")
        fails = sorted(self.failures, key=lambda f: (not f.critical, f.suite, f.field or ""))
        for f in fails[:max_lines]:
            tag = "✗ 严重 critical" if f.critical else "! 警告 warning "
            parts = [tag, f.suite, f.field or "-", f"{CHECK_ZH.get(f.check, f.check)} {f.check}"]
            if f.unexpected_count is not None:
                parts.append(f"{f.unexpected_count}/{f.element_count} 行 rows")
            if f.examples:
                parts.append(f"例 e.g. {f.examples[0]}" + (f" (+{len(f.examples) - 1})" if len(f.examples) > 1 else ""))
            if f.message:
                parts.append(f.message[:90])
            lines.append(" · ".join(parts))
        if len(fails) > max_lines:
            lines.append(f"… 另有 {len(fails) - max_lines} 项 and {len(fails) - max_lines} more (see report / Data Docs)")
        if not fails:
            lines.append("全部期望通过 every expectation passed")
        return "\n".join(lines)


# ==== running =====================================================================================

def _context():
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX fingerprints every in-memory batch under 1 GB with an md5 of `hash_pandas_object` (a
    # marker in the result meta) — two thirds of the run time on pyarrow-backed frames. Off.
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def _exception_message(res) -> str | None:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    msgs = [str(v.get("exception_message") or "exception") for v in info.values()
            if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(dict.fromkeys(msgs)) if msgs else None


def _unexpected_mask(df: pd.DataFrame, etype: str, kw: dict) -> np.ndarray | None:
    """Rows failing one expectation, computed again in pandas to pick (masked) examples."""
    def nb(s: pd.Series) -> np.ndarray:
        return s.fillna(False).to_numpy(dtype=bool) if s.dtype != bool else s.to_numpy()

    col = kw.get("column")
    if etype == "expect_column_values_to_not_be_null":
        return df[col].isna().to_numpy()
    if etype == "expect_column_values_to_be_in_set":
        s = df[col]
        return nb(s.notna() & ~s.isin(kw["value_set"]))
    if etype == "expect_column_values_to_be_between":
        s = df[col]
        bad = pd.Series(False, index=df.index)
        if kw.get("min_value") is not None:
            bad |= (s < kw["min_value"]).fillna(False)
        if kw.get("max_value") is not None:
            bad |= (s > kw["max_value"]).fillna(False)
        return nb(bad)
    if etype == "expect_column_values_to_match_regex":
        s = df[col]
        return nb(s.notna() & ~s.astype("string").str.contains(kw["regex"], regex=True))
    if etype == "expect_column_values_to_be_unique":
        s = df[col]
        return nb(s.notna() & s.duplicated(keep=False))
    if etype == "expect_compound_columns_to_be_unique":
        return df.duplicated(subset=kw["column_list"], keep=False).to_numpy()
    if etype == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = df[kw["column_A"]], df[kw["column_B"]]
        ok = (a >= b) if kw.get("or_equal") else (a > b)
        return nb(a.notna() & b.notna() & ~ok.fillna(False))
    return None


def _examples(t: _Target, etype: str, kw: dict, field_name: str | None) -> list[str]:
    try:
        bad = _unexpected_mask(t.frame, etype, kw)
    except Exception:  # noqa: BLE001 - examples are best effort; the failure itself is reported
        return []
    if bad is None:
        return []
    out = []
    col = kw.get("column")
    shown = t.shows.get(col, col) if col else None
    for pos in np.flatnonzero(bad)[:MAX_EXAMPLES]:
        row = t.frame.iloc[int(pos)]
        if t.record is not None and "__feed" in t.frame.columns:
            feed = str(row["__feed"])
            text = t.record(feed, int(row["__row"]))
            src = str(row["__field"]) if "__field" in t.frame.columns else shown
            vcol = shown if shown in t.frame.columns else col
            if vcol and vcol in t.frame.columns and shown not in t.keys and src not in contracts()[feed].key:
                v = row[vcol]
                v = None if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else v)
                text += f" {src}={mask_value(v, t.pii.get(shown, 'none'))}"
            out.append(scrub(text))
            continue
        parts = [f"{k}={mask_value(None if pd.isna(row[k]) else row[k], t.pii.get(k, 'none'))}"
                 for k in t.keys if k in t.frame.columns]
        if shown and shown not in t.keys and shown in t.frame.columns:
            v = row[shown]
            if t.pii.get(shown, "none") != "none" or not pd.api.types.is_scalar(v):
                parts.append(f"{shown}={mask_value(v, t.pii.get(shown, 'direct')) if pd.api.types.is_scalar(v) and not pd.isna(v) else '…'}")
            else:
                parts.append(f"{shown}={'null' if pd.isna(v) else v}")
        out.append(scrub(" ".join(parts)))
    return out


def _run_target(ctx, ds, t: _Target, run_id) -> tuple[SuiteResult, Any, Any]:
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    t0 = time.perf_counter()
    suite = t.suite
    asset = ds.add_dataframe_asset(t.name)
    bd = asset.add_batch_definition_whole_dataframe("whole")
    # Batch.validate rather than a ValidationDefinition: the latter serialises every result into
    # the results store on each run (a third of the time); results are stored for Data Docs only
    res = bd.get_batch(batch_parameters={"dataframe": t.frame}).validate(suite, result_format=RESULT_FORMAT)
    res.meta["run_id"] = run_id
    res.meta["validation_time"] = run_id.run_time
    # the wall-clock batch load time would make every build's pages differ (Data Docs show it)
    (res.meta.get("batch_markers") or {}).pop("ge_load_time", None)
    failures = []
    order = {e.meta.get("check", "") + ":" + str(e.meta.get("field")) + ":" + e.expectation_type: i
             for i, e in enumerate(suite.expectations)}

    def pos(r) -> int:
        m = r.expectation_config.meta or {}
        return order.get(f"{m.get('check', '')}:{m.get('field')}:{r.expectation_config.type}", 10**6)

    res.results.sort(key=pos)
    for r in res.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        err = _exception_message(r)
        if r.success and not err:
            continue
        kw = dict(cfg.kwargs)
        result = r.result or {}
        examples = [] if err else _examples(t, cfg.type, kw, meta.get("field"))
        observed = result.get("observed_value")
        expected_cols = kw.get("column_list") or kw.get("column_set") if meta.get("check") == "columns" else None
        if err:
            message = scrub(f"GX error: {err}")
        elif expected_cols is not None and isinstance(observed, list):
            miss = [x for x in expected_cols if x not in observed]
            extra = [x for x in observed if x not in expected_cols]
            message = (f"missing 缺少: {', '.join(miss) or '-'}; unexpected 多出: {', '.join(extra) or '-'}"
                       + ("" if miss or extra else "; order 顺序不同"))
        else:
            message = scrub(json.dumps(observed, ensure_ascii=False, default=str))[:300] if observed is not None else ""
        failures.append(Failure(suite=t.name, feed=meta.get("feed", t.subject), field=meta.get("field"),
                                expectation=cfg.type, check=meta.get("check", "gx_error" if err else cfg.type),
                                critical=bool(meta.get("critical", True)) or err is not None,
                                unexpected_count=result.get("unexpected_count"),
                                element_count=result.get("element_count"), examples=examples, message=message))
        # what Data Docs will show: the masked examples instead of any value, scrubbed errors
        if examples:
            result["partial_unexpected_list"] = examples
            r.result = result
        if r.exception_info:
            r.exception_info = json.loads(scrub(json.dumps(r.exception_info, default=str)))
    key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=t.name),
                                     run_id=run_id, batch_identifier=res.batch_id)
    stats = {k: v for k, v in (res.statistics or {}).items()}
    sr = SuiteResult(t.name, t.kind, t.subject, len(t.frame), bool(res.success), stats,
                     time.perf_counter() - t0, failures)
    return sr, key, res


def _error_result(t: _Target | None, name: str, kind: str, subject: str, e: BaseException, t0: float) -> SuiteResult:
    msg = scrub(f"{type(e).__name__}: {e}")[:500]
    return SuiteResult(name, kind, subject, len(t.frame) if t else 0, False, {}, time.perf_counter() - t0,
                       [Failure(name, subject, None, "suite", "gx_error", True, None, None, [], f"GX error: {msg}")])


def validate(store_or_tables: ObjectStore | Mapping[str, pa.Table], snapshot_date: dt.date | str, *,
             outputs: Mapping[str, pa.Table] | None = None, policy: Policy | None = None,
             county: str | None = None, feeds: Iterable[str] | None = None,
             health: Mapping[str, dict] | None = None) -> QualityReport:
    """Run every suite for a snapshot: feeds, cross-feed checks and (if given) the outputs.

    `store_or_tables`: an `ObjectStore` (each feed's `clean/` table is read; a missing one is
    validated as empty and listed in `report.missing`) or a dict feed id → pyarrow Table (what the
    pipeline already loaded; absent feeds are skipped). `outputs`: name → Table for
    `monitoring.person`, `monitoring.household`, `warnings` (aliases `person`, `household`).
    `policy` (or `county`, 6 digits) fixes the county the output region codes must belong to.
    `health`: feed id → {"ok", "accepted", "problems"} (the feeds' recorded health, see
    `safetynet.intake.health`); an unhealthy feed the operator did not accept fails critically.
    """
    t_start = time.perf_counter()
    snap = dt.date.fromisoformat(snapshot_date) if isinstance(snapshot_date, str) else snapshot_date
    county = county or (policy.policy.region_code if policy is not None else None)
    wanted = list(feeds) if feeds is not None else list(contracts())
    tables: dict[str, pa.Table] = {}
    missing: list[str] = []
    if isinstance(store_or_tables, ObjectStore):
        for fid in wanted:
            c = contracts()[fid]
            if store_or_tables.exists(clean_path(c)):
                t = store_or_tables.read_parquet(clean_path(c)).select(list(c.names))  # no lineage columns
                tables[fid] = t.cast(pa.schema([c.arrow_schema().field(n) for n in c.names]))
            else:
                tables[fid] = pa.schema([c.arrow_schema().field(n) for n in c.names]).empty_table()
                missing.append(fid)
    else:
        tables = {fid: t for fid, t in store_or_tables.items() if fid in wanted}

    from great_expectations.core.run_identifier import RunIdentifier

    ctx = _context()
    ds = ctx.data_sources.add_pandas("safetynet")
    run_id = RunIdentifier(run_name=f"snapshot-{snap.isoformat()}",
                           run_time=dt.datetime(snap.year, snap.month, snap.day, tzinfo=dt.UTC))
    suites: list[SuiteResult] = []
    results: dict[str, tuple] = {}

    def run(make: Callable[[], list[_Target]], name: str, kind: str, subject: str) -> None:
        t0 = time.perf_counter()
        try:
            targets = make()
        except Exception as e:  # noqa: BLE001 - preparing the frames failed: a critical, reported failure
            log.error("quality: preparing %s failed: %s", name, scrub(f"{type(e).__name__}: {e}"))
            suites.append(_error_result(None, name, kind, subject, e, t0))
            return
        for t in targets:
            t1 = time.perf_counter()
            try:
                sr, key, res = _run_target(ctx, ds, t, run_id)
                results[t.name] = (key, res, t.suite)
            except Exception as e:  # noqa: BLE001 - reported as a critical failure of the suite
                log.error("quality: suite %s failed to run: %s", t.name, scrub(f"{type(e).__name__}: {e}"))
                sr = _error_result(t, t.name, t.kind, t.subject, e, t1)
            suites.append(sr)
            log.info("quality %s: %s (%d rows, %d failed, %d critical) in %.2fs", sr.name,
                     "ok" if sr.success else "FAILED", sr.rows, len(sr.failures),
                     sum(f.critical for f in sr.failures), sr.seconds,
                     extra={"event": "quality_suite", "suite": sr.name, "success": sr.success,
                            "critical_ok": sr.critical_ok})

    for fid in wanted:
        if fid in tables:
            c = contracts()[fid]
            run(lambda c=c: [_feed_target(c, tables[c.feed_id])], f"feed.{fid}", "feed", fid)
    if health:
        run(lambda: [_health_target(health)], "health", "health", "feeds")
    run(lambda: _cross_targets(tables), "cross", "cross", "cross")
    if outputs:
        run(lambda: _output_targets(outputs, snap, county), "output", "output", "outputs")
    report = QualityReport(snap, suites, time.perf_counter() - t_start,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), county, missing, ctx, results)
    log.info("quality gate %s: %s (%d critical, %d warnings) in %.1fs", snap, "ok" if report.ok else "BLOCKED",
             len(report.critical_failures), len(report.warnings), report.seconds,
             extra={"event": "quality_gate", "ok": report.ok})
    return report


# ==== Data Docs ===================================================================================

#: the npm files GX's pages would load from CDNs (fetched by infra/update-frontend.sh)
_DOCS_VENDOR = Path(safetynet.__file__).parent / "review" / "static" / "vendor" / "data-docs"
_VEGA = "vegaEmbed("  # only a page drawing a chart needs vega (~0.8 MB); no other page loads it
#: CDN URL in GX 1.x's page templates → (vendored file under _DOCS_VENDOR, text a page must hold to
#: need it; None: every page). A URL missing here stays external and `build_docs` warns about it.
_DOCS_ASSETS: dict[str, tuple[str, str | None]] = {
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": ("bootstrap/bootstrap.min.css", None),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": ("bootstrap/bootstrap.min.js", None),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        ("bootstrap-dark/bootstrap-prefers-dark.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        ("bootstrap-table/bootstrap-table.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": ("bootstrap-table/bootstrap-table.min.js", None),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        ("bootstrap-table/bootstrap-table-filter-control.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        ("bootstrap-table/bootstrap-table-filter-control.min.css", None),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        ("bootstrap-table/bootstrap-table-filter-control.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        ("bootstrap-datepicker/bootstrap-datepicker.min.css", None),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        ("bootstrap-datepicker/bootstrap-datepicker.min.js", None),
    "https://code.jquery.com/jquery-3.7.1.min.js": ("jquery/jquery.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": ("popper.js/popper.min.js", None),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": ("fontawesome/css/all.min.css", None),
    "https://cdn.jsdelivr.net/npm/vega@5": ("vega/vega.min.js", _VEGA),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": ("vega/vega-lite.min.js", _VEGA),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": ("vega/vega-embed.min.js", _VEGA),
}
DOCS_TITLE = "数据质量报告 Data quality"
_SCRIPT_TAG = re.compile(r'<script\b[^>]*\bsrc="(https?://[^"]+)"[^>]*>\s*</script>', re.IGNORECASE)
_LINK_TAG = re.compile(r'<link\b[^>]*\bhref="(https?://[^"]+)"[^>]*>', re.IGNORECASE)
_SRI_ATTR = re.compile(r'\s(?:integrity|crossorigin)="[^"]*"', re.IGNORECASE)
_LOCAL_STATIC = re.compile(r'\b(src|href)="(?:\./|(?:\.\./)+)static/')
_STYLE_BLOCK = re.compile(r"<style\b[^>]*>.*?</style>", re.IGNORECASE | re.DOTALL)
_CSS_REMOTE_URL = re.compile(r"""url\(\s*(['"]?)https?://[^)'"]*\1\s*\)""", re.IGNORECASE)
_GX_LOGO = re.compile(r"<img\b[^>]*\blogo-long\.png[^>]*>", re.IGNORECASE | re.DOTALL)
_TRACKING_FOOTER = re.compile(r"<footer>(?:(?!</footer>).)*?(?:newsletter|utm_)(?:(?!</footer>).)*</footer>",
                              re.IGNORECASE | re.DOTALL)
_EXTERNAL_LINK = re.compile(r'<a\b[^>]*\bhref="https?://[^"]*"[^>]*>(.*?)</a>', re.IGNORECASE | re.DOTALL)
_TITLE = re.compile(r"<title>.*?</title>", re.IGNORECASE | re.DOTALL)
_BREADCRUMB = re.compile(r'aria-current="page">([^<]*)</li>')
#: GX names each collapsible block with a fresh uuid4: the same page would differ on every build
_COLLAPSE_ID = re.compile(r"-collapse-body-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
#: what still reaches outside the site after `_offline_page` (a GX upgrade adding a CDN, say)
_EXTERNAL_REF = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?)(?:https?:)?//([^/"')\s]+)""",
                           re.IGNORECASE)


def _offline_page(html: str, rel: str, title: str, used: set[str]) -> str:
    """One GX page made self-contained: CDN files → the site's vendored copies (`used` collects
    them), GX's logo (an S3 image) → the site title, the newsletter footer (tracking link) dropped,
    links out of the site reduced to their text, a real `<title>`, GX's own static links at the
    page's actual depth (its favicon link is one level short on validation pages)."""
    up = "../" * rel.count("/")
    needs_chart = _VEGA in html

    def asset(m: re.Match) -> str:
        url = m.group(1)
        if url not in _DOCS_ASSETS:
            return m.group(0)
        local, needed_for = _DOCS_ASSETS[url]
        if needed_for == _VEGA and not needs_chart:
            return ""
        used.add(local)
        # SRI needs a CORS fetch, which a page opened from file:// cannot make (same bytes as the CDN's)
        return _SRI_ATTR.sub("", m.group(0).replace(url, f"{up}static/vendor/{local}"))

    html = _SCRIPT_TAG.sub(asset, html)
    html = _LINK_TAG.sub(asset, html)
    html = _LOCAL_STATIC.sub(lambda m: f'{m.group(1)}="{up}static/', html)
    html = _STYLE_BLOCK.sub(lambda m: _CSS_REMOTE_URL.sub("none", m.group(0)), html)  # GX's dark-mode logo
    esc_title = escape_html(title)
    html = _GX_LOGO.sub(f'<span class="h5 m-0 text-body">{esc_title}</span>', html)
    html = _TRACKING_FOOTER.sub("", html)
    html = _EXTERNAL_LINK.sub(lambda m: m.group(1), html)
    crumb = _BREADCRUMB.search(html)
    page_title = f"{crumb.group(1).strip()} · {esc_title}" if crumb and rel != "index.html" else esc_title
    first = True

    def one_title(_m: re.Match) -> str:  # GX writes two <title>s: a generic one and an empty one
        nonlocal first
        keep, first = first, False
        return f"<title>{page_title}</title>" if keep else ""

    return _TITLE.sub(one_title, html)


def _stable_ids(html: str) -> str:
    """GX's random collapse-block ids numbered in page order: a re-build writes the same bytes."""
    seen: dict[str, int] = {}
    return _COLLAPSE_ID.sub(lambda m: f"-collapse-body-{seen.setdefault(m.group(1), len(seen) + 1)}", html)


def _docs_title(report: QualityReport | None, snap: str, store: ObjectStore) -> str:
    """`数据质量报告 Data quality · <county or store> · <snapshot date>`: the index title and site name."""
    where = (report.county if report is not None else None) or store.url
    return " · ".join(x for x in (DOCS_TITLE, where, snap) if x)


def build_docs(report: QualityReport | Iterable[ExpectationSuiteValidationResult], store: ObjectStore,
               prefix: str = DOCS_PREFIX) -> list[str]:
    """Build GX Data Docs for the report and write them to `docs/quality/` in the store.

    GX's own site builder renders into a temporary directory; every page is made self-contained
    (`_offline_page`: vendored copies instead of CDNs, no S3 logo, no tracking link, a real title),
    passed through `scrub` (anything shaped like an ID number is masked) and written with
    `store.write_bytes`. Validation pages live under `validations/<suite>/snapshot-<date>/…` (a
    re-run of the same snapshot overwrites them); `index.html` is the latest build and
    `index-<date>.html` a copy per snapshot. The masked JSON report goes to `reports/<date>.json`.

    Returns the pages and reports written: the same list for every build of the same report,
    whatever the store held before. The static assets under `static/` (GX's and the vendored
    files, shared by every build) are written only when missing or changed, and not listed.
    """
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    if isinstance(report, QualityReport) and report._context is not None:
        ctx = report._context
        snap = report.snapshot_date.isoformat()
        for name, (key, res, suite) in report._results.items():
            try:
                ctx.suites.add(suite)
            except Exception:  # noqa: BLE001 - already added by an earlier build of this report
                pass
            ctx.validation_results_store.set(key, res)
    else:  # bare (already sanitised) validation results: a fresh context holding just them
        ctx = _context()
        results = list(report.results() if isinstance(report, QualityReport) else report)
        for r in results:
            key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=r.suite_name),
                                             run_id=r.meta["run_id"], batch_identifier=r.batch_id)
            ctx.validation_results_store.set(key, r)
        snap = str(getattr(results[0].meta.get("run_id"), "run_name", "") or "").removeprefix("snapshot-") \
            if results else ""
    title = _docs_title(report if isinstance(report, QualityReport) else None, snap, store)
    tmp = Path(tempfile.mkdtemp(prefix="sn-gx-docs-"))
    written: list[str] = []
    try:
        site = title  # GX shows the site name on the index page ("Data Docs | <name>")
        ctx.add_data_docs_site(site, {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(tmp)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        try:
            ctx.build_data_docs(site_names=[site])
        finally:  # the site stays configured on a reused context; drop it so a second build starts clean
            sites = dict(ctx.variables.data_docs_sites or {})
            sites.pop(site, None)
            ctx.variables.data_docs_sites = sites
        used: set[str] = set()
        pages: dict[str, bytes] = {}
        leaks: dict[str, int] = {}
        for p in sorted(x for x in tmp.rglob("*") if x.is_file()):
            rel = p.relative_to(tmp).as_posix()
            if rel.startswith("static/"):
                continue
            data = p.read_bytes()
            if p.suffix.lower() in _TEXT_SUFFIXES:
                text = data.decode("utf-8", errors="replace")
                if p.suffix.lower() in (".html", ".htm"):
                    text = _stable_ids(_offline_page(text, rel, title, used))
                    for host in _EXTERNAL_REF.findall(text):
                        leaks[host] = leaks.get(host, 0) + 1
                data = scrub(text).encode("utf-8")
            pages[rel] = data
        if leaks:
            log.warning("quality docs: pages still load from %s (GX's page templates changed: map the URLs in "
                        "quality.gx._DOCS_ASSETS and vendor the files with infra/update-frontend.sh)",
                        ", ".join(f"{h} ({n}×)" for h, n in sorted(leaks.items())))
        for package in sorted({u.split("/", 1)[0] for u in used}):  # with its fonts and licence
            shutil.copytree(_DOCS_VENDOR / package, tmp / "static" / "vendor" / package)
        # assets first, pages after: a page never points at a file not yet there. Static files come
        # from installed packages (GX's, npm's), never from data: no scrub (it would break vega.min.js)
        have = {e.path: e.size for e in store.list(f"{prefix}static/")}
        static = 0
        for p in sorted(x for x in (tmp / "static").rglob("*") if x.is_file()):
            dest = prefix + p.relative_to(tmp).as_posix()
            if have.get(dest) != p.stat().st_size:
                store.write_bytes(dest, p.read_bytes())
                static += 1
        for rel, data in pages.items():
            store.write_bytes(prefix + rel, data)
            written.append(prefix + rel)
            if rel == "index.html" and snap:
                store.write_bytes(f"{prefix}index-{snap}.html", data)
                written.append(f"{prefix}index-{snap}.html")
        if isinstance(report, QualityReport):
            d = report.snapshot_date.isoformat()
            store.write_bytes(f"{prefix}reports/{d}.json",
                              scrub(json.dumps(report.as_dict(), ensure_ascii=False, indent=1)).encode())
            store.write_bytes(f"{prefix}reports/{d}.txt", scrub(report.summary(max_lines=200)).encode())
            written += [f"{prefix}reports/{d}.json", f"{prefix}reports/{d}.txt"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("quality docs: %d files written under %s (%d static assets updated)", len(written),
             store.uri(prefix), static, extra={"event": "quality_docs", "files": len(written), "static": static})
    return written


__all__ = ["validate", "suite_for", "frame_for", "output_suite", "output_frame", "build_docs", "QualityReport",
           "SuiteResult", "Failure", "QualityGateError", "id_ok", "members_ok", "mask_value", "scrub", "RESULT_FORMAT"]
