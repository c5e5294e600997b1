"""The quality gate's expectation suites (Great Expectations 1.x, generated, never hand-written),
the frames they validate, and the validation targets (a suite with its frame) of a snapshot.

* **feed suites** `feed.<department>.<feed>` — one per contract (`suite_for(contract)`): column
  set/order, types, required fields not null, ID validity (format, birth date, GB 11643 check
  character), enum value sets, formats, ranges, key uniqueness;
* **health** — each feed's recorded health (`safetynet.intake.health`);
* **cross-feed suites** `cross.*` — every claim's person exists, every assistance applicant and
  member exists, vehicle/property owners and other person-linked facts exist (report only),
  payments/income checks belong to a known case (report only), no negative money anywhere;
* **output suites** `output.*` — the monitoring person/household tables and the warnings table.

Every expectation carries `meta = {"critical", "feed", "field", "check"}` (`CHECK_ZH` names the
checks). Critical: key uniqueness and non-null keys, ID validity (and required ID fields not
null), column set/order and types, row count of the person register, person existence of claims
and assistance applicants/members, no negative money, and on the outputs: unique keys,
non-negative money, region codes inside the policy county, the snapshot date, known
rules/severities, warnings pointing to existing households. Non-critical (a data-quality
warning): enum value sets, formats (region/credit code, month), contract ranges (share, grade,
area, money `min=0` within a feed — the cross-feed money check is the critical one), other
required fields not null, and the report-only links (owners, other person-linked feeds,
payment/check cases).

What GX has no expectation for (the ID check character, joins) is computed as boolean helper
columns (`__id_ok_<field>` by `quality.checks`, `__exists` …) that expectations then check. A
`Target` holds every row as SQL (for the exact counts of `quality.exact`) and makes the pandas frame
of any rows GX is to validate; it also says which key columns identify a failing row and how to show
them masked (`schemas.idno.mask_value`); `quality.gate` runs the targets.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from quality import exact
from quality.checks import (
    ID_RE,
    found_in,
    id_checks,
    id_ok,
    members_ok,
    num_col,
    plain,
    regex_ok,
    to_frame,
    with_num,
)
from quality.evaluation import SCHEMA
from quality.rules import RULES
from quality.sources import ArrowSource, Helper, Source, registered
from schemas.contract import Contract
from schemas.idno import mask_value
from schemas.registry import contracts

if TYPE_CHECKING:  # the GX import takes seconds: only the functions that need it import it
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.expectations import Expectation

PERSON = "public_security.person"
OUTPUTS = ("monitoring.person", "monitoring.household", "warnings")
_OUTPUT_ALIASES = {"person": "monitoring.person", "monitoring_person": "monitoring.person",
                   "household": "monitoring.household", "monitoring_household": "monitoring.household",
                   "warnings": "warnings"}

CHECK_ZH = {
    "columns": "字段集合与顺序", "rows": "记录数", "type": "字段类型", "not_null": "必填非空",
    "id_format": "身份证号格式", "id_valid": "身份证号有效（出生日期、校验码）", "members_valid": "家庭成员身份证号有效",
    "value_set": "取值在代码表内", "format": "编码格式", "range": "取值范围", "unique_key": "主键唯一",
    "person_exists": "人员在户籍库中存在", "case_exists": "救助家庭编号存在", "no_negative_money": "金额非负",
    "household_exists": "户号在家庭表中存在", "snapshot_date": "快照日期一致", "region_in_county": "区划代码属于本县区",
    "rule_known": "预警规则已登记", "consistency": "数值一致性", "gx_error": "GX 内部错误",
    "feed_health": "数据源健康（隔离率、空快照）",
}

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
        self.name, self.meta, self.feed = name, meta, feed
        self.exps: list[Expectation] = []

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
        + [num_col(f.name) for f in c.fields if f.min is not None or f.max is not None])
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
            add("ExpectColumnValuesToMatchRegex", True, f.name, "id_format", column=f.name, regex=ID_RE)
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
            add("ExpectColumnValuesToBeBetween", False, f.name, "range", column=num_col(f.name), min_value=f.min,
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
    return to_frame(with_num(t, [f.name for f in contract.fields if f.min is not None or f.max is not None]))


# ==== validation targets ==========================================================================

@dataclass
class Target:
    """One suite and the rows it validates: every row as SQL (`sql` over its `sources` and the Arrow
    tables `refs`, `rows` rows, each with its position `__pos`) for the exact metrics
    (`quality.exact`), and `frame_of(positions)`, the pandas frame of some of them that GX validates;
    with how a failing row is identified and shown (masked)."""

    name: str  # suite name
    kind: str  # feed | cross | output | health
    subject: str  # feed id or output name
    suite: Any  # ExpectationSuite
    rows: int
    sql: str  # the frame's columns (helpers as SQL expressions) and `__pos`, for every row
    sources: list[Source]  # what `sql` reads (registered by the gate)
    frame_of: Callable[[np.ndarray], pd.DataFrame]  # sorted positions → the frame of those rows
    keys: tuple[str, ...] = ()
    pii: dict[str, str] = field(default_factory=dict)
    shows: dict[str, str] = field(default_factory=dict)  # helper column → the column to show instead
    #: (feed, rows) → the masked keys of those source records, in order
    record: Callable[[str, Sequence[int]], list[str]] | None = None
    #: more relations of `sql` (registered by the gate): Arrow tables, or `Shared` ones computed once
    refs: dict[str, pa.Table | Shared] = field(default_factory=dict)
    #: (column, regex) → a boolean column of `sql` (not of the frame) that says whether the value
    #: matches: the exact count of that regex expectation, computed vectorised (`quality.exact`)
    matches: dict[tuple[str, str], str] = field(default_factory=dict)
    #: column → its exact null count if known without a scan (`Source.null_count`), else None
    nulls: Callable[[str], int | None] | None = None
    #: keys known unique and never null, in one ordered pass (`Source.ascending`)
    unique: frozenset[tuple[str, ...]] = frozenset()
    #: the rows of each block `frame_of` reads whole (`Source.blocks`: a file's row groups), or None
    blocks: tuple[int, ...] | None = None
    #: SQL of the source's own columns of `sql` and `__pos`, without the helper columns (what a
    #: uniqueness or null check scans: no join a helper needs), or None
    plain: str | None = None


class Shared:
    """A relation that several targets' SQL reads, computed once: by the first of them prepared
    (`table(con)`, on that preparer's cursor; the others wait for it), then held as Arrow. `sql`
    reads `sources` and `refs` (Arrow tables), registered for it."""

    def __init__(self, sql: str, sources: Sequence[Source], refs: Mapping[str, pa.Table]):
        self.sql, self.sources, self.refs = sql, list(sources), dict(refs)
        self._lock = threading.Lock()
        self._table: pa.Table | None = None

    def table(self, con: Any) -> pa.Table:
        with self._lock:
            if self._table is None:
                with registered(con, self.refs, self.sources):
                    self._table = con.sql(self.sql).to_arrow_table()
            return self._table


def _ref(name: str) -> str:
    return "qg_" + "".join(ch if ch.isalnum() else "_" for ch in name)


def source_of(name: str, table: pa.Table) -> ArrowSource:
    """A table in memory as the source of the target `name`."""
    return ArrowSource(table, _ref(name))


def _table_target(name: str, kind: str, subject: str, suite: Any, source: Source, columns: Sequence[str],
                  helpers: Mapping[str, str], frame_of: Callable[[pa.Table], pd.DataFrame], **how: Any) -> Target:
    """A target over one source: its `columns`, `helpers` (frame column → SQL expression), and the
    frame `frame_of(rows of the source)`."""
    q = exact.ident
    cols = "".join(f"{q(c)}, " for c in columns)
    extra = "".join(f"{h} AS {q(col)}, " for col, h in helpers.items())
    return Target(name, kind, subject, suite, source.rows, f"SELECT {cols}{extra}__pos FROM {source.relation}",
                  [source], lambda pos: frame_of(source.at(pos, columns)),
                  nulls=lambda c: source.null_count(c) if c in columns else None, blocks=source.blocks,
                  plain=f"SELECT {cols}__pos FROM {source.plain_relation}", **how)


def as_contract(c: Contract, table: pa.Table) -> pa.Table:
    """A feed's table as its contract types: the contract's columns it has, in the contract's order,
    each cast to its contract type (how a clean file is validated; a cast that fails raises)."""
    names = [n for n in c.names if n in table.column_names]
    schema = c.arrow_schema()
    return pa.Table.from_arrays([table[n] if table[n].type == schema.field(n).type else table[n].cast(schema.field(n).type)
                                 for n in names], schema=pa.schema([schema.field(n) for n in names]))


def _record_formatter(sources: Mapping[str, Source]) -> Callable[[str, Sequence[int]], list[str]]:
    def fmt(feed: str, rows: Sequence[int]) -> list[str]:
        """The masked keys of the feed's records at `rows`, in that order: one read of the feed
        (a read per record cost ~0.1 s each on a 1 M-person district)."""
        c = contracts()[feed]
        at = np.unique(np.asarray(rows, dtype=np.int64))
        got = sources[feed].at(at, list(c.key)).to_pylist()
        pii = {f.name: f.pii for f in c.fields}
        text = [f"{feed}: " + " ".join(f"{k}={mask_value(r[k], pii.get(k, 'none'))}" for k in c.key) for r in got]
        return [text[i] for i in np.searchsorted(at, np.asarray(rows, dtype=np.int64))]
    return fmt


def feed_target(c: Contract, source: Source, suite: Any = None, *, cast: bool = False) -> Target:
    """The target of a feed's suite (`suite`, default `suite_for(c)`) over its source: the columns
    but the lineage ones (`cast`: the contract's columns, as their contract types — a clean file)."""
    q = exact.ident
    cols = [n for n in c.names if n in source.names] if cast else [n for n in source.names if not n.startswith("_")]
    specs: dict[tuple[str, ...], Helper] = {}
    matches: dict[tuple[str, str], str] = {}
    for f in c.fields:
        if f.name not in cols:
            continue
        if f.kind == "id_no":  # the format (ID_RE) comes with the validity, in the same pass
            specs[(f"__match_{f.name}", _helper(f.name))] = (f.name, id_checks)
            matches[(f.name, ID_RE)] = f"__match_{f.name}"
        elif f.kind == "members":
            specs[(_helper(f.name),)] = (f.name, members_ok)
        elif f.kind in _FORMATS:  # a code of few values: matched on the dictionary only
            specs[(f"__match_{f.name}",)] = (f.name, partial(regex_ok, regex=_FORMATS[f.kind]))
            matches[(f.name, _FORMATS[f.kind])] = f"__match_{f.name}"
    checked = source.with_helpers(specs, _ref(f"helpers.feed.{c.feed_id}"),
                                  dictionary=[f.name for f in c.fields if f.name in cols and f.kind in _FORMATS],
                                  key=c.key)
    helpers = {h: q(h) for h in checked.helper_names}
    helpers.update({num_col(f.name): f"CAST({q(f.name)} AS DOUBLE)" for f in c.fields
                    if f.name in cols and (f.min is not None or f.max is not None)})
    unique = frozenset({tuple(c.key)} if checked.ascending(c.key) else ())  # a clean file: sorted by its key
    frame = (lambda rows: frame_for(c, as_contract(c, rows))) if cast else (lambda rows: frame_for(c, rows))
    return _table_target(f"feed.{c.feed_id}", "feed", c.feed_id, suite_for(c) if suite is None else suite, checked,
                         cols, helpers, frame, keys=tuple(c.key), pii={f.name: f.pii for f in c.fields},
                         shows={**{_helper(f.name): f.name for f in c.fields if f.kind in ("id_no", "members")},
                                **{num_col(f.name): f.name for f in c.fields}}, matches=matches, unique=unique)


def health_target(health: Mapping[str, dict]) -> Target:
    """One row per feed with a recorded health (`safetynet.intake.health`): healthy, or accepted for
    this run by the operator (`--accept-unhealthy`). An unhealthy feed not accepted is critical."""
    table = pa.table({"feed_id": pa.array(list(health), pa.string()),
                      "ok": pa.array([bool(h["ok"]) for h in health.values()], pa.bool_()),
                      "accepted": pa.array([bool(h.get("accepted")) for h in health.values()], pa.bool_()),
                      "problems": pa.array(["; ".join(h.get("problems", [])) for h in health.values()], pa.string())})
    b = _Builder("health", {"kind": "health", "title_zh": "数据源健康"}, "health")
    b.add("ExpectColumnValuesToBeInSet", True, "ok", "feed_health", column="ok", value_set=[True])
    return _table_target("health", "health", "feeds", b.build(), source_of("health", table), table.column_names, {},
                         lambda rows: rows.to_pandas(), keys=("feed_id",))


@dataclass
class Part:
    """One column of one feed stacked under the others: `sql` gives each value `v` with its position
    `__i` in the part, `take(i)` the (source row, value) of positions `i`."""

    feed: str
    column: str
    rows: int
    sql: str
    take: Callable[[np.ndarray], tuple[np.ndarray, pa.Array | pa.ChunkedArray]]
    sources: list[Source]
    refs: dict[str, pa.Table] = field(default_factory=dict)


def _column_part(feed: str, fld: str, source: Source) -> Part:
    """A column of a feed, one value per row."""
    return Part(feed, fld, source.rows, f"SELECT __pos AS __i, {exact.ident(fld)} AS v FROM {source.relation}",
                lambda i: (i, source.at(i, [fld])[fld]), [source])


def _members_part(feed: str, fld: str, source: Source, ref: str) -> Part:
    """The members' ID numbers of a feed's members column, one row per member (an assistance case's
    family: a small feed, flattened in memory)."""
    col = plain(source.column(fld))
    parents = pc.list_parent_indices(col).to_numpy(zero_copy_only=False)
    ids = plain(pc.struct_field(pc.list_flatten(col), "id_no"))
    table = pa.table({"__i": pa.array(np.arange(len(ids), dtype=np.int64)), "v": ids})
    return Part(feed, fld, len(ids), f"SELECT __i, v FROM {ref}", lambda i: (parents[i], ids.take(pa.array(i))), [],
                {ref: table})


def _stack(parts: Sequence[tuple[str, str, np.ndarray, pa.Array | pa.ChunkedArray]], value: str, cast: pa.DataType,
           derived: Mapping[str, Callable[[pa.Array], pa.Array]]) -> pa.Table:
    """Rows (__feed, __field, __row, `value`, *derived) of (feed, field, source rows, values) parts."""
    cols: dict[str, list] = {"__feed": [], "__field": [], "__row": [], value: []}
    for feed, fld, rows, vals in parts:
        n = len(vals)
        cols["__feed"].append(pa.repeat(pa.scalar(feed, pa.string()), n))
        cols["__field"].append(pa.repeat(pa.scalar(fld, pa.string()), n))
        cols["__row"].append(pa.array(rows, pa.int64()))
        cols[value].append(pc.cast(plain(vals), cast))
    empty = {"__feed": pa.string(), "__field": pa.string(), "__row": pa.int64(), value: cast}
    t = pa.table({k: pa.concat_arrays(v) if parts else pa.array([], empty[k]) for k, v in cols.items()})
    for k, fn in derived.items():  # over all the stacked values at once
        t = t.append_column(k, fn(t[value].combine_chunks()))
    return t


def _stacked_target(name: str, subject: str, suite: Any, parts: Sequence[Part], value: str, cast: pa.DataType,
                    helper: str, derived: Mapping[str, Callable[[pa.Array], pa.Array]], sources: Sequence[Source],
                    shared: Mapping[str, Shared] | None = None, **how: Any) -> Target:
    """A target over feeds' columns stacked (`_stack`), without stacking them: in SQL a UNION ALL of
    each part (`v`, with its position) and `helper`, the SQL of the derived columns over `v`;
    the frame stacks only the rows asked for. `shared`: relations `helper` reads besides."""
    offsets = np.cumsum([0] + [p.rows for p in parts])
    sql = f"SELECT __pos, {helper} FROM ({_union(parts, offsets)})"

    def frame_of(pos: np.ndarray) -> pd.DataFrame:
        sub = []
        for k, p in enumerate(parts):
            i = pos[(pos >= offsets[k]) & (pos < offsets[k + 1])] - offsets[k]
            sub.append((p.feed, p.column, *p.take(i)))
        return to_frame(_stack(sub, value, cast, derived))

    used = list({id(s): s for s in [*sources, *(s for p in parts for s in p.sources)]}.values())
    refs: dict[str, pa.Table | Shared] = {k: v for p in parts for k, v in p.refs.items()}
    return Target(name, "cross", subject, suite, int(offsets[-1]), sql, used, frame_of, refs={**refs, **(shared or {})},
                  **how)


def _union(parts: Sequence[Part], offsets: Sequence[int] | np.ndarray | None = None) -> str:
    """SQL of the parts' values `v` one under the other, each with its position `__pos` in the
    stack (`offsets`: where each part starts; None: values only)."""
    if offsets is None:
        return " UNION ALL ".join(f"SELECT v FROM ({p.sql})" for p in parts) or "SELECT NULL::VARCHAR AS v WHERE FALSE"
    return (" UNION ALL ".join(f"SELECT {int(off)} + __i AS __pos, v FROM ({p.sql})"
                               for off, p in zip(offsets, parts, strict=False))
            or "SELECT NULL::BIGINT AS __pos, NULL::VARCHAR AS v WHERE FALSE")


def _link_suite(name: str, critical: bool, check: str, feed: str, meta: dict) -> Any:
    b = _Builder(name, {"kind": "cross", **meta}, feed)
    b.add("ExpectColumnValuesToBeInSet", critical, "id_no" if check == "person_exists" else "case_no", check,
          column="__exists", value_set=[True])
    return b.build()


def _membership(universe: Callable[[], pa.ChunkedArray | pa.Array]) -> Callable[[pa.Array], pa.Array]:
    """values ∈ universe() (null stays null; the universe is read when first needed). The frames hold
    a few thousand values against a universe of millions: the universe is scanned against a hash set
    of the values (not a hash set of the universe built for every frame), then the values are looked
    up among the ones found."""
    held: list = []

    def exists(values: pa.Array) -> pa.Array:
        if not held:
            held.append(universe())
        values = plain(values)
        wanted = values.drop_null().unique()
        found = pa.concat_arrays([plain(c).filter(pc.is_in(plain(c), value_set=wanted))
                                  for c in (held[0].chunks if isinstance(held[0], pa.ChunkedArray) else [held[0]])]
                                 or [pa.array([], values.type)]) if len(wanted) else wanted
        return found_in(values, found.cast(values.type).unique(), distinct=True)
    return exists


def _link_target(name: str, subject: str, suite: Any, parts: Sequence[Part], exists_sql: str, used: Sequence[Source],
                 exists: Callable[[pa.Array], pa.Array], value: str, fmt: Callable[[str, Sequence[int]], list[str]],
                 shared: Mapping[str, Shared] | None = None) -> Target:
    """`__exists`: each value `v` is in the universe (null stays null) — `exists_sql` in SQL (over
    `used` and `shared`), `exists` (the same over Arrow) in the frame."""
    return _stacked_target(name, subject, suite, parts, value, pa.string(), f"v AS {value}, {exists_sql} AS __exists",
                           {"__exists": exists}, used, shared, keys=("__feed", "__row"),
                           pii={"id_no": "direct", "case_no": "none"}, shows={"__exists": value}, record=fmt)


def _semi_join(universe: Source, column: str) -> str:
    """SQL: `v` is among the non-null values of `universe`'s `column` (null stays null)."""
    return f"v IN (SELECT {exact.ident(column)} FROM {universe.relation} WHERE {exact.ident(column)} IS NOT NULL)"


def _missing_ids(registry: Source, parts: Sequence[Part]) -> Shared:
    """The distinct ID numbers of `parts` that are not in the register: one semi-join of every
    person link against the register (10 M ID numbers hashed once, not once per suite), after
    which each suite looks its values up among the few missing (`NOT (v IN missing)`: null stays
    null, exactly as against the register)."""
    refs = {k: v for p in parts for k, v in p.refs.items()}
    used = list({id(s): s for s in [registry, *(s for p in parts for s in p.sources)]}.values())
    return Shared(f"SELECT DISTINCT v FROM ({_union(parts)}) WHERE v IS NOT NULL AND NOT ({_semi_join(registry, 'id_no')})",
                  used, refs)


def cross_targets(sources: Mapping[str, Source]) -> list[Target]:
    out: list[Target] = []
    fmt = _record_formatter(sources)
    if PERSON in sources:
        registry = sources[PERSON]
        person_exists = _membership(lambda: registry.column("id_no"))

        def parts_of(feed: str, fields: Iterable[str]) -> list[Part]:
            parts: list[Part] = []
            src = sources[feed]
            for fld in fields:
                if fld not in src.names:
                    continue
                if pa.types.is_list(src.schema.field(fld).type):  # members: one row per member
                    parts.append(_members_part(feed, fld, src, _ref(f"members.{feed}.{fld}")))
                else:
                    parts.append(_column_part(feed, fld, src))
            return parts

        links: list[tuple[str, str, bool, list[Part], str]] = []
        for feed, fields in _CRITICAL_PERSON_LINKS.items():
            if feed in sources:
                links.append((f"cross.{feed.split('.')[1]}_person", feed, True, parts_of(feed, fields),
                              f"{feed}.{'/'.join(fields)} → {PERSON}.id_no"))
        owners = [p for feed, fld in _OWNER_LINKS.items() if feed in sources for p in parts_of(feed, [fld])]
        links.append(("cross.owner_person", "owners", False, owners,
                      "vehicle/property owner_id_no → person (owners may live elsewhere)"))
        others = [p for feed, c in contracts().items()
                  if feed in sources and feed != PERSON and feed not in _CRITICAL_PERSON_LINKS and feed not in _OWNER_LINKS
                  for p in parts_of(feed, c.id_fields)]
        links.append(("cross.person_links", "person_links", False, others, "other person-linked feeds → person"))
        missing = {_ref("cross.missing_person_ids"): _missing_ids(registry, [p for *_, parts, _ in links for p in parts])}
        for name, subject, critical, parts, what in links:
            suite = _link_suite(name, critical, "person_exists", subject, {"links": what})
            out.append(_link_target(name, subject, suite, parts, f"NOT (v IN (SELECT v FROM {next(iter(missing))}))",
                                    [], person_exists, "id_no", fmt, missing))
    if _CASE_FEED in sources:
        parts = [_column_part(feed, "case_no", sources[feed]) for feed in _CASE_LINKS if feed in sources]
        suite = _link_suite("cross.case_links", False, "case_exists", "case_links",
                            {"links": "payments / income checks → assistance_case.case_no"})
        cases = sources[_CASE_FEED]
        out.append(_link_target("cross.case_links", "case_links", suite, parts, _semi_join(cases, "case_no"), [cases],
                                _membership(lambda: cases.column("case_no")), "case_no", fmt))
    # no negative money anywhere (critical): every money value of every feed
    money = [_column_part(feed, f.name, sources[feed]) for feed, c in contracts().items() if feed in sources
             for f in c.fields if f.kind == "money" and f.name in sources[feed].names]
    b = _Builder("cross.money", {"kind": "cross", "links": "every money field of every feed"}, "all")
    b.add("ExpectColumnValuesToBeBetween", True, "amount", "no_negative_money", column=num_col("amount"), min_value=0)
    out.append(_stacked_target("cross.money", "money", b.build(), money, num_col("amount"), pa.float64(),
                               f"CAST(v AS DOUBLE) AS {num_col('amount')}", {}, [], keys=("__feed", "__row"),
                               pii={"amount": "none"}, shows={num_col("amount"): "amount"}, record=fmt))
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
        add("ExpectColumnValuesToBeBetween", False, "age", "range", column=num_col("age"), min_value=0, max_value=130)
    elif name == "monitoring.household":
        add("ExpectTableColumnsToMatchSet", True, None, "columns", exact_match=False,
            column_set=["snapshot_date", "household_no", "region_code", "county_code", "members_total",
                        "members_alive", "income_per_capita", "dibao_standard", "low_income_line"])
        add("ExpectColumnValuesToNotBeNull", True, "household_no", "not_null", column="household_no")
        add("ExpectColumnValuesToBeUnique", True, "household_no", "unique_key", column="household_no")
        add("ExpectColumnValuesToBeBetween", True, "members_total", "range", column=num_col("members_total"),
            min_value=1)
        add("ExpectColumnPairValuesAToBeGreaterThanB", False, "members_alive", "consistency",
            column_A="members_total", column_B="members_alive", or_equal=True)
        add("ExpectColumnPairValuesAToBeGreaterThanB", False, "low_income_line", "consistency",
            column_A="low_income_line", column_B="dibao_standard", or_equal=True)
    elif name == "warnings":

        add("ExpectTableColumnsToMatchSet", True, None, "columns", exact_match=True, column_set=list(SCHEMA.names)
            + ["__snapshot_ok", "__rule_ok", _helper("subject_id_no")] + (["__household_exists"] if has_household else [])
            + [num_col(c) for c in ["score", *money]])
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
        add("ExpectColumnValuesToBeBetween", False, "score", "range", column=num_col("score"), min_value=0)
    else:
        raise KeyError(f"unknown output {name!r}; known: {', '.join(OUTPUTS)}")
    add("ExpectColumnValuesToMatchRegex", True, "region_code", "region_in_county", column="region_code",
        regex=_region_regex(county))
    if name != "warnings":
        add("ExpectColumnValuesToMatchRegex", True, "county_code", "region_in_county", column="county_code",
            regex=f"^{county}$" if county else r"^[0-9]{6}$")
    for m in money:
        add("ExpectColumnValuesToBeBetween", True, m, "no_negative_money", column=num_col(m), min_value=0)
    return b.build()


def output_frame(name: str, table: pa.Table, snapshot_date: dt.date, *,
                 household: Callable[[pa.Array], pa.Array] | None = None) -> pd.DataFrame:
    """The frame an output suite validates: the table plus its helper columns (`household`: whether
    each household number is in the household table, `_membership`)."""

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
        t = t.append_column("__household_exists", household(t["household_no"]))
    nums = {"monitoring.person": ["age"], "monitoring.household": ["members_total"], "warnings": ["score"]}.get(name, [])
    return to_frame(with_num(t, nums + [f.name for f in table.schema if pa.types.is_decimal(f.type)]))


def output_targets(outputs: Mapping[str, Source], snapshot_date: dt.date, county: str | None) -> list[Target]:
    """The output suites' targets over `outputs` (name or alias → source: `source_of` a table, or a
    `quality.sources.ParquetSource` of a written file)."""
    outs = {_OUTPUT_ALIASES.get(k, k): v for k, v in outputs.items()}
    hh = outs.get("monitoring.household")
    keys = {"monitoring.person": ("id_no",), "monitoring.household": ("household_no",), "warnings": ("warning_id",)}
    pii = {"id_no": "direct", "name": "direct", "subject_id_no": "direct", "address": "direct"}
    q = exact.ident
    known = ", ".join(exact.literal(f"{r.id}\x1f{r.version}\x1f{r.severity}") for r in RULES)
    # the household numbers, read once for every frame, scanned against each frame's few
    household_exists = _membership(lambda: hh.column("household_no")) if hh is not None else None
    out = []
    for name in OUTPUTS:
        if name not in outs:
            continue
        src = outs[name]
        cols = set(src.names)
        helpers: dict[str, str] = {
            "__snapshot_ok": f"coalesce(snapshot_date = DATE '{snapshot_date.isoformat()}', FALSE)"
            if "snapshot_date" in cols else "FALSE"}
        ids = [f for f in ("id_no" if name == "monitoring.person" else "subject_id_no" if name == "warnings" else "",)
               if f in cols]
        specs: dict[tuple[str, ...], Helper] = {(_helper(f),): (f, id_ok) for f in ids}
        regexes = {"region_code": _region_regex(county)}
        if name != "warnings":
            regexes["county_code"] = f"^{county}$" if county else r"^[0-9]{6}$"
        regexes = {f: r for f, r in regexes.items() if f in cols}  # codes of few values: matched on the dictionary
        specs.update({(f"__match_{f}",): (f, partial(regex_ok, regex=r)) for f, r in regexes.items()})
        checked = src.with_helpers(specs, _ref(f"helpers.output.{name}"), dictionary=list(regexes), key=keys[name])
        helpers.update({h: q(h) for h in checked.helper_names})
        matches = {(f, r): f"__match_{f}" for f, r in regexes.items()}
        if name == "warnings":
            helpers["__rule_ok"] = ("coalesce(rule_id || chr(31) || CAST(rule_version AS VARCHAR) || chr(31) || severity "
                                    f"IN ({known}), FALSE)")
        if hh is not None and name in ("monitoring.person", "warnings"):
            helpers["__household_exists"] = (f"household_no IN (SELECT household_no FROM {hh.relation} "
                                             "WHERE household_no IS NOT NULL)")
        decimals = [f.name for f in src.schema if pa.types.is_decimal(f.type)]
        nums = {"monitoring.person": ["age"], "monitoring.household": ["members_total"], "warnings": ["score"]}[name]
        helpers.update({num_col(f): f"CAST({q(f)} AS DOUBLE)" for f in nums + decimals if f in cols})
        target = _table_target(f"output.{name}", "output", name,
                               output_suite(name, src.schema.empty_table(), county=county, has_household=hh is not None),
                               checked, src.names, helpers,
                               partial(output_frame, name, snapshot_date=snapshot_date,
                                       household=household_exists),
                               keys=keys[name], pii=pii,
                               shows={_helper("id_no"): "id_no", _helper("subject_id_no"): "subject_id_no",
                                      "__household_exists": "household_no", "__rule_ok": "rule_id",
                                      "__snapshot_ok": "snapshot_date", **{num_col(f.name): f.name for f in src.schema}},
                               matches=matches, unique=frozenset({keys[name]} if checked.ascending(keys[name]) else ()))
        if hh is not None and hh is not src:
            target.sources.append(hh)
        out.append(target)
    return out
