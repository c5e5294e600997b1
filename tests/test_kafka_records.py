"""The connector's batch-at-a-time record decoding (`connectors.kafka_records`) against kafka-python's own
per-record path, byte for byte: the same offsets, values, fetch positions and errors.

Differential: the same fetched bytes go through kafka-python's `PartitionRecords` and through
`FastPartitionRecords`, with the same sequence of `take(n)` calls; after every call both give the same
records, the same `next_fetch_offset` and the same drained state. Batches are built with kafka-python's
own batch builder (hand-set base offsets, offset gaps as compaction leaves them, null keys and values,
empty and large values, headers, gzip and zstd), plus transaction control batches and aborted
transactions (read_committed), fetches that start mid-batch, and damaged bytes. Then end to end on the
embedded broker: a transactional producer commits and aborts, and the connector's consumer reads the
same records kafka-python's stock consumer reads, under both isolation levels.
"""

from __future__ import annotations

import collections
import random
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c, decode_varint

from connectors.kafka_producer import ensure_topics
from connectors.kafka_records import FastPartitionRecords, RecordRun, decode_v2, flatten, install

TP = TopicPartition("t", 0)
GZIP, ZSTD = DefaultRecordBatch.CODEC_GZIP, DefaultRecordBatch.CODEC_ZSTD
Aborted = collections.namedtuple("Aborted", "producer_id first_offset")


def batch(records, base=0, *, codec=0, deltas=None, pid=-1, transactional=False) -> bytes:
    """One v2 batch from kafka-python's builder: records are (key, value, headers); `deltas` the offset
    deltas (default 0..n-1; gaps stand for compacted records); `base` the batch's first offset."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=transactional, producer_id=pid,
                                  producer_epoch=0 if pid >= 0 else -1, base_sequence=0 if pid >= 0 else -1,
                                  batch_size=1 << 30)
    for i, (k, v, h) in enumerate(records):
        assert b.append((deltas or range(len(records)))[i], timestamp=1_700_000_000_000 + i, key=k, value=v,
                        headers=h) is not None
    data = bytearray(b.build())
    data[0:8] = struct.pack(">q", base)  # the base offset is outside the CRC
    return bytes(data)


def control(base: int, pid: int, abort: bool) -> bytes:
    """A transaction marker batch (what a broker writes at a commit or abort)."""
    data = bytearray(batch([(struct.pack(">hh", 0, 0 if abort else 1), struct.pack(">hi", 0, 0), [])], base,
                           pid=pid, transactional=True))
    off = DefaultRecordBatch.ATTRIBUTES_OFFSET
    attrs = struct.unpack_from(">h", data, off)[0] | DefaultRecordBatch.CONTROL_MASK
    struct.pack_into(">h", data, off, attrs)
    struct.pack_into(">I", data, DefaultRecordBatch.CRC_OFFSET, calc_crc32c(memoryview(data)[off:]))
    return bytes(data)


def trace(cls, data: bytes, fetch_offset: int, takes: list[int], **kw) -> list:
    """Per take(n): (records as (offset, value), next_fetch_offset, still holds records) or the error."""
    pr = cls(fetch_offset, TP, MemoryRecords(data), **kw)
    out = []
    for n in takes:
        if not pr:  # drained: the fetcher takes no more from it
            out.append("drained")
            continue
        try:
            got = pr.take(n)
        except CorruptRecordError as e:
            out.append(("error", str(e)))
            continue
        if cls is FastPartitionRecords:
            assert len(got) == sum(len(r) for r in got) <= n  # what the fetcher counts against max_records
            offs, vals = flatten(list(got)) if got else ([], [])
            recs = list(zip(offs, vals, strict=True))
        else:
            recs = [(r.offset, r.value) for r in got]
        out.append((recs, pr.next_fetch_offset, bool(pr)))
    return out


def same(data: bytes, fetch_offset: int = 0, takes=(1_000_000, 1), **kw) -> list:
    stock = trace(Fetcher.PartitionRecords, data, fetch_offset, list(takes), **kw)
    fast = trace(FastPartitionRecords, data, fetch_offset, list(takes), **kw)
    assert fast == stock
    return stock


def recs(n: int, size: int = 300, seed: int = 0) -> list:
    rnd = random.Random(seed)
    return [(f"k{i}".encode(), rnd.randbytes(rnd.randint(0, size)), []) for i in range(n)]


def test_plain_batches_match_and_take_counts_records():
    data = batch(recs(500), 0) + batch(recs(300, seed=1), 500) + batch(recs(7, seed=2), 800)
    out = same(data, takes=[1, 2, 250, 499, 100, 100, 1])
    assert [len(t[0]) for t in out[:5]] == [1, 2, 250, 499, 55] and out[5:] == ["drained"] * 2
    assert out[4][1:] == (807, False)  # drained: the position is after the last batch


def test_null_empty_and_large_values_keys_and_offset_gaps():
    big = b"x" * 70_000  # a 3-byte length prefix
    rows = [(None, b"a", []), (b"k", None, []), (None, None, []), (b"", b"", []), (b"k2", big, []), (None, "值".encode(), [])]
    data = batch(rows, 10, deltas=[0, 3, 4, 9, 10, 40])  # compaction leaves gaps
    out = same(data, takes=[2, 2, 2, 2])
    assert [o for o, _ in out[0][0] + out[1][0] + out[2][0]] == [10, 13, 14, 19, 20, 50]
    assert out[1][0][0][1] is None and out[2][0][0][1] == big


@pytest.mark.parametrize("codec", [GZIP, ZSTD])
def test_compressed_batches(codec):
    data = batch(recs(400), 0, codec=codec) + batch(recs(50, seed=3), 400, codec=codec)
    out = same(data, takes=[123, 1000])
    assert len(out[0][0]) == 123 and len(out[1][0]) == 327


def test_headers_and_fetch_offsets_inside_a_batch():
    rows = [(b"k", b"v%d" % i, [("trace", b"abc"), ("n", None)] if i % 2 else []) for i in range(20)]
    data = batch(rows, 100) + batch(recs(30), 120)
    for start in (100, 105, 119, 120, 131, 150):
        out = same(data, start, takes=[7, 100, 1])
        got = [o for t in out if t != "drained" for o, _ in t[0]]
        assert got == list(range(start, 150))


def test_decoder_declines_what_it_does_not_handle():
    with_headers = batch([(b"k", b"v", [("h", b"1")])])
    assert decode_v2(with_headers, 61, 1, 0) is None  # kafka-python decodes it (same results, above)
    plain = batch(recs(3))
    assert decode_v2(plain, 61, 3, 5)[0] == [5, 6, 7]
    assert decode_v2(plain + b"\0", 61, 3, 0) is None  # bytes left over
    assert decode_v2(plain, 61, 4, 0) is None  # fewer records than the header says


def test_transactions_control_batches_and_aborted_records():
    committed = batch(recs(5), 0, pid=7, transactional=True) + control(5, 7, abort=False)
    aborted = batch(recs(4, seed=1), 6, pid=8, transactional=True) + control(10, 8, abort=True)
    plain = batch(recs(3, seed=2), 11)
    data = committed + aborted + plain
    for iso, want in ((IsolationLevel.READ_COMMITTED, [0, 1, 2, 3, 4, 11, 12, 13]),
                      (IsolationLevel.READ_UNCOMMITTED, [0, 1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13])):
        for takes in ([100, 1], [5, 5, 5], [1] * 15):
            out = same(data, takes=takes, isolation_level=iso, aborted_transactions=[Aborted(8, 6)])
            assert [o for t in out if t != "drained" for o, _ in t[0]] == want
            assert [t for t in out if t != "drained"][-1][1:] == (14, False)


def test_damaged_bytes_raise_the_same_error():
    first = batch(recs(50), 0)
    data = bytearray(first + batch(recs(50, seed=1), 50))
    data[len(first) + 100] ^= 0xFF  # inside the second batch's records
    out = same(bytes(data), takes=[30, 30, 30, 30])
    assert len(out[1][0]) == 20 and out[2][0] == "error"  # the first batch's records, then the CRC error
    # without CRC checks a damaged record structure is left to kafka-python, which raises
    same(bytes(data), takes=[30, 30, 30, 30], check_crcs=False)


def _record_ends(data: bytes) -> list[int]:
    """Where each record of an uncompressed v2 batch ends (from the length prefixes)."""
    pos, ends = 61, []
    while pos < len(data):
        length, pos = decode_varint(data, pos)
        pos += length
        ends.append(pos)
    return ends


def test_a_bad_record_mid_batch_returns_the_records_before_it_then_the_error():
    data = bytearray(batch(recs(5, size=50), 0))
    data[_record_ends(bytes(data))[3] - 1] = 0x01  # record 3's header count: -1
    out = same(bytes(data), takes=[10, 10, 10], check_crcs=False)  # the CRC would catch it first
    assert [o for o, _ in out[0][0]] == [0, 1, 2] and out[0][1] == 3 and out[1][0] == "error"


def test_damaged_counts_and_overlong_varints_are_left_to_kafka_python():
    plain = batch(recs(3))
    assert decode_v2(plain, 61, 2**31 - 1, 0) is None  # a damaged record count allocates nothing
    data = bytearray(batch([(None, b"v", [])], 0))
    # the offset delta as a 10-byte varint (Python's ints and int64 differ there): record rewritten
    body = bytes([0]) + bytes([0]) + b"\xff" * 9 + b"\x01" + bytes([1]) + bytes([2]) + b"v" + bytes([0])
    raw = bytes(data[:61]) + bytes([len(body) * 2]) + body
    assert decode_v2(raw, 61, 1, 0) is None
    same(raw, takes=[5, 5], check_crcs=False)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=20)),
                                             st.one_of(st.none(), st.binary(max_size=400)),
                                             st.lists(st.tuples(st.text(max_size=5), st.one_of(st.none(), st.binary(max_size=5))),
                                                      max_size=2)),
                                   min_size=1, max_size=40),
                          st.sampled_from([0, GZIP, ZSTD]), st.integers(0, 3)), min_size=1, max_size=4),
       st.integers(0, 60), st.lists(st.integers(1, 70), min_size=1, max_size=8))
def test_random_batches(batches, skip, takes):
    data, base = b"", 0
    for rows, codec, gap in batches:
        deltas = [i * (1 + gap) for i in range(len(rows))]
        data += batch(rows, base, codec=codec, deltas=deltas)
        base += deltas[-1] + 1 + gap
    same(data, skip, takes=[*takes, 10_000])


def test_runs_flatten():
    a, b = RecordRun([1, 2], [b"a", None]), RecordRun([3], [b"c"])
    assert flatten([a]) == ([1, 2], [b"a", None]) and flatten([a, b]) == ([1, 2, 3], [b"a", None, b"c"])
    with pytest.raises(ValueError):
        FastPartitionRecords(0, TP, MemoryRecords(b""), value_deserializer=bytes)


# ---- end to end, on the embedded broker --------------------------------------------------------------
def _read_all(bootstrap: str, topic: str, fast: bool, isolation: str) -> dict[int, list]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, isolation_level=isolation,
                      max_poll_records=97, request_timeout_ms=30_000)
    if fast:
        install(c)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: dict[int, list] = {tp.partition: [] for tp in tps}
        for _ in range(400):  # bounded
            for tp, got in c.poll(timeout_ms=500).items():
                if fast:
                    offs, vals = flatten(got)
                    out[tp.partition] += list(zip(offs, vals, strict=True))
                else:
                    out[tp.partition] += [(r.offset, r.value) for r in got]
            if all((hw := c.highwater(tp)) is not None and c.position(tp) >= hw for tp in tps):
                break
        return out
    finally:
        c.close()


@pytest.mark.parametrize("isolation", ["read_committed", "read_uncommitted"])
def test_broker_transactions_read_alike(broker, isolation):
    topic = f"records.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [topic], partitions=2)
    p = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=f"tx-{uuid.uuid4().hex[:6]}",
                      compression_type="gzip", linger_ms=5)
    p.init_transactions()
    sent_committed = 0
    for round_, commit in enumerate([True, False, True, False, True]):
        p.begin_transaction()
        for i in range(300):
            p.send(topic, key=f"k{i % 7}".encode(), value=f"r{round_}-{i}-".encode() * (1 + i % 40))
        if commit:
            p.commit_transaction()
            sent_committed += 300
        else:
            p.flush()  # on the broker, then aborted (unsent records would just be dropped by the client)
            p.abort_transaction()
    p.close()
    stock = _read_all(broker.bootstrap, topic, False, isolation)
    fast = _read_all(broker.bootstrap, topic, True, isolation)
    assert fast == stock
    values = [v for part in stock.values() for _, v in part]
    assert len(values) == len(set(values))  # no record twice
    committed = {v for v in values if v.startswith((b"r0-", b"r2-", b"r4-"))}
    assert len(committed) == sent_committed
    if isolation == "read_uncommitted":
        assert len(values) == 1500
    # under read_committed a Kafka broker leaves the aborted records out (its aborted-transaction index);
    # the embedded broker does not keep one and returns them: kafka-python then has nothing to skip
