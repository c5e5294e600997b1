"""The quality gate's sources (`quality.sources`): a Parquet file read by position, never whole.

Hand-written rows, not the generator's: a county's claims export with bad ID numbers and nulls in
chosen rows, written in many small row groups, so that positions, helper columns and rows read back
cross row-group and block boundaries.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quality import checks, gate, sources
from quality.sources import ArrowSource, ParquetSource, Reader, snapshot_file
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from schemas import idno, normalise

SNAP = dt.date(2026, 11, 1)


def _id(i: int) -> str:
    """A valid ID number of a person born 1950–1999 in 430104 (岳麓区)."""
    body = f"430104{1950 + i % 50}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}"
    return body + idno.CHECK[sum(int(d) * w for d, w in zip(body, idno.WEIGHTS, strict=True)) % 11]


N = 2_503  # not a multiple of the row group size (97) nor of the helper block (250)
BAD = {5: "43010419500101001X", 96: "4301041950010100", 97: "430104195002300011", 2_400: "43010419500101001Ｘ"}
NULL = {0, 98, 1_999}


@pytest.fixture(scope="module")
def claims_file(tmp_path_factory) -> tuple[str, pa.Table]:
    ids = [None if i in NULL else BAD.get(i, _id(i)) for i in range(N)]
    t = pa.table({
        "claim_id": pa.array([f"YB{i:07d}" for i in range(N)]),
        "id_no": pa.array(ids, pa.string()),
        "out_of_pocket": pa.array([Decimal(i % 500) / 4 for i in range(N)], pa.decimal128(14, 2)),
        "settled_at": pa.array([dt.datetime(2026, 10, 1, 8, tzinfo=dt.UTC) + dt.timedelta(minutes=i) for i in range(N)],
                               pa.timestamp("ms", tz="Asia/Shanghai")),
        "members": pa.array([[{"id_no": _id(i), "relation": "配偶"}] if i % 3 else [] for i in range(N)],
                            pa.list_(pa.struct([("id_no", pa.string()), ("relation", pa.string())]))),
    })
    path = str(tmp_path_factory.mktemp("src") / "claims.parquet")
    pq.write_table(t, path, row_group_size=97)
    return path, t


def test_rows_read_by_position_are_the_rows_stored(claims_file):
    path, t = claims_file
    con = normalise.connect()
    src = ParquetSource(path, Reader(con))
    assert src.rows == N and src.names == t.column_names and pq.ParquetFile(path).num_row_groups == 26
    pos = np.array([0, 96, 97, 98, 1_000, 1_999, 2_400, N - 1])
    assert src.at(pos).equals(t.take(pa.array(pos)))  # every type as stored: decimal, ms with zone, list of struct
    assert src.at(pos, ["id_no"]).column_names == ["id_no"]
    assert src.at(np.array([], np.int64), ["id_no"]).num_rows == 0
    assert src.column("claim_id").equals(t["claim_id"])
    assert ArrowSource(t, "t").at(pos, ["id_no", "claim_id"]).equals(t.select(["id_no", "claim_id"]).take(pa.array(pos)))


def test_a_closed_reader_makes_no_cursor_on_any_thread(claims_file):
    path, _ = claims_file
    reader = Reader(normalise.connect())
    src = ParquetSource(path, reader)
    pos = np.array([0, 5])
    assert src.at(pos, ["claim_id"]).num_rows == 2
    with ThreadPoolExecutor(1) as other:  # its own cursor
        assert other.submit(src.at, pos, ["claim_id"]).result().num_rows == 2
    assert len(reader.cursors) == 2
    reader.close()
    assert reader.cursors == []
    with ThreadPoolExecutor(1) as other, pytest.raises(RuntimeError, match="closed"):
        other.submit(src.at, pos, ["claim_id"]).result()
    assert reader.cursors == []


def test_helper_columns_line_up_with_their_rows_across_row_groups_and_blocks(claims_file, monkeypatch):
    """Helpers are computed 250 rows at a time, joined to the file's 26 row groups by position: each
    row's ID check is its own row's, whatever the boundaries."""
    path, t = claims_file
    monkeypatch.setattr(sources, "_BATCH", 250)
    con = normalise.connect()
    helped = ParquetSource(path, Reader(con)).with_helpers(
        {("__fmt", "__ok"): ("id_no", checks.id_checks), ("__members_ok",): ("members", checks.members_ok)}, "qg_h")
    helped.register(con)
    got = con.sql(f"SELECT __pos, claim_id, id_no, __ok, __fmt, __members_ok FROM {helped.relation} ORDER BY __pos"
                  ).to_arrow_table()
    helped.unregister(con)
    assert got["__pos"].to_pylist() == list(range(N))
    assert got["claim_id"].equals(t["claim_id"]) and got["id_no"].equals(t["id_no"])
    ok = got["__ok"].to_pylist()
    assert [i for i, v in enumerate(ok) if v is False] == sorted(BAD) and [i for i, v in enumerate(ok) if v is None] == sorted(NULL)
    assert [i for i, v in enumerate(got["__fmt"].to_pylist()) if v is False] == [96, 2_400]  # 16 chars; a full-width Ｘ
    assert [i for i, v in enumerate(got["__members_ok"].to_pylist()) if not v] == [i for i in range(N) if i % 3 == 0]


def _claims(t: pa.Table) -> pa.Table:
    """The rows as a hospital's claims in the contract's columns; out-of-pocket negative in two rows."""
    money = pa.array([Decimal(-5) if i in (7, 1_500) else Decimal(i % 500) / 4 for i in range(N)], pa.decimal128(14, 2))
    return pa.table({"claim_id": t["claim_id"], "id_no": t["id_no"],
                     "settle_date": pa.array([dt.date(2026, 10, 1 + i % 28) for i in range(N)], pa.date32()),
                     "hospital_name": pa.array(["湘雅医院"] * N), "inpatient": pa.array([i % 4 == 0 for i in range(N)]),
                     "diagnosis_code": pa.array(["C34.9" if i % 9 else "I63.9" for i in range(N)]),
                     "diagnosis_name": pa.nulls(N, pa.string()), "total_amount": t["out_of_pocket"],
                     "fund_paid": pa.array([Decimal(0)] * N, pa.decimal128(14, 2)), "out_of_pocket": money,
                     "serious_illness": pa.array([None] * N, pa.bool_())})


def test_the_gate_reads_a_file_where_it_lies_and_reports_what_the_table_in_memory_does(claims_file, tmp_path,
                                                                                        monkeypatch):
    from safetynet.intake.clean import clean_path
    from schemas.registry import contracts

    monkeypatch.setattr(sources, "_BATCH", 250)
    claim = "medical_insurance.claim"
    table = _claims(claims_file[1])
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    file = store.full(clean_path(contracts()[claim]))
    os.makedirs(os.path.dirname(file))
    pq.write_table(table, file, row_group_size=97)
    from_store = gate.validate(store, SNAP, feeds=[claim], sample_rows=40)
    in_memory = gate.validate({claim: table}, SNAP, feeds=[claim], sample_rows=40)
    key = sorted((f.suite, f.check, f.field or "", f.unexpected_count, tuple(f.examples)) for f in from_store.failures)
    assert key == sorted((f.suite, f.check, f.field or "", f.unexpected_count, tuple(f.examples))
                         for f in in_memory.failures)
    [bad] = [f for f in from_store.failures if f.check == "id_valid"]
    assert bad.unexpected_count == len(BAD) and len(bad.examples) == len(BAD)
    assert bad.examples[0] == "claim_id=YB0000005 id_no=430104********001X"
    assert not any(v in " ".join(bad.examples) for v in BAD.values())  # masked 前6后4, never whole
    [money] = [f for f in from_store.failures if f.check == "no_negative_money"]
    assert money.unexpected_count == 2 and money.examples == [
        "medical_insurance.claim: claim_id=YB0000007 out_of_pocket=-5", "medical_insurance.claim: claim_id=YB0001500 out_of_pocket=-5"]
    assert not [p for p in os.listdir(store.root) if p.startswith(".tmp-quality-")]  # its links are gone


def test_a_snapshot_of_a_store_file_does_not_change_when_the_file_is_rewritten(tmp_path):
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    store.write_bytes("clean/x/part-00000.parquet", b"first version")
    into = tmp_path / "scratch"
    into.mkdir()
    path, sha = snapshot_file(store, "clean/x/part-00000.parquet", str(into))
    store.write_bytes("clean/x/part-00000.parquet", b"second, longer version")  # atomic replace, as ingest does
    with open(path, "rb") as f:
        assert f.read() == b"first version"
    import hashlib

    assert sha == hashlib.sha256(b"first version").hexdigest()
    assert os.path.basename(path).startswith(".tmp-")  # no store listing shows it


@pytest.mark.parametrize(("rows", "want"), [
    ([("A", 1), ("A", 2), ("B", 0)], True),
    ([("A", 1), ("A", 1), ("B", 0)], False),  # a duplicate, adjacent
    ([("A", 2), ("A", 1)], False),  # second column down under an equal first
    ([("B", 0), ("A", 9)], False),
    ([("Z", 0), ("a", 0), ("é", 0), ("中", 0)], True),  # code point order, as DuckDB's binary collation
    ([("A", None), ("B", 0)], False),  # a null key: left to the grouped count
    ([], True),
])
def test_a_strictly_ascending_key_is_unique(rows, want):
    t = pa.table({"k": pa.array([r[0] for r in rows], pa.string()), "n": pa.array([r[1] for r in rows], pa.int64())})
    assert checks.strictly_ascending([t], ["k", "n"]) is want
    # the same rows cut into blocks of one: every comparison is then across a block boundary
    assert checks.strictly_ascending(t.to_batches(max_chunksize=1), ["k", "n"]) is want
    # a column read dictionary-encoded (a code) compares by its dictionary's ranks: the same verdict,
    # whatever order the dictionary holds its values in (here reversed from first appearance)
    for k in (t["k"].dictionary_encode(), _reversed_dictionary(t["k"])):
        d = t.set_column(0, "k", k)
        assert checks.strictly_ascending([d], ["k", "n"]) is want
        assert checks.strictly_ascending(d.to_batches(max_chunksize=1), ["k", "n"]) is want


def _reversed_dictionary(col: pa.ChunkedArray) -> pa.ChunkedArray:
    values = list(dict.fromkeys(v for v in col.to_pylist() if v is not None))[::-1]
    index = {v: i for i, v in enumerate(values)}
    return pa.chunked_array([pa.DictionaryArray.from_arrays(
        pa.array([None if v is None else index[v] for v in col.to_pylist()], pa.int32()),
        pa.array(values, pa.string()))])


def test_strictly_ascending_agrees_with_sorting_and_counting(tmp_path):
    import random

    rng = random.Random(11)
    for trial in range(60):
        n = rng.randrange(0, 40)
        rows = sorted({(rng.choice(["4301", "4302", "43011", "Ａ"]), rng.randrange(3)) for _ in range(n)})
        if trial % 3 == 1 and rows:  # a duplicate somewhere
            i = rng.randrange(len(rows))
            rows.insert(i, rows[i])
        elif trial % 3 == 2 and len(rows) > 1:  # two rows swapped
            i = rng.randrange(len(rows) - 1)
            rows[i], rows[i + 1] = rows[i + 1], rows[i]
        t = pa.table({"k": [r[0] for r in rows], "n": [r[1] for r in rows]})
        path = str(tmp_path / f"t{trial}.parquet")
        pq.write_table(t, path, row_group_size=3)
        want = all(a < b for a, b in itertools.pairwise(rows))  # Python compares str by code point
        assert ParquetSource(path, Reader(normalise.connect())).ascending(["k", "n"]) is want, rows
        # read as a code column is (dictionary-encoded, a row group's dictionary per batch)
        coded = pq.ParquetFile(path, read_dictionary=["k"]).iter_batches(batch_size=2, columns=["k", "n"])
        assert checks.strictly_ascending(coded, ["k", "n"]) is want, rows


# ---- what a second pair of eyes asked for: S3, copies, leftovers, statistics, keys Arrow cannot order ----

@pytest.mark.s3
def test_a_snapshot_from_s3_is_read_again_when_the_object_changes_meanwhile(s3_store, tmp_path):
    s3_store.write_bytes("clean/x/part-00000.parquet", b"the clean file")
    real, infos = s3_store.fs, []

    class Changing:  # the first read sees the object's size change under it
        def __getattr__(self, name):
            return getattr(real, name)

        def get_file_info(self, path):
            got = real.get_file_info(path)
            infos.append(got.size)
            if len(infos) == 2:
                return pa.fs.FileInfo(got.path, got.type, size=got.size + 1)
            return got

    import hashlib

    s3_store.fs = Changing()
    try:
        path, sha = snapshot_file(s3_store, "clean/x/part-00000.parquet", str(tmp_path))
        other, _ = snapshot_file(s3_store, "clean/x/part-00000.parquet", str(tmp_path))
    finally:
        s3_store.fs = real
    assert len(infos) == 6  # read, changed, read again (then the second snapshot)
    assert Path(path).read_bytes() == b"the clean file" and sha == hashlib.sha256(b"the clean file").hexdigest()
    assert other != path  # each snapshot a name of its own


def test_a_store_on_another_device_is_copied_and_other_link_errors_are_raised(tmp_path, monkeypatch):
    import errno

    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    store.write_bytes("clean/y/part-00000.parquet", b"rows")

    def cross_device(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    path, _ = snapshot_file(store, "clean/y/part-00000.parquet", str(tmp_path))
    assert Path(path).read_bytes() == b"rows"
    assert os.stat(path).st_ino != os.stat(store.full("clean/y/part-00000.parquet")).st_ino  # a copy, not a link

    def no_such(src, dst):
        raise FileNotFoundError(errno.ENOENT, "gone")

    monkeypatch.setattr(os, "link", no_such)
    with pytest.raises(FileNotFoundError):
        snapshot_file(store, "clean/y/part-00000.parquet", str(tmp_path))


def test_a_gate_that_fails_midway_leaves_nothing_and_a_killed_ones_leftovers_are_swept(tmp_path, monkeypatch):
    from safetynet.intake.clean import clean_path
    from schemas.registry import contracts

    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    claim = "medical_insurance.claim"
    store.write_parquet(clean_path(contracts()[claim]), _claims(pa.table({
        "claim_id": [f"YB{i:07d}" for i in range(N)], "id_no": [_id(i) for i in range(N)],
        "out_of_pocket": pa.array([Decimal(1)] * N, pa.decimal128(14, 2))})))
    old = os.path.join(store.root, ".tmp-quality-killed")
    os.makedirs(old)
    os.link(store.full(clean_path(contracts()[claim])), os.path.join(old, ".tmp-x-part-00000.parquet"))
    os.utime(old, (0, 0))  # a killed gate's, long ago
    fresh = os.path.join(store.root, ".tmp-quality-running")
    os.makedirs(fresh)  # another gate's, running now

    def broken(*a, **k):
        raise RuntimeError("the record could not be written")

    monkeypatch.setattr(gate, "_record_feed_suites", broken)
    with pytest.raises(RuntimeError, match="could not be written"):
        gate.validate(store, SNAP, feeds=[claim])
    assert sorted(p for p in os.listdir(store.root) if p.startswith(".tmp-quality-")) == [".tmp-quality-running"]


def test_null_counts_come_only_from_writers_known_to_count_them(claims_file):
    src = ParquetSource(claims_file[0], Reader(normalise.connect()))
    assert src.null_count("id_no") == len(NULL) and src.null_count("members") is None  # nested: scanned
    assert sources._trusted_statistics("parquet-cpp-arrow version 21.0.0")
    assert sources._trusted_statistics("DuckDB version v1.4.1 (build 1)")
    assert not sources._trusted_statistics("parquet-cpp-arrow version 4.0.1")  # ARROW-12513
    assert not sources._trusted_statistics("parquet-mr version 1.12.3 (build abc)")
    dictionary = pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), pa.array(["a", None]))
    assert ArrowSource(pa.table({"d": dictionary}), "d").null_count("d") is None  # its dictionary's null


def test_a_key_arrow_cannot_order_is_left_to_the_grouped_count():
    t = pa.table({"k": pa.array([[1], [2]], pa.list_(pa.int64()))})
    assert checks.strictly_ascending([t], ["k"]) is False


def test_no_feed_suite_runs_before_every_feed_is_located_and_the_report_keeps_its_order(tmp_path, monkeypatch):
    """Several makers: a feed's or the cross-feed step waits for every feed to be located (here the
    locating is slow), so no suite is skipped for a source not yet found; the report lists the
    suites in its own order (feeds, cross-feed), whatever order they ran in."""
    import time

    from safetynet.intake.clean import clean_path
    from schemas.registry import contracts

    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    claim, vehicle = "medical_insurance.claim", "public_security.vehicle"
    store.write_parquet(clean_path(contracts()[claim]), _claims(pa.table({
        "claim_id": [f"YB{i:07d}" for i in range(N)], "id_no": [_id(i) for i in range(N)],
        "out_of_pocket": pa.array([Decimal(1)] * N, pa.decimal128(14, 2))})))
    located = sources.snapshot_file

    def slow(store, rel, into):
        time.sleep(0.3)
        return located(store, rel, into)

    monkeypatch.setattr(gate, "snapshot_file", slow)
    monkeypatch.setattr(gate, "MAKERS", 3)  # one free to take a feed's step while another locates
    feeds = [claim, "public_security.person", vehicle]  # the person register and vehicles are missing
    r = gate.validate(store, SNAP, feeds=feeds)
    names = [s.name for s in r.suites]
    assert names[:3] == [f"feed.{f}" for f in feeds]  # each feed's suite ran: none skipped
    assert names[3:] == [n for n in names[3:] if n.startswith("cross.")] and "cross.claim_person" in names
    assert r.missing == ["public_security.person", vehicle]
    assert r.suite(f"feed.{claim}").rows == N and not r.suite("cross.claim_person").success  # nobody registered
