"""Kafka record batches decoded a batch at a time: what `KafkaTopicSource` reads instead of
kafka-python's one `ConsumerRecord` per message.

kafka-python turns every record into two Python objects (`DefaultRecord`, `ConsumerRecord`),
decoding seven varints per record in Python: ~3.5 µs a record, which made the consumer thread the
ingest's bottleneck. The connector needs only each record's offset and value. Here a v2 record
batch (CRC-checked and decompressed by kafka-python itself) is decoded in one pass: a Python loop
over the records' length prefixes finds the record boundaries, numpy decodes every record's
fields at once, and the values are sliced out of the batch: ~0.5 µs a record.

Installed per consumer (`install`): the fetcher builds `FastPartitionRecords` instead of its
`PartitionRecords`, so fetching, positions, pausing, transactions (aborted batches skipped under
read_committed, control batches never returned), mid-batch fetch offsets and CRC errors all stay
kafka-python's own code or mirror it line by line. `poll()` then returns, per partition, a list of
`RecordRun`s (offsets and values of consecutive records) instead of records; `len()` of that list
as the fetcher sees it is the number of records, so `max_records` holds as before.

Anything the fast decoder does not expect in a batch (record headers, legacy message formats, a
malformed record) is decoded record by record by kafka-python, as before — same results, or the
same `CorruptRecordError`. `tests/test_kafka_records.py` compares both paths byte for byte.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import decode_varint

log = logging.getLogger(__name__)


class RecordRun:
    """Consecutive records of one partition: their offsets (ascending) and values (bytes, or None
    for a null value)."""

    __slots__ = ("offsets", "values")

    def __init__(self, offsets: list[int], values: list[bytes | None]):
        self.offsets = offsets
        self.values = values

    def __len__(self) -> int:
        return len(self.offsets)

    def __repr__(self) -> str:
        return f"RecordRun({self.offsets[0] if self.offsets else '-'}..{self.offsets[-1] if self.offsets else '-'}, n={len(self)})"


class _Taken(list):
    """What `take` returns: runs, with `len()` the number of records (the fetcher subtracts it
    from `max_records`; list iteration and `extend` still see the runs)."""

    __slots__ = ("n_records",)

    def __init__(self) -> None:
        super().__init__()
        self.n_records = 0

    def __len__(self) -> int:
        return self.n_records


def flatten(runs: list[RecordRun]) -> tuple[list[int], list[bytes | None]]:
    """One partition's runs from a poll → (offsets, values)."""
    if len(runs) == 1:
        return runs[0].offsets, runs[0].values
    return (list(itertools.chain.from_iterable(r.offsets for r in runs)),
            list(itertools.chain.from_iterable(r.values for r in runs)))


def count(records: dict[Any, list[RecordRun]]) -> int:
    """Records in a poll's result."""
    return sum(len(r) for runs in records.values() for r in runs)


# ---- decoding one batch -----------------------------------------------------------------------
def _zigzag_varints(a: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The zigzag varints starting at positions `p` of the byte array `a` → (values, positions after)."""
    b = a[p].astype(np.int64)
    res = b & 0x7F
    more = b >= 0x80
    nxt = p + 1
    shift = 7
    while more.any():
        if shift > 56:  # a 10-byte varint: int64 would wrap where Python's ints do not — left to kafka-python
            raise ValueError("varint too long for the fast decoder")
        idx = np.flatnonzero(more)
        bb = a[nxt[idx]].astype(np.int64)
        res[idx] |= (bb & 0x7F) << shift
        nxt[idx] += 1
        more[idx] = bb >= 0x80
        shift += 7
    return (res >> 1) ^ -(res & 1), nxt


def decode_v2(buf: bytes, pos: int, n: int, base_offset: int) -> tuple[list[int], list[bytes | None]] | None:
    """The offsets and values of the `n` records of a v2 batch's (uncompressed) record section
    `buf[pos:]`; None if the batch holds anything this decoder leaves to kafka-python (headers, a
    record whose fields do not add up to its length, bytes left over)."""
    if n <= 0:
        return ([], []) if pos == len(buf) else None
    if n > (len(buf) - pos) // 7:  # a record takes at least 7 bytes: a damaged count, not an allocation
        return None
    starts = [0] * n
    ends = [0] * n
    end = len(buf)
    try:
        for j in range(n):  # the record boundaries, from the length prefixes (zigzag varints)
            b0 = buf[pos]
            if b0 < 0x80:
                z = b0
                pos += 1
            else:
                b1 = buf[pos + 1]
                if b1 < 0x80:
                    z = (b0 & 0x7F) | (b1 << 7)
                    pos += 2
                else:  # a record of 8 KiB or more: kafka-python's own varint decoder (already signed)
                    length, pos = decode_varint(buf, pos)
                    z = length << 1 if length >= 0 else 1
            if z & 1:  # a negative length
                return None
            starts[j] = pos
            pos += z >> 1
            ends[j] = pos
    except (IndexError, ValueError):
        return None
    if pos != end:
        return None
    a = np.frombuffer(buf, np.uint8)
    s = np.array(starts, np.int64)
    e = np.array(ends, np.int64)
    try:
        _, p = _zigzag_varints(a, s)  # attributes (unused by Kafka today)
        _, p = _zigzag_varints(a, p)  # timestamp delta (not needed here)
        od, p = _zigzag_varints(a, p)  # offset delta
        kl, p = _zigzag_varints(a, p)  # key length (-1: null)
        p = p + np.maximum(kl, 0)
        vl, vs = _zigzag_varints(a, p)  # value length (-1: null)
        ve = vs + np.maximum(vl, 0)
        hc, after = _zigzag_varints(a, ve)  # header count
    except (IndexError, ValueError):
        return None
    if (hc.any() or not np.array_equal(after, e) or (kl < -1).any() or (vl < -1).any()
            or (od < 0).any() or (np.diff(od) <= 0).any()):  # offsets rise within a batch (else kafka-python's way)
        return None
    offsets = (od + base_offset).tolist()
    if (vl >= 0).all():
        values: list[bytes | None] = [buf[x:y] for x, y in zip(vs.tolist(), ve.tolist(), strict=True)]
    else:
        values = [buf[x:y] if n_ >= 0 else None for x, y, n_ in zip(vs.tolist(), ve.tolist(), vl.tolist(), strict=True)]
    return offsets, values


def _batch_run(batch: Any, check_crcs: bool, where: Any) -> tuple[RecordRun, Exception | None]:
    """All records of one data batch (CRC already checked) as a run; kafka-python's own
    iteration where the fast decoder declines. If that iteration fails part-way, the records
    before the failure and the error (kafka-python returns those records, then raises)."""
    if isinstance(batch, DefaultRecordBatch):
        iter(batch)  # decompresses (kafka-python's codecs), leaves the position at the first record
        buf = bytes(batch._buffer)
        got = decode_v2(buf, batch._pos, batch.records_count, batch.base_offset)
        if got is not None:
            return RecordRun(*got), None
    offsets: list[int] = []
    values: list[bytes | None] = []
    try:
        for record in batch:
            if check_crcs and not record.validate_crc():
                raise CorruptRecordError(f"Record for partition {where} at offset {record.offset} failed crc check")
            offsets.append(record.offset)
            values.append(record.value)
    except Exception as e:  # re-raised by the caller after the records before it
        return RecordRun(offsets, values), e
    return RecordRun(offsets, values), None


class FastPartitionRecords(Fetcher.PartitionRecords):
    """kafka-python's `PartitionRecords` (one fetched partition's data), yielding `RecordRun`s.

    `_runs` walks the batches as `PartitionRecords._unpack_records` does (CRC, leader epoch,
    aborted transactions, control batches, `next_fetch_offset`); `take(n)` returns up to n records
    as runs, skipping records before the fetch offset (a fetch may start mid-batch)."""

    def __init__(self, fetch_offset: int, tp: Any, records: Any, *args: Any, **kw: Any):
        if kw.get("key_deserializer") or kw.get("value_deserializer"):
            raise ValueError("FastPartitionRecords returns raw bytes: configure no deserializers")
        super().__init__(fetch_offset, tp, records, *args, **kw)
        self.record_iterator = self._runs(records)  # replaces the per-record generator (never started)
        self._run: RecordRun | None = None
        self._i = 0
        self._skipping = True

    def _runs(self, records: Any):  # mirrors PartitionRecords._unpack_records
        batch = records.next_batch()
        last_batch = None
        while batch is not None:
            last_batch = batch
            if self.check_crcs and not batch.validate_crc():
                raise CorruptRecordError(
                    f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} failed crc check")
            if batch.magic == 2:
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        log.debug("Skipping aborted record batch from partition %s with producer_id %s and offsets %s to %s",
                                  self.topic_partition, producer_id, batch.base_offset, batch.last_offset)
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:  # a transaction marker: never returned to the consumer
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
            run, error = _batch_run(batch, self.check_crcs, self.topic_partition)
            # metrics only: the whole batch's bytes (kafka-python sums its records' sizes)
            self.bytes_read += getattr(batch, "size_in_bytes", 0)
            if run.offsets:
                yield run
            if error is not None:
                raise error
            batch = records.next_batch()
        if last_batch is not None and last_batch.magic == 2:
            # v2 keeps a batch's last offset even if compaction removed its last record: continue after it
            self.next_fetch_offset = last_batch.next_offset
        self.drain()

    def take(self, n: int | None = None) -> _Taken:
        self._maybe_raise_next_inline_exception()
        out = _Taken()
        want = n if n is not None else float("inf")
        try:
            while out.n_records < want and self.record_iterator is not None:
                if self._run is None:
                    run = next(self.record_iterator, None)
                    if run is None:
                        break
                    # records before the fetch offset (a fetch starting inside a batch) are skipped,
                    # as kafka-python's dropwhile does: only until the first one at or after it
                    i = 0
                    if self._skipping:
                        offs, n_ = run.offsets, len(run.offsets)
                        while i < n_ and offs[i] < self.fetch_offset:
                            i += 1
                        self._skipping = i == n_
                        self.records_read += i  # kafka-python counts the skipped ones too
                    self._i = i
                    if self._i == len(run.offsets):
                        self.next_fetch_offset = run.offsets[-1] + 1
                        continue
                    self._run = run
                run, i = self._run, self._i
                k = int(min(want - out.n_records, len(run.offsets) - i))
                part = run if (i == 0 and k == len(run.offsets)) else RecordRun(run.offsets[i:i + k], run.values[i:i + k])
                list.append(out, part)
                out.n_records += k
                self.records_read += k
                self._i = i + k
                self.next_fetch_offset = run.offsets[self._i - 1] + 1
                if self._i == len(run.offsets):
                    self._run = None
        except Exception as e:
            if not out.n_records:
                raise
            self._next_inline_exception = e  # raised by the next take, as kafka-python does
        return out


def install(consumer: Any) -> None:
    """Make `consumer` (a KafkaConsumer without deserializers) return `RecordRun`s from `poll()`."""
    fetcher = consumer._fetcher
    if fetcher.config.get("key_deserializer") or fetcher.config.get("value_deserializer"):
        raise ValueError("record runs carry raw bytes: configure the consumer without deserializers")
    fetcher.PartitionRecords = FastPartitionRecords
