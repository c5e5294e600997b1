"""The 低收入人口动态监测 dataset: person and household tables for one snapshot date.

Named SQL steps over the `clean/` feeds (DuckDB; every value bound as a parameter, identifiers
only from the contracts), portable SQL — joins, group-bys, window-free aggregates — so a
distributed engine could run the same steps partitioned by county. Conventions (shared with the
warning rules and the synthetic district's planted households, `safetynet.demo.synth.plant`):

* windows count back from the snapshot date D: the 12 months are those that have ended on or
  before D (D = 2026-10-31 and D = 2026-11-01 both → 2025-11 … 2026-10); "last 3" are the
  newest three of them, "previous 9" the rest; dated facts count when on/after D − 12 months
  and before D;
* income of a person = average monthly wage over the 12 months (all employers) + average
  pension + unemployment benefit being drawn (领取中); assistance payments are not income;
* a household is the registration household (户号); per capita = divided by its living
  (正常) members; a roster case may span households and is kept as `case_member`;
* an active case is 在保 or 渐退期; a recipient is on an active 低保 or 特困 case.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_path
from schemas import outputs
from schemas.normalise import _lit, _q  # SQL quoting of identifiers and literals
from schemas.policy import Policy
from schemas.registry import contracts

log = logging.getLogger(__name__)

def sources() -> dict[str, str]:
    """Every registered feed → the name its clean table has in the SQL steps: the feed's own
    name (`medical_insurance.claim` → `claim`), so a new feed is a view without code here."""
    out: dict[str, str] = {}
    for fid, c in contracts().items():
        if c.feed in out.values():
            other = next(f for f, n in out.items() if n == c.feed)
            raise ValueError(f"feeds {other} and {fid} share the name {c.feed!r}: the monitoring build "
                             "exposes each feed as a view by its name, so feed names must be unique")
        out[fid] = c.feed
    return out


def months_ended(snapshot: dt.date, n: int = 12) -> list[str]:
    """The n months that have ended on or before the snapshot date, oldest first ('YYYY-MM'):
    D = 2026-10-31 and D = 2026-11-01 both give 2025-11 … 2026-10 (October has ended on the 31st)."""
    end = snapshot + dt.timedelta(days=1)  # a month has ended on or before D iff it ended before D + 1
    y, m = end.year, end.month
    out = []
    for _ in range(n):
        m -= 1
        if m == 0:
            y, m = y - 1, 12
        out.append(f"{y:04d}-{m:02d}")
    return out[::-1]


def add_months(d: dt.date, n: int) -> dt.date:
    y, m = divmod(d.month - 1 + n, 12)
    y += d.year
    m += 1
    last = [31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][m - 1]
    return dt.date(y, m, min(d.day, last))


def serious_pattern(prefixes: Sequence[str]) -> str:
    """The regular expression of a diagnosis code starting with one of `prefixes` (the policy's,
    at least one): one match per claim, 4× faster than testing each prefix in a lambda (0.2 s against
    0.8 s over the 7.3 M claims of a 10 M city)."""
    return "^(?:" + "|".join(re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\1", p) for p in prefixes) + ")"


def parameters(snapshot: dt.date, pol: Policy) -> dict:
    """Every value the steps bind, from the snapshot date and the policy file."""
    t = pol.thresholds
    months = months_ended(snapshot)
    return {
        "snapshot": snapshot,
        "win12": add_months(snapshot, -12),
        "months12": months, "last3": months[-3:],
        "wa_min": t.working_age_min, "wa_max": t.working_age_max,
        "serious_pattern": serious_pattern(pol.diagnoses.serious_illness_prefixes),
        "event_since": add_months(snapshot, -t.event_lookback_months),
        "vehicle_exempt": list(t.recipient_vehicle_exempt_types),
        "severe_grades": list(t.severe_disability_grades),
        "urban_dibao": pol.standards.urban_dibao, "rural_dibao": pol.standards.rural_dibao,
        "low_income_multiple": pol.standards.low_income_multiple,
        "risk_income_multiple": t.risk_income_multiple,
    }


#: The macros the steps and the rules call, made on the build's connection by `build` (any DuckDB
#: connection with the clean tables registered, not only `schemas.normalise.connect`'s): name →
#: its parameters and body.
MACROS = {
    # whole years of age on `d` (a birthday later in the year than `d` not yet reached; 29 February's
    # birthday reached on 1 March)
    "sn_age": "(birth, d) AS CAST(date_diff('year', birth, d) "
              "- CASE WHEN strftime(birth, '%m-%d') > strftime(d, '%m-%d') THEN 1 ELSE 0 END AS INTEGER)",
}

#: (step name, SQL over the clean feeds and the steps before it, binding `parameters` as `$name`).
#: Each is made a temporary table (`build`) but `VIEWS`.
STEPS: list[tuple[str, str]] = [
    ("person_base", """
        SELECT id_no, name, gender, birth_date,
               sn_age(birth_date, $snapshot::DATE) AS age,
               household_no, relation_to_head, region_code, substr(region_code, 1, 9) AS street_code,
               substr(region_code, 1, 6) AS county_code, hukou_type, status, status_date,
               status = '正常' AS alive
        FROM person"""),
    ("wage_person", """
        -- the window's months are consecutive 'YYYY-MM' strings (clean months are written so): a
        -- month is in it, or in its last 3, by comparison (51 M rows at 10 M persons: 3.5 s against
        -- 4.3 s with a list lookup per row)
        SELECT id_no,
               -- distinct months as a 12-bit set (exact; a DISTINCT aggregate over millions of persons costs 2.5× the time and 2× the memory)
               CAST(bit_count(bit_or(1::INTEGER << (mi - 1))) AS INTEGER) AS wage_months_12m,
               CAST(sum(wage) / 12 AS DECIMAL(14,2)) AS wage_12m_avg,
               coalesce(sum(wage) FILTER (WHERE month >= $last3[1]), 0)::DECIMAL(16,2) AS wage_last3_total,
               coalesce(sum(wage) FILTER (WHERE month < $last3[1]), 0)::DECIMAL(16,2) AS wage_prev9_total,
               max(month) AS last_wage_month,
               -- the employer of the latest month; of two that month, one chosen by its credit code (a
               -- 64-bit order key — month position, then the code's hash — not a struct: 51 M rows at
               -- 10 M persons), the same on every run whatever the scan order
               arg_max(employer_name, (mi::UBIGINT << 59) | (hash(employer_credit_code) >> 5)) AS employer_name
        FROM (SELECT *, list_position($months12, month) AS mi FROM employment
              WHERE month BETWEEN $months12[1] AND $months12[-1])
        GROUP BY id_no"""),
    ("pension_person", """
        SELECT id_no, CAST(avg(amount) AS DECIMAL(14,2)) AS pension_monthly, arg_max(scheme, month) AS pension_scheme,
               coalesce(sum(amount) FILTER (WHERE month >= $last3[1]), 0)::DECIMAL(16,2) AS pension_last3_total
        FROM pension WHERE month BETWEEN $months12[1] AND $months12[-1] GROUP BY id_no"""),
    ("unemployment_person", """
        SELECT id_no, arg_max(status, registered_date) AS unemployment_status,
               max(registered_date) AS unemployment_registered_date,
               CAST(coalesce(sum(benefit_monthly) FILTER (WHERE status = '领取中'), 0) AS DECIMAL(14,2)) AS unemployment_benefit
        FROM unemployment GROUP BY id_no"""),
    ("claim_person", """
        SELECT id_no, CAST(count(*) AS INTEGER) AS claims_12m,
               CAST(sum(total_amount) AS DECIMAL(14,2)) AS medical_total_12m,
               CAST(sum(out_of_pocket) AS DECIMAL(14,2)) AS oop_12m
        FROM claim WHERE settle_date >= $win12::DATE AND settle_date < $snapshot::DATE GROUP BY id_no"""),
    ("serious_person", """
        SELECT id_no, max(settle_date) AS serious_illness_date,
               -- code and name of one claim, the latest (two on the same day: the larger claim id)
               arg_max(diagnosis_code, {'d': settle_date, 'k': claim_id}) AS serious_illness_code,
               arg_max(diagnosis_name, {'d': settle_date, 'k': claim_id}) AS serious_illness_name
        FROM claim
        WHERE settle_date >= $win12::DATE AND settle_date < $snapshot::DATE
          AND (coalesce(serious_illness, false)
               OR regexp_matches(diagnosis_code, $serious_pattern))
        GROUP BY id_no"""),
    ("vehicle_person", """
        SELECT owner_id_no AS id_no, CAST(count(*) AS INTEGER) AS vehicles_active,
               CAST(count(*) FILTER (WHERE NOT list_contains($vehicle_exempt, vehicle_type)) AS INTEGER) AS vehicles_non_exempt,
               -- in plate order (the key: required, unique), the list sorted rather than an ordered aggregate
               list_transform(list_sort(list({'p': plate_no, 't': vehicle_type})), lambda x_: x_.t) AS vehicle_types
        FROM vehicle WHERE status = '正常' GROUP BY owner_id_no"""),
    ("property_person", """
        -- one clean row per (property_id, owner_id_no), the feed's key: an owner's properties are
        -- its rows, counted without DISTINCT (4× faster: 0.5 s against 2.0 s at 10 M persons)
        SELECT owner_id_no AS id_no,
               CAST(count(property_id) FILTER (WHERE usage = '住宅') AS INTEGER) AS residences,
               CAST(count(property_id) FILTER (WHERE usage <> '住宅') AS INTEGER) AS properties_other
        FROM property WHERE status = '现势' GROUP BY owner_id_no"""),
    ("disability_person", """
        SELECT id_no, category AS disability_category, grade AS disability_grade, subsidies AS disability_subsidies
        FROM disability"""),
    ("enrollment_person", """
        -- the latest month's row (one per month: the feed's key), a NULL field kept as it is there
        -- (`arg_max` would skip it for an earlier month's); two scalar aggregates, not one over a
        -- struct: 3.6 s against 5.8 s for the 9.9 M persons of a 10 M city, the same table
        SELECT id_no, arg_max_null(scheme, month) AS medical_scheme, arg_max_null(status, month) AS medical_status
        FROM enrollment GROUP BY id_no"""),
    ("case_member", """
        SELECT c.case_no, c.category, c.status AS case_status, c.urban_rural, c.region_code AS case_region_code,
               c.monthly_amount, c.start_date, c.end_date, c.applicant_id_no,
               m.id_no, m.relation, c.status IN ('在保', '渐退期') AS active
        FROM assistance_case c, unnest(c.members) AS u(m)"""),
    ("programme_person", """
        SELECT id_no,
               -- ordered by (start_date, case_no), both required: sorting the list is 1.6× faster
               -- than an ordered aggregate (1.2 s against 2.0 s at 10 M persons)
               list_transform(list_sort(list({'s': start_date, 'c': case_no,
                                               'p': struct_pack(case_no := case_no, category := category,
                                                                status := case_status, start_date := start_date,
                                                                end_date := end_date)})),
                              lambda x_: x_.p) AS programmes,
               CAST(count(DISTINCT case_no) FILTER (WHERE active) AS INTEGER) AS active_cases,
               list_sort(list_distinct(list(category) FILTER (WHERE active))) AS active_categories
        FROM case_member GROUP BY id_no"""),
    ("monitoring_person", """
        -- the columns computed from the others are not stored: the view `monitoring_person` adds them (`PERSON_DERIVED`)
        SELECT b.* EXCLUDE (street_code, county_code),
               coalesce(w.wage_months_12m, 0) AS wage_months_12m,
               coalesce(w.wage_12m_avg, 0)::DECIMAL(14,2) AS wage_12m_avg,
               coalesce(w.wage_last3_total, 0)::DECIMAL(16,2) AS wage_last3_total,
               coalesce(w.wage_prev9_total, 0)::DECIMAL(16,2) AS wage_prev9_total,
               w.last_wage_month, w.employer_name,
               coalesce(p.pension_monthly, 0)::DECIMAL(14,2) AS pension_monthly, p.pension_scheme,
               u.unemployment_status, u.unemployment_registered_date,
               coalesce(u.unemployment_benefit, 0)::DECIMAL(14,2) AS unemployment_benefit,
               (coalesce(w.wage_12m_avg, 0) + coalesce(p.pension_monthly, 0)
                + coalesce(u.unemployment_benefit, 0))::DECIMAL(14,2) AS income_monthly,
               ((coalesce(w.wage_last3_total, 0) + coalesce(p.pension_last3_total, 0)) / 3
                + coalesce(u.unemployment_benefit, 0))::DECIMAL(14,2) AS income_last3_monthly,
               coalesce(c.claims_12m, 0) AS claims_12m,
               coalesce(c.medical_total_12m, 0)::DECIMAL(14,2) AS medical_total_12m,
               coalesce(c.oop_12m, 0)::DECIMAL(14,2) AS oop_12m,
               s.serious_illness_date, s.serious_illness_code,
               s.serious_illness_name,
               coalesce(v.vehicles_active, 0) AS vehicles_active,
               coalesce(v.vehicles_non_exempt, 0) AS vehicles_non_exempt, v.vehicle_types,
               coalesce(r.residences, 0) AS residences, coalesce(r.properties_other, 0) AS properties_other,
               d.disability_category, d.disability_grade, d.disability_subsidies,
               e.medical_scheme, e.medical_status,
               g.programmes, coalesce(g.active_cases, 0) AS active_cases, g.active_categories
        FROM person_base b
        LEFT JOIN wage_person w USING (id_no) LEFT JOIN pension_person p USING (id_no)
        LEFT JOIN unemployment_person u USING (id_no) LEFT JOIN claim_person c USING (id_no)
        LEFT JOIN serious_person s USING (id_no) LEFT JOIN vehicle_person v USING (id_no)
        LEFT JOIN property_person r USING (id_no) LEFT JOIN disability_person d USING (id_no)
        LEFT JOIN enrollment_person e USING (id_no) LEFT JOIN programme_person g USING (id_no)"""),
    ("household_cases", """
        SELECT b.household_no,
               list_sort(list_distinct(list(cm.case_no) FILTER (WHERE cm.active))) AS active_case_nos,
               list_sort(list_distinct(list(cm.category) FILTER (WHERE cm.active))) AS active_categories
        FROM case_member cm JOIN person_base b USING (id_no) GROUP BY b.household_no"""),
    ("monitoring_household", """
        WITH h AS (
            SELECT household_no,
                   coalesce(min(region_code) FILTER (WHERE relation_to_head = '户主'), min(region_code)) AS region_code,
                   coalesce(min(hukou_type) FILTER (WHERE relation_to_head = '户主'), min(hukou_type)) AS hukou_type,
                   CAST(count(*) AS INTEGER) AS members_total,
                   CAST(count(*) FILTER (WHERE alive) AS INTEGER) AS members_alive,
                   CAST(count(*) FILTER (WHERE working_age) AS INTEGER) AS working_age_members,
                   CAST(count(*) FILTER (WHERE alive AND wage_months_12m > 0) AS INTEGER) AS earners,
                   CAST(count(*) FILTER (WHERE status = '死亡' AND status_date >= $win12::DATE) AS INTEGER) AS deceased_12m,
                   sum(income_monthly) FILTER (WHERE alive)::DECIMAL(14,2) AS income_monthly,
                   coalesce(sum(income_last3_monthly) FILTER (WHERE alive), 0)::DECIMAL(14,2) AS income_last3_monthly,
                   sum(wage_last3_total)::DECIMAL(16,2) AS wage_last3_total,
                   sum(wage_prev9_total)::DECIMAL(16,2) AS wage_prev9_total,
                   sum(oop_12m)::DECIMAL(14,2) AS oop_12m,
                   sum(medical_total_12m)::DECIMAL(14,2) AS medical_total_12m,
                   CAST(count(*) FILTER (WHERE serious_illness AND alive) AS INTEGER) AS serious_ill_members,
                   CAST(count(*) FILTER (WHERE severe_disability AND alive) AS INTEGER) AS severe_disabled_members,
                   CAST(count(*) FILTER (WHERE unemployment_status IN ('登记', '领取中')) AS INTEGER) AS unemployed_members,
                   CAST(sum(vehicles_non_exempt) AS INTEGER) AS vehicles_non_exempt,
                   CAST(sum(residences) AS INTEGER) AS residences
            FROM monitoring_person GROUP BY household_no)
        , g AS (
            SELECT h.*, coalesce(hc.active_case_nos, []) AS active_case_nos,
                   coalesce(hc.active_categories, []) AS active_categories,
                   (CASE WHEN h.hukou_type = '城镇' THEN $urban_dibao ELSE $rural_dibao END)::DECIMAL(14,2) AS dibao_standard,
                   -- the economic gate of forward rules: income after the event, less rigid medical spending
                   CASE WHEN h.members_alive > 0
                        THEN ((h.income_last3_monthly - coalesce(h.oop_12m, 0) / 12) / h.members_alive)::DECIMAL(14,2)
                   END AS risk_income_per_capita
            FROM h LEFT JOIN household_cases hc USING (household_no))
        SELECT $snapshot::DATE AS snapshot_date, h.household_no, h.region_code, substr(h.region_code, 1, 9) AS street_code,
               substr(h.region_code, 1, 6) AS county_code, h.hukou_type,
               h.members_total, h.members_alive, h.working_age_members, h.earners, h.deceased_12m,
               h.income_monthly,
               CASE WHEN h.members_alive > 0 THEN (h.income_monthly / h.members_alive)::DECIMAL(14,2) END AS income_per_capita,
               h.income_last3_monthly, h.risk_income_per_capita,
               len(h.active_case_nos) > 0 OR coalesce(h.risk_income_per_capita < $risk_income_multiple * h.dibao_standard, false)
                   AS at_risk,
               (h.wage_last3_total / 3)::DECIMAL(14,2) AS wage_last3_avg, (h.wage_prev9_total / 9)::DECIMAL(14,2) AS wage_prev9_avg,
               h.wage_last3_total, h.wage_prev9_total, h.oop_12m, h.medical_total_12m,
               h.serious_ill_members, h.severe_disabled_members, h.unemployed_members,
               h.vehicles_non_exempt, h.residences,
               dh.rating AS dangerous_house_rating, dh.assessed_date AS dangerous_house_assessed_date,
               dh.renovated AS dangerous_house_renovated,
               h.active_case_nos, h.active_categories, h.dibao_standard,
               (h.dibao_standard * $low_income_multiple)::DECIMAL(14,2) AS low_income_line
        FROM g h LEFT JOIN dangerous_house dh USING (household_no)"""),
]

#: the steps whose result is published, and their sort keys (deterministic bytes)
PUBLISHED = {"monitoring_person": ("household_no", "id_no"), "monitoring_household": ("household_no",)}

#: The person table's columns computed from its other columns of the same row. Its step does not
#: store them — every stored column costs the sort and the copy of 10 M rows (the step 62 s against
#: 68 s without these 8) — the view `monitoring_person` over the stored table (`PERSON_STORED`) adds them,
#: in the published order (`schemas.outputs.PERSON`). Each is the expression the step computed, over
#: the stored columns; `{name}` is that build parameter as an SQL literal (a view binds none).
PERSON_DERIVED = {
    "snapshot_date": "{snapshot}",
    "street_code": "substr(region_code, 1, 9)",
    "county_code": "substr(region_code, 1, 6)",
    "working_age": "alive AND age BETWEEN {wa_min} AND {wa_max}",
    "wage_last3_avg": "(wage_last3_total / 3)::DECIMAL(14,2)",
    "wage_prev9_avg": "(wage_prev9_total / 9)::DECIMAL(14,2)",
    # a person's serious-illness step row has the date of a claim in the window (never NULL)
    "serious_illness": "serious_illness_date IS NOT NULL",
    "severe_disability": "coalesce(list_contains({severe_grades}, disability_grade), false)",
}

#: the table the person step is stored in; `monitoring_person` is the view over it (`person_view`)
PERSON_STORED = "monitoring_person_stored"

#: Steps made views, their parameters as literals (`inline`), not tables. `person_base`, the register
#: projected, is read by the person step, then (as the view over it) by the rest: stored, it was 10 M
#: rows written once and scanned once (its step 2 s; the build 43.8 s against 47.5 s, means of 4
#: interleaved runs at 10 M persons, the same bytes).
VIEWS = frozenset({"person_base"})

#: The person step's joins keep the register's rows as the probe side (each per-person step holds at
#: most one row per person): with `person_base` a view over an Arrow dataset (a store on S3) DuckDB
#: estimates it at one row, would build its hash tables of the persons instead and runs out of
#: memory (1 M persons under 4 GB). Disabled for that step only.
PERSON_STEP_OFF = "build_side_probe_side"


def sql_literal(v: object) -> str:
    """A build parameter as an SQL literal of the type it binds as (a view binds none)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dt.date):
        return f"CAST({_lit(v.isoformat())} AS DATE)"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return _lit(v)
    if isinstance(v, list | tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return f"CAST([{', '.join(str(x) for x in v)}] AS INTEGER[])"
    if isinstance(v, list | tuple) and all(isinstance(x, str) for x in v):
        return f"CAST([{', '.join(_lit(x) for x in v)}] AS VARCHAR[])"
    raise TypeError(f"no SQL literal for a build parameter of type {type(v).__name__}: {v!r}")


def inline(sql: str, params: dict) -> str:
    """`sql` with each `$name` of `params` replaced by its literal (`sql_literal`)."""
    def one(m: re.Match) -> str:
        if m.group(1) not in params:
            raise KeyError(f"no build parameter ${m.group(1)}")
        return sql_literal(params[m.group(1)])
    return re.sub(r"\$([A-Za-z_]\w*)", one, sql)


def person_view(params: dict, stored: Sequence[str]) -> str:
    """The view `monitoring_person`: the stored table's columns (`stored`) and `PERSON_DERIVED`, in
    the published order; the stored order is kept (a projection of a table scan)."""
    published = [c for c in outputs.PERSON if c != "person_key"]
    odd = sorted(set(stored) ^ (set(published) - set(PERSON_DERIVED)))
    if odd:
        raise RuntimeError(f"the person step's columns and the published person table disagree: {', '.join(odd)} "
                           "(schemas.outputs.PERSON, monitoring.PERSON_DERIVED)")
    lit = {k: sql_literal(params[k]) for k in ("snapshot", "wa_min", "wa_max", "severe_grades")}
    cols = ", ".join(f"{PERSON_DERIVED[c].format(**lit)} AS {_q(c)}" if c in PERSON_DERIVED else _q(c) for c in published)
    return f"SELECT {cols} FROM {PERSON_STORED}"


#: Rows per Arrow chunk of a published table. The Parquet writer's bytes depend on how a table is
#: chunked (its dictionary fallback is decided per write batch), so every published table is cut the
#: same way, whatever made it: DuckDB's own export layout (its row group size), which a built table
#: has already (no copy).
CHUNK_ROWS = 122_880


def canonical_chunks(t: pa.Table) -> pa.Table:
    """`t` in chunks of `CHUNK_ROWS` rows (the last one shorter): the same bytes when published
    whether it came from DuckDB or was assembled (`safetynet.publish.incremental`)."""
    want = [CHUNK_ROWS] * (t.num_rows // CHUNK_ROWS) + ([t.num_rows % CHUNK_ROWS] if t.num_rows % CHUNK_ROWS else [])
    if t.num_rows == 0 or all([len(c) for c in col.chunks] == want for col in t.columns):
        return t
    return pa.Table.from_batches(t.combine_chunks().to_batches(max_chunksize=CHUNK_ROWS), schema=t.schema)


@dataclass
class Build:
    """A finished build: its tables live in DuckDB (under its memory cap) until asked for."""

    snapshot_date: dt.date
    con: duckdb.DuckDBPyConnection
    params: dict
    _cache: dict = field(default_factory=dict)

    def table(self, name: str) -> pa.Table:
        """A published step's table as Arrow, in its deterministic order (fetched once)."""
        if name not in self._cache:
            self._cache[name] = canonical_chunks(self.con.sql(f"SELECT * FROM {name}").to_arrow_table())
        return self._cache[name]

    def rows(self, name: str) -> int:
        return self.con.sql(f"SELECT count(*) FROM {name}").fetchall()[0][0]

    @property
    def person(self) -> pa.Table:
        return self.table("monitoring_person")

    @property
    def household(self) -> pa.Table:
        return self.table("monitoring_household")


def clean_data(store: ObjectStore) -> dict[str, ds.Dataset]:
    """Every feed's `clean/` data present, as lazy pyarrow datasets (DuckDB reads only the columns it
    needs, locally or from S3): feed → dataset over the Parquet files of the feed's clean folder."""
    data = {}
    for fid, c in contracts().items():
        path = clean_path(c)
        if store.exists(path):
            d = store.dataset(clean_folder(path), schema=c.arrow_schema())
            if d is not None:
                data[fid] = d
    return data


def clean_folder(path: str) -> str:
    """The folder (listing prefix) of a feed's clean file: what the build reads of the feed."""
    return path.rsplit("/", 1)[0] + "/"


def register_clean(con: duckdb.DuckDBPyConnection, store: ObjectStore) -> dict[str, str]:
    """Register every feed's `clean/` data under its step name (`clean_data`); returns feed → path
    of the feeds present."""
    data = clean_data(store)
    register_sources(con, data)
    return {fid: clean_path(contracts()[fid]) for fid in data}


def register_sources(con: duckdb.DuckDBPyConnection, data: dict) -> None:
    """Register each feed's clean relation (a table or dataset) under its step name; a feed not
    given (no data yet) as an empty table of its schema. A dataset of local files is a view over
    DuckDB's own Parquet reader instead (`local_files`)."""
    for fid, name in sources().items():
        rel = data.get(fid)
        schema = contracts()[fid].arrow_schema()
        found = local_files(rel, schema)
        con.execute(f'DROP VIEW IF EXISTS "{name}"')  # a view or a registered relation of an earlier call
        if found is None:
            con.register(name, rel if rel is not None else schema.empty_table())
            continue
        files, missing = found
        types = dict(zip(schema.names, con.from_arrow(schema.empty_table()).types, strict=True))
        cols = ", ".join(f"CAST(NULL AS {types[f.name]}) AS {_q(f.name)}" if f.name in missing else _q(f.name)
                         for f in schema)
        listed = ", ".join(_lit(f) for f in files)
        con.execute(f"CREATE TEMP VIEW {_q(name)} AS SELECT {cols} FROM read_parquet([{listed}], union_by_name = true)")


def local_files(rel: object, schema: pa.Schema) -> tuple[list[str], set[str]] | None:
    """(files, columns none of them holds) of a dataset on the local filesystem whose files hold
    `schema`'s columns with its types or not at all (a column no file has is NULL, as the Arrow
    dataset fills it): DuckDB scans them with its own Parquet reader, 2–3× faster than through Arrow
    (8.7 s → 3.6 s for the 51 M wage rows of a 10 M city). None otherwise — a table, a store on S3
    (DuckDB's S3 reader is not installed offline), or a column some file holds with another type or
    only some files hold: the Arrow dataset reads those with the contract's schema."""
    if not isinstance(rel, ds.FileSystemDataset) or not isinstance(rel.filesystem, pafs.LocalFileSystem):
        return None
    held: dict[str, int] = {}
    frags = list(rel.get_fragments())
    for frag in frags:
        have = frag.physical_schema
        for f in schema:
            i = have.get_field_index(f.name)
            if i >= 0:
                if not have.field(i).type.equals(f.type):
                    return None
                held[f.name] = held.get(f.name, 0) + 1
    if any(0 < n < len(frags) for n in held.values()) or not frags:
        return None
    return list(rel.files), {f.name for f in schema if f.name not in held}


def build(con: duckdb.DuckDBPyConnection, snapshot: dt.date, pol: Policy) -> Build:
    """Run every step for the snapshot date; the clean tables must be registered on `con`.

    Each step becomes a DuckDB temporary table (it stays in DuckDB and spills to disk under the
    connection's memory limit) or, for `VIEWS`, a view; the published tables are sorted, and
    fetched only when asked.
    """
    params = parameters(snapshot, pol)
    for name, body in MACROS.items():
        con.execute(f"CREATE OR REPLACE TEMP MACRO {name}{body}")
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    for name, _ in STEPS:  # an earlier build's views (`person_base`, `monitoring_person`) are made again
        if name in views:
            con.execute(f"DROP VIEW {name}")
    for i, (name, sql) in enumerate(STEPS):
        used = {k: v for k, v in params.items() if f"${k}" in sql}
        log.debug("monitoring step %s", name, extra={"event": "sql_step", "step": name, "sql": sql})
        if name in PUBLISHED:  # sorted, so the published bytes are the same on every run
            sql = f"SELECT * FROM ({sql}) ORDER BY {', '.join(PUBLISHED[name])}"
        if name in VIEWS:
            con.execute(f"CREATE TEMP VIEW {name} AS {inline(sql, used)}")
        elif name == "monitoring_person":
            with _optimizer_off(con, PERSON_STEP_OFF):
                con.execute(f"CREATE OR REPLACE TEMP TABLE {PERSON_STORED} AS {sql}", used)
            con.execute(f"CREATE TEMP VIEW {name} AS {person_view(params, con.table(PERSON_STORED).columns)}")
            # it holds every person_base column: the rest read them there
            cols = ", ".join(con.table("person_base").columns)
            con.execute("DROP VIEW person_base")
            con.execute(f"CREATE TEMP VIEW person_base AS SELECT {cols} FROM monitoring_person")
        else:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", used)
        for done in _last_read_by(i):  # its memory to the steps and rules after it
            con.execute(f"DROP {'VIEW' if done in VIEWS else 'TABLE'} {done}")
    return Build(snapshot, con, params)


@contextlib.contextmanager
def _optimizer_off(con: duckdb.DuckDBPyConnection, name: str) -> Iterator[None]:
    """DuckDB's optimizer `name` disabled on `con` for the block; the connection's own list after."""
    off = con.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0][0]
    con.execute(f"SET disabled_optimizers = {_lit(','.join(x for x in (off, name) if x))}")
    try:
        yield
    finally:
        con.execute(f"SET disabled_optimizers = {_lit(off)}")


#: the steps the warning rules and the publisher read (kept with the build)
KEPT = frozenset({"person_base", "case_member", *PUBLISHED})


def _last_read_by(i: int) -> list[str]:
    """The intermediate steps (not `KEPT`) that step `i` is the last to read: dropped after it."""
    out = []
    for j, (name, _) in enumerate(STEPS[:i]):
        readers = [k for k, (_, sql) in enumerate(STEPS) if k > j and re.search(rf"\b{name}\b", sql)]
        if name not in KEPT and readers and max(readers) == i:
            out.append(name)
    return out
