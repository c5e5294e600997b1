"""The SQL normaliser against the pure-Python reference, with property-based tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import idno
from schemas.contract import F
from schemas.normalise import _fill, connect, field_sql

FW = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


@pytest.fixture(scope="module")
def con():
    c = connect()
    yield c
    c.close()


def run(con, kind: str, values: list[str | None], ref: dt.date | None = None, **kw) -> list[tuple]:
    """(value, rule) per input through the generated SQL of one field kind (`ref`: the record's date)."""
    sql = field_sql(F("x", kind, "x", **kw))
    pre, val, rule = (_fill(sql.pre, t="t"), _fill(sql.value, p="p", t="t"), _fill(sql.rule, p="p", v="v", t="t"))
    con.register("__in", pa.table({"t": pa.array(values, pa.string())}))
    day = f"DATE '{ref.isoformat()}'" if ref else "current_date"
    try:
        return con.sql(f"SELECT v, {rule} AS r FROM (SELECT *, {val} AS v FROM "
                       f"(SELECT t, {pre} AS p, {day} AS __ref FROM __in))").fetchall()
    finally:
        con.unregister("__in")


births = st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2025, 12, 31))
regions = st.sampled_from(["430103", "430102", "431302", "429006", "340304"])


@st.composite
def valid_ids(draw) -> str:
    s17 = draw(regions) + draw(births).strftime("%Y%m%d") + f"{draw(st.integers(0, 999)):03d}"
    return s17 + idno.check_char(s17)


def spellings(i: str) -> list[str]:
    """Ways departments write a valid number: lower-case x, spaces, full-width digits."""
    return [i, i.lower(), f"  {i} ", i.translate(FW), f"\u3000{i.lower()}"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(valid_ids(), min_size=1, max_size=20))
def test_valid_ids_in_every_spelling_normalise_to_themselves(con, ids):
    vals = [s for i in ids for s in spellings(i)]
    got = run(con, "id_no", [v.strip().strip("\u3000") for v in vals])
    for v, (n, rule) in zip(vals, got, strict=True):
        assert rule is None
        assert n == idno.normalise(v)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.builds(lambda r, b, s: r + b.strftime("%y%m%d") + f"{s:03d}", regions,
                          st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(1999, 12, 31)),
                          st.integers(0, 999)), min_size=1, max_size=20))
def test_legacy_15_digit_ids_upgrade_like_the_reference(con, ids):
    got = run(con, "id_no", ids)
    for i, (n, rule) in zip(ids, got, strict=True):
        ref = idno.normalise(i)
        assert (n, rule) == (ref, None)
        assert ref[:6] == i[:6] and ref[6:8] == "19" and len(ref) == 18


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(alphabet="0123456789Xx０１２ -", min_size=0, max_size=20), min_size=1, max_size=30))
def test_sql_and_reference_agree_on_arbitrary_strings(con, vals):
    vals = [v.strip() for v in vals if v.strip()]
    if not vals:
        return
    got = run(con, "id_no", vals)
    for v, (n, rule) in zip(vals, got, strict=True):
        try:
            ref, ref_rule = idno.normalise(v), None
        except idno.IdError as e:
            ref, ref_rule = None, e.rule
        assert rule == ref_rule, v
        if ref is not None:
            assert n == ref


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(valid_ids(), st.integers(1, 10))
def test_a_wrong_check_character_is_never_repaired(con, i, bump):
    wrong = i[:17] + idno.CHECK[(idno.CHECK.index(i[17]) + bump) % 11]
    [(_n, rule)] = run(con, "id_no", [wrong])
    assert rule == "id_no_checksum"
    with pytest.raises(idno.IdError) as e:
        idno.normalise(wrong)
    assert e.value.rule == "id_no_checksum"


def test_impossible_birth_dates_are_their_own_rule(con):
    s17 = "43010319900230123"  # 30 February
    bad = s17 + idno.check_char(s17)
    assert run(con, "id_no", [bad]) == [(bad, "id_no_birth_date")]


@pytest.mark.parametrize(("born", "record", "ok"), [
    ("20261102", dt.date(2026, 11, 1), False),  # born after the record's date
    ("20261101", dt.date(2026, 11, 1), True),  # born on it
    ("18991231", dt.date(2026, 11, 1), False),  # before 1900
    ("19000101", dt.date(2026, 11, 1), True),
    ("20991231", None, False),  # after today (no record date)
])
def test_birth_dates_after_the_record_or_before_1900_are_impossible(con, born, record, ok):
    s17 = "430103" + born + "123"
    i = s17 + idno.check_char(s17)
    [(_, rule)] = run(con, "id_no", [i], ref=record)
    assert rule == (None if ok else "id_no_birth_date")
    try:
        idno.normalise(i, record)
        ref_rule = None
    except idno.IdError as e:
        ref_rule = e.rule
    assert ref_rule == rule


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dates(min_value=dt.date(1900, 1, 1), max_value=dt.date(2100, 12, 31)), min_size=1, max_size=10))
def test_dates_in_every_accepted_format_parse_to_the_same_day(con, days):
    fmts = [lambda d: d.isoformat(), lambda d: f"{d.year}/{d.month}/{d.day}", lambda d: d.strftime("%Y%m%d"),
            lambda d: f"{d.year}年{d.month}月{d.day}日", lambda d: f"{d.year}-{d.month}-{d.day}",
            lambda d: d.isoformat().translate(FW)]
    vals = [f(d) for d in days for f in fmts]
    got = run(con, "date", vals)
    assert list(got) == [(d, None) for d in days for _ in fmts]


@pytest.mark.parametrize("bad", ["2024-13-01", "2024-02-30", "昨天", "2024-1", "0001-01-01", "31/12/2024"])
def test_bad_dates_are_quarantined(con, bad):
    assert run(con, "date", [bad])[0][1] == "date_format"


@settings(max_examples=80, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.decimals(min_value=0, max_value=Decimal("999999999.99"), places=2, allow_nan=False),
                min_size=1, max_size=10))
def test_money_in_every_accepted_format_parses_exactly(con, amounts):
    fmts = [lambda a: f"{a:.2f}", lambda a: f"{a:,.2f}", lambda a: f"{a}元", lambda a: f"￥{a:,}",
            lambda a: f"{a:.2f}".translate(FW)]
    vals = [f(a) for a in amounts for f in fmts]
    got = run(con, "money", vals, min=0)
    assert got == [(Decimal(a).quantize(Decimal("0.01")), None) for a in amounts for _ in fmts]


@pytest.mark.parametrize("bad,rule", [("12,34a", "money_format"), ("1.234", "money_format"), ("abc", "money_format"),
                                      ("-5.00", "out_of_range"), ("1e5", "money_format")])
def test_bad_money_is_quarantined(con, bad, rule):
    assert run(con, "money", [bad], min=0)[0][1] == rule


def test_booleans_urban_rural_lists_and_months(con):
    assert [r[0] for r in run(con, "bool", ["是", "否", "Y", "n", "1", "0", "TRUE"])] == [True, False, True, False,
                                                                                       True, False, True]
    assert run(con, "bool", ["maybe"])[0][1] == "bool_format"
    assert [r[0] for r in run(con, "urban_rural", ["城镇", "城市", "农村"])] == ["城镇", "城镇", "农村"]
    assert run(con, "text_list", ["困难残疾人生活补贴、重度残疾人护理补贴"])[0][0] == ["困难残疾人生活补贴", "重度残疾人护理补贴"]
    assert run(con, "text_list", ['["a","b"]'])[0][0] == ["a", "b"]
    assert list(run(con, "month", ["2026-10", "202610", "2026年10月", "2026-13"])) == [
        ("2026-10", None), ("2026-10", None), ("2026-10", None), (None, "month_format")]


def test_ambiguous_months_dates_and_amounts_are_quarantined_not_guessed(con):
    """Another county's exports: an Excel serial number (46082) or an unpadded YYYYM (20261) in a
    month column, an unpadded compact date (2026115: 11-05 or 01-15?), a decimal comma or a
    separator that does not group by three (1 234,50 · 1,23) — each once read as a wrong value
    (month 4608-02, amounts 123450.00 and 123.00, day 2026-11-05) and accepted."""
    months = ["46082", "20261", "46113", "2026/3", "2026.3", "2026年3月", "2026-04-01", "2026/4/15", "20260401",
              "2026-3"]
    assert run(con, "month", months) == [(None, "month_format")] * 3 + [
        ("2026-03", None)] * 3 + [("2026-04", None)] * 3 + [("2026-03", None)]
    assert run(con, "month", ["2101-01"])[0][1] == "month_format"
    assert run(con, "date", ["2026115", "2026111", "46082", "20261105"]) == [(None, "date_format")] * 3 + [
        (dt.date(2026, 11, 5), None)]
    bad = ["1 234,50", "1,23", "1,2,3,4", "1,234,5", "12 34", "1234,50"]
    assert run(con, "money", bad) == [(None, "money_format")] * len(bad)
    good = ["1 234.50", "1234.5 元", "-1,000.00", "1，234.00", "12,345,678.90"]
    assert [v for v, _ in run(con, "money", good)] == [Decimal(x) for x in ("1234.50", "1234.50", "-1000.00", "1234.00",
                                                                            "12345678.90")]


def test_members_need_valid_ids(con):
    s17 = "43010319800101123"
    good = s17 + idno.check_char(s17)
    ok = run(con, "members", [f'[{{"id_no": "{good.lower()}", "relation": "户主"}}]'])[0]
    assert ok[1] is None and ok[0] == [{"id_no": good, "relation": "户主"}]
    assert run(con, "members", ['[{"id_no": "123", "relation": "户主"}]'])[0][1] == "members_format"
    assert run(con, "members", ["not json"])[0][1] == "members_format"
    # a member without a relation, one twice, a relation that is an object: once accepted as they came
    s17b = "43010319850101123"
    other = s17b + idno.check_char(s17b)
    for bad in (f'[{{"id_no": "{good}", "relation": "户主"}}, {{"id_no": "{other}"}}]',
                f'[{{"id_no": "{good}", "relation": "户主"}}, {{"id_no": "{other}", "relation": " "}}]',
                f'[{{"id_no": "{good}", "relation": "户主"}}, {{"id_no": "{good}", "relation": "配偶"}}]',
                f'[{{"id_no": "{good}", "relation": {{"x": "户主"}}}}]'):
        assert run(con, "members", [bad])[0][1] == "members_format", bad
    two = f'[{{"id_no": "{good}", "relation": "户主"}}, {{"id_no": "{other}", "relation": "配偶"}}]'
    assert run(con, "members", [two])[0][1] is None


def test_mask_keeps_first_six_and_last_four():
    assert idno.mask("430103199001011234") == "430103********1234"
    assert idno.mask(None) == ""


def test_spaces_inside_an_id_number_are_removed_by_both(con):
    """Found by hypothesis: the SQL removed inner spaces, the reference did not."""
    s17 = "43010319800101123"
    i = s17 + idno.check_char(s17)
    spaced = i[:6] + " " + i[6:14] + " " + i[14:]
    assert run(con, "id_no", [spaced]) == [(i, None)] and idno.normalise(spaced) == i
    [(_, rule)] = run(con, "id_no", ["00000000000000000 0"])
    with pytest.raises(idno.IdError) as e:
        idno.normalise("00000000000000000 0")
    assert rule == e.value.rule == "id_no_birth_date"


def test_datetimes_keep_milliseconds_at_most(con):
    """A source's microseconds are cut to the contracts' unit (ms): the clean cast could never succeed."""
    import pyarrow as pa

    got = con.sql("SELECT sn_datetime(x) AS v FROM (VALUES ('2026-10-05T17:02:16.225429+08:00'), "
                  "('2026-10-05T17:02:16+08:00')) t(x)").to_arrow_table()["v"]
    ms = got.cast(pa.timestamp("ms", tz="UTC"))  # safe: it would raise on lost microseconds
    assert [v.microsecond for v in ms.to_pylist()] == [225000, 0]


def test_one_parse_tells_json_from_not_json_as_json_valid_does(con):
    """The connectors' decode (`connectors.formats.json_records_sql`) takes a message for JSON when
    `TRY(json_extract_string(...))` is not NULL — one parse instead of `json_valid` and then the
    extraction. The two must agree on every text: edge cases and thousands of damaged envelopes."""
    import json
    import random

    cases = ["", " ", "null", "true", "1", "1.5e400", "NaN", "Infinity", "[1,]", '{"a":1,}', '{"a":1} x', "\ufeff{}",
             '{"a":NaN}', '/* c */ {"a":1}', '{"a":"\\ud800"}', '{"a":"x\x00y"}', "{'a':1}", '{"a":1,"a":2}', '"str"',
             '{"payload":[1,2]}', "[" * 2000 + "]" * 2000, '{"a":01}', '{"a":1.}', '{"a":tru}', "nul"]
    rnd = random.Random(20261205)
    base = json.dumps({"event_id": "e1", "op": "upsert", "payload": {"x": "值", "n": 1.5, "l": [1, None]}}, ensure_ascii=False)
    for _ in range(3000):
        s = list(base)
        for _ in range(rnd.randint(1, 3)):
            i = rnd.randrange(len(s))
            ch = rnd.choice('{}[],:"\\ 0aé\x00\n')
            op = rnd.random()
            if op < 0.33:
                del s[i]
            elif op < 0.66:
                s.insert(i, ch)
            else:
                s[i] = ch
        cases.append("".join(s))
    con.execute("CREATE OR REPLACE TEMP TABLE j(v VARCHAR)")
    con.executemany("INSERT INTO j VALUES (?)", [[c] for c in cases] + [[None]])
    paths = "['$.event_id', '$.payload.x', '$.payload.\"n\"', '$.missing']"
    [(valid, differ)] = con.sql(f"""
        SELECT count(*) FILTER (WHERE json_valid(v)),
               count(*) FILTER (WHERE coalesce(json_valid(v), false) <> (TRY(json_extract_string(v, {paths})) IS NOT NULL))
        FROM j""").fetchall()
    assert differ == 0 and 300 < valid < len(cases)


def test_a_connection_spills_to_its_own_temporary_folder_not_the_working_directory(tmp_path, monkeypatch):
    """Beyond its memory cap a build spills: into a folder of its own under TMPDIR (made on the first
    spill, removed on close), never DuckDB's default `.tmp` of the working directory."""
    import os
    import tempfile

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    cons = [connect(memory_limit="32MB", threads=1) for _ in range(2)]
    dirs = [c.execute("SELECT current_setting('temp_directory')").fetchone()[0] for c in cons]
    assert len(set(dirs)) == 2 and all(os.path.dirname(d) == str(tmp_path / "tmp") for d in dirs)
    for c in cons:
        c.execute("CREATE TEMP TABLE t AS SELECT range AS i, md5(range::VARCHAR) AS s FROM range(600000) ORDER BY s")
    assert all(os.listdir(d) for d in dirs)  # each spilled into its own folder
    for c in cons:
        c.close()
    assert not any(os.path.exists(d) for d in dirs) and not (tmp_path / ".tmp").exists()
