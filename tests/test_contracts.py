"""Generated conformance suite: every feed in the registry, checked the same way.

For each feed a valid record is synthesised from its contract and must pass and type to the
contract's schema; for each field, a value breaking that field's kind must be rejected with the
kind's rule naming that field; deletes need only the key; both header languages map.
"""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from connectors.base import connectors
from safetynet import idno
from safetynet.normalise import RULES, connect, validate_sql
from schemas.contract import Contract, Field
from schemas.registry import contracts

FEEDS = list(contracts().values())
S17 = "43010319800101123"
ID = S17 + idno.check_char(S17)

VALID = {"string": "文本", "id_no": ID, "region_code": "430103001001", "credit_code": "91430103MA4L0ABC1X",
         "date": "2026-10-01", "datetime": "2026-10-01 09:30:00", "month": "2026-10", "money": "1234.50",
         "decimal": "0.5", "int": "2", "bool": "是", "urban_rural": "城镇", "text_list": "a、b",
         "members": json.dumps([{"id_no": ID, "relation": "户主"}])}
INVALID = {"id_no": ("4301031980010112", "id_no_format"), "region_code": ("4301", "region_code_format"),
           "credit_code": ("短", "credit_code_format"), "date": ("2026-02-30", "date_format"),
           "datetime": ("下午", "datetime_format"), "month": ("2026-13", "month_format"),
           "money": ("12,34a", "money_format"), "decimal": ("x", "decimal_format"), "int": ("二", "int_format"),
           "bool": ("maybe", "bool_format"), "enum": ("不存在的值", "enum_value"),
           "urban_rural": ("城乡", "enum_value"), "members": ("[]", "members_format")}


def valid_value(f: Field) -> str:
    if f.kind == "enum":
        return f.values[0]
    if f.kind == "int" and f.min is not None:
        return str(int(f.min))
    return VALID[f.kind]


def record(c: Contract, **over: str | None) -> dict:
    r = {f.name: valid_value(f) for f in c.fields}
    r.update(over)
    return {**r, "_op": over.get("_op", "upsert")}


@pytest.fixture(scope="module")
def con():
    k = connect()
    yield k
    k.close()


def check(con, c: Contract, rows: list[dict], typed: bool = True) -> pa.Table:
    cols = {n: pa.array([r.get(n) for r in rows], pa.string()) for n in (*c.names, "_op")}
    con.register("__in", pa.table(cols))
    try:
        return con.sql(validate_sql(c, "__in", typed=typed)).to_arrow_table()
    finally:
        con.unregister("__in")


@pytest.mark.parametrize("c", FEEDS, ids=lambda c: c.feed_id)
class TestFeedConformance:
    def test_identity_is_one_id_everywhere(self, c: Contract):
        assert c.topic == f"dept.{c.department}.{c.feed}.v{c.version}"
        assert c.prefix == f"{c.department}/{c.feed}"
        assert c.feed_id in connectors(), f"connectors/{c.department}/{c.feed}.py is missing"
        assert connectors()[c.feed_id].contract is c
        assert set(c.key) <= set(c.names) and c.key
        assert c.title_zh and c.department_zh and all(f.label_zh for f in c.fields)

    def test_schemas_are_derived_from_the_declaration(self, c: Contract):
        s = c.arrow_schema()
        assert s.names == [*c.names, "_event_id", "_occurred_at"]
        assert all(s.field(f.name).metadata[b"label_zh"].decode() == f.label_zh for f in c.fields)
        raw = c.raw_schema()
        assert all(raw.field(n).type == pa.string() for n in c.names)
        assert {"_event_id", "_kafka_offset", "_source_file", "_row_number", "_ingested_at"} <= set(raw.names)
        assert {"_raw", "_rule", "_reason"} <= set(c.quarantine_schema().names)
        for f in c.fields:
            if f.kind in ("money",):
                assert s.field(f.name).type == pa.decimal128(14, 2)
            if f.kind == "date":
                assert s.field(f.name).type == pa.date32()
            if f.kind == "id_no" or f.name in ("name", "address"):
                assert f.pii == "direct", f"{f.name} must be classed as direct PII"

    def test_a_valid_record_passes_and_types_to_the_contract(self, con, c: Contract):
        t = check(con, c, [record(c)])
        assert t["_rule"].to_pylist() == [None]
        typed = t.select(list(c.names))
        target = pa.schema([c.arrow_schema().field(n) for n in c.names])
        cast = typed.cast(target, safe=True)  # lossless, or this raises
        assert cast.schema.equals(target, check_metadata=False)

    def test_every_field_rejects_its_kinds_bad_values_naming_the_field(self, con, c: Contract):
        rows, expect = [], []
        for f in c.fields:
            bad = INVALID.get(f.kind)
            if bad:
                rows.append(record(c, **{f.name: bad[0]}))
                expect.append((bad[1], f.name))
            if f.required or f.name in c.key:
                rows.append(record(c, **{f.name: "  "}))
                expect.append(("required_missing", f.name))
            if f.kind in ("money", "decimal", "int") and f.min is not None:
                rows.append(record(c, **{f.name: str(int(f.min) - 1)}))
                expect.append(("out_of_range", f.name))
        t = check(con, c, rows)
        assert list(zip(t["_rule"].to_pylist(), t["_field"].to_pylist(), strict=True)) == expect
        assert set(r for r, _ in expect) <= set(RULES)

    def test_a_delete_needs_only_its_key(self, con, c: Contract):
        row = {k: valid_value(c.field(k)) for k in c.key} | {"_op": "delete"}
        assert check(con, c, [row])["_rule"].to_pylist() == [None]
        nokey = {**row, c.key[0]: None}
        assert check(con, c, [nokey])["_rule"].to_pylist() == ["required_missing"]

    def test_headers_map_from_chinese_labels_and_english_names(self, c: Contract):
        zh = [f.label_zh for f in c.fields]
        en = [f.name.upper() for f in c.fields]
        assert c.map_headers(zh) == (list(c.names), [])
        assert c.map_headers(en) == (list(c.names), [])
        _, missing = c.map_headers(zh[1:])
        assert missing == ([c.fields[0].name] if c.fields[0].required else [])

    def test_raw_mode_keeps_values_as_received(self, con, c: Contract):
        t = check(con, c, [record(c)], typed=False)
        assert all(t[n].to_pylist() == [valid_value(c.field(n))] for n in c.names)


def test_registry_lists_every_feed_of_the_input_contract():
    assert set(contracts()) == {
        "public_security.person", "public_security.vehicle", "human_resources.employment",
        "human_resources.unemployment", "human_resources.pension", "medical_insurance.claim",
        "medical_insurance.enrollment", "housing.property", "housing.housing_aid", "housing.dangerous_house",
        "civil_affairs.assistance_case", "civil_affairs.assistance_payment", "civil_affairs.income_check",
        "disabled_persons_federation.disability"}


def test_datetime_without_offset_is_shanghai_time(con):
    c = contracts()["civil_affairs.income_check"]
    t = check(con, c, [record(c, checked_at="2026-10-01 08:00:00")])
    ts = t["checked_at"].cast(pa.timestamp("s", tz="UTC")).to_pylist()[0]
    assert ts == dt.datetime(2026, 10, 1, 0, 0, tzinfo=dt.UTC)
