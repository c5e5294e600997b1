"""Monitoring build and warning rules over a synthetic district's clean truth.

The rules are checked against an independent pandas implementation of the same conventions
(`tests.test_synth.reference_fired`) and against the generator's planted and near-miss
households; warning ids against re-runs and changed facts.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from quality import evaluation, policy
from quality.rules import RULES
from safetynet.build import monitoring
from safetynet.demo.synth import generate
from schemas import normalise, outputs
from tests.test_synth import reference_fired

SNAP = dt.date(2026, 11, 1)


def _build(d, tables=None):
    con = normalise.connect()
    for fid, name in monitoring.sources().items():
        con.register(name, (tables or {}).get(fid, d.table(fid)))
    pol = policy.for_region("430103", 2026)
    b = monitoring.build(con, SNAP, pol)
    return b, pol, evaluation.evaluate(b, pol)


@pytest.fixture(scope="module")
def district():
    return generate(persons=3000, seed=11)


@pytest.fixture(scope="module")
def built(district):
    return _build(district)


def _fired(w: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {r.id: set() for r in RULES}
    for r in w.select(["rule_id", "household_no"]).to_pylist():
        out[r["rule_id"]].add(r["household_no"])
    return out


def test_every_rule_fires_exactly_where_the_reference_does(district, built):
    _, _, w = built
    ref, got = reference_fired(district), _fired(w)
    for rule in RULES:
        assert got[rule.id] == ref[rule.id], (rule.id, got[rule.id] ^ ref[rule.id])


def test_planted_fire_and_near_misses_do_not(district, built):
    got = _fired(built[2])
    for r in district.planted.to_pylist():
        fired = r["household_no"] in got[r["rule_id"]]
        assert fired == (r["kind"] == "planted"), (r["rule_id"], r["kind"], r["note"])


def test_monitoring_tables_types_and_counts(district, built):
    b, _, _ = built
    persons = district.table("public_security.person")
    assert b.person.num_rows == persons.num_rows
    assert b.household.num_rows == len(set(persons["household_no"].to_pylist()))
    for t, cols in ((b.person, ("wage_12m_avg", "oop_12m", "income_monthly")),
                    (b.household, ("income_per_capita", "oop_12m", "low_income_line"))):
        for c in cols:
            assert t.schema.field(c).type == pa.decimal128(14, 2), c
        assert t.schema.field("snapshot_date").type == pa.date32()
    assert pc.all(pc.equal(b.household["county_code"], "430103")).as_py()


def test_every_warning_explains_itself(built):
    _, pol, w = built
    assert w.num_rows > 0
    for r in w.to_pylist():
        assert r["summary_zh"] and r["rule_title_zh"] and r["severity"] in ("S1", "S2", "S3")
        assert r["facts"], r["rule_id"]
        assert all(f["feed"] for f in r["facts"])
        assert r["policy_version"] == pol.version and r["snapshot_date"] == SNAP
        assert r["region_code"].startswith("430103") and len(r["region_code"]) == 12
        assert r["household_rank"] >= 1 and r["household_score"] >= r["score"] > 0 and r["top_signals"]
    ranks = w["household_rank"].to_pylist()
    assert ranks == sorted(ranks)


def test_warning_ids_are_stable_and_follow_the_facts(district, built):
    _, _, w1 = built
    _, _, w2 = _build(district)
    assert w1.equals(w2)  # a re-run: same rows, same ids, same order
    # one medical_burden household's claim grows: its warning id changes, its alert key does not
    mb = next(r for r in w1.to_pylist() if r["rule_id"] == "medical_burden")
    claim_id = next(f["record_key"] for f in mb["facts"] if f["feed"] == "medical_insurance.claim")
    claims = district.table("medical_insurance.claim")
    oop = [v + 100 if cid == claim_id else v
           for cid, v in zip(claims["claim_id"].to_pylist(), claims["out_of_pocket"].to_pylist(), strict=True)]
    changed = claims.set_column(claims.schema.get_field_index("out_of_pocket"), "out_of_pocket",
                                pa.array(oop, claims.schema.field("out_of_pocket").type))
    _, _, w3 = _build(district, {"medical_insurance.claim": changed})
    after = {r["alert_key"]: r["warning_id"] for r in w3.to_pylist()}
    assert mb["alert_key"] in after and after[mb["alert_key"]] != mb["warning_id"]
    unchanged = {r["warning_id"] for r in w1.to_pylist() if r["household_no"] != mb["household_no"]}
    assert unchanged <= {r["warning_id"] for r in w3.to_pylist()}


def test_the_window_is_the_12_months_ended_on_or_before_the_snapshot_date():
    from safetynet.build.monitoring import months_ended

    expected = [f"2025-{m:02d}" for m in (11, 12)] + [f"2026-{m:02d}" for m in range(1, 11)]
    assert months_ended(dt.date(2026, 10, 31)) == months_ended(dt.date(2026, 11, 1)) == expected
    assert months_ended(dt.date(2026, 10, 30))[-1] == "2026-09"  # October has not ended yet
    assert months_ended(dt.date(2026, 12, 31))[-1] == "2026-12" and months_ended(dt.date(2027, 1, 1))[0] == "2026-01"


def test_build_frees_its_intermediates_and_builds_again_on_the_same_connection(district, built):
    """The per-person aggregates are dropped once `monitoring_person` has read them, `person_base`
    (a view over the register, never a table) becomes a view of its columns there, and a second
    build on the same connection (the incremental build's case) gives the same tables and warnings."""
    b, pol, w = built
    tables = {r[0] for r in b.con.execute("SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}
    views = {r[0] for r in b.con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()}
    assert {"monitoring_person_stored", "monitoring_household", "case_member"} <= tables
    assert not tables & {"wage_person", "enrollment_person", "programme_person", "household_cases", "person_base"}
    assert {"person_base", "monitoring_person"} <= views
    stored = b.con.table("monitoring_person_stored").columns
    assert not set(stored) & set(monitoring.PERSON_DERIVED)  # not stored: the view adds them
    assert b.person.column_names == [c for c in outputs.PERSON if c != "person_key"]
    cols = b.con.table("person_base").columns
    assert cols[:2] == ["id_no", "name"] and "household_no" in cols and "snapshot_date" not in cols
    b2 = monitoring.build(b.con, SNAP, pol)
    assert b2.con.sql("SELECT * FROM monitoring_person").to_arrow_table().equals(b.person)
    assert evaluation.evaluate(b2, pol).equals(w)


def test_serious_illness_code_and_name_come_from_one_claim_whatever_the_order():
    """Two serious-illness claims settled on the same day: the person's code and name are those of
    one claim (the larger claim id), in any input order (not one column from each claim)."""
    pol = policy.for_region("430103", 2026)
    sql = dict(monitoring.STEPS)["serious_person"]
    params = {k: v for k, v in monitoring.parameters(SNAP, pol).items() if f"${k}" in sql}
    rows = [{"claim_id": "C2", "id_no": "P", "settle_date": dt.date(2026, 6, 1), "diagnosis_code": "C34",
             "diagnosis_name": "肺癌", "serious_illness": True},
            {"claim_id": "C1", "id_no": "P", "settle_date": dt.date(2026, 6, 1), "diagnosis_code": "I21",
             "diagnosis_name": "急性心肌梗死", "serious_illness": True},
            {"claim_id": "C0", "id_no": "P", "settle_date": dt.date(2026, 1, 1), "diagnosis_code": "N18",
             "diagnosis_name": "慢性肾病", "serious_illness": True}]
    for order in (rows, rows[::-1], [rows[1], rows[2], rows[0]]):
        con = normalise.connect()
        con.register("claim", pa.Table.from_pylist(order))
        got = con.execute(sql, params).fetchall()
        assert got == [("P", dt.date(2026, 6, 1), "C34", "肺癌")]


def test_serious_pattern_is_a_prefix_test_of_each_policy_prefix():
    """The steps and rules test a diagnosis code against the policy's prefixes with one regular
    expression (`monitoring.serious_pattern`): the same answer as `starts_with` on any prefix, for
    prefixes holding the expression's own special characters too, and NULL for a NULL code."""
    prefixes = ["C", "N18.5", "Z49", "A(1)", "B+", "D[0]|", "E$^", "F\\x"]
    codes = ["C34", "XC34", "N18.5", "N1805", "N18", "Z49.1", "A(1)2", "A12", "B+1", "B1", "D[0]|9", "D0",
             "E$^", "E", "F\\x1", "Fx", "", None]
    con = normalise.connect()
    got = con.execute("SELECT c, regexp_matches(c, $p), list_bool_or(list_transform($prefixes, lambda x: starts_with(c, x))) "
                      "FROM unnest($codes) AS t(c)",
                      {"p": monitoring.serious_pattern(prefixes), "prefixes": prefixes, "codes": codes}).fetchall()
    assert [(c, a) for c, a, _ in got] == [(c, b) for c, _, b in got]
    assert sum(bool(a) for _, a, _ in got) == 8  # one code per prefix


def test_employer_of_the_latest_month_is_the_same_in_any_scan_order():
    """Two employers in a person's latest wage month (a second job): the person's `employer_name` is
    one of them, the same whatever order the rows come in and however many threads scan them; an
    earlier month's employer never wins."""
    pol = policy.for_region("430103", 2026)
    sql = dict(monitoring.STEPS)["wage_person"]
    params = {k: v for k, v in monitoring.parameters(SNAP, pol).items() if f"${k}" in sql}
    rows = [{"id_no": "P", "month": "2026-10", "employer_name": n, "employer_credit_code": c,
             "wage": Decimal("3000.00")} for n, c in (("甲公司", "91430103A"), ("乙公司", "91430103B"))]
    rows.append({"id_no": "P", "month": "2026-09", "employer_name": "丙公司", "employer_credit_code": "91430103C",
                 "wage": Decimal("9000.00")})
    got = set()
    for order in (rows, rows[::-1], [rows[2], rows[1], rows[0]]) * 3:
        for threads in (1, 2):
            con = normalise.connect(threads=threads)
            con.register("employment", pa.Table.from_pylist(order))
            got.add(con.execute(f"SELECT employer_name, last_wage_month FROM ({sql})", params).fetchall()[0])
    assert len(got) == 1 and next(iter(got))[0] in {"甲公司", "乙公司"} and next(iter(got))[1] == "2026-10"


def test_enrolment_is_the_latest_months_row_with_its_blank_fields_kept():
    """A person's medical scheme and status are both those of their latest enrolment month, a field
    left blank that month included (not an earlier month's value), in any input order."""
    pol = policy.for_region("430103", 2026)
    sql = dict(monitoring.STEPS)["enrollment_person"]
    rows = [{"id_no": "P", "month": "2026-09", "scheme": "职工医保", "status": "参保缴费"},
            {"id_no": "P", "month": "2026-10", "scheme": None, "status": "终止参保"},
            {"id_no": "Q", "month": "2026-10", "scheme": "城乡居民医保", "status": None},
            {"id_no": "Q", "month": "2026-08", "scheme": "职工医保", "status": "暂停缴费"},
            {"id_no": "R", "month": "2026-07", "scheme": "城乡居民医保", "status": "参保缴费"}]
    params = {k: v for k, v in monitoring.parameters(SNAP, pol).items() if f"${k}" in sql}
    for order in (rows, rows[::-1], [rows[3], rows[0], rows[4], rows[2], rows[1]]):
        for threads in (1, 2):
            con = normalise.connect(threads=threads)
            con.register("enrollment", pa.Table.from_pylist(order))
            assert sorted(con.execute(sql, params).fetchall()) == [
                ("P", None, "终止参保"), ("Q", "城乡居民医保", None), ("R", "城乡居民医保", "参保缴费")]


def test_the_person_tables_derived_columns_are_those_the_step_would_compute(built):
    """`PERSON_DERIVED` (added by the view, not stored) computed straight from the build's own
    inputs: the snapshot, the register's region, the policy's working ages and severe grades, the
    wage totals, and whether the person has a serious-illness claim in the window."""
    b, pol, _ = built
    p = b.person.to_pylist()
    t = pol.thresholds
    serious = {r[0] for r in b.con.execute(
        "SELECT DISTINCT id_no FROM claim WHERE settle_date >= $w AND settle_date < $s "
        "AND (coalesce(serious_illness, false) OR regexp_matches(diagnosis_code, $pat))",
        {"w": b.params["win12"], "s": b.snapshot_date, "pat": b.params["serious_pattern"]}).fetchall()}
    assert serious and any(r["working_age"] for r in p) and any(r["severe_disability"] for r in p)
    for r in p:
        assert r["snapshot_date"] == b.snapshot_date
        assert (r["street_code"], r["county_code"]) == (r["region_code"][:9], r["region_code"][:6])
        assert r["working_age"] == (r["alive"] and t.working_age_min <= r["age"] <= t.working_age_max)
        assert r["wage_last3_avg"] == (r["wage_last3_total"] / 3).quantize(Decimal("0.01"))
        assert r["wage_prev9_avg"] == (r["wage_prev9_total"] / 9).quantize(Decimal("0.01"))
        assert r["serious_illness"] == (r["id_no"] in serious)
        assert r["severe_disability"] == (r["disability_grade"] in t.severe_disability_grades)


def test_a_person_step_and_published_table_that_disagree_are_named():
    stored = [c for c in outputs.PERSON if c not in monitoring.PERSON_DERIVED and c != "person_key"]
    params = {"snapshot": SNAP, "wa_min": 16, "wa_max": 59, "severe_grades": [1, 2]}
    assert "FROM monitoring_person_stored" in monitoring.person_view(params, stored)
    with pytest.raises(RuntimeError, match="extra_column"):
        monitoring.person_view(params, [*stored, "extra_column"])
    with pytest.raises(RuntimeError, match="employer_name"):
        monitoring.person_view(params, [c for c in stored if c != "employer_name"])


def test_the_person_step_probes_with_the_register_whatever_duckdb_estimates(district, built):
    """A register DuckDB estimates at one row (an Arrow dataset, as a store on S3 gives): the person
    step still builds its hash tables of the per-person steps and probes them with the persons — no
    RIGHT join (hash tables of the persons ran out of memory at 1 M under 4 GB) — leaves the
    connection's own disabled optimizers as it found them, and gives the same tables."""
    con = normalise.connect()
    con.execute("SET disabled_optimizers = 'top_n'")
    for fid, name in monitoring.sources().items():
        t = district.table(fid)
        con.register(name, ds.dataset(t) if name == "person" else t)
    plans = []

    class Spy:  # the person step's plan, as the build runs it
        def __init__(self, c):
            self.c = c

        def __getattr__(self, k):
            return getattr(self.c, k)

        def execute(self, sql, *args):
            if sql.startswith(f"CREATE OR REPLACE TEMP TABLE {monitoring.PERSON_STORED} "):
                plans.append(json.loads(self.c.execute("EXPLAIN (FORMAT json) " + sql.split(" AS ", 1)[1],
                                                       *args).fetchall()[0][1]))
            return self.c.execute(sql, *args)

    pol = policy.for_region("430103", 2026)
    b = monitoring.build(Spy(con), SNAP, pol)
    def joins(node):
        here = [node["extra_info"]["Join Type"]] if node["name"] == "HASH_JOIN" else []
        return here + [j for c in node["children"] for j in joins(c)]

    assert len(plans) == 1
    n = dict(monitoring.STEPS)["monitoring_person"].count("LEFT JOIN")
    assert n >= 10 and joins(plans[0][0]) == ["LEFT"] * n  # the persons the probe (left) side of every join
    assert con.execute("SELECT current_setting('disabled_optimizers')").fetchall()[0][0] == "top_n"
    assert b.person.equals(built[0].person) and b.household.equals(built[0].household)


def test_a_parameter_inlined_in_a_view_has_the_value_and_type_it_binds_with():
    """`sql_literal`: each build parameter a view or the person view uses (`VIEWS`' steps,
    `PERSON_DERIVED`) is, as a literal, the value and DuckDB type it has when bound; quotes are
    escaped; an unknown parameter is an error."""
    pol = policy.for_region("430103", 2026)
    params = monitoring.parameters(SNAP, pol)
    steps = dict(monitoring.STEPS)
    names = {m for v in monitoring.VIEWS for m in re.findall(r"\$(\w+)", steps[v])}
    names |= {m for e in monitoring.PERSON_DERIVED.values() for m in re.findall(r"\{(\w+)\}", e)}
    assert {"snapshot", "wa_min", "wa_max", "severe_grades"} <= names
    con = normalise.connect()
    for k in sorted(names) + ["months12", "serious_pattern"]:
        bound = con.execute("SELECT $v, typeof($v)", {"v": params[k]}).fetchall()
        assert con.execute(f"SELECT {monitoring.sql_literal(params[k])} AS v, typeof(v)").fetchall() == bound, k
    quoted = monitoring.sql_literal("O'Brien")
    assert con.execute(f"SELECT {quoted}").fetchall() == [("O'Brien",)]
    assert monitoring.inline("SELECT $wa_min + 1", params) == f"SELECT {params['wa_min']} + 1"
    with pytest.raises(KeyError, match="nope"):
        monitoring.inline("SELECT $nope", params)
