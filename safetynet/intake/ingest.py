"""Ingest: everything waiting on the feed topics and in the landing area → `raw/` + `quarantine/`.

For each feed and transport, a batch (Kafka: one partition's offset range; file drop: one
file) is decoded (`connectors.formats`), validated against the contract
(`schemas.normalise`), and split: accepted records go to `raw/` as received plus lineage
columns, rejected ones to `quarantine/` with the raw text, `_rule`, `_field` and `_reason`.
Only then is the Kafka offset committed or the drop recorded as done. Per feed and run,
`input == accepted + quarantined` is checked and written to the run manifest
(`_catalog/ingest/<run_id>.json`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hashlib
import json
import logging
import logging.handlers
import multiprocessing as mp
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Mapping as MappingT
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.base import load_mappings
from connectors.drop_folder import Drop, DropFolderSource
from connectors.formats import (
    FileFormatError,
    absent_note,
    json_records_sql,
    json_spellings,
    json_text,
    map_values_sql,
    read_tables,
    rows_to_records,
)
from connectors.kafka_topic import KafkaBatch, KafkaTopicSource, partition_lags
from connectors.mapping import Mapping
from safetynet.core import lease, logmask, paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.intake import consumer_boot
from safetynet.intake import health as feed_health
from schemas import normalise
from schemas.contract import Contract
from schemas.errors import ConfigError, TransientError
from schemas.idno import mask_text
from schemas.registry import contracts

log = logging.getLogger(__name__)

Progress = Callable[[str, int], None]  # (feed_id, records just processed)


class ZoneWriter(Protocol):
    """What writing a batch needs of a store: an `ObjectStore`, or the staging facade of `store verify
    --repair` (which keeps the files in memory until they are proven identical)."""

    def write_bytes(self, rel: str, data: bytes) -> None: ...


class BrokerUnreachable(TransientError, RuntimeError):
    """The Kafka broker stayed unreachable for `SAFETYNET_KAFKA_RETRY_S`. A `TransientError`: the CLI
    exits 1, an Airflow task is retried with backoff; nothing uncommitted is lost (the next run
    resumes from the committed offsets). A `RuntimeError`, as it was before it had a class."""


@dataclass
class FeedCounts:
    """What one run did to one feed. `input == accepted + sum(quarantined)` always."""

    feed_id: str
    input: int = 0
    accepted: int = 0
    quarantined: Counter = field(default_factory=Counter)
    kafka_records: int = 0
    file_records: int = 0
    batches: int = 0
    files: list[str] = field(default_factory=list)
    checksums: dict = field(default_factory=dict)  # file → {sha256, bytes, rows, ingested_at} (`store verify`)
    seconds: float = 0.0
    drift: Counter = field(default_factory=Counter)  # (field, rule, value or "") → rejected records
    empty_snapshots: list[str] = field(default_factory=list)  # snapshot drops without a data row
    mapping: dict = field(default_factory=dict)  # the effective mapping's checksum and sources
    health: feed_health.FeedHealth | None = None

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    @property
    def reconciles(self) -> bool:
        return self.input == self.accepted + self.quarantined_total

    def add(self, r: BatchResult, *, kafka: bool) -> None:
        n = r.accepted + sum(r.rejected.values())
        self.input += n
        self.accepted += r.accepted
        self.quarantined.update(r.rejected)
        self.drift.update(r.drift)
        self.files += r.files
        self.checksums.update(r.checksums)
        if kafka:
            self.kafka_records += n
        else:
            self.file_records += n
        self.batches += 1

    def merge(self, other: FeedCounts) -> None:
        """Add what another consumer process of this run did to the same feed (`ingest_topic`)."""
        self.input += other.input
        self.accepted += other.accepted
        self.quarantined.update(other.quarantined)
        self.kafka_records += other.kafka_records
        self.file_records += other.file_records
        self.batches += other.batches
        self.files += other.files
        self.checksums.update(other.checksums)
        self.drift.update(other.drift)
        self.empty_snapshots += other.empty_snapshots

    def as_dict(self) -> dict:
        return {"feed_id": self.feed_id, "input": self.input, "accepted": self.accepted,
                "quarantined": dict(sorted(self.quarantined.items())), "kafka_records": self.kafka_records,
                "file_records": self.file_records, "batches": self.batches, "files": self.files,
                "checksums": self.checksums,
                "seconds": round(self.seconds, 3), "reconciles": self.reconciles, "mapping": self.mapping,
                **({"health": self.health.as_dict()} if self.health else {})}


@dataclass
class IngestReport:
    run_id: str
    started_at: str
    feeds: dict[str, FeedCounts]
    manifest: str = ""

    @property
    def reconciles(self) -> bool:
        return all(f.reconciles for f in self.feeds.values())

    @property
    def unhealthy(self) -> list[str]:
        """Feeds whose delivery in this run is unhealthy (held out of `clean/`)."""
        return [fid for fid, f in self.feeds.items() if f.health is not None and f.health.unhealthy]

    status: str = "running"  # running → complete | failed; a run found still "running" later crashed
    error: str = ""
    adopted: dict = field(default_factory=dict)  # crashed run id → raw files of its feeds no run recorded

    def as_dict(self) -> dict:
        return {"run_id": self.run_id, "started_at": self.started_at, "status": self.status,
                **({"error": self.error} if self.error else {}), "reconciles": self.reconciles,
                "unhealthy": self.unhealthy, "feeds": {k: v.as_dict() for k, v in self.feeds.items()},
                **({"adopted": self.adopted} if self.adopted else {})}

    def write(self, store: ObjectStore) -> None:
        store.write_bytes(self.manifest, json.dumps(self.as_dict(), ensure_ascii=False, indent=1).encode())


def adopt_crashed_runs(store: ObjectStore, report: IngestReport) -> dict:
    """Run records still "running" for feeds this run now holds belong to runs that died (a live
    run holds its feeds' leases for its whole life): mark them crashed. Give them — and runs that
    failed (e.g. a batch written, then the broker lost before its commit was confirmed) — the
    `raw/` and `quarantine/` files of their feeds that no run record lists, with the checksums
    found, so every file belongs to a run record (the most recent unfinished run first)."""
    mine = set(report.feeds)
    records = {}
    for e in store.list(paths.RUNS, ".json"):
        try:
            records[e.path] = json.loads(store.read_bytes(e.path))
        except (FileNotFoundError, ValueError):
            continue
    crashed = {p: r for p, r in records.items()
               if (r.get("status") == "running" or (r.get("status") == "failed" and not r.get("adopted_by")))
               and r.get("run_id") != report.run_id and mine & set(r.get("feeds", {}))}
    if not crashed:
        return {}
    listed = {f for r in records.values() for fc in r.get("feeds", {}).values() for f in fc.get("files", [])}
    listed |= {f for r in records.values() for files in (r.get("orphan_files") or {}).values() for f in files}
    out = {}
    for path, r in sorted(crashed.items(), reverse=True):
        orphans = {}
        for fid in sorted(mine & set(r.get("feeds", {}))):
            prefix = contracts()[fid].prefix
            orphans[fid] = [e.path for zone in (paths.raw(prefix), paths.quarantine(prefix)) for e in store.list(zone)
                            if e.path not in listed and not paths.is_damaged(e.path)]
            listed |= set(orphans[fid])
        was = r.get("status")
        r.update(status="crashed" if was == "running" else was, adopted_by=report.run_id, orphan_files=orphans,
                 orphan_checksums={f: _digest(store, f) for files in orphans.values() for f in files})
        store.write_bytes(path, json.dumps(r, ensure_ascii=False, indent=1).encode())
        out[r["run_id"]] = orphans
        if was == "running" or any(orphans.values()):
            log.warning("ingest run %s (started %s) %s: %d raw/quarantine files no record listed recorded in it",
                        r["run_id"], r.get("started_at", "?"), "did not finish: marked crashed" if was == "running"
                        else "failed", sum(len(v) for v in orphans.values()),
                        extra={"event": "ingest_crashed_run", "crashed_run": r["run_id"]})
    return out


def _digest(store: ObjectStore, path: str) -> dict:
    """An adopted file's checksum entry, as found (its writer died before recording one)."""
    data = store.read_bytes(path)
    rows = None
    if path.endswith(".parquet"):
        try:
            rows = pq.read_metadata(pa.BufferReader(data)).num_rows
        except (pa.ArrowInvalid, OSError):  # torn by the crash: `store verify` reports it
            rows = None
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows, "adopted": True}


@dataclass
class BatchResult:
    """What validating and writing one batch (a Kafka offset range, a drop file) did."""

    accepted: int
    rejected: Counter  # rule → records
    files: list[str]
    drift: Counter = field(default_factory=Counter)  # (field, rule, value or "") → records
    checksums: dict = field(default_factory=dict)  # file → {sha256, bytes, rows, ingested_at}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write(store: ZoneWriter, path: str, data: bytes, rows: int | None, ingested_at: dt.datetime,
           sums: dict) -> None:
    """Write one zone file and record what `safetynet store verify` checks it against."""
    store.write_bytes(path, data)
    sums[path] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": rows,
                  "ingested_at": ingested_at.isoformat()}


# ---- the shared batch step --------------------------------------------------------------------
def validate_and_write(store: ZoneWriter, con: duckdb.DuckDBPyConnection, c: Contract, sql_source: str,
                       *, name: str, ingest_date: str, lineage: dict[str, object], where: Callable[[dict], str],
                       mapping: Mapping | None = None, ingested_at: dt.datetime | None = None) -> BatchResult:
    """Map, validate the records of `sql_source` and write `raw/` (+ `quarantine/`) files named `name`.

    The mapping's `[values]` are applied first (`raw/` holds contract values; `_mapping` names
    the mapping). `lineage` gives constant lineage columns; per-record lineage (`_event_id`,
    `_op`, `_occurred_at`, `_kafka_partition`, `_kafka_offset`, `_row_number`) comes from the
    source. Files are durable on return. `ingested_at` (default: now) is given when `store verify
    --repair` rewrites a damaged batch: the same records and time give the same bytes.
    """
    lineage = {**lineage, "_mapping": mapping.checksum if mapping else None}
    mapped = f"({map_values_sql(c, sql_source, mapping)})"
    checked = normalise.validate_sql(c, mapped, pre_rule="_pre", typed=False, record_date=True)
    # the record as received is kept for quarantine only: accepted rows do not carry it out of DuckDB
    t = con.sql(f"SELECT * REPLACE (CASE WHEN _rule IS NOT NULL THEN _raw END AS _raw) FROM ({checked})").to_arrow_table()
    n = t.num_rows
    ok = pc.is_null(t["_rule"])
    acc = t.drop_columns(["_raw"]).filter(ok)  # `raw/` keeps the fields, not the record as received
    rej = t.filter(pc.invert(ok))
    at = ingested_at or _now()
    at = at.replace(microsecond=at.microsecond // 1000 * 1000)  # the column holds milliseconds
    at_ms = pa.scalar(at, pa.timestamp("ms", tz="UTC"))
    written: list[str] = []
    sums: dict = {}

    def lineage_cols(tab: pa.Table) -> dict[str, pa.Array]:
        m = tab.num_rows
        cols = {}
        for fld in c.raw_schema():
            if not fld.name.startswith("_"):
                continue
            if fld.name == "_ingested_at":
                cols[fld.name] = pa.repeat(at_ms, m)
            elif fld.name in tab.column_names:
                cols[fld.name] = tab[fld.name].cast(fld.type)
            else:  # a constant: repeated natively, not built from a Python list of m values
                cols[fld.name] = pa.repeat(pa.scalar(lineage.get(fld.name), fld.type), m)
        return cols

    lease.check_held([c.feed_id])  # a holder frozen past its lease writes nothing (also in the writer thread)
    if acc.num_rows:
        raw = pa.table({**{f: acc[f].cast(pa.string()) for f in c.names}, **lineage_cols(acc)},
                       schema=c.raw_schema())
        raw_path = paths.raw_batch(c.prefix, ingest_date, name)
        _write(store, raw_path, parquet_bytes(raw), raw.num_rows, at, sums)
        written.append(raw_path)
    rejected: Counter = Counter()
    drift: Counter = Counter()
    if rej.num_rows:
        rows = rej.select([x for x in ("_rule", "_field", "_event_id", "_kafka_partition", "_kafka_offset",
                                        "_row_number") if x in rej.column_names]).to_pylist()
        reasons = [normalise.reason(c, r["_rule"], r["_field"] or "", where(r)) for r in rows]
        rejected.update(r["_rule"] for r in rows)
        drift = feed_health.drift_keys(c, rej)
        q = {"_raw": rej["_raw"].cast(pa.string()), "_rule": rej["_rule"], "_field": rej["_field"],
             "_reason": pa.array(reasons, pa.string()), **lineage_cols(rej)}
        q_path = paths.quarantine_batch(c.prefix, ingest_date, name)
        _write(store, q_path, parquet_bytes(pa.table(q, schema=c.quarantine_schema())), rej.num_rows, at, sums)
        written.append(q_path)
        for r, why in zip(rows[:3], reasons[:3], strict=False):
            log.info("quarantined: %s", why, extra={"event": "quarantine", "feed": c.feed_id, "rule": r["_rule"]})
    assert acc.num_rows + sum(rejected.values()) == n
    return BatchResult(acc.num_rows, rejected, written, drift, sums)


# ---- Kafka ------------------------------------------------------------------------------------
class BatchWriter:
    """Writes Kafka batches, overlapping with fetching.

    Batches of at least `settings.writer_process_min_records` go to writer threads (started on
    first need, reused for every feed of the run, each with its own DuckDB connection), so a
    batch is decoded, validated and written while the consumer's thread fetches the next;
    smaller ones are written inline. DuckDB and Arrow run natively and release the GIL, and a
    writer's Python between them is short, so the threads share the cores. Each writer's DuckDB
    runs on one thread; with `WRITERS` threads two batches are written at once when the fetch
    is ahead (and at the end of a topic). Either way the same function writes the same bytes.
    The consumer is never touched by a writer thread. (This replaced a writer process, whose
    start — imports — and per-batch pickling cost more CPU than the overlap saved on small runs.)

    While the writers exist, the interpreter's switch interval is `SWITCH_S` instead of 5 ms: a
    writer re-takes the GIL after each native call (DuckDB, Arrow, Parquet's writes to its
    buffer) and, with the consumer's thread running Python all the time, waits a whole switch
    interval for it each time — some hundred waits per batch, which tripled a batch's time.
    """

    WRITERS = 2
    SWITCH_S = 0.0005

    def __init__(self, settings: Settings, store: ZoneWriter, con: duckdb.DuckDBPyConnection):
        self.settings, self.store, self.con = settings, store, con
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()  # each writer thread's DuckDB connection
        self._cons: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        self._switch: float | None = None  # the interpreter's switch interval before the writers

    def _connect(self) -> None:
        self._local.con = con = _writer_connection()
        with self._lock:
            self._cons.append(con)

    def _write(self, c: Contract, b: KafkaBatch, mapping: Mapping | None) -> BatchResult:
        return write_kafka_batch(self.store, self._local.con, c, b, mapping)

    def submit(self, c: Contract, b: KafkaBatch, mapping: Mapping | None = None) -> Future:
        if len(b.values) >= self.settings.writer_process_min_records:
            if self._pool is None:
                self._switch = sys.getswitchinterval()
                sys.setswitchinterval(min(self._switch, self.SWITCH_S))
                self._pool = ThreadPoolExecutor(self.WRITERS, thread_name_prefix="kafka-writer",
                                                initializer=self._connect)
            # in this thread's context: the writer sees the run's leases (`lease.check_held`)
            return self._pool.submit(contextvars.copy_context().run, self._write, c, b, mapping)
        # inline: run now, in this thread's order
        fut: Future = Future()
        try:
            fut.set_result(write_kafka_batch(self.store, self.con, c, b, mapping))
        except BaseException as e:  # handed to the caller through the future, like a writer thread's
            fut.set_exception(e)
        return fut

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._switch is not None:
            sys.setswitchinterval(self._switch)
            self._switch = None
        with self._lock:
            for con in self._cons:
                con.close()
            self._cons.clear()


def _writer_connection() -> duckdb.DuckDBPyConnection:
    """A writer's DuckDB connection: one thread, and no progress bar on stderr (DuckDB draws one for
    a query that runs over 2 s, as a batch's can on a busy machine)."""
    con = normalise.connect(threads=1)
    con.execute("SET enable_progress_bar = false")
    return con


def ingest_topic(settings: Settings, store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract,
                 counts: FeedCounts, progress: Progress | None = None, writer: BatchWriter | None = None,
                 mapping: Mapping | None = None, *, leases: MappingT[str, lease.Lease] | None = None) -> None:
    """Read the feed's topic up to the watermark; write, then commit, batch by batch.

    Fetching and writing overlap: while the writer validates and writes a batch, this thread
    fetches the next one (the source completes one partition's batch at a time, see
    `KafkaTopicSource.batches`). At most `MAX_IN_FLIGHT` batches are handed to the writer and
    not yet committed: the fetch waits for the oldest when the writer falls behind, so memory
    stays bounded. Per partition the durable steps stay strictly sequential: a partition's next
    intent is recorded only after its previous batch is written and committed, so a crash
    leaves at most one uncommitted batch per partition, exactly as without the overlap (see
    `connectors.kafka_topic`). The consumer is only ever used by this thread: intents and
    commits happen here, the writer thread only writes files.

    A large backlog is read by several consumer processes (`_consumer_plan`, `_read_parallel`):
    each reads its share of the partitions with this same loop. `leases`: the run's held leases
    (`lease.held`), which the spawned processes follow.
    """
    own = writer is None
    writer = writer or BatchWriter(settings, store, con)
    try:
        topic = c.topic
        groups = _consumer_plan(settings, store, c, topic)
        if groups:
            _read_parallel(settings, store, c, topic, counts, progress, writer, mapping, groups, leases)
        else:
            _retrying(settings, topic, lambda: _read_topic(settings, store, c, counts, progress, writer, mapping))
    finally:
        if own:
            writer.close()


def _transient(e: BaseException) -> bool:
    """A lost or unreachable broker (worth retrying), not a bug or a bad message."""
    from kafka import errors as ke

    names = ("KafkaConnectionError", "NoBrokersAvailable", "KafkaTimeoutError", "RequestTimedOutError",
             "NodeNotReadyError", "BrokerNotAvailableError", "RetriableError")  # (as this kafka-python has them)
    kinds = tuple(getattr(ke, n) for n in names if hasattr(ke, n))
    return isinstance(e, (*kinds, ConnectionError, TimeoutError))


def _retrying(settings: Settings, what: str, fn: Callable[[], None]) -> None:
    """Run `fn`; on a transient broker error run it again (it resumes from the committed offsets:
    an uncommitted batch is read again and rewritten under the same name, counted once) with
    exponential backoff, for at most `settings.kafka_retry_s` since the streak's first failure."""
    first: float | None = None
    delay = 0.5
    while True:
        try:
            fn()
            return
        except Exception as e:
            if not _transient(e):
                raise
            now = time.monotonic()
            first = first if first is not None else now
            if now - first >= settings.kafka_retry_s:
                raise BrokerUnreachable(f"kafka: {what}: the broker at {settings.kafka_bootstrap} stayed unreachable "
                                        f"for {settings.kafka_retry_s:.0f} s ({type(e).__name__}: {e}); nothing "
                                        "uncommitted was lost: the next run resumes from the committed offsets "
                                        "(SAFETYNET_KAFKA_RETRY_S sets the wait)") from e
            log.warning("kafka: %s: %s: %s; retrying in %.1f s", what, type(e).__name__, e, delay,
                        extra={"event": "kafka_retry", "topic": what})
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


#: batches handed to the writers and not yet committed (one per writer thread): bounds memory
MAX_IN_FLIGHT = 2


class _Stopped(Exception):
    """A consumer process was asked to stop (another one of its run failed): its batches not yet
    committed stay uncommitted, exactly as after a crash."""


def _read_topic(settings: Settings, store: ObjectStore, c: Contract, counts: FeedCounts,
                progress: Progress | None, writer: BatchWriter, mapping: Mapping | None, *,
                topic: str | None = None, partitions: Sequence[int] | None = None,
                check: Callable[[], None] | None = None, stop: Callable[[], bool] | None = None) -> None:
    """The read → intent → write → commit loop of one consumer over `partitions` of `topic` (default:
    all of the feed's topic). `check` runs before every intent and commit (default: this process's
    lease of the feed, `lease.check_held`); `stop()` true ends the loop at the next batch (`_Stopped`)."""
    topic = topic or c.topic
    held = check or (lambda: lease.check_held([c.feed_id]))
    inflight: dict[int, tuple[KafkaBatch, Future]] = {}  # partition → its batch being written, oldest first

    def finish(partition: int) -> None:
        b, fut = inflight.pop(partition)
        res: BatchResult = fut.result()  # re-raises a write failure here: nothing committed
        held()  # a holder that lost its lease commits nothing more
        src.commit(b)
        counts.add(res, kafka=True)
        if progress:
            progress(c.feed_id, len(b.values))

    with KafkaTopicSource(settings, topic, store, partitions=partitions).open() as src:
        if not src.partitions:
            log.info("kafka: topic %s does not exist (yet); nothing to read", topic)
            return
        try:
            for b in src.batches():
                if stop is not None and stop():
                    raise _Stopped(f"{c.feed_id}: partitions {sorted(tp.partition for tp in src.partitions)} stopped")
                # one batch in flight per partition: a partition's next intent is recorded
                # only after its previous batch is written and committed
                if b.partition in inflight:
                    finish(b.partition)
                for p in [p for p, (_, f) in inflight.items() if f.done()]:
                    finish(p)
                while len(inflight) >= MAX_IN_FLIGHT:  # the writer is behind: wait for the oldest
                    finish(next(iter(inflight)))
                held()
                src.record_intent(b)
                inflight[b.partition] = (b, writer.submit(c, b, mapping))
            for p in list(inflight):
                finish(p)
        finally:
            for _, fut in inflight.values():  # failed: let the writes end (uncommitted) before leaving
                fut.exception()


# ---- Kafka: several consumer processes for a large backlog ------------------------------------
def _consumer_plan(settings: Settings, store: ObjectStore, c: Contract, topic: str) -> list[list[int]]:
    """The topic's partitions in groups, one per consumer process — the first read by this
    process, the others each by a spawned one — or [] to read the topic here alone.

    Parallel only when it pays: at least two partitions hold records past the group's committed
    offsets (a probe, `partition_lags`), together at least `kafka_parallel_min_records`, and no
    process would get over 90 % of them. Never from a daemonic process (it may not have
    children), nor when a spawned process would not open the same store from the settings. The
    partitions with records are dealt out by `_deal`; those with nothing (or an unknown amount)
    waiting are read here, in the first group.
    """
    if settings.kafka_consumers == 1 or mp.current_process().daemon or not _same_store(settings, store):
        return []
    if settings.kafka_consumers == 0 and _cores() < AUTO_MIN_CORES:
        return []  # measured on 2 CPUs: the processes' start ate what they gained (ratio 0.69–0.72 either way)
    try:
        lags = partition_lags(settings, topic)
    except Exception as e:  # the probe only chooses the path: the read itself retries (or fails clearly)
        log.info("kafka: %s: backlog probe failed (%s: %s); reading in one process", topic, type(e).__name__, e)
        return []
    waiting = {p: lag for p, lag in lags.items() if lag}
    if len(waiting) < 2 or sum(waiting.values()) < settings.kafka_parallel_min_records:
        return []
    groups = _deal(waiting, settings.kafka_consumers, _cores())
    if sum(waiting[p] for p in groups[0]) > 0.9 * sum(waiting.values()):
        return []  # one partition holds nearly everything: other processes would only add their start
    groups[0] = sorted(groups[0] + [p for p in lags if p not in waiting])
    log.info("kafka: %s: %d records waiting in %d partitions: %d consumer processes, partitions %s", topic,
             sum(waiting.values()), len(lags), len(groups), groups,
             extra={"event": "kafka_parallel", "feed": c.feed_id, "topic": topic})
    return groups


def _deal(waiting: dict[int, int], consumers: int, cores: int) -> list[list[int]]:
    """Partitions (→ records waiting) dealt to consumer processes, the largest backlog first, each to
    the process with the fewest records so far; the processes ordered by their records, most first
    (the first is the parent's, which starts first).

    `consumers` > 0: that many processes (at most one per partition). 0: the fewest, from one per
    core (at least 2) up to two per core, whose shares are even — the largest within 10 % of the
    mean — else the fewest with the smallest largest share: the processes end together only when
    their shares are even (3 partitions on 2 cores: 3 processes, not 2 whose larger share would
    run on alone), and each process more costs its start (imports, ~1 s of CPU).
    """
    total = sum(waiting.values())
    if consumers:
        counts = [min(consumers, len(waiting))]
    else:
        lo, hi = min(len(waiting), max(2, cores)), min(len(waiting), 2 * max(2, cores))
        counts = list(range(lo, hi + 1))
    best: list[tuple[int, list[int]]] = []
    for n in counts:
        groups: list[list[int]] = [[] for _ in range(n)]
        load = [0] * n
        for p, lag in sorted(waiting.items(), key=lambda x: (-x[1], x[0])):
            i = min(range(n), key=lambda j: (load[j], j))
            groups[i].append(p)
            load[i] += lag
        dealt = sorted(zip(load, groups, strict=True), key=lambda x: -x[0])
        if not best or dealt[0][0] < best[0][0]:
            best = dealt
        if max(load) <= 1.1 * total / n:
            break
    return [sorted(g) for _, g in best]


#: `kafka_consumers` = 0 (auto) spawns consumer processes only with at least this many CPUs
AUTO_MIN_CORES = 4


def _cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _same_store(settings: Settings, store: ObjectStore) -> bool:
    """Whether `ObjectStore.from_settings(settings)` (what a consumer process opens) is `store`."""
    url = settings.store
    if url.startswith("s3://"):
        return store.url == url
    return store.url == "file://" + str(Path(url[7:] if url.startswith("file://") else url).expanduser().resolve())


@dataclass(frozen=True)
class _ConsumerJob:
    """What a spawned consumer process is given (pickled): its share of one feed's topic."""

    settings: Settings
    feed_id: str
    topic: str  # given, not taken from the contract: the parent's may be another (the tests', the bench's)
    partitions: tuple[int, ...]
    mapping: Mapping | None
    lease: tuple[int, float] | None  # the parent's lease of the feed: (generation, ttl_s)
    parent_pid: int
    log_levels: dict[str, int]
    index: int


class _ConsumerFailed(Exception):
    """A spawned consumer process failed: stops this process's own read (not a transient error, so
    `_retrying` does not retry it); the process's error is raised once every consumer has ended."""


#: how long the consumer processes are given to end their in-flight batches after a failure
STOP_WAIT_S = 30.0


def _read_parallel(settings: Settings, store: ObjectStore, c: Contract, topic: str, counts: FeedCounts,
                   progress: Progress | None, writer: BatchWriter, mapping: Mapping | None, groups: list[list[int]],
                   leases: MappingT[str, lease.Lease] | None) -> None:
    """Read `groups[0]` here and every other group in a spawned consumer process; merge their counts.

    Each process runs `_read_topic` over its partitions with its own consumer, DuckDB connections
    and writer threads, so per partition everything is as in one process: the same batches (file
    names and bytes), intents before writes, commits after durable writes. A spawned process
    follows this process's lease of the feed (`_lease_follower`, before every intent, file write
    and commit; this process keeps renewing it) and dies with it (`_exit_with_parent`). Its
    progress and log records come back on a queue, read here after each of this process's own
    commits and while waiting for the others. When any consumer fails, the others are told to
    stop (their uncommitted batches stay uncommitted), the counts of what was committed are
    merged, and the first error is raised, naming the feed and partitions.
    """
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    stop = ctx.Event()
    held = (leases or {}).get(c.feed_id)
    follow = (held.generation, held.ttl_s) if held is not None else None
    levels = _log_levels()
    jobs = {i: _ConsumerJob(settings, c.feed_id, topic, tuple(g), mapping, follow, os.getpid(), levels, i)
            for i, g in enumerate(groups) if i}
    procs: dict[int, Any] = {}
    results: dict[int, FeedCounts] = {}
    errors: dict[int, BaseException] = {}

    def take(wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                msg = q.get(timeout=max(0.0, deadline - time.monotonic())) if wait_s else q.get_nowait()
            except queue.Empty:
                break
            kind, i, body = msg[0], msg[1], msg[2]
            if kind == "log":
                logging.getLogger(body.name).handle(body)
            elif kind == "progress":
                if progress:
                    progress(c.feed_id, body)
            else:  # "done", "stopped", "failed": the process's last message
                results[i] = body
                if kind == "failed":
                    errors.setdefault(i, msg[3])
            wait_s = 0.0  # after the first message, take only what is there

    def drain(wait_s: float = 0.0) -> None:
        """Handle what the consumer processes sent; note a process that ended without a word."""
        take(wait_s)
        dead = [i for i, p in procs.items() if i not in results and p.exitcode is not None]
        if dead:
            take(0.5)  # its last message is in the pipe before it exits: take it
            for i in dead:
                if i not in results:
                    results[i] = FeedCounts(c.feed_id)
                    errors.setdefault(i, RuntimeError(f"exited with code {procs[i].exitcode} before reporting"))

    def own_progress(feed_id: str, n: int) -> None:
        if progress:
            progress(feed_id, n)
        drain()
        if errors:
            raise _ConsumerFailed()

    try:
        try:
            with _spawn_without_host_main():
                for i, job in jobs.items():
                    procs[i] = p = ctx.Process(target=consumer_boot.main, args=(pickle.dumps(job), q, stop),
                                               daemon=True, name=f"kafka-consumer-{c.feed_id}-{i}")
                    p.start()
            _retrying(settings, topic, lambda: _read_topic(settings, store, c, counts, own_progress, writer, mapping,
                                                           topic=topic, partitions=groups[0]))
            while len(results) < len(procs) and not errors:
                drain(0.2)
        except _ConsumerFailed:
            pass
        except BaseException:
            stop.set()
            raise
        finally:
            if errors:
                stop.set()
            deadline = time.monotonic() + STOP_WAIT_S
            while len(results) < len(procs) and time.monotonic() < deadline:
                drain(0.2)
            for i, p in procs.items():
                p.join(timeout=max(0.1, deadline - time.monotonic()))
                if p.is_alive():  # stuck (e.g. in a broker retry): its uncommitted batch is read again next run
                    log.warning("kafka: %s: consumer process for partitions %s did not stop; killing it",
                                c.feed_id, list(jobs[i].partitions))
                    p.kill()
                    p.join()
            for i in sorted(results):
                counts.merge(results[i])
    finally:
        q.close()
        q.cancel_join_thread()
    if errors:
        i = min(errors)
        raise _consumer_error(c, topic, jobs[i].partitions, errors[i])


def _consumer_error(c: Contract, topic: str, partitions: Sequence[int], e: BaseException) -> BaseException:
    """A consumer process's error as raised in the parent: the same exception, of its class (so a
    `TransientError` is still retried and a `ConfigError` still is not), its message naming the
    feed and partitions; a RuntimeError with that message where the class does not say it."""
    msg = mask_text(f"{c.feed_id}: consumer process for {topic} partitions {list(partitions)}: "
                    f"{type(e).__name__}: {e}")
    try:
        e.args = (msg,)
        if str(e) == msg:
            return e
        out = type(e)(msg)  # a class whose text is not its args (OSError's)
        if str(out) == msg:
            out.__cause__ = e
            return out
    except Exception:  # a class of its own making
        pass
    out = RuntimeError(msg)
    out.__cause__ = e
    return out


def _log_levels() -> dict[str, int]:
    """The levels set on this process's loggers ("" for the root), for a consumer process."""
    out = {"": logging.getLogger().level}
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger) and lg.level != logging.NOTSET:
            out[name] = lg.level
    return out


class _QueueLog(logging.handlers.QueueHandler):
    """A consumer process's log records, sent to the parent (which handles them as its own)."""

    def enqueue(self, record: logging.LogRecord) -> None:
        self.queue.put_nowait(("log", 0, record))


class _Checked:
    """A store whose every write is preceded by `check` (a consumer process's lease check)."""

    def __init__(self, store: ObjectStore, check: Callable[[], None]):
        self.store, self.check = store, check

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.check()
        self.store.write_bytes(rel, data)


def _lease_follower(store: ObjectStore, feed_id: str, held: tuple[int, float] | None,
                    parent_pid: int) -> Callable[[], None]:
    """The check a consumer process makes before every intent, file write and commit: its parent
    is alive (else it exits), and the parent's lease generation of the feed is still the newest,
    neither released nor expired (else `lease.LeaseLost`: the parent renews it while it works, so
    an expired one means the parent is stalled and another run may take over)."""

    def check() -> None:
        if os.getppid() != parent_pid:
            os._exit(70)
        if held is None:
            return
        gen, _ = held
        stems = [e.path.rsplit("/", 1)[-1][:-5] for e in store.list(paths.lease_generations(feed_id), ".json")]
        newer = [int(x) for x in stems if x.isdigit() and int(x) > gen]
        if newer:
            raise lease.LeaseLost(f"lease {feed_id}: taken over by generation {max(newer)} (the parent process held "
                                  f"{gen}): stop, another writer is running")
        try:
            rec = json.loads(store.read_bytes(paths.lease_generation(feed_id, gen)))
        except FileNotFoundError:
            raise lease.LeaseLost(f"lease {feed_id}: generation {gen} is gone: stop") from None
        if rec.get("released") or dt.datetime.fromisoformat(rec["expires_at"]) < _now():
            raise lease.LeaseLost(f"lease {feed_id}: generation {gen} was released or expired without renewal "
                                  "(the parent process stalled): stop, another writer may take over")

    return check


def _consumer_process(job: _ConsumerJob, q: Any, stop: Any) -> None:
    """A spawned consumer process (entered through `consumer_boot.main`): `_read_topic` over
    `job.partitions`, then its counts to the parent."""
    _exit_with_parent(job.parent_pid)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(_QueueLog(q))
    for name, level in job.log_levels.items():
        logging.getLogger(name or None).setLevel(level)
    logmask.install()  # nothing ID-shaped leaves this process in a log record
    counts = FeedCounts(job.feed_id)
    kind, err = "done", None
    try:
        s = job.settings
        store = ObjectStore.from_settings(s)
        c = contracts()[job.feed_id]
        check = _lease_follower(store, job.feed_id, job.lease, job.parent_pid)
        con = _writer_connection()
        writer = BatchWriter(s, _Checked(store, check), con)
        try:
            _retrying(s, job.topic, lambda: _read_topic(
                s, store, c, counts, lambda _f, n: q.put(("progress", job.index, n)), writer, job.mapping,
                topic=job.topic, partitions=job.partitions, check=check, stop=stop.is_set))
        finally:
            writer.close()
            con.close()
    except _Stopped:
        kind = "stopped"
    except BaseException as e:
        kind, err = "failed", _portable(e)
        log.error("kafka: %s partitions %s: %s", job.feed_id, list(job.partitions), mask_text(traceback.format_exc()))
    q.put((kind, job.index, counts, err))
    q.close()
    q.join_thread()  # everything sent before leaving
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown, where DuckDB's bindings print leak warnings


def _portable(e: BaseException) -> BaseException:
    """`e` if it survives pickling (to the parent), else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(mask_text(f"{type(e).__name__}: {e}"))


def _exit_with_parent(parent: int) -> None:
    """End this process when its parent dies (e.g. SIGKILL), so that a retried run never races it.

    Linux: the kernel delivers SIGKILL when the parent goes (`PR_SET_PDEATHSIG`); elsewhere, and as
    a backstop, a thread polls the parent's pid. An unfinished write is harmless: files are written
    atomically and the batch is not committed, so the next run rewrites it under the same name.
    """
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # died before prctl took effect
        os._exit(70)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(70)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


@contextlib.contextmanager
def _spawn_without_host_main() -> Iterator[None]:
    """Start spawn-method processes without re-running the host program's `__main__` in them.

    `spawn` imports the parent's main script in the child before unpickling anything. A consumer
    process needs only this package (its functions pickle by module name), and the host program
    may be one whose import fails there: in an Airflow task the main script is the `airflow` CLI,
    whose import configures Airflow's ORM from settings the task process is not given.
    """
    main = sys.modules.get("__main__")
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if main is not None:
        main.__dict__.pop("__file__", None)
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


def write_kafka_batch(store: ZoneWriter, con: duckdb.DuckDBPyConnection, c: Contract, b: KafkaBatch,
                      mapping: Mapping | None = None, ingested_at: dt.datetime | None = None) -> BatchResult:
    msgs = pa.table({"_kafka_partition": pa.array([b.partition] * len(b.values), pa.int32()),
                     "_kafka_offset": pa.array(b.offsets, pa.int64()), "_value": json_text(b.values)})
    # decoding and validating in one statement: the decoded records are never materialised
    con.register("__msg", msgs)
    try:
        return validate_and_write(
            store, con, c, f"({json_records_sql(c, '__msg', envelope=True, mapping=mapping)})", name=b.name, ingest_date=b.ingest_date,
            lineage={"_source": "kafka", "_kafka_topic": b.topic},
            where=lambda r: (f"event {r['_event_id']}, " if r.get("_event_id") else "")
            + f"{b.topic}/{r['_kafka_partition']}@{r['_kafka_offset']}", mapping=mapping, ingested_at=ingested_at)
    finally:
        con.unregister("__msg")


# ---- file drops -------------------------------------------------------------------------------
def ingest_drops(store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract, counts: FeedCounts,
                 progress: Progress | None = None, run_id: str = "", mapping: Mapping | None = None
                 ) -> list[tuple[Drop, dict]]:
    """Every waiting drop of the feed → raw/quarantine. Returns the drops with their ledger
    records; the caller marks them done once the feed's health is known (`DropFolderSource.mark_done`)."""
    src = DropFolderSource(store, c)
    done: list[tuple[Drop, dict]] = []
    for d in src.waiting(mapping.retake_key if mapping else None, mapping.headers if mapping else None):
        r = ingest_drop(store, con, c, d, mapping)
        counts.add(r, kafka=False)
        if r.accepted + sum(r.rejected.values()) == 0 and c.mode == "snapshot":
            counts.empty_snapshots.append(d.name)
        done.append((d, {"run_id": run_id, "ingested_at": _now().isoformat(), "accepted": r.accepted,
                         "quarantined": dict(r.rejected), "files": r.files,
                         "mapping": mapping.retake_key if mapping else None}))
        if progress:
            progress(c.feed_id, r.accepted + sum(r.rejected.values()))
    newest = max((d.stamp or "" for d, _ in done), default=None)
    names = sorted(d.name for d, _ in done if (d.stamp or "") == newest)
    if c.mode == "snapshot" and len(names) > 1:  # e.g. 城市低保.csv and 农村低保.csv of one date
        log.info("drop %s: %d files of the same data date (%s): the feed is a snapshot, read together as one "
                 "(a key in more than one of them is kept once, with a warning at the clean)",
                 c.feed_id, len(names), ", ".join(names),
                 extra={"event": "snapshot_files", "feed": c.feed_id, "files": names})
    return done


def ingest_drop(store: ZoneWriter, con: duckdb.DuckDBPyConnection, c: Contract, d: Drop,
                mapping: Mapping | None = None, ingested_at: dt.datetime | None = None) -> BatchResult:
    """One landing file → raw/quarantine. A file that cannot be read as a whole is quarantined
    whole, counted as the records it holds. JSON Lines may hold flat records or event envelopes
    (an outbox export): envelope lines keep their event id, op and time, so redeliveries and
    deletes behave as on the topic. `ingested_at`: see `validate_and_write`."""
    at = ingested_at or _now()
    today = at.date().isoformat()
    name = f"file+{d.name.replace('/', '_')}+{d.version}"
    occurred = d.stamp or today
    sheets: dict[str, str] = {}  # a workbook of several data sheets: event-id marker → sheet name
    try:
        tables, fmt, notes = read_tables(d.name, d.data, c, mapping.headers if mapping else None)
        for note in notes:  # skipped title rows or sheets: said, not silently left out
            log.warning("drop %s/%s: %s", c.feed_id, d.name, mask_text(note),
                        extra={"event": "drop_layout", "feed": c.feed_id, "file": d.name})
        if fmt.startswith("jsonl"):
            values = [r[0] for r in tables[0].rows]
            meta = pa.table({"_row_number": pa.array(range(1, len(values) + 1), pa.int64())})
            con.register("__lines", meta.append_column("_value", pa.array(values, pa.string())))
            try:
                spellings, others, present = json_spellings(con, "__lines", c, mapping.headers if mapping else None)
                for note in absent_note(c, present, others, what="key"):
                    log.warning("drop %s/%s: %s", c.feed_id, d.name, mask_text(note),
                                extra={"event": "drop_layout", "feed": c.feed_id, "file": d.name})
                recs = con.sql(json_records_sql(c, "__lines", envelope=None, mapping=mapping,
                                                spellings=spellings)).to_arrow_table()
            finally:
                con.unregister("__lines")
        else:
            parts = []
            for k, t in enumerate(tables):
                try:
                    part = rows_to_records(c, t.header, t.rows, mapping)
                except FileFormatError as e:
                    if t.sheet is not None and len(tables) > 1:
                        e.args, e.first_row = (mask_text(f"sheet {t.sheet!r}: {e}"),), None
                        e.records = [r for x in tables for r in rows_to_records(c, x.header, x.rows, mapping,
                                                                                 strict=False)["_raw"].to_pylist()]
                    raise
                if len(tables) > 1:  # each row's id and reason name its sheet (rows are numbered per sheet)
                    marker = "" if k == 0 else f"sheet{t.index}:"
                    sheets[marker] = t.sheet or ""
                    part = part.append_column("_sheet", pa.repeat(pa.scalar(marker), part.num_rows))
                parts.append(part)
            recs = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
    except FileFormatError as e:
        return _quarantine_file(store, c, d, e, name, at)
    if recs.num_rows == 0:
        log.warning("drop: %s/%s has no data rows", c.feed_id, d.name)
        return BatchResult(0, Counter(), [])
    m = recs.num_rows
    rows_at = pc.cast(recs["_row_number"], pa.string())
    if "_sheet" in recs.column_names:  # the first data sheet's ids as a one-sheet file's, the others marked
        rows_at = pc.binary_join_element_wise(recs["_sheet"], rows_at, "")
        recs = recs.drop_columns(["_sheet"])
    file_ids = pc.binary_join_element_wise(f"file:{d.version}:", rows_at, "")
    if "_event_id" in recs.column_names:  # JSON Lines: envelope lines carry their own
        env = pc.is_valid(recs["_event_id"])
        recs = recs.set_column(recs.column_names.index("_event_id"), "_event_id",
                               pc.if_else(env, recs["_event_id"], file_ids))
        recs = recs.set_column(recs.column_names.index("_occurred_at"), "_occurred_at",
                               pc.if_else(env, recs["_occurred_at"], pa.scalar(occurred)))
    else:
        recs = recs.append_column("_event_id", file_ids)
        recs = recs.append_column("_op", pa.array(["upsert"] * m, pa.string()))
        recs = recs.append_column("_occurred_at", pa.array([occurred] * m, pa.string()))
    con.register("__rec", recs)
    try:
        return validate_and_write(store, con, c, "__rec", name=name, ingest_date=today,
                                  lineage={"_source": "file", "_source_file": d.path},
                                  where=lambda r: _drop_where(d.name, r, sheets), mapping=mapping,
                                  ingested_at=at)
    finally:
        con.unregister("__rec")


def _drop_where(name: str, r: dict, sheets: MappingT[str, str]) -> str:
    """Where a drop's record is: its file and row, and its sheet in a workbook of several data sheets."""
    if not sheets:
        return f"file {name}, row {r['_row_number']}"
    eid = str(r.get("_event_id") or "")
    marker = next((m for m in sheets if m and f":{m}" in eid), "")
    return f"file {name}, sheet {sheets[marker]!r} row {r['_row_number']}"


def _quarantine_file(store: ZoneWriter, c: Contract, d: Drop, e: FileFormatError, name: str, now: dt.datetime
                     ) -> BatchResult:
    """Keep an unreadable file whole in quarantine, and one quarantine record per data record it
    holds (its line or row as text), each explaining why; one record if not even rows can be told."""
    now = now.replace(microsecond=now.microsecond // 1000 * 1000)
    today = now.date().isoformat()
    sums: dict = {}
    qfile = paths.quarantine_file(c.prefix, today, d.name)
    _write(store, qfile, d.data, None, now, sums)
    why = mask_text(f"{c.feed_id}: file {d.name} — {e.rule}: {e}")
    records = e.records or [f"(whole file kept at {qfile}, {len(d.data)} bytes)"]
    # spreadsheet-style row numbers: CSV/XLSX data start at row 2 (after the header), JSON Lines at 1
    first = (0 if not e.records else e.first_row if e.first_row is not None
             else 1 if d.name.lower().endswith((".jsonl", ".ndjson")) else 2)
    rows = [{"_raw": raw, "_rule": e.rule, "_field": "", "_reason": f"{why} [file {d.name}, row {first + i}]",
             "_event_id": f"file:{d.version}:{first + i}", "_op": "upsert", "_occurred_at": d.stamp,
             "_source": "file", "_kafka_topic": None, "_kafka_partition": None, "_kafka_offset": None,
             "_source_file": d.path, "_row_number": first + i, "_ingested_at": now}
            for i, raw in enumerate(records)]
    path = paths.quarantine_batch(c.prefix, today, name)
    _write(store, path, parquet_bytes(pa.Table.from_pylist(rows, schema=c.quarantine_schema())), len(rows), now, sums)
    log.warning("quarantined whole file (%d records): %s", len(rows), why,
                extra={"event": "quarantine", "feed": c.feed_id, "rule": e.rule})
    drift = Counter({("", e.rule, f"file {d.name}: {str(e).removeprefix(c.feed_id + ': ')}"): len(rows)})
    return BatchResult(0, Counter({e.rule: len(rows)}), [path, qfile], drift, sums)


# ---- the run ----------------------------------------------------------------------------------
def ingest(settings: Settings, store: ObjectStore, feeds: Iterable[str] | None = None, *, kafka: bool = True,
           files: bool = True, progress: Progress | None = None) -> IngestReport:
    """Ingest everything waiting for the given feeds (default: all). Writes the run manifest.

    The feeds' mappings are loaded first: a wrong mapping file stops the run before anything is
    read (`MappingError`, every problem listed). After each feed its health is judged
    (`safetynet.intake.health`): an unhealthy delivery's `raw/` files are held out of `clean/` and its
    drops stay re-offerable for a changed mapping; a healthy one releases files it rewrote.
    """
    started = _now()
    run_id = started.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    selected = [contracts()[f] for f in feeds] if feeds else list(contracts().values())
    if kafka and not settings.kafka_bootstrap:
        raise ConfigError("no Kafka bootstrap configured (SAFETYNET_KAFKA_BOOTSTRAP) — "
                          "use --no-kafka, or `safetynet demo`, which starts an embedded broker")
    maps = load_mappings(settings.mappings, [c.feed_id for c in selected])
    report = IngestReport(run_id, started.isoformat(), {c.feed_id: FeedCounts(c.feed_id) for c in selected},
                          manifest=paths.ingest_run(run_id))
    ids = [c.feed_id for c in selected]
    with lease.held(store, ids, run_id=run_id, ttl_s=settings.lease_ttl_s, wait_s=settings.lease_wait_s) as held:
        report.write(store)  # the "started" record first: a run that dies still has one
        report.adopted = adopt_crashed_runs(store, report)
        try:
            _ingest_feeds(settings, store, selected, maps, report, kafka, files, progress,
                          {x.name: x for x in held})
            lease.check_held(ids)
            report.status = "complete"
        except BaseException as e:
            report.status, report.error = "failed", f"{type(e).__name__}: {e}"[:500]
            raise
        finally:
            report.write(store)
    return report


def _ingest_feeds(settings: Settings, store: ObjectStore, selected: list[Contract], maps: dict,
                  report: IngestReport, kafka: bool, files: bool, progress: Progress | None,
                  leases: MappingT[str, lease.Lease] | None = None) -> None:
    run_id = report.run_id
    con = normalise.connect()
    writer = BatchWriter(settings, store, con)
    try:
        for c in selected:
            lease.check_held([c.feed_id])
            t0 = time.perf_counter()
            counts = report.feeds[c.feed_id]
            mp_ = maps[c.feed_id]
            counts.mapping = {"sha256": mp_.sha256, "checksum": mp_.checksum, "sources": list(mp_.sources)}
            drops = ingest_drops(store, con, c, counts, progress, run_id, mp_) if files else []
            if kafka:
                ingest_topic(settings, store, con, c, counts, progress, writer, mp_, leases=leases)
            counts.seconds = time.perf_counter() - t0
            if not counts.reconciles:  # a bug, never expected: stop loudly rather than publish it
                raise AssertionError(f"{c.feed_id}: counts do not reconcile: {counts.as_dict()}")
            _judge(store, c, counts, run_id, drops, mp_, settings.max_quarantine_rate)
            log.info("ingest %s: input=%d accepted=%d quarantined=%d%s", c.feed_id, counts.input, counts.accepted,
                     counts.quarantined_total, " UNHEALTHY" if counts.health and counts.health.unhealthy else "",
                     extra={"event": "ingest_feed", **counts.as_dict()})
    finally:
        writer.close()
        con.close()


def _judge(store: ObjectStore, c: Contract, counts: FeedCounts, run_id: str, drops: list[tuple[Drop, dict]],
           mapping: Mapping, default_rate: float) -> None:
    """Judge the feed's delivery in this run, hold or release its raw files, record the drops."""
    if not counts.input and not counts.empty_snapshots:
        return  # nothing delivered: the feed's recorded health stands
    threshold = mapping.max_quarantine_rate if mapping.max_quarantine_rate is not None else default_rate
    h = feed_health.evaluate(c, run_id, counts.input, counts.quarantined, counts.drift, threshold,
                             counts.empty_snapshots, files=len(drops))
    raw_files = [f for f in counts.files if f.startswith(paths.RAW)]
    if h.unhealthy:
        h.held_files = raw_files
        feed_health.set_held(store, c, {f: {"run_id": run_id, "why": h.problems} for f in raw_files}, [])
        for line in h.problems + h.drift:
            log.error("feed unhealthy: %s", line, extra={"event": "feed_unhealthy", "feed": c.feed_id})
    else:
        feed_health.set_held(store, c, {}, raw_files)
        for line in h.drift:
            log.warning("feed drift: %s", line, extra={"event": "feed_drift", "feed": c.feed_id})
    src = DropFolderSource(store, c)
    lease.check_held([c.feed_id])
    for d, rec in drops:
        src.mark_done(d, {**rec, "held": h.unhealthy})
    feed_health.write(store, c, h)
    counts.health = h
