"""The review app hears of a new snapshot version from the publish itself: the catalog watch (a
pointer rewritten) and the Kafka notice (`hub.snapshots.v1`) each wake the loader, within seconds."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

import pytest

from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.review.watch import SnapshotWatcher, pointer_signature


class Loads:
    def __init__(self):
        self.n = 0
        self.done = threading.Event()

    def __call__(self):
        self.n += 1
        self.done.set()
        return None


def _wait(cond, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "the watcher did not wake the loader in time"
        time.sleep(0.05)
    return time.monotonic() - t0


def _pointer(store: ObjectStore, day: dt.date, version: int) -> None:
    store.write_bytes(paths.snapshot_pointer(day), json.dumps({"snapshot_date": str(day), "version": version}).encode())


def test_the_pointer_signature_sees_only_date_pointers(tmp_path):
    store = ObjectStore.from_settings(Settings(store=str(tmp_path)))
    assert pointer_signature(store) == ()
    _pointer(store, dt.date(2026, 11, 1), 1)
    store.write_bytes(paths.snapshot_version(dt.date(2026, 11, 1), 1), b"{}")  # a manifest: not a pointer
    sig = pointer_signature(store)
    assert [p for p, _, _ in sig] == [paths.snapshot_pointer(dt.date(2026, 11, 1))]


def test_a_new_version_wakes_the_loader_through_the_catalog_watch(tmp_path):
    store = ObjectStore.from_settings(Settings(store=str(tmp_path)))
    day = dt.date(2026, 11, 1)
    _pointer(store, day, 1)
    loads = Loads()
    w = SnapshotWatcher(Settings(store=str(tmp_path)), load=loads, store=lambda: store, watch_seconds=0.2,
                        kafka=False).start()
    try:
        time.sleep(1.0)
        assert loads.n == 0  # nothing new: the watch only looks
        _pointer(store, day, 2)  # the publisher switches the pointer to v2
        took = _wait(lambda: loads.n >= 1)
        assert took < 5 and list(w.woken_by) == ["catalog"]
        _pointer(store, dt.date(2026, 12, 1), 1)  # a new date
        _wait(lambda: loads.n >= 2)
    finally:
        w.stop()


def test_a_store_that_fails_keeps_the_watch_alive(tmp_path):
    calls = {"n": 0}
    store = ObjectStore.from_settings(Settings(store=str(tmp_path)))

    def flaky():
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError("S3 timeout")
        return store

    loads = Loads()
    w = SnapshotWatcher(Settings(store=str(tmp_path)), load=loads, store=flaky, watch_seconds=0.1, kafka=False).start()
    try:
        _wait(lambda: calls["n"] >= 4)
        _pointer(store, dt.date(2026, 11, 1), 1)
        _wait(lambda: loads.n >= 1)
    finally:
        w.stop()


def test_the_kafka_notice_wakes_the_loader(broker, tmp_path):
    from safetynet.pipeline import produce_snapshot_notice

    s = Settings(store=str(tmp_path), kafka_bootstrap=broker.bootstrap)
    produce_snapshot_notice(s, {"snapshot_date": "2026-11-01", "version": 1, "content_sha256": "x"})  # an old one
    loads = Loads()
    w = SnapshotWatcher(s, load=loads, store=lambda: None, watch_seconds=0).start()  # the notices only
    try:
        _wait(lambda: loads.n >= 1, timeout=30)  # the notice already on the topic: one load at start
        seen = loads.n
        time.sleep(1.5)
        t0 = time.monotonic()
        produce_snapshot_notice(s, {"snapshot_date": "2026-11-01", "version": 2, "content_sha256": "y"})
        _wait(lambda: loads.n > seen, timeout=30)
        assert time.monotonic() - t0 < 10
        assert w.woken_by[-1] == "kafka"
    finally:
        w.stop()


@pytest.mark.parametrize("flag", [["--watch-seconds", "0"], ["--poll-minutes", "0"]])
def test_serve_takes_the_watch_interval(flag):
    from safetynet.cli import build_parser

    a = build_parser().parse_args(["serve", *flag])
    assert a.watch_seconds == (0 if flag[0] == "--watch-seconds" else 2.0)
