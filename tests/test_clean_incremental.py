"""The incremental clean (issue #16): adding new raw files to a feed's clean state gives exactly the
full rebuild's clean file (sha256) and manifest (everything but `written_at`), and it falls back to
the full rebuild whenever that is not shown.

Two stores receive the very same raw files (hand-made rows, written as ingest names them: Kafka
batches `<topic>+<partition>+<first>+<last>`, drops `file+<name>+<version>`); after every append one
is cleaned by `clean_feed` (incremental where it can be) and the other rebuilt in full
(`incremental=False`), and the two are compared. Synthetic data only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.intake import clean_incremental, health
from safetynet.intake.clean import CleanCounts, clean_feed, clean_path, read_clean
from schemas import idno
from schemas.contract import Contract
from schemas.registry import contracts, get

CLAIM = get("medical_insurance.claim")
UNEMP = get("human_resources.unemployment")
PERSON = get("public_security.person")
T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)


def pid(i: int) -> str:
    s17 = f"430103{1950 + i % 50}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}"
    return s17 + idno.check_char(s17)


def generic(c: Contract, k: int, v: int) -> dict[str, str | None]:
    """Valid raw text for any feed's fields: key fields from the key number `k`, the others from the
    version `v` (optional fields empty in some versions)."""
    out: dict[str, str | None] = {}
    for i, f in enumerate(c.fields):
        n = k * 7 + i if f.name in c.key else v + i
        kind = f.kind
        if kind == "id_no":
            val = pid(n)
        elif kind == "date":
            val = f"20{10 + n % 16}-{1 + n % 12:02d}-{1 + n % 28:02d}"
        elif kind == "datetime":
            val = f"2026-09-{1 + n % 28:02d} {n % 24:02d}:{n % 60:02d}:00"
        elif kind == "month":
            val = f"20{20 + n % 6}-{1 + n % 12:02d}"
        elif kind == "money":
            val = f"{1000 + n}.{n % 100:02d}"
        elif kind == "decimal":
            val = f"0.{n % 10}"
        elif kind == "int":
            val = str(1 + n % 4)
        elif kind == "bool":
            val = "是" if n % 2 else "否"
        elif kind == "enum":
            val = f.values[n % len(f.values)]
        elif kind == "urban_rural":
            val = ("城镇", "农村")[n % 2]
        elif kind == "region_code":
            val = f"430103{n % 1000:03d}001"
        elif kind == "credit_code":
            val = f"91430100MA4L{n % 1000000:06d}"
        elif kind == "text_list":
            val = ("困难残疾人生活补贴、重度残疾人护理补贴", "养老,医疗", "")[n % 3] or None
        elif kind == "members":
            val = json.dumps([{"id_no": pid(n), "relation": "本人"}, {"id_no": pid(n + 1), "relation": "配偶"}])
        else:
            val = f"值{n}"
        if not f.required and f.name not in c.key and v % 3 == 2:
            val = None
        out[f.name] = val
    return out


def payload(c: Contract, k: int, v: int) -> dict[str, str | None]:
    """Valid field values (as raw text) for key number `k`, version `v` of the row."""
    if c not in (CLAIM, UNEMP, PERSON):
        return generic(c, k, v)
    if c is CLAIM:
        return {"claim_id": f"CL{k:05d}", "id_no": pid(k), "settle_date": f"2026-09-{1 + v % 28:02d}",
                "hospital_name": "湘雅医院", "inpatient": "是" if v % 2 else "否", "diagnosis_code": "I10",
                "diagnosis_name": None if v % 3 else "高血压", "total_amount": f"{1000 + v}.50",
                "fund_paid": "700.00", "out_of_pocket": f"{300 + v}.50", "serious_illness": None}
    if c is UNEMP:
        return {"id_no": pid(k // 2), "registered_date": f"2026-0{1 + k % 2}-15", "benefit_monthly": f"{1500 + v}.00",
                "status": ("登记", "领取中", "已就业", "注销")[v % 4], "status_date": f"2026-10-{1 + v % 5:02d}"}
    return {"id_no": pid(k), "name": f"测试{k}", "gender": "男" if k % 2 else "女", "birth_date": "1960-01-01",
            "household_no": f"H{k // 3:05d}", "relation_to_head": "户主", "region_code": "430103001001",
            "address": None, "hukou_type": "城镇", "status": ("正常", "死亡", "迁出")[v % 3],
            "status_date": f"2026-10-{1 + v % 5:02d}"}


def key_of(c: Contract, k: int) -> dict[str, str | None]:
    p = payload(c, k, 0)
    return {f: (p[f] if f in c.key else None) for f in c.names}


class Pair:
    """Two stores fed the same raw files: `inc` cleaned incrementally, `full` rebuilt in full."""

    def __init__(self, root: Path, c: Contract):
        self.c = c
        self.inc = ObjectStore.from_settings(Settings(store=str(root / "inc")))
        self.full = ObjectStore.from_settings(Settings(store=str(root / "full")))
        self.clock = T0
        self.offsets: dict[int, int] = {}
        self.event_ids: list[str] = []
        self.n = 0

    # ---- raw files --------------------------------------------------------------------------
    def _tick(self, at: dt.datetime | None) -> dt.datetime:
        if at is None:
            self.clock += dt.timedelta(seconds=1)
            at = self.clock
        return at

    def _write(self, rel: str, rows: list[dict]) -> str:
        data = parquet_bytes(pa.Table.from_pylist(rows, schema=self.c.raw_schema()))
        self.inc.write_bytes(rel, data)
        self.full.write_bytes(rel, data)
        return rel

    def kafka(self, events: list[tuple], partition: int = 0, at: dt.datetime | None = None) -> str:
        """One Kafka batch: events (op, key number, version, occurred_at[, event_id[, fields]])."""
        at = self._tick(at)
        first = self.offsets.get(partition, 0)
        rows = []
        for i, ev in enumerate(events):
            op, k, v, occ = ev[:4]
            eid = ev[4] if len(ev) > 4 and ev[4] else f"ev{self.n}"
            self.n += 1
            self.event_ids.append(eid)
            fields = key_of(self.c, k) if op == "delete" else payload(self.c, k, v)
            if len(ev) > 5:
                fields = {**fields, **ev[5]}
            rows.append({**fields, "_event_id": eid, "_op": op, "_occurred_at": occ, "_source": "kafka",
                         "_kafka_topic": self.c.topic, "_kafka_partition": partition, "_kafka_offset": first + i,
                         "_source_file": None, "_row_number": None, "_ingested_at": at, "_mapping": None})
        self.offsets[partition] = first + len(events)
        name = f"{self.c.topic}+{partition}+{first}+{first + len(events) - 1}"
        return self._write(paths.raw_batch(self.c.prefix, at.date().isoformat(), name), rows)

    def drop(self, name: str, version: str, rows: list[tuple[int, int]], stamp: str = "20261031",
             at: dt.datetime | None = None) -> str:
        """A tabular drop file: rows (key number, version) with event ids file:<version>:<row>."""
        at = self._tick(at)
        out = [{**payload(self.c, k, v), "_event_id": f"file:{version}:{r}", "_op": "upsert", "_occurred_at": stamp,
                "_source": "file", "_kafka_topic": None, "_kafka_partition": None, "_kafka_offset": None,
                "_source_file": f"landing/{self.c.prefix}/{name}", "_row_number": r, "_ingested_at": at,
                "_mapping": None} for r, (k, v) in enumerate(rows, start=2)]
        return self._write(paths.raw_batch(self.c.prefix, at.date().isoformat(), f"file+{name}+{version}"), out)

    # ---- the comparison ---------------------------------------------------------------------
    def check(self, incremental: bool | None = None) -> CleanCounts:
        """Clean both; the incremental store's result must be the full rebuild's, byte for byte."""
        got = clean_feed(self.inc, self.c)
        want = clean_feed(self.full, self.c, incremental=False)
        assert not want.incremental and want.fallback == "full rebuild asked for"
        a, b = self.inc.read_bytes(clean_path(self.c)), self.full.read_bytes(clean_path(self.c))
        assert hashlib.sha256(a).hexdigest() == hashlib.sha256(b).hexdigest(), got.fallback
        assert manifest(self.inc, self.c) == manifest(self.full, self.c)
        assert got == want and got.reconciles
        if incremental is not None:
            assert got.incremental is incremental, got.fallback
        return got


def manifest(store: ObjectStore, c: Contract) -> dict:
    m = json.loads(store.read_bytes(paths.clean_manifest(c.prefix)))
    m.pop("written_at")
    return m


@pytest.fixture
def claim(tmp_path) -> Pair:
    return Pair(tmp_path, CLAIM)


def occ(day: int, hour: int = 8) -> str:
    return f"2026-10-{day:02d}T{hour:02d}:00:00+08:00"


# ---- appends of each kind --------------------------------------------------------------------------
def test_kafka_appends_of_each_kind_equal_the_full_rebuild(claim):
    p = claim
    assert p.check(incremental=False).fallback == "no incremental state yet"  # nothing at all yet
    p.kafka([("upsert", k, 0, occ(1)) for k in range(20)])
    first = p.check(incremental=True)  # from the empty state
    assert first.rows == 20
    p.kafka([("upsert", k, 0, occ(2)) for k in range(20, 25)], partition=1)  # new keys
    assert p.check(incremental=True).rows == 25
    p.kafka([("upsert", 3, 1, occ(5)), ("upsert", 4, 1, occ(5))])  # corrections (later event time)
    c = p.check(incremental=True)
    assert (c.rows, c.superseded) == (25, 2)
    p.kafka([("upsert", 5, 9, occ(1, 7))])  # out of order: older than the version in force → superseded
    assert p.check(incremental=True).superseded == 3
    p.kafka([("upsert", 6, 9, occ(1))])  # same event time as the version in force: the later ingest wins
    assert str(read_row(p, "CL00006")["total_amount"]) == "1009.50"
    p.kafka([("delete", 7, 0, occ(6)), ("delete", 8, 0, occ(6)), ("delete", 9, 0, occ(1, 6))])  # last one too old
    c = p.check(incremental=True)
    assert (c.rows, c.deleted) == (23, 2)
    p.kafka([("upsert", 7, 2, occ(7))])  # a deleted key comes back
    p.kafka([("delete", 8, 0, occ(8))])  # a deleted key deleted again
    c = p.check(incremental=True)
    assert (c.rows, c.deleted, c.superseded) == (24, 1, 9)
    # redeliveries: of a row in force, of a superseded row, of a deletion; twice within one batch (the
    # same content: "dup2"); an id used again for other content ("dup": key 30's version 1) is an event
    # of its own, not a redelivery — it supersedes version 0 — and counted as reused
    p.kafka([("upsert", 0, 0, occ(1), "ev0"), ("upsert", 5, 9, occ(1, 7), p.event_ids[27]),
             ("delete", 8, 0, occ(6), p.event_ids[30]), ("upsert", 30, 0, occ(3), "dup"),
             ("upsert", 30, 1, occ(4), "dup"), ("upsert", 32, 0, occ(3), "dup2"), ("upsert", 32, 0, occ(3), "dup2")])
    c = p.check(incremental=True)
    assert (c.redelivered, c.reused_event_ids, c.rows) == (4, 1, 26) and c.reused_examples == ("dup",)
    assert str(read_row(p, "CL00030")["total_amount"]) == "1001.50"
    p.kafka([("upsert", 31, 0, occ(3)), ("delete", 31, 0, occ(3))])  # same time: the later offset (delete) wins
    p.kafka([("upsert", 40 + i, 0, occ(1 + i % 9)) for i in range(30)], partition=2)
    assert p.check(incremental=True).rows == 56


def read_row(p: Pair, claim_id: str) -> dict:
    p.check(incremental=True)
    return next(r for r in read_clean(p.inc, p.c).to_pylist() if r["claim_id"] == claim_id)


def test_nothing_new_rewrites_the_same_bytes(claim):
    claim.kafka([("upsert", k, 0, occ(1)) for k in range(5)])
    claim.check()
    before = claim.inc.read_bytes(clean_path(CLAIM))
    assert claim.check(incremental=True).rows == 5
    assert claim.inc.read_bytes(clean_path(CLAIM)) == before


def test_drops_a_new_name_is_incremental_a_new_version_is_not(claim):
    p = claim
    p.kafka([("upsert", k, 0, occ(1)) for k in range(10)])
    p.check()
    p.drop("claim_20261101.csv", "aaaaaaaaaaaa", [(k, 3) for k in range(5, 15)])
    c = p.check(incremental=True)
    assert (c.rows, c.superseded) == (15, 5)
    p.drop("claim_20261102.csv", "bbbbbbbbbbbb", [(k, 4) for k in range(12, 20)], stamp="20261102")
    p.kafka([("upsert", 19, 7, occ(31))])
    assert p.check(incremental=True).rows == 20
    p.drop("claim_20261101.csv", "cccccccccccc", [(k, 5) for k in range(5, 8)])  # a corrected re-export
    c = p.check(incremental=False)
    assert c.fallback.startswith("a changed drop file") and c.superseded_file_versions == 10
    p.kafka([("upsert", 50, 0, occ(2))])
    assert p.check(incremental=True).rows == 19  # back on the incremental path after the rebuild


def test_event_ids_shaped_like_drop_rows_in_a_json_lines_drop(claim):
    """A JSON Lines drop of envelopes keeps its event ids: redelivery across Kafka and the drop."""
    p = claim
    p.kafka([("upsert", k, 0, occ(1), f"e{k}") for k in range(6)])
    p.check()
    at = p._tick(None)
    # e0–e2 again with their fields (a later `occurred_at` does not make another event): redeliveries
    rows = [{**payload(CLAIM, k, 0 if k < 3 else 1), "_event_id": f"e{k}" if k < 3 else f"x{k}", "_op": "upsert",
             "_occurred_at": occ(2), "_source": "file", "_kafka_topic": None, "_kafka_partition": None,
             "_kafka_offset": None, "_source_file": f"landing/{CLAIM.prefix}/outbox.jsonl", "_row_number": r,
             "_ingested_at": at, "_mapping": None} for r, k in enumerate(range(8), start=1)]
    p._write(paths.raw_batch(CLAIM.prefix, at.date().isoformat(), "file+outbox.jsonl+dddddddddddd"), rows)
    c = p.check(incremental=True)
    assert (c.redelivered, c.rows) == (3, 8)


def test_composite_key_and_order_by(tmp_path):
    """Unemployment: key (id_no, registered_date), versions of a key ordered by event time then status_date."""
    p = Pair(tmp_path, UNEMP)
    p.kafka([("upsert", k, 0, occ(1)) for k in range(8)])
    p.check()
    p.kafka([("upsert", 2, 3, occ(1)), ("upsert", 3, 0, occ(1), None, {"status_date": None})])  # ties on __ts
    p.kafka([("upsert", 4, 4, occ(1), None, {"status_date": "2026-09-01"})])  # older status_date loses
    p.kafka([("delete", 5, 0, occ(2)), ("upsert", 6, 1, occ(1, 6))])
    c = p.check(incremental=True)
    assert (c.rows, c.deleted, c.superseded) == (7, 1, 5)
    p.kafka([("upsert", 5, 2, occ(2))])  # same time as the delete: later ingest wins
    assert p.check(incremental=True).rows == 8


def test_snapshot_feed_events_are_incremental_a_new_snapshot_is_a_rebuild(tmp_path):
    p = Pair(tmp_path, PERSON)
    p.drop("person_20261031.csv", "a1a1a1a1a1a1", [(k, 0) for k in range(10)], stamp="2026-10-31")
    assert p.check(incremental=False).rows == 10
    p.kafka([("upsert", 3, 1, "2026-11-02T09:00:00+08:00"), ("upsert", 20, 0, "2026-11-02T09:00:00+08:00")])
    p.kafka([("upsert", 4, 1, "2026-10-30T09:00:00+08:00")])  # before the snapshot: older_snapshot
    c = p.check(incremental=True)
    assert (c.rows, c.older_snapshots, c.superseded) == (11, 1, 1)
    p.kafka([("delete", 5, 0, "2026-11-03T09:00:00+08:00")])
    assert p.check(incremental=True).rows == 10
    p.drop("person_20261130.csv", "b2b2b2b2b2b2", [(k, 1) for k in range(2, 12)], stamp="2026-11-30")
    c = p.check(incremental=False)
    assert c.fallback == "a new snapshot drop" and c.rows == 10
    p.kafka([("upsert", 30, 0, "2026-12-01T09:00:00+08:00"), ("upsert", 2, 2, "2026-11-01T09:00:00+08:00")])
    c = p.check(incremental=True)
    assert (c.rows, c.older_snapshots) == (11, 15)


def test_invalid_raw_rows_are_counted_alike(claim):
    """Raw rows that fail the contract (never expected: raw is validated on entry) are counted the same way."""
    p = claim
    p.kafka([("upsert", k, 0, occ(1)) for k in range(4)])
    p.check()
    p.kafka([("upsert", 1, 1, occ(2), None, {"settle_date": "不是日期"}), ("upsert", 0, 0, occ(2), "ev0")])
    c = p.check(incremental=True)
    assert (c.invalid, c.redelivered, c.rows) == (1, 1, 4)


@pytest.mark.slow  # 15 feeds × ~1 s: the full suite, not the inner loop
@pytest.mark.parametrize("feed_id", sorted(contracts()))
def test_every_feed_kafka_appends(tmp_path, feed_id):
    """Every feed's types (lists, structs, date-times, decimals; composite and date-time keys): new
    keys, later and earlier versions, deletes, revivals, redeliveries."""
    c = contracts()[feed_id]
    p = Pair(tmp_path, c)
    p.kafka([("upsert", k, 0, occ(1)) for k in range(8)])
    p.check()
    p.kafka([("upsert", k, 1, occ(2)) for k in range(4, 10)], partition=1)
    p.kafka([("upsert", 1, 2, occ(1, 6)), ("upsert", 2, 2, occ(1)), ("delete", 3, 0, occ(3))])
    c1 = p.check(incremental=True)
    assert c1.rows == 9 and c1.deleted == 1
    # redeliveries of key 0's and key 3's first events; key 4's event id used again for a new key
    p.kafka([("upsert", 3, 4, occ(4)), ("delete", 5, 0, occ(4)), ("upsert", 0, 0, occ(1), "ev0"),
             ("upsert", 3, 0, occ(1), p.event_ids[3]), ("upsert", 11, 5, occ(9), p.event_ids[4])])
    c2 = p.check(incremental=True)
    assert (c2.rows, c2.redelivered, c2.reused_event_ids) == (10, 2, 1)


# ---- fallbacks -------------------------------------------------------------------------------------
def test_fallbacks_to_the_full_rebuild(claim):
    p = claim
    p.kafka([("upsert", k, 0, occ(1)) for k in range(10)])
    p.check()
    # a raw file rewritten (a replay of the batch: same name, new bytes)
    f = p.kafka([("upsert", 10, 0, occ(2))])
    p.check(incremental=True)
    p.offsets[0] -= 1
    assert p.kafka([("upsert", 10, 1, occ(2))]) == f
    assert p.check(incremental=False).fallback == "raw files rewritten"
    # a raw file removed
    f = p.kafka([("upsert", 11, 0, occ(2))])
    p.check(incremental=True)
    p.inc.delete(f)
    p.full.delete(f)
    assert p.check(incremental=False).fallback == "raw files removed"
    # new rows ingested no later than the cleaned ones
    p.kafka([("upsert", 12, 0, occ(2))])
    p.check(incremental=True)
    p.kafka([("upsert", 15, 0, occ(2))], at=p.clock)
    assert p.check(incremental=False).fallback == "new raw rows not ingested after every cleaned one"
    # a delivery held (and released)
    g = p.kafka([("upsert", 13, 0, occ(2))])
    for s in (p.inc, p.full):
        health.set_held(s, CLAIM, {g: {"why": "test"}}, [])
    assert p.check(incremental=False).fallback == "held deliveries changed"
    p.kafka([("upsert", 14, 0, occ(2))])
    assert p.check(incremental=True).rows == 14  # the held file left out
    for s in (p.inc, p.full):
        health.release(s, CLAIM, by="test")
    assert p.check(incremental=False).fallback == "held deliveries changed"
    # a raw file name ingest does not write
    p._write(paths.raw_batch(CLAIM.prefix, "2026-11-01", "stray"), [])
    assert p.check(incremental=False).fallback == "a raw file name ingest does not write"


def test_fallbacks_on_damaged_or_foreign_state(claim, monkeypatch):
    p = claim
    p.kafka([("upsert", k, 0, occ(1)) for k in range(10)])
    p.check()
    state = paths.clean_state(CLAIM.prefix) + "state.json"
    p.kafka([("upsert", 20, 0, occ(2))])
    p.inc.write_bytes(state, b"{not json")
    assert p.check(incremental=False).fallback == "incremental state damaged"
    p.kafka([("upsert", 21, 0, occ(2))])
    st = json.loads(p.inc.read_bytes(state))
    for seg in st["segments"]:
        p.inc.delete(seg)
    assert "segment is missing" in p.check(incremental=False).fallback
    p.kafka([("upsert", 22, 0, occ(2))])
    p.inc.write_bytes(clean_path(CLAIM), b"damaged")  # what `store verify --repair` then rebuilds
    assert p.check(incremental=False).fallback == "clean file is not the one the manifest describes"
    p.kafka([("upsert", 23, 0, occ(2))])
    p.inc.delete(paths.clean_manifest(CLAIM.prefix))
    assert p.check(incremental=False).fallback == "clean manifest missing or damaged"
    p.kafka([("upsert", 24, 0, occ(2))])
    p.inc.delete(state)
    assert p.check(incremental=False).fallback == "no incremental state yet"
    p.kafka([("upsert", 25, 0, occ(2))])
    monkeypatch.setattr(clean_incremental, "STATE_FORMAT", clean_incremental.STATE_FORMAT + 1)
    assert p.check(incremental=False).fallback.startswith("contract, normaliser SQL")
    p.kafka([("upsert", 26, 0, occ(2))])
    assert p.check(incremental=True).rows == 17


def test_a_crash_between_data_and_state_is_a_rebuild(claim):
    """The clean file and manifest are written before the state: a state older than them is not used."""
    p = claim
    p.kafka([("upsert", k, 0, occ(1)) for k in range(5)])
    p.check()
    state = paths.clean_state(CLAIM.prefix) + "state.json"
    old = p.inc.read_bytes(state)
    p.kafka([("upsert", 5, 0, occ(2))])
    p.check(incremental=True)
    p.inc.write_bytes(state, old)  # as if the process died before writing the new state
    p.kafka([("upsert", 6, 0, occ(2))])
    assert p.check(incremental=False).fallback == "clean manifest is not the one the incremental state describes"


def test_event_id_segments_are_merged(claim, monkeypatch):
    monkeypatch.setattr(clean_incremental, "MAX_SEGMENTS", 3)
    p = claim
    for i in range(7):
        p.kafka([("upsert", i, 0, occ(1)), ("upsert", 0, 0, occ(1), "ev0")])  # ev0: key 0's first event
        p.check(incremental=None if i == 0 else True)
        st = json.loads(p.inc.read_bytes(paths.clean_state(CLAIM.prefix) + "state.json"))
        assert 1 <= len(st["segments"]) <= 3
        # no side file is left that the state does not name
        names = {e.path for e in p.inc.list(paths.clean_state(CLAIM.prefix))}
        assert names == {*st["segments"], st["deleted"], paths.clean_state(CLAIM.prefix) + "state.json"}
    assert p.check(incremental=True).redelivered == 7


def test_ingest_of_drops_then_incremental_clean(local_settings, local_store, tmp_path):
    """Real ingest (CSV drops through `ingest`) into a store; its raw files copied to a twin that is
    rebuilt in full after each clean."""
    from safetynet.intake.ingest import ingest
    from tests.test_drops import ID, csv_bytes

    twin = ObjectStore.from_settings(Settings(store=str(tmp_path / "twin")))

    def step(name: str, rows: list[list[str]], incremental: bool | None) -> CleanCounts:
        local_store.write_bytes(f"landing/medical_insurance/claim/{name}", csv_bytes(rows))
        ingest(local_settings, local_store, [CLAIM.feed_id], kafka=False)
        got = clean_feed(local_store, CLAIM)
        shutil.rmtree(twin.full(paths.raw(CLAIM.prefix)), ignore_errors=True)
        for e in local_store.list(paths.raw(CLAIM.prefix)):
            twin.write_bytes(e.path, local_store.read_bytes(e.path))
        want = clean_feed(twin, CLAIM, incremental=False)
        assert local_store.read_bytes(clean_path(CLAIM)) == twin.read_bytes(clean_path(CLAIM))
        assert manifest(local_store, CLAIM) == manifest(twin, CLAIM) and got == want
        if incremental is not None:
            assert got.incremental is incremental, got.fallback
        return got

    row = ["C1", ID, "2026-09-01", "h", "是", "I10", "100", "80", "20"]
    step("claim_20261001.csv", [row, ["C2", *row[1:]]], None)
    step("claim_20261002.csv", [["C2", *row[1:6], "200", "150", "50"], ["C3", *row[1:]]], True)
    c = step("claim_20261001.csv", [row], False)  # a changed file under the same name
    assert c.superseded_file_versions == 2 and c.rows == 3
    assert os.path.exists(local_store.full(paths.clean_state(CLAIM.prefix) + "state.json"))


# ---- random sequences ------------------------------------------------------------------------------
OPS = st.lists(st.tuples(
    st.sampled_from(["upsert", "upsert", "upsert", "delete", "redeliver", "drop", "invalid"]),
    st.integers(0, 11),  # key number
    st.integers(0, 5),  # version of the fields
    st.integers(1, 4),  # event day: few, so that event times tie
    st.integers(0, 2),  # partition
), min_size=1, max_size=6)


@pytest.mark.slow  # ~8 s: the full suite, not the inner loop
@settings(max_examples=int(os.environ.get("SAFETYNET_CLEAN_EXAMPLES", "20")))  # more: set it
@given(feed=st.sampled_from(["medical_insurance.claim", "human_resources.unemployment", "public_security.person",
                              *sorted(contracts())]), steps=st.lists(OPS, min_size=1, max_size=6), data=st.data())
def test_random_sequences_equal_the_full_rebuild(tmp_path_factory, feed, steps, data):
    c = contracts()[feed]
    bad = next(f.name for f in c.fields if f.kind in ("date", "money", "enum", "int") and f.required)
    p = Pair(tmp_path_factory.mktemp("seq"), c)
    drops = 0
    for batch in steps:
        events, files = [], []
        for op, k, v, day, part in batch:
            if op == "drop":
                files.append((k, v, day))
            elif op == "redeliver" and p.event_ids:
                eid = data.draw(st.sampled_from(p.event_ids))
                events.append((("upsert", k, v, occ(day), eid), part))
            elif op == "invalid":
                events.append((("upsert", k, v, occ(day), None, {bad: "x"}), part))
            else:
                events.append(((op if op != "redeliver" else "upsert", k, v, occ(day)), part))
        for part in sorted({pt for _, pt in events}):
            p.kafka([e for e, pt in events if pt == part], partition=part)
        if files:
            drops += 1
            name = f"{c.feed}_{data.draw(st.integers(0, 2))}.csv"  # a name may come again: a new version
            p.drop(name, f"{drops:012d}", [(k, v) for k, v, _ in files], stamp=f"2026-10-0{files[0][2]}")
        got = p.check()
        event("incremental" if got.incremental else f"full: {got.fallback}")  # --hypothesis-show-statistics


def test_an_event_id_reused_for_other_content_is_kept_and_warned_once(claim, caplog):
    """A producer that reuses event ids (a counter reset, an outbox re-export of a changed row): the
    later record is another event, not a redelivery — a new key's row was left out of clean/ without
    a word. Kept, counted as `reused_event_ids` (not part of the sum), warned once with the id."""
    p = claim
    p.kafka([("upsert", 1, 0, occ(1), "e1"), ("upsert", 2, 0, occ(1), "e2")])
    p.check()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safetynet.intake.clean"):
        p.kafka([("upsert", 7, 0, occ(2), "e1"), ("upsert", 2, 3, occ(2), "e2"), ("upsert", 1, 0, occ(3), "e1")])
        got = clean_feed(p.inc, p.c)
    assert (got.rows, got.redelivered, got.reused_event_ids, got.superseded) == (3, 1, 2, 1) and got.reconciles
    assert got.incremental and got.reused_examples == ("e1", "e2")
    warned = [r.getMessage() for r in caplog.records if "event id" in r.getMessage()]
    assert len(warned) == 1 and "2 record(s)" in warned[0] and "e1, e2" in warned[0]
    assert str(read_row(p, "CL00002")["total_amount"]) == "1003.50"  # the later event of key 2 in force
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="safetynet.intake.clean"):
        p.kafka([("upsert", 8, 0, occ(2))])
        again = clean_feed(p.inc, p.c)
    assert again.reused_event_ids == 2 and not [r for r in caplog.records if "event id" in r.getMessage()]
    assert manifest(p.inc, p.c)["counts"]["reused_event_ids"] == 2
