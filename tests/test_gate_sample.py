"""The quality gate at scale (`quality.exact`): GX validates a fixed-seed sample plus the failing rows,
every count and example comes from exact SQL over every row — the same report as GX on every row.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from quality import exact, gate
from safetynet.demo.synth import generate
from schemas import idno, normalise

pytestmark = pytest.mark.slow
SNAP = dt.date(2026, 11, 1)
PERSON, CLAIM, EMPLOYMENT = "public_security.person", "medical_insurance.claim", "human_resources.employment"
FEEDS = [PERSON, CLAIM, EMPLOYMENT, "civil_affairs.assistance_case", "public_security.vehicle"]


@pytest.fixture(scope="module")
def tables():
    return generate(persons=2000, seed=7).tables()


def _set(t: pa.Table, col: str, rows: list[int], value) -> pa.Table:
    vals = t[col].to_pylist()
    for r in rows:
        vals[r] = value
    return t.set_column(t.schema.get_field_index(col), t.schema.field(col), pa.array(vals, t.schema.field(col).type))


def _failures(r) -> list[tuple]:
    return sorted((f.suite, f.field or "", f.check, f.critical, f.unexpected_count, f.element_count, tuple(f.examples),
                   f.message) for f in r.failures)


@pytest.fixture(scope="module")
def broken(tables):
    person, claim, emp = tables[PERSON], tables[CLAIM], tables[EMPLOYMENT]
    bad = claim["id_no"][5].as_py()[:17] + ("1" if claim["id_no"][5].as_py()[17] != "1" else "2")
    claim2 = _set(_set(claim, "id_no", [5], bad), "out_of_pocket", list(range(40, 70)), Decimal("-1"))
    claim2 = _set(claim2, "hospital_name", [claim.num_rows - 1], None)
    return {**tables, PERSON: pa.concat_tables([person, person.slice(7, 1), person.slice(900, 2)]), CLAIM: claim2,
            EMPLOYMENT: pa.concat_tables([emp, emp.slice(emp.num_rows - 3, 1)])}


def test_a_sample_reports_exactly_what_every_row_does(broken):
    full = gate.validate(broken, SNAP, feeds=FEEDS)  # 2,000 persons: GX sees every row of every target
    con = normalise.connect()
    sampled = gate.validate(broken, SNAP, feeds=FEEDS, sample_rows=50, con=con)
    con.execute("SELECT 1").fetchall()  # the caller's connection stays usable (the gate used a cursor)
    assert not full.ok and _failures(sampled) == _failures(full)
    checks = {(f.suite, f.check) for f in sampled.failures}
    assert {(f"feed.{PERSON}", "unique_key"), (f"feed.{EMPLOYMENT}", "unique_key"), (f"feed.{CLAIM}", "id_valid"),
            ("cross.money", "no_negative_money"), ("cross.claim_person", "person_exists")} <= checks
    [dup] = [f for f in sampled.failures if f.suite == f"feed.{PERSON}" and f.check == "unique_key"]
    assert dup.unexpected_count == 6 and dup.element_count == broken[PERSON].num_rows
    ids = broken[PERSON]["id_no"]
    assert dup.examples == [f"id_no={idno.mask(ids[i].as_py())}" for i in (7, 900, 901)] * 2  # in row order
    [money] = [f for f in sampled.failures if f.check == "no_negative_money" and f.suite == "cross.money"]
    assert money.unexpected_count == 30 and len(money.examples) == 20
    for s in sampled.suites:  # GX saw at most the sample and the failing rows (with their duplicates)
        meta = sampled._results[s.name][1].meta["rows"]
        assert meta["table"] == s.rows and meta["validated_by_gx"] <= 50 + 2 * 20 + exact._COMPANIONS
        # the aggregate checks are the exact counts, reported as GX results; GX validated the rest itself
        res, suite = sampled._results[s.name][1], sampled._results[s.name][2]
        aggregate = [e for e in suite.expectations if e.expectation_type in gate.EXACT_ONLY]
        assert meta["exact_only_expectations"] == len(aggregate)
        assert len(res.results) == len(suite.expectations) and res.statistics["evaluated_expectations"] == len(res.results)
    assert sum(r[1].meta["rows"]["exact_only_expectations"] for r in sampled._results.values()) > 40
    assert sampled.as_dict()["counts"] == full.as_dict()["counts"]


def test_the_sample_is_reproducible():
    a = exact.sample_positions("feed.x", 1_000_000, 5000)
    assert np.array_equal(a, exact.sample_positions("feed.x", 1_000_000, 5000))
    assert len(np.unique(a)) == 5000 and a.min() >= 0 and a.max() < 1_000_000 and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, exact.sample_positions("feed.y", 1_000_000, 5000))
    assert np.array_equal(exact.sample_positions("feed.x", 30, 5000), np.arange(30))


def test_a_large_file_is_sampled_in_a_few_of_its_row_groups():
    """Over `SAMPLE_SPAN` rows read a row group at a time: the sample lies in row groups drawn at
    random holding about `SAMPLE_SPAN` rows (reading it does not decode the whole file), uniform
    inside them, reproducible; a file of at most `SAMPLE_SPAN` rows is sampled uniformly as before."""
    groups = [256 * 1024] * 200 + [1234]  # 51 M rows
    rows = sum(groups)
    a = exact.sample_positions("feed.big", rows, 5000, groups)
    assert np.array_equal(a, exact.sample_positions("feed.big", rows, 5000, groups))
    assert len(np.unique(a)) == 5000 and np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < rows
    starts = np.concatenate(([0], np.cumsum(groups)))
    hit = np.unique(np.searchsorted(starts, a, side="right") - 1)
    assert sum(groups[g] for g in hit) <= exact.SAMPLE_SPAN + max(groups)  # a few groups, not all 201
    assert len(hit) >= exact.SAMPLE_SPAN // max(groups)
    per = np.bincount(np.searchsorted(starts, a, side="right") - 1, minlength=len(groups))[hit]
    assert per.min() > 5000 / len(hit) / 2  # every drawn group holds its share
    small = [100_000] * 10
    assert np.array_equal(exact.sample_positions("feed.x", 1_000_000, 5000, small),
                          exact.sample_positions("feed.x", 1_000_000, 5000))


def test_exact_sql_follows_gx_semantics():
    con = normalise.connect()
    con.register("t", pa.table({"__pos": pa.array(range(6), pa.int64()),
                                "a": ["x", None, "y", "y", "z", None], "b": [1, 2, None, 4, 5, None],
                                "c": [1, 3, 2, None, 5, None]}))
    exps = [("expect_column_values_to_not_be_null", {"column": "a"}),
            ("expect_column_values_to_be_in_set", {"column": "a", "value_set": ["x", "z"]}),
            ("expect_column_values_to_be_unique", {"column": "a"}),
            ("expect_compound_columns_to_be_unique", {"column_list": ["a", "b"]}),
            ("expect_column_values_to_be_between", {"column": "b", "min_value": 2, "max_value": 4}),
            ("expect_column_values_to_match_regex", {"column": "a", "regex": "^[xy]$"}),
            ("expect_column_pair_values_a_to_be_greater_than_b", {"column_A": "b", "column_B": "c", "or_equal": True}),
            ("expect_column_values_to_be_in_set", {"column": "missing", "value_set": [1]}),
            ("expect_table_row_count_to_be_between", {"min_value": 7})]
    m = exact.measure(con, "SELECT * FROM t", 6, exps, 20)
    got = {i: (x.unexpected_count, x.missing_count, x.examples) for i, x in m.items() if x.unexpected_count is not None}
    assert got == {0: (2, 2, [1, 5]), 1: (2, 2, [2, 3]), 2: (2, 2, [2, 3]), 3: (0, 0, []), 4: (2, 2, [0, 4]),
                   5: (1, 2, [4]), 6: (3, 0, [1, 2, 3])}
    assert 7 not in m  # a missing column is left to GX, which reports it
    assert m[8].observed_value == 6 and not m[8].success


def test_rows_are_taken_and_ids_checked_chunk_by_chunk():
    from quality import checks

    s17 = "11010119800101001"
    good = s17 + idno.check_char(s17)
    t = pa.Table.from_batches([pa.record_batch({"id_no": pa.array([good, "x" * 18, None]), "n": pa.array([0, 1, 2])}),
                               pa.record_batch({"id_no": pa.array([good, good[:17]]), "n": pa.array([3, 4])})])
    assert checks.take_rows(t, np.array([1, 3, 4])).to_pydict() == {"id_no": ["x" * 18, good, good[:17]], "n": [1, 3, 4]}
    assert checks.take_rows(t, np.array([], np.int64)).num_rows == 0
    assert checks.id_ok(t["id_no"]).to_pylist() == [True, False, None, True, False]


def test_a_store_read_dictionary_encoded_reports_what_its_tables_do(broken, tmp_path):
    """From a store the clean files are scanned by DuckDB where they lie (`quality.sources`), code
    formats matched on the file's dictionaries, ID formats with the ID check: the same failures,
    counts and examples as the same tables given in memory."""
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.intake.clean import clean_path
    from schemas.registry import contracts

    emp = _set(_set(broken[EMPLOYMENT], "month", [3, 11], "2026-13"), "employer_credit_code", [4], "bad")
    data = {**broken, EMPLOYMENT: emp}
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    for fid in FEEDS:
        store.write_parquet(clean_path(contracts()[fid]), data[fid])
    from_store = gate.validate(store, SNAP, feeds=FEEDS, sample_rows=50)
    assert _failures(from_store) == _failures(gate.validate(data, SNAP, feeds=FEEDS, sample_rows=50))
    got = {(f.suite, f.field, f.check): f.unexpected_count for f in from_store.failures}
    assert got[(f"feed.{EMPLOYMENT}", "month", "format")] == 2
    assert got[(f"feed.{EMPLOYMENT}", "employer_credit_code", "format")] == 1
    assert got[(f"feed.{CLAIM}", "id_no", "id_valid")] == 1


def test_vectorised_matches_are_duckdbs_regex():
    from quality import checks

    s17 = "11010119800101001"
    values = [s17 + idno.check_char(s17), s17 + "0", s17 + "x", s17 + "X", s17, s17 + "12", s17 + "X\n", None,
              "１" + s17[1:] + "1", "a" + s17 + "1", "2026-13", "2026-01", "91430100MA4L0XYZ12", ""]
    con = normalise.connect()
    for regex in (checks.ID_RE, r"^[0-9]{4}-(?:0[1-9]|1[0-2])$", r"^[0-9A-Z]{18}$"):
        want = [r[0] for r in con.execute("SELECT regexp_matches(v, $r) FROM (SELECT unnest($v) AS v, "
                                          "generate_subscripts($v, 1) AS i) ORDER BY i", {"v": values, "r": regex}).fetchall()]
        arr = pa.array(values, pa.string())
        assert checks.regex_ok(arr, regex).to_pylist() == want
        assert checks.regex_ok(pa.chunked_array([arr.dictionary_encode()]), regex).to_pylist() == want
        if regex == checks.ID_RE:
            fmt, ok = checks.id_checks(arr)
            assert fmt.to_pylist() == want and ok.to_pylist() == checks.id_ok(arr).to_pylist()
        # every dictionary value matching (a clean feed's codes: no indexing), with nulls; a null in
        # the dictionary itself
        good = [v for v, w in zip(values, want, strict=True) if w]
        mixed = [good[i % len(good)] if i % 3 else None for i in range(10)]
        assert checks.regex_ok(pa.array(mixed, pa.string()).dictionary_encode(), regex).to_pylist() == \
            [None if v is None else True for v in mixed]
        held_null = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()), pa.array([good[0], None]))
        assert checks.regex_ok(held_null, regex).to_pylist() == [True, None, True]
