"""Transport: a Kafka topic, read in bounded, resumable batches with kafka-python.

Lifecycle: `open()` assigns every partition of the topic (or the subset given: one consumer
process's share, see `safetynet.intake.ingest`) and positions at the group's committed offset;
`batches()` yields per-partition batches up to the high watermark seen when the read started
(never an endless loop); the caller writes each batch durably and then calls
`commit(batch)`; `close()`. Offsets are committed only after the batch's Parquet is durable.

Replays are exact: before a batch is written its offset range is recorded as an *intent*
(`_catalog/kafka/<group>/<topic>/<partition>.json`). After a crash the consumer restarts at the
committed offset, finds the intent starting there and re-reads exactly that range, so the same
`(topic, partition, first, last)` file is rewritten instead of a second, overlapping one.
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import logging
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from connectors.kafka_records import count, flatten, install
from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class KafkaBatch:
    topic: str
    partition: int
    first: int
    last: int
    ingest_date: str
    values: list[bytes | None] = field(default_factory=list)  # None: a null value
    offsets: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The file name every zone uses for this batch: (topic, partition, first, last)."""
        return f"{self.topic}+{self.partition}+{self.first:020d}+{self.last:020d}"


def broker_wait_ms(settings: Settings) -> int:
    """How long one attempt waits for an unreachable broker (bootstrap, commit): at most the
    request timeout, at most the ingest's retry window `kafka_retry_s` (at least 2 s) — so a run
    told to give up after 3 s does not wait 30 s inside one attempt."""
    return int(min(30.0, max(2.0, settings.kafka_retry_s)) * 1000)


def consumer_config(settings: Settings) -> dict:
    """kafka-python settings shared by the connector and the benchmark's baseline."""
    cfg = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=settings.batch_max_records,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        security_protocol=settings.kafka_security_protocol,
        request_timeout_ms=30_000,
        bootstrap_timeout_ms=broker_wait_ms(settings),
        session_timeout_ms=6_000,
        heartbeat_interval_ms=2_000,
    )
    if settings.kafka_sasl_mechanism:
        cfg.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_sasl_username,
                   sasl_plain_password=settings.kafka_sasl_password.get_secret_value()
                   if settings.kafka_sasl_password else None)
    return cfg


class KafkaTopicSource:
    """A bounded reader of one topic for one consumer group."""

    def __init__(self, settings: Settings, topic: str, store: ObjectStore, *, batch_max: int | None = None,
                 idle_polls: int = 5, partitions: Collection[int] | None = None):
        self.settings = settings
        self.topic = topic
        self.store = store
        self.batch_max = batch_max or settings.batch_max_records
        self.idle_polls = idle_polls
        self.group = settings.kafka_group
        #: read only these partitions (one consumer process's share of a topic); None: all of them
        self.only = frozenset(partitions) if partitions is not None else None
        self.consumer: KafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []

    # ---- lifecycle ----------------------------------------------------------------------------
    def open(self) -> KafkaTopicSource:
        self.consumer = KafkaConsumer(group_id=self.group, **consumer_config(self.settings))
        install(self.consumer)  # poll() returns record runs (offsets, values), decoded a batch at a time
        parts = self.consumer.partitions_for_topic(self.topic)
        if parts is None:  # metadata not loaded yet or topic absent
            self.consumer.topics()
            parts = self.consumer.partitions_for_topic(self.topic) or set()
        self.partitions = [TopicPartition(self.topic, p) for p in sorted(parts)
                           if self.only is None or p in self.only]
        # manual assignment: no group join (a bounded batch job owns its partitions); the group
        # still stores the committed offsets
        self.consumer.assign(self.partitions)
        for tp in self.partitions:
            committed = self.consumer.committed(tp)
            if committed is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, committed)
        return self

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close(autocommit=False)
            self.consumer = None

    def __enter__(self) -> KafkaTopicSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- intents ------------------------------------------------------------------------------
    def _intent_path(self, partition: int) -> str:
        return paths.kafka_intent(self.group, self.topic, partition)

    def _read_intent(self, partition: int) -> dict | None:
        try:
            return json.loads(self.store.read_bytes(self._intent_path(partition)))
        except FileNotFoundError:
            return None

    def record_intent(self, b: KafkaBatch) -> None:
        """Record the batch's range before its files are written (see the module doc)."""
        self.store.write_bytes(self._intent_path(b.partition), json.dumps(
            {"first": b.first, "last": b.last, "ingest_date": b.ingest_date}).encode())

    # ---- reading ------------------------------------------------------------------------------
    def batches(self, on_fetched: Callable[[int], None] | None = None) -> Iterator[KafkaBatch]:
        """Yield batches until every partition reaches the high watermark seen at its first fetch.

        While records flow, one partition is read at a time (the others are paused) until it
        completes a batch; then the next one. Batches thus complete one after another, evenly
        spaced, and each can be written while the next is fetched — read round-robin, every
        partition would complete its batch at about the same moment, leaving the writer idle
        first and then several batches behind at the end. Batch boundaries do not depend on the
        order (each partition's batches start where its previous one ended). A poll that brings
        nothing resumes every unfinished partition, as does reading a topic's first records.
        The focus moves only after a poll that returned fewer records than asked for, i.e. when
        the consumer holds no fetched records it has not returned: kafka-python (3.0) can strand
        the rest of a partly returned fetch of a partition paused in between.

        `on_fetched(n)` is told the running count of records fetched after every poll (a caller
        may prepare for a big backlog early).
        """
        c = self.consumer
        assert c is not None, "open() first"
        today = dt.datetime.now(dt.UTC).date().isoformat()
        start = {tp: c.position(tp) for tp in self.partitions}
        intents = {tp: self._read_intent(tp.partition) for tp in self.partitions}
        replay_end = {tp: i["last"] for tp, i in intents.items() if i and i["first"] == start[tp]}
        replay_date = {tp: i["ingest_date"] for tp, i in intents.items() if i and i["first"] == start[tp]}
        target: dict[TopicPartition, int] = {}
        pending: dict[TopicPartition, KafkaBatch] = {}
        done: set[TopicPartition] = set()
        focus: TopicPartition | None = None  # the one partition being read while the others are paused
        move = False  # the focus completed a batch (or finished): move it once the consumer is drained
        idle = fetched = 0
        while len(done) < len(self.partitions):
            records = c.poll(timeout_ms=self.settings.poll_timeout_ms, max_records=self.batch_max)
            got = 0
            for tp in self.partitions:
                if tp in done:
                    continue
                hw = c.highwater(tp)
                if hw is not None and tp not in target:
                    target[tp] = hw
                offs, vals = flatten(records[tp]) if tp in records else ([], [])
                if offs and tp in target and offs[-1] >= target[tp]:
                    k = bisect.bisect_left(offs, target[tp])
                    offs, vals = offs[:k], vals[:k]
                i = 0
                while i < len(offs):  # slices, not a per-message loop: this thread is the bottleneck
                    b = pending.get(tp)
                    if b is None:
                        b = pending[tp] = KafkaBatch(self.topic, tp.partition, offs[i], offs[i],
                                                     replay_date.pop(tp, today))
                    end = replay_end.get(tp)
                    if end is None:
                        j = min(len(offs), i + self.batch_max - len(b.values))
                    else:  # replaying a recorded intent: exactly its range
                        j = bisect.bisect_right(offs, end, i)
                        if j == i:  # the range ended in a gap (e.g. transaction markers)
                            replay_end.pop(tp)
                            move |= tp == focus
                            if pending[tp].values:
                                yield pending.pop(tp)
                            else:
                                del pending[tp]
                            continue
                    b.values.extend(vals[i:j])
                    b.offsets.extend(offs[i:j])
                    b.last = offs[j - 1]
                    got += j - i
                    i = j
                    if (end is not None and b.last >= end) or (end is None and len(b.values) >= self.batch_max):
                        replay_end.pop(tp, None)
                        move |= tp == focus
                        yield pending.pop(tp)
                if tp in target and c.position(tp) >= target[tp]:
                    if tp in pending:
                        yield pending.pop(tp)
                    done.add(tp)
                    c.pause(tp)
            idle = 0 if got else idle + 1
            fetched += got
            if on_fetched and got:
                on_fetched(fetched)
            left = [tp for tp in self.partitions if tp not in done]
            if not got or not left:
                if focus is not None and left:  # nothing came: read every unfinished partition again
                    c.resume(*left)
                focus, move = None, False
            elif count(records) < self.batch_max and (focus is None or focus in done or move):
                focus, move = self._next_focus(left, focus, pending), False
                c.pause(*[tp for tp in left if tp != focus])
                c.resume(focus)
            if idle >= self.idle_polls and len(done) < len(self.partitions):
                # no high watermark and no data after several polls: nothing to read there now
                missing = [tp.partition for tp in self.partitions if tp not in done]
                log.info("kafka: %s partitions %s gave no watermark after %d polls; stopping this run",
                         self.topic, missing, idle)
                for tp in self.partitions:
                    if tp in pending:
                        yield pending.pop(tp)
                break

    def _next_focus(self, left: list[TopicPartition], current: TopicPartition | None,
                    pending: dict[TopicPartition, KafkaBatch]) -> TopicPartition:
        """The partition to read next: after a completed batch the next unfinished one in turn;
        otherwise the one nearest to completing a batch (most records pending)."""
        if current is not None:
            after = [tp for tp in left if tp.partition > current.partition]
            return (after or left)[0]
        return max(left, key=lambda tp: len(pending[tp].values) if tp in pending else -1)

    def commit(self, b: KafkaBatch) -> None:
        """Commit the batch's offsets (call only after its files are durable). One attempt,
        bounded by the request timeout and by `kafka_retry_s`: a lost broker raises here, and the
        ingest's one retry loop (`ingest._retrying`, within `kafka_retry_s`) reads the topic again
        from the committed offsets — this batch is read again and rewritten under the same name.
        (Retrying the commit here as well made a 3 s retry window last over two minutes.)"""
        assert self.consumer is not None
        tp = TopicPartition(b.topic, b.partition)
        self.consumer.commit({tp: OffsetAndMetadata(b.last + 1, "", -1)}, timeout_ms=broker_wait_ms(self.settings))


def sample(settings: Settings, topic: str, n: int, poll_timeout_ms: int = 1000, idle_polls: int = 3) -> list[bytes]:
    """Up to `n` message values of a topic, from the beginning of its partitions, without a
    consumer group (nothing is committed) — for profiling. Bounded: stops at each partition's
    high watermark seen after a fetch, at `n`, or after `idle_polls` empty polls. Connects as the
    connector does (`consumer_config`: the security settings, the retry window's bootstrap wait)."""
    c = KafkaConsumer(**{**consumer_config(settings), "group_id": None})
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out: list[bytes] = []
        idle = 0
        while len(out) < n and idle < idle_polls:
            got = c.poll(timeout_ms=poll_timeout_ms, max_records=n - len(out))
            idle = 0 if got else idle + 1
            for msgs in got.values():
                out.extend(m.value for m in msgs)
            if all((hw := c.highwater(tp)) is not None and c.position(tp) >= hw for tp in tps):
                break
        return out[:n]
    finally:
        c.close()


def backlog(settings: Settings, topics: list[str], polls: int = 5, poll_timeout_ms: int = 500) -> dict[str, bool | None]:
    """Per topic: whether the connector's group (`settings.kafka_group`) has records left to read —
    True (records past its committed offsets), False (every partition at its high watermark), None
    (not known: a partition gave no watermark after `polls` polls; the caller should read it).

    A probe, not a read: nothing is committed, and each partition fetches at most its first record
    batch past the committed offset (`max_partition_fetch_bytes=1`: a broker returns one batch even
    when it is larger). The high watermark is taken from the fetch (`highwater`), not from a
    ListOffsets request (`end_offsets`), which some Kafka-protocol brokers answer wrongly. A record
    left only as a transaction marker reads as True: the ingest then finds nothing, which is harmless.
    """
    out: dict[str, bool | None] = dict.fromkeys(topics, False)
    for tp, (lag, got) in _probe(settings, topics, polls, poll_timeout_ms).items():
        if got or (lag is not None and lag > 0):
            out[tp.topic] = True
        elif lag is None and not out[tp.topic]:
            out[tp.topic] = None
    return out


def partition_lags(settings: Settings, topic: str, polls: int = 5, poll_timeout_ms: int = 500) -> dict[int, int | None]:
    """Per partition of `topic`: how many offsets lie between the group's committed offset (or the
    beginning) and the high watermark — the records left to read (transaction markers count too);
    None where no watermark came after `polls` polls. The same probe as `backlog` (nothing is
    committed, at most one record batch per partition fetched); {} for a topic that does not exist."""
    return {tp.partition: lag for tp, (lag, _) in _probe(settings, [topic], polls, poll_timeout_ms).items()}


def _probe(settings: Settings, topics: list[str], polls: int, poll_timeout_ms: int
           ) -> dict[TopicPartition, tuple[int | None, bool]]:
    """Per partition of `topics`: (high watermark − start, or None if no watermark came; whether a
    fetch returned records), where start is the group's committed offset or the log's beginning."""
    c = KafkaConsumer(group_id=settings.kafka_group, **{**consumer_config(settings), "max_partition_fetch_bytes": 1,
                                                        "fetch_max_bytes": 1})
    try:
        c.topics()  # metadata for every topic at once
        tps = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or ())]
        if not tps:
            return {}
        c.assign(tps)
        start = {}
        for tp in tps:
            committed = c.committed(tp)
            if committed is None:
                c.seek_to_beginning(tp)
            else:
                c.seek(tp, committed)
            start[tp] = c.position(tp)
        lag: dict[TopicPartition, int] = {}
        got: set[TopicPartition] = set()
        for _ in range(polls):
            for tp, msgs in c.poll(timeout_ms=poll_timeout_ms).items():
                if msgs:
                    got.add(tp)
            for tp in tps:
                hw = c.highwater(tp)
                if hw is not None:
                    lag[tp] = max(0, hw - start[tp])
            if len(lag) == len(tps):
                break
        return {tp: (lag.get(tp), tp in got) for tp in tps}
    finally:
        c.close(autocommit=False)
