"""Generated conformance suite: every feed in the registry, checked the same way.

For each feed a valid record is synthesised from its contract and must pass and type to the
contract's schema; for each field, a value breaking that field's kind must be rejected with the
kind's rule naming that field; deletes need only the key; both header languages map. Then the
round trips through the real ingest and clean steps: Kafka events on the feed's topic (an embedded
broker), a GBK CSV drop with the Chinese labels as headers and an XLSX drop with the English names,
each with one invalid record; the clean table must equal the records sent, typed by the contract,
and `raw/` + `quarantine/` must hold every record sent exactly once.

Nothing here names the feeds: a feed added to the registry (`schemas/<department>/<feed>.py` +
`connectors/<department>/<feed>.py`) is covered without a change to this file.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pyarrow as pa
import pytest

from connectors.base import connectors
from connectors.kafka_producer import ensure_topics, publish
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.broker import EmbeddedBroker
from safetynet.intake.clean import clean_feed, read_clean
from safetynet.intake.ingest import ingest
from schemas import idno
from schemas.contract import Contract, Field
from schemas.normalise import QUARANTINE_RULES, connect, validate_sql
from schemas.registry import contracts

ROOT = Path(__file__).resolve().parents[1]
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
        assert {r for r, _ in expect} <= set(QUARANTINE_RULES)

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


def test_every_feed_module_is_a_registered_contract_with_its_connector():
    """The registry is the list of feeds (nothing here lists them): every
    `schemas/<department>/<feed>.py` declares its contract, every contract has its connector
    module `connectors/<department>/<feed>.py` and every connector module declares its connector."""

    def modules(package: str) -> set[str]:
        return {f"{p.parent.name}.{p.stem}" for p in (ROOT / package).glob("*/*.py")
                if not p.stem.startswith("_") and not p.parent.name.startswith(("_", "."))}

    assert contracts(), "no feed contract found under schemas/<department>/"
    declared, registered = modules("schemas"), set(contracts())
    assert declared == registered, \
        f"declare CONTRACT in schemas/<department>/<feed>.py: {sorted(declared ^ registered)}"
    assert modules("connectors") == set(connectors()) == registered, \
        f"connector modules vs contracts: {sorted((modules('connectors') | set(connectors())) ^ registered)}"


def test_datetime_without_offset_is_shanghai_time(con):
    c = contracts()["civil_affairs.income_check"]
    t = check(con, c, [record(c, checked_at="2026-10-01 08:00:00")])
    ts = t["checked_at"].cast(pa.timestamp("s", tz="UTC")).to_pylist()[0]
    assert ts == dt.datetime(2026, 10, 1, 0, 0, tzinfo=dt.UTC)


# ==== round trips through the real ingest: Kafka, a GBK CSV drop, an XLSX drop ==================
# For every feed: records built from the contract (the VALID values above, varied per record and
# field) travel through the real connector into `raw/` + `quarantine/` and through the clean step;
# the clean table must equal the records sent, typed by the contract, and every record sent must be
# in `raw/` or `quarantine/`, exactly once.
ROUND_TRIP_RECORDS = 3  # valid records per round trip; each trip adds one invalid record
SHANGHAI = ZoneInfo("Asia/Shanghai")
ID18 = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])")


def varied_value(f: Field, i: int, j: int) -> str:
    """Record i's valid text of field number j: `valid_value(f)` varied so that records, and
    fields of one kind within a record, differ (a swapped column or a lost row shows)."""
    v, n = valid_value(f), 3 * j + i
    k = f.kind
    if k == "enum":
        return f.values[n % len(f.values)]
    if k == "string":
        return f"{v}{j}-{i}"
    if k == "id_no":
        return _id(v, n)
    if k == "members":
        return json.dumps([{**m, "id_no": _id(m["id_no"], n + x)} for x, m in enumerate(json.loads(v))],
                          ensure_ascii=False)
    if k == "region_code":
        return v[:9] + f"{n:03d}"
    if k == "credit_code":
        return v[:-2] + f"{n:02d}"
    if k == "date":
        return (dt.date.fromisoformat(v) + dt.timedelta(days=n)).isoformat()
    if k == "datetime":
        return (dt.datetime.fromisoformat(v) + dt.timedelta(hours=n, minutes=n)).strftime("%Y-%m-%d %H:%M:%S")
    if k == "month":
        y, m = (int(x) for x in v.split("-"))
        months = y * 12 + m - 1 - n
        return f"{months // 12}-{months % 12 + 1:02d}"
    if k in ("money", "decimal"):
        d = Decimal(v) + (Decimal(n) if k == "money" else Decimal(n) / 100)
        if f.max is not None:
            d = min(d, Decimal(str(f.max)))
        return f"{d:.2f}" if k == "money" else str(d)
    if k == "int":
        lo = int(v)
        hi = int(f.max) if f.max is not None else lo + 1000
        return str(lo + n % (hi - lo + 1))
    if k in ("bool", "urban_rural"):
        return (v, {"是": "否", "城镇": "农村"}[v])[n % 2]
    if k == "text_list":
        return f"{v}、c{n}"
    raise AssertionError(f"{f.name}: no varied value for kind {k!r}: add it here")


def _id(valid: str, n: int) -> str:
    s17 = valid[:14] + f"{n % 1000:03d}"
    return s17 + idno.check_char(s17)


def typed_value(f: Field, text: str | None):
    """What the clean table must hold for a value sent as `text` (as `varied_value` writes it)."""
    if text is None:
        return None
    return {
        "date": dt.date.fromisoformat,
        "datetime": lambda s: dt.datetime.fromisoformat(s).replace(tzinfo=SHANGHAI),  # no offset: Beijing time
        "money": lambda s: Decimal(s).quantize(Decimal("0.01")),
        "decimal": lambda s: Decimal(s).quantize(Decimal("0.0001")),
        "int": int,
        "bool": lambda s: {"是": True, "否": False}[s],
        "text_list": lambda s: s.split("、"),
        "members": json.loads,
    }.get(f.kind, lambda s: s)(text)


class Records(list):
    """Records as sent; shown with ID numbers masked (pytest prints a failing helper's arguments)."""

    def __repr__(self) -> str:
        return repr(_masked(list(self)))


def sent_records(c: Contract, n: int = ROUND_TRIP_RECORDS) -> Records:
    """n valid records with distinct keys; the second leaves every optional field empty."""
    out = Records()
    for i in range(n):
        out.append({f.name: None if i == 1 and not f.required and f.name not in c.key else varied_value(f, i, j)
                    for j, f in enumerate(c.fields)})
    return out


def invalid_record(c: Contract) -> dict[str, str | None]:
    """A record breaking the contract in a way every feed has: its (first) key field is empty."""
    return {**sent_records(c, ROUND_TRIP_RECORDS + 1)[-1], c.key[0]: None}


def _masked(x):
    """A value as a failure message may show it: every valid ID number masked (前6后4)."""
    if isinstance(x, str):
        return ID18.sub(lambda m: idno.mask(m[0]) if idno.is_valid(m[0]) else m[0], x)
    if isinstance(x, dict):
        return {k: _masked(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_masked(v) for v in x]
    return x


def assert_round_trip(store: ObjectStore, c: Contract, fc, sent: list[dict], n_invalid: int, source: str
                      ) -> pa.Table:
    """The ingest counts, `raw/` + `quarantine/` and the clean table against what was sent."""
    # nothing lost, nothing twice: every record in raw/ or quarantine/
    assert (fc.input, fc.accepted, fc.quarantined_total) == (len(sent) + n_invalid, len(sent), n_invalid)
    assert fc.reconciles and dict(fc.quarantined) == {"required_missing": n_invalid}
    raw = [t for _, t in store.read_tables(f"raw/{c.prefix}/")]
    quarantine = [t for _, t in store.read_tables(f"quarantine/{c.prefix}/")]
    assert sum(t.num_rows for t in raw) == len(sent)
    assert {s for t in raw for s in t["_source"].to_pylist()} == {source}
    assert sum(t.num_rows for t in quarantine) == n_invalid
    assert [(r, f) for t in quarantine for r, f in zip(t["_rule"].to_pylist(), t["_field"].to_pylist(), strict=True)] \
        == [("required_missing", c.key[0])] * n_invalid
    leaks = sum(1 for t in quarantine for r in t["_reason"].to_pylist() if ID18.search(r))
    assert leaks == 0, "an unmasked ID number in a quarantine reason"
    # clean == sent, typed by the contract
    cc = clean_feed(store, c)
    assert cc.reconciles and (cc.raw_rows, cc.rows) == (len(sent), len(sent))
    clean = read_clean(store, c)
    assert [clean.schema.field(n).type for n in c.names] == [c.field(n).arrow_type for n in c.names]
    want = {tuple(typed_value(c.field(k), r[k]) for k in c.key): {f.name: typed_value(f, r[f.name]) for f in c.fields}
            for r in sent}
    got = {tuple(r[k] for k in c.key): r for r in clean.select(list(c.names)).to_pylist()}
    diff = {k: (got.get(k), want.get(k)) for k in want.keys() | got.keys() if got.get(k) != want.get(k)}
    if diff:  # not a bare assert: pytest would show the dicts with their ID numbers unmasked
        pytest.fail(f"{c.feed_id}: clean ≠ sent (got, sent): {_masked(list(diff.values()))}")
    return clean


@pytest.fixture(scope="module")
def feed_broker():
    """One embedded broker for this module's Kafka round trips, with every contract topic."""
    with EmbeddedBroker() as b:
        ensure_topics(b.bootstrap, [c.topic for c in FEEDS])
        yield b


def round_trip_settings(settings: Settings, c: Contract, tmp_path: Path, **update) -> Settings:
    """The test's settings, with a mapping directory of its own (never the working directory's
    `./mappings`) whose file for the feed lifts its health threshold: one invalid record in
    four is far over any sane quarantine rate, and an unhealthy delivery is held out of
    `clean/` — these round trips check the contract, not feed health."""
    mappings = tmp_path / "mappings"
    mappings.mkdir(exist_ok=True)
    (mappings / f"{c.feed_id}.toml").write_text("[health]\nmax_quarantine_rate = 1.0\n", encoding="utf-8")
    return settings.model_copy(update={"mappings": mappings, **update})


def _needs(c: Contract, transport: str) -> None:
    if transport not in connectors()[c.feed_id].transports:
        pytest.skip(f"{c.feed_id} does not arrive by {transport}")


@pytest.mark.integration
@pytest.mark.parametrize("c", FEEDS, ids=lambda c: c.feed_id)
class TestFeedRoundTrips:
    def test_kafka_events_round_trip_to_clean(self, c: Contract, feed_broker, local_settings, local_store, tmp_path):
        _needs(c, "kafka")
        key = connectors()[c.feed_id].message_key
        sent = sent_records(c)

        def envelope(i: int, rec: dict) -> tuple[bytes, bytes]:
            payload = {f.name: (json.loads(v) if f.kind == "members" else int(v) if f.kind == "int" else v)
                       for f in c.fields if (v := rec[f.name]) is not None}
            env = {"event_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{c.topic}/{i}")), "source": c.department,
                   "feed": c.feed, "op": "upsert", "occurred_at": f"2026-10-{1 + i:02d}T08:00:00+08:00",
                   "schema_version": c.version, "payload": payload}
            return str(rec[key] or "").encode(), json.dumps(env, ensure_ascii=False).encode()

        messages = [envelope(i, r) for i, r in enumerate([*sent, invalid_record(c)])]
        publish(feed_broker.bootstrap, c.topic, messages)
        s = round_trip_settings(local_settings, c, tmp_path, kafka_bootstrap=feed_broker.bootstrap, poll_timeout_ms=200)
        fc = ingest(s, local_store, [c.feed_id], kafka=True, files=False).feeds[c.feed_id]
        clean = assert_round_trip(local_store, c, fc, sent, 1, "kafka")
        assert sorted(clean["_event_id"].to_pylist()) == sorted(json.loads(v)["event_id"] for _, v in messages[:-1])
        # the offsets are committed: a second run finds nothing new
        assert ingest(s, local_store, [c.feed_id], kafka=True, files=False).feeds[c.feed_id].input == 0

    def test_gbk_csv_drop_with_chinese_headers_round_trips_to_clean(self, c: Contract, local_settings, local_store,
                                                                    tmp_path):
        _needs(c, "file")
        sent = sent_records(c)
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        w.writerow([f.label_zh for f in c.fields])
        for r in [*sent, invalid_record(c)]:
            w.writerow(["" if r[f.name] is None else r[f.name] for f in c.fields])
        local_store.write_bytes(f"landing/{c.prefix}/x.csv", buf.getvalue().encode("gbk"))
        s = round_trip_settings(local_settings, c, tmp_path)
        fc = ingest(s, local_store, [c.feed_id], kafka=False, files=True).feeds[c.feed_id]
        assert_round_trip(local_store, c, fc, sent, 1, "file")

    def test_xlsx_drop_with_english_headers_round_trips_to_clean(self, c: Contract, local_settings, local_store,
                                                                 tmp_path):
        _needs(c, "file")
        sent = sent_records(c)

        def cell(f: Field, v: str | None):  # real date and number cells where a department's Excel has them
            if v is not None and f.kind == "date":
                return dt.datetime.fromisoformat(v)
            if v is not None and f.kind == "int":
                return int(v)
            return v

        wb = openpyxl.Workbook()
        ws = wb.active
        ws.append(list(c.names))
        for r in [*sent, invalid_record(c)]:
            ws.append([cell(f, r[f.name]) for f in c.fields])
        out = io.BytesIO()
        wb.save(out)
        local_store.write_bytes(f"landing/{c.prefix}/x.xlsx", out.getvalue())
        s = round_trip_settings(local_settings, c, tmp_path)
        fc = ingest(s, local_store, [c.feed_id], kafka=False, files=True).feeds[c.feed_id]
        assert_round_trip(local_store, c, fc, sent, 1, "file")
