"""The Great Expectations quality gate (`quality.gate`) over a synthetic district's clean truth.

The truth passes every critical expectation; planted defects (a duplicate key, a bad check
character, a claim for an unknown person, a negative amount, a missing column, bad outputs) each
fail the expectation they should, critical or not as designed, with masked example keys; Data
Docs land in `docs/quality/` of the store and hold no unmasked ID number or name.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from quality import checks, datadocs, evaluation, gate, policy, suites
from quality.report import MAX_EXAMPLES, Failure, QualityReport
from safetynet.build import monitoring
from safetynet.demo.synth import generate
from safetynet.intake.clean import clean_path
from schemas import idno, normalise
from schemas.registry import contracts, get

# the Great Expectations engine (a seconds-long import) over a generated 3,000-person district, and Data Docs
pytestmark = pytest.mark.slow
SNAP = dt.date(2026, 11, 1)
PERSON, CLAIM = "public_security.person", "medical_insurance.claim"
ID_SHAPED = re.compile(r"(?<![0-9A-Za-z])[0-9]{17}[0-9Xx](?![0-9A-Za-z])")


@pytest.fixture(scope="module")
def district():
    return generate(persons=3000, seed=11)


@pytest.fixture(scope="module")
def tables(district):
    return district.tables()


@pytest.fixture(scope="module")
def built(district):
    con = normalise.connect()
    for fid, name in monitoring.sources().items():
        con.register(name, district.table(fid))
    pol = policy.for_region("430103", 2026)
    b = monitoring.build(con, SNAP, pol)
    return b, pol, evaluation.evaluate(b, pol)


@pytest.fixture(scope="module")
def truth_report(tables, built):
    b, pol, w = built
    return gate.validate(tables, SNAP, outputs={"person": b.person, "household": b.household, "warnings": w},
                      policy=pol)


def _set(t: pa.Table, col: str, row: int, value) -> pa.Table:
    vals = t[col].to_pylist()
    vals[row] = value
    return t.set_column(t.schema.get_field_index(col), t.schema.field(col), pa.array(vals, t.schema.field(col).type))


def _failures(report: QualityReport, suite: str, check: str | None = None) -> list[Failure]:
    return [f for f in report.suite(suite).failures if check is None or f.check == check]


def _no_raw_ids(text: str) -> None:
    found = ID_SHAPED.findall(text)
    assert not found, f"unmasked ID-shaped values: {[idno.mask(x) for x in found[:3]]}"


def _valid_unknown_id(known: set[str]) -> str:
    for seq in range(100, 999):
        s17 = f"11010119800101{seq:03d}"
        s = s17 + idno.check_char(s17)
        if s not in known:
            return s
    raise AssertionError


# ---- helpers ---------------------------------------------------------------------------------

def test_vectorised_id_check_agrees_with_the_reference(district):
    ids = district.table(PERSON)["id_no"].to_pylist()[:400]
    rng = np.random.default_rng(5)
    variants = list(ids)
    for s in ids[:200]:
        k = int(rng.integers(0, 6))
        if k == 0:  # wrong check character
            variants.append(s[:17] + ("0" if s[17] != "0" else "1"))
        elif k == 1:  # impossible birth date
            variants.append(s[:10] + "0230" + s[14:])
        elif k == 2:  # out-of-range year
            s17 = s[:6] + "1899" + s[10:17]
            variants.append(s17 + idno.check_char(s17))
        elif k == 3:  # lower-case x is not normalised
            variants.append(s[:17] + "x")
        elif k == 4:
            variants.append(s[:17])
        else:  # leap day
            s17 = s[:6] + "20000229" + s[14:17]
            variants.append(s17 + idno.check_char(s17))
    future = ids[0][:6] + f"{dt.date.today().year + 1}0101" + ids[0][14:17]  # born next year: as ingest, not real
    variants += [None, "", "１" * 18, future + idno.check_char(future)]
    got = checks.id_ok(pa.array(variants, pa.string())).to_pylist()
    want = [None if v is None else idno.is_valid(v) and v == v.upper() and len(v) == 18 for v in variants]
    assert got == want
    members = pa.array([[{"id_no": ids[0], "relation": "本人"}], [], [{"id_no": ids[1], "relation": "本人"},
                        {"id_no": ids[2][:17] + "Y", "relation": "子女"}], None], pa.list_(contracts()[
                            "civil_affairs.assistance_case"].field("members").arrow_type.value_type))
    assert checks.members_ok(members).to_pylist() == [True, False, False, None]


def test_vectorised_id_check_of_sorted_runs_checks_every_value(district):
    """A column sorted by person (a dozen rows each) is checked once per run of equal values: still
    every value's own answer, whether neighbours differ in the first, middle or last bytes."""
    ids = sorted(district.table(PERSON)["id_no"].to_pylist()[:300])
    bad = [s[:17] + ("0" if s[17] != "0" else "1") for s in ids[:50]]  # differs from its twin in the last byte
    mid = [s[:9] + ("0" if s[9] != "0" else "1") + s[10:] for s in ids[50:100]]  # in the middle 8 bytes
    values = sorted(ids + bad + mid + ["A" * 18, "x" * 18])
    column = [v for v in values for _ in range(sum(map(ord, v)) % 5 + 1)]  # runs of 1–5 copies, in order
    fmt, ok = checks.id_checks(pa.array(column, pa.string()))
    want = [idno.is_valid(v) and v == v.upper() for v in column]
    assert ok.to_pylist() == want and sum(want) < len(column)
    assert fmt.to_pylist() == [v[:17].isdigit() and (v[17].isdigit() or v[17] == "X") for v in column]


def test_vectorised_id_check_agrees_with_the_reference_on_random_strings():
    """Random 18-character strings, mostly digits with birth dates around the edges (in the past: the
    reference also refuses a birth date after today, the gate only after 2099), some bytes
    swapped for letters, punctuation or non-ASCII (whose wrapped values overflow the date sums):
    each answer is `schemas.idno`'s."""
    import random

    rnd = random.Random(20261206)
    alphabet = "0123456789" * 6 + "X/:aZ ９é"
    values = []
    for _ in range(3000):
        s17 = "".join(rnd.choice("0123456789") for _ in range(6)) + rnd.choice(["1899", "1900", "1996", "2000", "2024"]) \
            + rnd.choice(["00", "01", "02", "12", "13"]) + rnd.choice(["00", "01", "28", "29", "30", "31", "32"]) \
            + "".join(rnd.choice("0123456789") for _ in range(3))
        v = s17 + (idno.check_char(s17) if rnd.random() < 0.7 else rnd.choice("0123456789Xx"))
        if rnd.random() < 0.2:
            i = rnd.randrange(18)
            v = v[:i] + rnd.choice(alphabet) + v[i + 1:]
        values.append(v)
    fmt, ok = checks.id_checks(pa.array(values, pa.string()))
    # the reference normalises (upper case, full-width digits, spaces); the gate checks normalised values
    assert ok.to_pylist() == [len(v) == 18 and v.isascii() and v == v.upper() and " " not in v and idno.is_valid(v)
                              for v in values]
    assert fmt.to_pylist() == [len(v.encode()) == 18 and v[:17].isascii() and v[:17].isdigit()
                               and (v[17] in "0123456789X") for v in values]
    assert 300 < sum(ok.to_pylist()) < 2900


def test_suite_is_generated_from_the_contract():
    s = suites.suite_for(get(CLAIM))
    by = {(e.meta["check"], e.meta["field"]): e for e in s.expectations}
    assert by[("unique_key", "claim_id")].meta["critical"] is True
    assert by[("not_null", "claim_id")].meta["critical"] is True
    assert by[("id_valid", "id_no")].meta["critical"] is True
    assert by[("id_format", "id_no")].meta["critical"] is True
    assert by[("range", "out_of_pocket")].meta["critical"] is False
    assert by[("not_null", "hospital_name")].meta["critical"] is False
    assert ("not_null", "diagnosis_name") not in by  # optional field
    assert all(e.meta["feed"] == CLAIM for e in s.expectations)
    compound = suites.suite_for(get("human_resources.employment"))
    [u] = [e for e in compound.expectations if e.meta["check"] == "unique_key"]
    assert u.expectation_type == "expect_compound_columns_to_be_unique"
    assert u.column_list == ["id_no", "month", "employer_credit_code"]
    enum = suites.suite_for(get(PERSON))
    [g] = [e for e in enum.expectations if e.meta["check"] == "value_set" and e.meta["field"] == "gender"]
    assert sorted(g.value_set) == ["女", "男"] and g.meta["critical"] is False


def test_schema_expectations_settled_from_the_frame_agree_with_gx(tables, built):
    """The gate asks a schema expectation (columns, their order, types) for its verdict on the frame's
    schema without GX's validation graph (`gate._schema_results`): the same success and result as GX
    validating it on the frame, on every feed and output suite, and on frames whose schema is wrong —
    a column missing (left to GX: it reports the error), moved, of another type, or of numpy `object`
    dtype (left to GX, which then looks at every value)."""
    b, _, w = built
    ctx = gate.gx_context()
    ds = ctx.data_sources.add_pandas("schema-agreement")
    cases = []
    for fid, t in tables.items():
        c = get(fid)
        frame = suites.frame_for(c, t.slice(0, 50))
        cases.append((suites.suite_for(c), frame))
        first = c.names[1] if len(c.names) > 1 else c.names[0]
        wrong = frame.copy()
        wrong[first] = wrong[first].astype(object)
        moved = frame[[*frame.columns[1:], frame.columns[0]]]
        cases += [(suites.suite_for(c), wrong), (suites.suite_for(c), moved),
                  (suites.suite_for(c), frame.drop(columns=[first]))]
    cast = tables[CLAIM].set_column(tables[CLAIM].schema.get_field_index("total_amount"), "total_amount",
                                    pc.cast(tables[CLAIM]["total_amount"], pa.float64()))
    cases.append((suites.suite_for(get(CLAIM)), suites.frame_for(get(CLAIM), cast.slice(0, 50))))
    for name, table in {"monitoring.person": b.person, "monitoring.household": b.household, "warnings": w}.items():
        cases.append((suites.output_suite(name, table, county="430103"), checks.to_frame(table.slice(0, 50))))
    settled = 0
    for k, (suite, frame) in enumerate(cases):
        asset = ds.add_dataframe_asset(f"case{k}")
        batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
        by_gx = batch.validate(suite, result_format=gate.RESULT_FORMAT).results
        mine = gate._schema_results(enumerate(suite.expectations), frame)
        settled += len(mine)
        for r in mine.values():
            key = gate._expectation_key(r.expectation_config.type, r.expectation_config.kwargs)
            [g] = [x for x in by_gx if gate._expectation_key(x.expectation_config.type, x.expectation_config.kwargs) == key]
            assert (r.success, r.result) == (g.success, g.result), (suite.name, r.expectation_config.type)
            assert not g.exception_info.get("raised_exception")
        for i, e in enumerate(suite.expectations):
            col = getattr(e, "column", None)
            if e.expectation_type in gate.SCHEMA_ONLY and i not in mine:  # left to GX: a missing or object column
                assert col not in frame.columns or frame.dtypes[col].type is np.object_, (suite.name, col)
    assert settled > 400
    twice = cases[0][1].rename(columns={cases[0][1].columns[1]: cases[0][1].columns[0]})
    assert gate._schema_results(enumerate(cases[0][0].expectations), twice) == {}  # two columns of one name: GX's
    assert any(not r.success for suite, frame in cases[1:4] for r in gate._schema_results(enumerate(suite.expectations), frame).values())


# ---- the truth -------------------------------------------------------------------------------

def test_the_truth_passes_every_critical_expectation(truth_report):
    r = truth_report
    assert r.ok, r.summary()
    names = {s.name for s in r.suites}
    assert {f"feed.{fid}" for fid in contracts()} <= names
    assert {"cross.claim_person", "cross.assistance_case_person", "cross.money", "output.monitoring.person",
            "output.monitoring.household", "output.warnings"} <= names
    for s in r.suites:  # every feed and output suite passes completely; only report-only links may not
        if s.kind in ("feed", "output") or s.name in ("cross.claim_person", "cross.assistance_case_person",
                                                       "cross.money", "cross.case_links"):
            assert s.success, (s.name, [(f.field, f.check, f.message) for f in s.failures])
    d = r.as_dict()
    assert d["ok"] and d["counts"]["expectations"] > 250
    json.dumps(d, ensure_ascii=False)
    text = r.summary()
    assert "通过" in text and "PASSED" in text
    _no_raw_ids(text + json.dumps(d, ensure_ascii=False))


# ---- planted defects -------------------------------------------------------------------------

def test_duplicate_key_is_critical_with_masked_examples(tables):
    person = tables[PERSON]
    dup = pa.concat_tables([person, person.slice(7, 1)])
    claim = tables[CLAIM]
    claim_dup = pa.concat_tables([claim, claim.slice(3, 1)])
    r = gate.validate({**tables, PERSON: dup, CLAIM: claim_dup}, SNAP, feeds=[PERSON, CLAIM])
    assert not r.ok
    [f] = _failures(r, f"feed.{PERSON}", "unique_key")
    assert f.critical and f.unexpected_count == 2 and f.expectation == "expect_column_values_to_be_unique"
    raw = person["id_no"][7].as_py()
    assert f.examples == [f"id_no={idno.mask(raw)}"] * 2
    [g] = _failures(r, f"feed.{CLAIM}", "unique_key")
    assert g.critical and g.unexpected_count == 2
    assert g.examples[0] == f"claim_id={claim['claim_id'][3].as_py()}"
    _no_raw_ids(r.summary() + json.dumps(r.as_dict(), ensure_ascii=False))
    with pytest.raises(gate.QualityGateFailed, match="BLOCKED"):
        r.raise_for_critical()


def test_bad_check_character_is_critical(tables):
    claim = tables[CLAIM]
    raw = claim["id_no"][5].as_py()
    bad = raw[:17] + ("1" if raw[17] != "1" else "2")
    r = gate.validate({**tables, CLAIM: _set(claim, "id_no", 5, bad)}, SNAP, feeds=[PERSON, CLAIM])
    assert not r.ok
    [f] = _failures(r, f"feed.{CLAIM}", "id_valid")
    assert f.critical and f.unexpected_count == 1 and f.field == "id_no"
    assert f.examples == [f"claim_id={claim['claim_id'][5].as_py()} id_no={idno.mask(bad)}"]
    assert not _failures(r, f"feed.{CLAIM}", "id_format")  # the format is fine, the check character is not
    [x] = _failures(r, "cross.claim_person")  # and the number names nobody in the register
    assert x.critical and x.unexpected_count == 1
    _no_raw_ids(r.summary() + json.dumps(r.as_dict(), ensure_ascii=False))


def test_claim_for_an_unknown_person_is_critical(tables):
    claim = tables[CLAIM]
    unknown = _valid_unknown_id(set(tables[PERSON]["id_no"].to_pylist()))
    r = gate.validate({**tables, CLAIM: _set(claim, "id_no", 11, unknown)}, SNAP, feeds=[PERSON, CLAIM])
    assert not r.ok
    assert r.suite(f"feed.{CLAIM}").success  # a valid number: the feed itself is fine
    [f] = _failures(r, "cross.claim_person")
    assert f.critical and f.check == "person_exists" and f.unexpected_count == 1 and f.element_count == claim.num_rows
    assert f.examples == [f"{CLAIM}: claim_id={claim['claim_id'][11].as_py()} id_no={idno.mask(unknown)}"]
    assert [x.suite for x in r.critical_failures] == ["cross.claim_person"]


def test_assistance_member_and_owner_links(tables):
    case = tables["civil_affairs.assistance_case"]
    unknown = _valid_unknown_id(set(tables[PERSON]["id_no"].to_pylist()))
    members = case["members"].to_pylist()
    members[2] = members[2] + [{"id_no": unknown, "relation": "其他"}]
    case2 = case.set_column(case.schema.get_field_index("members"), case.schema.field("members"),
                            pa.array(members, case.schema.field("members").type))
    vehicle = _set(tables["public_security.vehicle"], "owner_id_no", 0, unknown)
    r = gate.validate({**tables, "civil_affairs.assistance_case": case2, "public_security.vehicle": vehicle}, SNAP,
                   feeds=[PERSON, "civil_affairs.assistance_case", "public_security.vehicle"])
    [f] = _failures(r, "cross.assistance_case_person")
    assert f.critical and f.unexpected_count == 1
    assert f.examples == [f"civil_affairs.assistance_case: case_no={case['case_no'][2].as_py()} "
                          f"members={idno.mask(unknown)}"]
    [o] = _failures(r, "cross.owner_person")
    assert not o.critical  # owners may live elsewhere: reported, not blocking
    assert any(e.startswith("public_security.vehicle: plate_no=") and e.endswith(idno.mask(unknown)) for e in o.examples)
    assert [x.suite for x in r.critical_failures] == ["cross.assistance_case_person"]


def test_person_links_look_the_register_up_once_and_count_as_a_semi_join_does(tables, monkeypatch):
    """The person-link suites share one set of the ID numbers missing from the register (computed
    once); each suite's counts are what its own semi-join against the register gives, nulls as
    missing, not unexpected; a number missing in one link and present in none."""
    known = set(tables[PERSON]["id_no"].to_pylist())
    a = _valid_unknown_id(known)
    b = _valid_unknown_id(known | {a})
    claim = _set(_set(tables[CLAIM], "id_no", 3, a), "id_no", 8, a)
    vehicle = _set(tables["public_security.vehicle"], "owner_id_no", 1, b)
    emp = _set(_set(tables["human_resources.employment"], "id_no", 0, None), "id_no", 5, b)
    given = {**tables, CLAIM: claim, "public_security.vehicle": vehicle, "human_resources.employment": emp}
    computed = []
    table = suites.Shared.table

    def counted(self, con):
        computed.append(self._table is None)
        return table(self, con)

    monkeypatch.setattr(suites.Shared, "table", counted)
    feeds = [PERSON, CLAIM, "public_security.vehicle", "housing.property", "human_resources.employment",
             "civil_affairs.assistance_case"]
    r = gate.validate(given, SNAP, feeds=feeds)
    assert computed.count(True) == 1 and len(computed) == 4  # four link suites, one lookup
    con = normalise.connect()
    con.register("register", given[PERSON])

    def semi_join(parts: list[tuple[str, str]]) -> tuple[int, int]:  # (unexpected, missing) as SQL counts them
        for i, (fid, _) in enumerate(parts):
            con.register(f"t{i}", given[fid].select([parts[i][1]]))
        union = " UNION ALL ".join(f"SELECT {c} AS v FROM t{i}" for i, (_, c) in enumerate(parts))
        return con.execute(f"SELECT count(*) FILTER (WHERE v IS NOT NULL AND v NOT IN (SELECT id_no FROM register)), "
                           f"count(*) FILTER (WHERE v IS NULL) FROM ({union})").fetchall()[0]

    for suite, parts, critical in [
            ("cross.claim_person", [(CLAIM, "id_no")], True),
            ("cross.owner_person", [("public_security.vehicle", "owner_id_no"), ("housing.property", "owner_id_no")], False),
            ("cross.person_links", [("human_resources.employment", "id_no")], False)]:
        bad, missing = semi_join(parts)
        assert bad >= 1
        [f] = _failures(r, suite, "person_exists")
        assert (f.unexpected_count, f.critical) == (bad, critical)
        res = next(x for x in r._results[suite][1].results if x.expectation_config.kwargs["column"] == "__exists")
        assert res.result["missing_count"] == missing
    assert semi_join([(CLAIM, "id_no")]) == (2, 0) and semi_join([("human_resources.employment", "id_no")]) == (1, 1)
    assert r.suite("cross.assistance_case_person").success


def test_negative_amount_warns_in_the_feed_and_blocks_in_the_money_check(tables):
    claim = tables[CLAIM]
    r = gate.validate({**tables, CLAIM: _set(claim, "out_of_pocket", 4, Decimal("-12.50"))}, SNAP, feeds=[PERSON, CLAIM])
    [w] = _failures(r, f"feed.{CLAIM}", "range")
    assert not w.critical and w.field == "out_of_pocket" and w.unexpected_count == 1
    assert w.examples == [f"claim_id={claim['claim_id'][4].as_py()} out_of_pocket=-12.50"]
    [m] = _failures(r, "cross.money")
    assert m.critical and m.check == "no_negative_money" and m.unexpected_count == 1
    assert m.examples == [f"{CLAIM}: claim_id={claim['claim_id'][4].as_py()} out_of_pocket=-12.5"]
    assert not r.ok


def test_a_gx_internal_error_is_a_critical_failure(tables):
    person = tables[PERSON].drop_columns(["gender"])  # a non-critical value-set check on a missing column
    r = gate.validate({**tables, PERSON: person}, SNAP, feeds=[PERSON])
    assert not r.ok
    fails = _failures(r, f"feed.{PERSON}")
    [cols] = [f for f in fails if f.check == "columns"]
    assert cols.critical
    errors = [f for f in fails if f.field == "gender" and f.message.startswith("GX error")]
    assert {f.check for f in errors} >= {"value_set", "type"}
    assert all(f.critical for f in errors)  # even the value-set check, non-critical by design
    assert any("gender" in f.message for f in errors)


def test_a_wrong_type_is_critical(tables):
    claim = tables[CLAIM]
    i = claim.schema.get_field_index("total_amount")
    as_float = claim.set_column(i, pa.field("total_amount", pa.float64()), pc.cast(claim["total_amount"], pa.float64()))
    grade = tables["disabled_persons_federation.disability"]
    j = grade.schema.get_field_index("grade")
    as_int64 = grade.set_column(j, pa.field("grade", pa.int64()), pc.cast(grade["grade"], pa.int64()))
    r = gate.validate({CLAIM: as_float, "disabled_persons_federation.disability": as_int64}, SNAP,
                   feeds=[CLAIM, "disabled_persons_federation.disability"])
    [f] = _failures(r, f"feed.{CLAIM}", "type")
    assert f.critical and f.field == "total_amount" and "float" in f.message
    [g] = _failures(r, "feed.disabled_persons_federation.disability", "type")
    assert g.critical and g.field == "grade" and "int64" in g.message
    assert len(r.failures) == 2, r.summary()


def test_output_suites(tables, built):
    b, pol, w = built
    hh = b.household
    wrong_region = _set(hh, "region_code", 0, "430104001001")  # another county
    w_dup = pa.concat_tables([w, w.slice(0, 1)])
    w_dup = _set(w_dup, "severity", 1, "S9")
    neg = _set(b.person, "oop_12m", 3, Decimal("-1"))
    r = gate.validate({}, SNAP, outputs={"person": neg, "household": wrong_region, "warnings": w_dup}, policy=pol)
    assert not r.ok
    [u] = _failures(r, "output.warnings", "unique_key")
    assert u.critical and u.examples[0] == f"warning_id={w['warning_id'][0].as_py()}"
    assert {f.check for f in _failures(r, "output.warnings") if f.field == "severity"} == {"value_set"}
    [reg] = [f for f in _failures(r, "output.monitoring.household", "region_in_county") if f.field == "region_code"]
    assert reg.critical and reg.examples == [f"household_no={hh['household_no'][0].as_py()} region_code=430104001001"]
    [m] = _failures(r, "output.monitoring.person", "no_negative_money")
    assert m.critical and m.field == "oop_12m"
    assert m.examples == [f"id_no={idno.mask(b.person['id_no'][3].as_py())} oop_12m=-1.00"]
    # a warning for a household that is not in the household table
    w_orphan = _set(w, "household_no", 0, "999999999999999")
    r2 = gate.validate({}, SNAP, outputs={"household": hh, "warnings": w_orphan}, county="430103")
    [o] = _failures(r2, "output.warnings", "household_exists")
    assert o.critical and o.examples == [f"warning_id={w['warning_id'][0].as_py()} household_no=999999999999999"]


def test_validate_reads_the_store(tables, local_store):
    for fid in (PERSON, CLAIM):
        local_store.write_parquet(clean_path(get(fid)), tables[fid])
    r = gate.validate(local_store, SNAP, feeds=[PERSON, CLAIM, "public_security.vehicle"])
    assert r.ok, r.summary()
    assert r.missing == ["public_security.vehicle"]
    assert r.suite(f"feed.{CLAIM}").rows == tables[CLAIM].num_rows
    assert "missing" in r.summary()


# ---- Data Docs --------------------------------------------------------------------------------

def test_data_docs_in_the_store_hold_only_masked_keys(tables, local_store):
    person, claim = tables[PERSON], tables[CLAIM]
    dup = pa.concat_tables([person, person.slice(7, 1)])
    bad = claim["id_no"][5].as_py()[:17] + ("1" if claim["id_no"][5].as_py()[17] != "1" else "2")
    claim2 = _set(_set(claim, "id_no", 5, bad), "out_of_pocket", 4, Decimal("-3"))
    r = gate.validate({**tables, PERSON: dup, CLAIM: claim2}, SNAP, feeds=[PERSON, CLAIM, "housing.property"])
    assert not r.ok
    written = datadocs.build_docs(r, local_store)
    assert "docs/quality/index.html" in written and f"docs/quality/index-{SNAP}.html" in written
    assert f"docs/quality/reports/{SNAP}.json" in written
    assert any(p.startswith("docs/quality/validations/feed/public_security/person/") for p in written)
    assert any(p.startswith("docs/quality/expectations/cross/") for p in written)
    listed = {e.path for e in local_store.list("docs/quality/")}
    assert set(written) <= listed
    texts = {p: local_store.read_bytes(p).decode("utf-8", errors="replace") for p in listed
             if p.endswith((".html", ".json", ".txt", ".css", ".js"))}
    everything = "\n".join(texts.values())
    _no_raw_ids(everything)
    for raw in person["id_no"].to_pylist() + [bad]:
        assert raw not in everything
    for name in person["name"].to_pylist()[:300]:
        assert f">{name}<" not in everything and f'"{name}"' not in everything
    page = next(t for p, t in texts.items() if p.startswith("docs/quality/validations/feed/public_security/person/"))
    assert idno.mask(person["id_no"][7].as_py()) in page  # the masked example keys are shown
    report = json.loads(local_store.read_bytes(f"docs/quality/reports/{SNAP}.json"))
    assert report["ok"] is False and report["counts"]["critical_failures"] >= 3
    # a second build (re-run of the same snapshot) overwrites and does not rewrite static assets
    again = datadocs.build_docs(r, local_store)
    assert not any(p.startswith("docs/quality/static/") for p in again)


def test_summary_is_one_screen(tables):
    claim = tables[CLAIM]
    broken = claim
    for i in range(30):
        broken = _set(broken, "out_of_pocket", i, Decimal("-1"))
    r = gate.validate({**tables, CLAIM: broken.drop_columns(["hospital_name"])}, SNAP, feeds=[PERSON, CLAIM])
    text = r.summary()
    assert len(text.splitlines()) <= 22
    assert "未通过" in text and "BLOCKED" in text and "严重" in text and "critical" in text
    _no_raw_ids(text)
    assert all(len(f.examples) <= MAX_EXAMPLES for f in r.failures)
    [m] = _failures(r, "cross.money")
    assert m.unexpected_count == 30 and len(m.examples) == 20
    assert pc.sum(pc.less(claim["out_of_pocket"], 0)).as_py() in (None, 0)


def test_unchanged_feeds_carry_their_recorded_suite_results(tables, local_store):
    """`reuse`: a feed suite runs only when its clean file (or the suite) changed; the report is the
    same as a full gate's but for timings and the `carried_from` marks."""
    feeds = [PERSON, CLAIM, "public_security.vehicle"]
    for fid in feeds:
        local_store.write_parquet(clean_path(get(fid)), tables[fid])

    def comparable(r: QualityReport) -> list[dict]:
        return [{k: v for k, v in s.as_dict().items() if k not in ("seconds", "carried_from")} for s in r.suites]

    full = gate.validate(local_store, SNAP, feeds=feeds)
    assert all(s.carried_from is None for s in full.suites)
    first = gate.validate(local_store, SNAP, feeds=feeds, reuse=True)  # the records full wrote are reused
    again = gate.validate(local_store, SNAP, feeds=feeds, reuse=True)
    for r in (first, again):
        carried = {s.subject for s in r.suites if s.carried_from is not None}
        assert carried == set(feeds)  # every feed suite; cross-feed links always run
        assert comparable(r) == comparable(full) and r.as_dict()["counts"] == full.as_dict()["counts"]
    assert "unchanged feeds, results carried over (3)" in again.summary()
    # one claim changes: only the claim suite runs again (and sees the planted change)
    changed = _set(tables[CLAIM], "out_of_pocket", 0, Decimal("-5.00"))
    local_store.write_parquet(clean_path(get(CLAIM)), changed)
    third = gate.validate(local_store, SNAP, feeds=feeds, reuse=True)
    assert {s.subject for s in third.suites if s.carried_from is not None} == {PERSON, "public_security.vehicle"}
    fresh = gate.validate(local_store, SNAP, feeds=feeds)
    assert comparable(third) == comparable(fresh)
    # a changed suite (another contract or gate version) runs again although the data did not change
    rec_path = f"_catalog/quality/feeds/{get(PERSON).prefix}.json"
    rec = json.loads(local_store.read_bytes(rec_path))
    local_store.write_bytes(rec_path, json.dumps({**rec, "suite_sha256": "0" * 64}).encode())
    fourth = gate.validate(local_store, SNAP, feeds=feeds, reuse=True)
    assert fourth.suite(f"feed.{PERSON}").carried_from is None
