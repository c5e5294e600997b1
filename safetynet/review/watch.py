"""The review app learns of a new snapshot version when it is published, not on a 5-minute poll.

Two sources wake the loader, whichever comes first:
- **the notice on Kafka** (`hub.snapshots.v1`, produced by the run right after the pointer switch,
  see `safetynet.pipeline.produce_snapshot_notice`) when `SAFETYNET_KAFKA_BOOTSTRAP` is set: a
  plain consumer of every partition, no group and nothing committed (every app instance hears
  every notice; the topic holds one small message per publish);
- **a catalog watch**: every `watch_seconds` the store's snapshot pointers
  (`_catalog/snapshots/D.json`, one object per date, rewritten by each publish) are listed
  without recursion — one LIST request on S3 — and compared by path, size and mtime.

Either only *wakes* the loader: it then loads the newest published snapshot
(`safetynet.review.load.load_snapshot`, a no-op when its manifest is already loaded). A lost
notice is covered by the watch, a repeated one costs a pointer read. One loader thread: loads never
overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from schemas.outputs import SNAPSHOTS_TOPIC

log = logging.getLogger(__name__)


def pointer_signature(store: ObjectStore) -> tuple:
    """What changes when any snapshot is published: the date pointers' paths, sizes and mtimes."""
    return tuple((e.path, e.size, e.mtime_ns) for e in store.list(paths.SNAPSHOTS, ".json", recursive=False))


class SnapshotWatcher:
    """`SnapshotWatcher(settings, load).start()`: calls `load()` (from one thread) whenever a new
    snapshot may have been published; `stop()` ends its threads."""

    def __init__(self, settings: Settings, load: Callable[[], object], store: Callable[[], ObjectStore | None],
                 watch_seconds: float = 2.0, kafka: bool = True):
        self.settings = settings
        self._load = load
        self._store = store
        self.watch_seconds = watch_seconds
        self.kafka = kafka and bool(settings.kafka_bootstrap)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.loads = 0  # how many times the loader ran (tests, logs)
        #: the sources of the latest wake-ups that led to a load, newest last (bounded: the app runs for months)
        self.woken_by: deque[str] = deque(maxlen=100)

    # ---- the sources --------------------------------------------------------------------------
    def wake(self, source: str) -> None:
        if not self._wake.is_set():
            self.woken_by.append(source)
        self._wake.set()

    def _watch_catalog(self) -> None:
        last: tuple | None = None
        while not self._stop.wait(self.watch_seconds):
            try:
                st = self._store()
                sig = pointer_signature(st) if st is not None else None
            except Exception as e:  # a store hiccup: try again at the next tick
                log.warning("review: watching the snapshot catalog failed: %s", e)
                continue
            if last is not None and sig != last:
                self.wake("catalog")
            last = sig

    def _watch_kafka(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        from connectors.kafka_topic import consumer_config

        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = KafkaConsumer(**{**consumer_config(self.settings), "group_id": None})
                    parts = consumer.partitions_for_topic(SNAPSHOTS_TOPIC)
                    if not parts:  # not created yet (no run has published): look again shortly
                        consumer.close()
                        consumer = None
                        self._stop.wait(max(self.watch_seconds, 1.0))
                        continue
                    tps = [TopicPartition(SNAPSHOTS_TOPIC, p) for p in sorted(parts)]
                    consumer.assign(tps)
                    consumer.seek_to_beginning(*tps)
                got = consumer.poll(timeout_ms=500)
                if any(got.values()):
                    self.wake("kafka")
            except Exception as e:  # the broker went away: reconnect after a pause (the catalog watch goes on)
                log.warning("review: listening for snapshot notices on %s failed: %s", SNAPSHOTS_TOPIC, e)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:
                        pass
                consumer = None
                self._stop.wait(5.0)
        if consumer is not None:
            consumer.close()

    # ---- the loader ---------------------------------------------------------------------------
    def _loader(self) -> None:
        while not self._stop.is_set():
            if not self._wake.wait(0.5):
                continue
            self._wake.clear()
            t0 = time.perf_counter()
            try:
                res = self._load()
            except Exception:  # keep serving; the next wake-up tries again
                log.exception("review: loading the latest snapshot failed")
                continue
            self.loads += 1
            if res is not None and getattr(res, "loaded", False):
                log.info("review: snapshot %s loaded in %.1fs (woken by %s)", getattr(res, "snapshot_date", "?"),
                         time.perf_counter() - t0,
                         self.woken_by[-1] if self.woken_by else "?")

    def start(self) -> SnapshotWatcher:
        targets: list[tuple[str, Callable[[], None]]] = [("snapshot-loader", self._loader)]
        if self.watch_seconds > 0:
            targets.append(("snapshot-catalog-watch", self._watch_catalog))
        if self.kafka:
            targets.append(("snapshot-notices", self._watch_kafka))
        for name, fn in targets:
            t = threading.Thread(target=fn, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
