"""Warning ids computed in SQL (`quality.evaluation.evaluate_rules`) equal the Python definition
(`_hash` over the facts sorted by feed, record key, field, person, value) for every kind of text —
plain text in SQL, anything else (quotes, backslashes, control or non-printing characters) by the
Python fallback; and the clean feeds of a local store are read by DuckDB's own Parquet reader with
the contract's columns (a column no file holds is NULL)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from quality import evaluation
from quality.rules import Rule
from safetynet.build import monitoring
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_path
from schemas.registry import contracts

TEXTS = ["低保", "O'Brien", "a\\b", "line\nbreak", "tab\t", "nbsp\u00a0x", "全角\u3000空格", "emoji😀", "", None,
         "（住宅）、；：", "阿不都·热合曼", "zero\u200bwidth", 'quote"d', "C:\\x"]


def _legacy(rule: Rule, household: str, subject: str | None, facts: list[dict]) -> tuple[str, str]:
    """The ids as the row-at-a-time evaluation computed them (the definition)."""
    facts = sorted(facts, key=lambda f: (f["feed"], f["record_key"] or "", f["field"], f["id_no"] or "", f["value"] or ""))
    alert = evaluation._hash(rule.id, household, subject)
    return alert, evaluation._hash(alert, rule.version, *((f["feed"], f["record_key"], f["id_no"], f["field"], f["value"])
                                                         for f in facts))


def test_sql_ids_equal_the_python_definition_for_any_text():
    rows = []
    for i, t in enumerate(TEXTS):
        facts = [{"feed": "medical_insurance.claim", "record_key": t, "id_no": None if i % 3 else "430103199001011234",
                  "field": "out_of_pocket", "value": TEXTS[-1 - i], "date": dt.date(2026, 1, 1)},
                 {"feed": "housing.property", "record_key": f"k{i}", "id_no": t, "field": "share",
                  "value": "1", "date": None},
                 {"feed": "housing.property", "record_key": f"k{i}", "id_no": t, "field": "share",
                  "value": None, "date": None}]
        rows.append({"household_no": f"H{i:03d}", "subject_id_no": None if i % 2 else f"S{i}",
                     "facts": facts if i != 4 else [], "summary_zh": "摘要", "magnitude": float(i % 3)})
    for i, t in enumerate(["低保", "（住宅）、；：", "阿不都·热合曼"]):  # plain text only: ids from SQL
        rows.append({"household_no": f"P{i:03d}", "subject_id_no": "S", "summary_zh": "摘要", "magnitude": 1.0,
                     "facts": [{"feed": "housing.property", "record_key": t, "id_no": None, "field": "share",
                                "value": "0.5", "date": None}]})
    con = duckdb.connect()
    con.register("__cases", pa.Table.from_pylist(rows, schema=pa.schema([
        ("household_no", pa.string()), ("subject_id_no", pa.string()), ("facts", pa.list_(evaluation.FACT)),
        ("summary_zh", pa.string()), ("magnitude", pa.float64())])))
    con.execute("CREATE TABLE monitoring_household AS SELECT 'H001' AS household_no, '430103001001' AS region_code")
    rule = Rule("test_rule", 7, "测试", "S2", "forward", (), "SELECT * FROM __cases")
    t = evaluation.evaluate_rules(con, (rule,), {})
    ids = t["warning_id"].to_pylist()
    got = {h: (a, w) for h, a, w in zip(t["household_no"].to_pylist(), t["alert_key"].to_pylist(), ids, strict=True)}
    plain = dict(zip(t["household_no"].to_pylist(), t["plain"].to_pylist(), strict=True))
    for r in rows:
        assert got[r["household_no"]] == _legacy(rule, r["household_no"], r["subject_id_no"], r["facts"]), r["household_no"]
    # the SQL path is taken for plain text, the fallback for the rest (both exercised here)
    # sound: a warning is computed in SQL only if every text of its facts is its own `repr` in quotes
    for r in rows:
        texts = [f[k] for f in r["facts"] for k in ("feed", "record_key", "id_no", "field", "value") if f[k] is not None]
        if plain[r["household_no"]]:
            assert all(repr(x) == f"'{x}'" for x in texts), r["household_no"]
    assert [h for h, v in plain.items() if v] == ["H004", "P000", "P001", "P002"]
    # facts come back in the canonical order; the region of a known household, '' otherwise
    regions = dict(zip(t["household_no"].to_pylist(), t["region_code"].to_pylist(), strict=True))
    assert regions["H001"] == "430103001001" and regions["H000"] == ""
    first = t.filter(pa.compute.equal(t["household_no"], "H000"))["facts"][0].as_py()
    assert [f["feed"] for f in first] == ["housing.property", "housing.property", "medical_insurance.claim"]


def test_warning_table_scores_magnitude_zero_as_one():
    con = duckdb.connect()
    con.execute("CREATE TABLE monitoring_household AS SELECT 'H1' AS household_no, '430103001001' AS region_code")
    sql = ("SELECT 'H1' AS household_no, NULL AS subject_id_no, [] AS facts, '摘要' AS summary_zh, "
           "m AS magnitude FROM (VALUES (0.0), (NULL), (2.5), (9.0)) v(m)")
    rule = Rule("r", 1, "规则", "S3", "forward", ("x",), sql)

    class B:
        snapshot_date, params = dt.date(2026, 11, 1), {"months12": ["2026-10"] * 12}

    B.con = con

    class P:
        version = "test-1"
        thresholds = type("T", (), {"unemployment_contribution_gap_months": 3, "disaster_lookback_months": 12,
                                    "repeat_temporary_aid_window_months": 12, "phase_out_expiry_days": 30,
                                    "death_grace_days": 60})()

        def params(self):
            return {"x": 1}

    w = evaluation.warning_table(B, P(), rules=(rule,))
    assert sorted(w["magnitude"].to_pylist()) == [1.0, 1.0, 2.5, 9.0]
    assert sorted(w["score"].to_pylist()) == [10.0, 10.0, 25.0, 30.0]
    assert set(w["household_score"].to_pylist()) == {75.0}
    assert w["top_signals"][0].as_py() == ["规则（30）", "规则（25）", "规则（10）"]
    assert json.loads(w["thresholds"][0].as_py()) == {"x": 1} and w["street_code"][0].as_py() == "430103001"


def test_local_clean_files_are_read_by_duckdb_with_the_contracts_columns(tmp_path):
    store = ObjectStore.from_settings(Settings(store=str(tmp_path)))
    c = contracts()["human_resources.pension"]
    schema = c.arrow_schema()
    rows = [{"id_no": "430103199001011234", "month": "2026-10", "amount": Decimal("1200.00"), "scheme": "企业职工"}]
    have = pa.Table.from_pylist(rows, schema=pa.schema([f for f in schema if not f.name.startswith("_")]))
    path = tmp_path / clean_path(c)
    path.parent.mkdir(parents=True)
    pq.write_table(have, path)
    data = monitoring.clean_data(store)
    files, missing = monitoring.local_files(data["human_resources.pension"], schema)
    assert files == [str(path)] and missing == {f.name for f in schema if f.name.startswith("_")}
    con = duckdb.connect()
    monitoring.register_sources(con, data)
    assert con.sql("SELECT * FROM pension").arrow().read_all().schema.names == schema.names  # a view, the contract's columns
    assert con.sql("SELECT count(*) FROM pension WHERE _event_id IS NULL").fetchall() == [(1,)]
    assert con.sql("SELECT count(*) FROM employment").fetchall() == [(0,)]  # no data yet: an empty table
    # a column with another type than the contract's: read through Arrow, which casts
    pq.write_table(have.set_column(2, "amount", pa.array(["1200"])), path)
    data = monitoring.clean_data(store)
    assert monitoring.local_files(data["human_resources.pension"], schema) is None
    monitoring.register_sources(con, data)
    assert con.sql("SELECT sum(amount) FROM pension").fetchall() == [(Decimal("1200.00"),)]


def _scores_by_loop(w: pa.Table) -> pa.Table:
    """`household_scores` then `rank` as the row-at-a-time code computed them (the definition)."""
    hh, scores = w["household_no"].to_pylist(), w["score"].to_pylist()
    titles, rules = w["rule_title_zh"].to_pylist(), w["rule_id"].to_pylist()
    by_hh: dict[str, list[int]] = {}
    for i, h in enumerate(hh):
        by_hh.setdefault(h, []).append(i)
    total, top = [0.0] * len(hh), [[]] * len(hh)
    for idx in by_hh.values():
        s = round(sum(scores[i] for i in idx), 2)
        signals = [f"{titles[i]}（{scores[i]:g}）" for i in sorted(idx, key=lambda i: (-scores[i], rules[i]))][:3]
        for i in idx:
            total[i], top[i] = s, signals
    per = dict(zip(hh, total, strict=True))
    ranks = {h: i + 1 for i, h in enumerate(sorted(per, key=lambda h: (-per[h], h)))}
    out = w
    for name, values in (("household_score", total), ("top_signals", top), ("household_rank", [ranks[h] for h in hh])):
        i = out.schema.get_field_index(name)
        out = out.set_column(i, out.schema.field(i), pa.array(values, out.schema.field(i).type))
    return out.take(pa.compute.sort_indices(out, sort_keys=evaluation.ORDER)).combine_chunks()


def test_household_scores_and_ranks_equal_the_row_at_a_time_definition():
    """Vectorised scores, top signals and ranks equal the loop's: sums that round at the fen (0.1 +
    0.2), ties of score and rule inside a household, more than three warnings,
    households tied on score (their numbers decide), whatever the table's order."""
    import random

    rnd = random.Random(7)
    rows = []
    for n in range(400):
        rule = rnd.choice(["a", "b", "c", "d"])
        rows.append({"household_no": f"H{rnd.randrange(60):03d}", "rule_id": rule, "rule_title_zh": f"规则{rule}",
                     "score": rnd.choice([0.1, 0.2, 0.3, 1.05, 2.5, 10.0, 12.35]), "warning_id": f"w{n:04d}"})
    base = pa.Table.from_pylist(rows)
    n = base.num_rows
    w = pa.table({f.name: base[f.name] if f.name in base.column_names else pa.nulls(n, f.type)
                  for f in evaluation.SCHEMA}).cast(evaluation.SCHEMA)
    for seed in (0, 1, 2):
        shuffled = w.take(pa.array(random.Random(seed).sample(range(n), n)))
        got = evaluation.rank(evaluation.household_scores(shuffled))
        assert got.equals(_scores_by_loop(shuffled))
    assert evaluation.rank(evaluation.household_scores(w.slice(0, 0))).num_rows == 0
