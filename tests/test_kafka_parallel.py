"""Kafka ingest with several consumer processes (a large backlog): the same files, bytes, counts and
committed offsets as one process; a killed parent leaves no orphan; a failing consumer process
fails the ingest, naming itself; a small backlog stays in one process."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from connectors.kafka_producer import publish
from connectors.kafka_topic import KafkaBatch, partition_lags
from safetynet.core import lease, paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake import ingest as ingest_mod
from safetynet.intake.clean import clean_feed, clean_path
from safetynet.intake.ingest import ingest
from schemas import idno
from tests.kafka_events import claim_events
from tests.test_kafka_ingest import CLAIM, committed, raw_snapshot, topic  # noqa: F401  (the `topic` fixture)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def _settings(base: Settings, bootstrap: str, root: Path, **kw) -> Settings:
    return base.model_copy(update={"kafka_bootstrap": bootstrap, "store": str(root),
                                   "kafka_group": f"g-{uuid.uuid4().hex[:8]}", "batch_max_records": 500, **kw})


def _parallel_events(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "event", None) == "kafka_parallel"]


def test_parallel_consumers_write_what_one_process_writes(broker, topic, local_settings, tmp_path, caplog):
    msgs, exp = claim_events(5_500)
    publish(broker.bootstrap, topic, msgs)
    one = _settings(local_settings, broker.bootstrap, tmp_path / "one", kafka_consumers=1)
    par = _settings(local_settings, broker.bootstrap, tmp_path / "par", kafka_consumers=3,
                    kafka_parallel_min_records=0)
    st1, st3 = ObjectStore.from_settings(one), ObjectStore.from_settings(par)
    a = ingest(one, st1, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    seen: list[int] = []
    with caplog.at_level(logging.INFO, logger="safetynet.intake.ingest"):
        rep = ingest(par, st3, [CLAIM.feed_id], files=False, progress=lambda f, n: seen.append(n))
    b = rep.feeds[CLAIM.feed_id]
    plan = _parallel_events(caplog.records)
    assert len(plan) == 1 and "3 consumer processes" in plan[0].getMessage()  # two were spawned
    # the counts reconcile and are those of one process; progress came from every consumer
    assert b.reconciles and rep.status == "complete"
    assert (b.input, b.accepted, dict(b.quarantined), b.batches, b.kafka_records) == \
           (a.input, a.accepted, dict(a.quarantined), a.batches, a.kafka_records)
    assert (a.input, a.accepted, dict(a.quarantined)) == \
           (exp["messages"], exp["messages"] - exp["bad"], {"json_malformed": exp["bad"]})
    assert sum(seen) == b.input
    assert sorted(b.files) == sorted(a.files) and set(b.checksums) == set(a.checksums) == set(b.files)
    assert {f: (v["rows"]) for f, v in b.checksums.items()} == {f: (v["rows"]) for f, v in a.checksums.items()}
    # the same files, named by the same offset ranges, with the same rows (bar the wall clock)
    for zone in ("raw", "quarantine"):
        x, y = raw_snapshot(st1, zone), raw_snapshot(st3, zone)
        assert sorted(x) == sorted(y) and x
        for name in x:
            assert x[name].equals(y[name]), name
    # the same offsets committed, every one to the end
    ends = committed(broker.bootstrap, one.kafka_group, topic)
    assert ends == committed(broker.bootstrap, par.kafka_group, topic)
    assert sum(ends.values()) == exp["messages"]
    # the run record lists every file with its checksum (`store verify` needs them)
    record = json.loads(st3.read_bytes(rep.manifest))
    assert set(record["feeds"][CLAIM.feed_id]["checksums"]) == set(b.files)
    # and a second run finds nothing left
    assert ingest(par, st3, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id].input == 0


def test_a_small_backlog_is_read_in_one_process(broker, topic, local_settings, tmp_path, caplog):
    msgs, exp = claim_events(600)
    publish(broker.bootstrap, topic, msgs)
    s = _settings(local_settings, broker.bootstrap, tmp_path / "s", kafka_consumers=3)
    store = ObjectStore.from_settings(s)
    lags = partition_lags(s, topic)
    assert sorted(lags) == [0, 1, 2] and sum(lags.values()) == exp["messages"]
    assert s.kafka_parallel_min_records > exp["messages"]  # the default threshold
    assert ingest_mod._consumer_plan(s, store, CLAIM, topic) == []
    assert ingest_mod._consumer_plan(s.model_copy(update={"kafka_parallel_min_records": 0, "kafka_consumers": 1}),
                                     store, CLAIM, topic) == []
    two = ingest_mod._consumer_plan(s.model_copy(update={"kafka_parallel_min_records": 0, "kafka_consumers": 2}),
                                    store, CLAIM, topic)
    assert len(two) == 2 and sorted(two[0] + two[1]) == [0, 1, 2]
    assert sum(lags[p] for p in two[0]) >= sum(lags[p] for p in two[1])  # this process takes the larger share
    other = ObjectStore.from_settings(s.model_copy(update={"store": str(tmp_path / "elsewhere")}))
    assert ingest_mod._consumer_plan(s.model_copy(update={"kafka_parallel_min_records": 0}), other, CLAIM, topic) == []
    caplog.clear()  # the plans asked for above log at INFO when the logger's level lets them through
    with caplog.at_level(logging.INFO, logger="safetynet.intake.ingest"):
        fc = ingest(s, store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    assert fc.input == exp["messages"] and not _parallel_events(caplog.records)


def test_a_failing_consumer_process_fails_the_ingest_naming_it(broker, topic, local_settings, tmp_path):
    """A spawned consumer's error (here: its first raw file cannot be written) stops the others, fails
    the run with the error's own class, naming the feed and partitions; the next run completes and
    equals an uninterrupted one."""
    msgs, _ = claim_events(3_000)
    publish(broker.bootstrap, topic, msgs)
    s = _settings(local_settings, broker.bootstrap, tmp_path / "s", kafka_consumers=2, kafka_parallel_min_records=0)
    store = ObjectStore.from_settings(s)
    groups = ingest_mod._consumer_plan(s, store, CLAIM, topic)
    assert len(groups) == 2
    p = groups[1][0]  # a partition the spawned process reads
    lags = partition_lags(s, topic)
    first = KafkaBatch(topic, p, 0, min(lags[p], s.batch_max_records) - 1, dt.datetime.now(dt.UTC).date().isoformat())
    trap = Path(store.full(paths.raw_batch(CLAIM.prefix, first.ingest_date, first.name)))
    trap.mkdir(parents=True)  # a directory where the batch's file goes: the rename fails (EISDIR)
    with pytest.raises(IsADirectoryError, match=rf"{CLAIM.feed_id}: consumer process for {topic} partitions "
                                                rf"\[{', '.join(map(str, groups[1]))}\]"):
        ingest(s, store, [CLAIM.feed_id], files=False)
    runs = [json.loads(store.read_bytes(e.path)) for e in store.list(paths.RUNS, ".json")]
    assert [r["status"] for r in runs] == ["failed"] and "consumer process" in runs[0]["error"]
    assert committed(broker.bootstrap, s.kafka_group, topic)[p] is None  # its batch was not committed
    trap.rmdir()
    fc = ingest(s, store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    assert fc.reconciles
    ref = _settings(local_settings, broker.bootstrap, tmp_path / "ref", kafka_consumers=1)
    ref_store = ObjectStore.from_settings(ref)
    ingest(ref, ref_store, [CLAIM.feed_id], files=False)
    x, y = raw_snapshot(ref_store), raw_snapshot(store)
    assert sorted(x) == sorted(y)
    assert all(x[n].equals(y[n]) for n in x)


def test_a_lease_taken_over_mid_run_stops_every_consumer_process(broker, topic, local_settings, tmp_path):
    """Another run takes the feed's lease while three consumer processes write: the ingest fails with
    LeaseLost, the spawned processes are gone, and nothing more is written."""
    import socket
    import threading

    msgs, _ = claim_events(25_000)
    publish(broker.bootstrap, topic, msgs)
    s = _settings(local_settings, broker.bootstrap, tmp_path / "s", kafka_consumers=3, kafka_parallel_min_records=0,
                  batch_max_records=300)
    store = ObjectStore.from_settings(s)
    out: list[BaseException] = []

    def run() -> None:
        try:
            ingest(s, store, [CLAIM.feed_id], files=False)
        except BaseException as e:
            out.append(e)

    t = threading.Thread(target=run)
    t.start()

    def partitions_written() -> set[str]:
        return {e.path.rsplit("/", 1)[-1].split("+")[1] for e in store.list(f"raw/{CLAIM.prefix}/", ".parquet")}

    deadline = time.monotonic() + 120
    while len(partitions_written()) < 2 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.02)
    assert t.is_alive(), "the ingest finished before the takeover: make the test data larger"
    gens = sorted(int(e.path.rsplit("/", 1)[-1][:-5]) for e in store.list(paths.lease_generations(CLAIM.feed_id)))
    now = dt.datetime.now(dt.UTC)
    store.write_bytes(paths.lease_generation(CLAIM.feed_id, gens[-1] + 1), json.dumps(
        {"name": CLAIM.feed_id, "host": socket.gethostname(), "pid": 1, "run_id": "other", "token": "x",
         "acquired_at": now.isoformat(), "expires_at": (now + dt.timedelta(seconds=60)).isoformat(),
         "released": False}).encode())
    t.join(timeout=120)
    assert not t.is_alive() and len(out) == 1 and isinstance(out[0], lease.LeaseLost), out
    me = psutil.Process()
    assert not [ch for ch in me.children(recursive=True) if "spawn_main" in " ".join(ch.cmdline())]
    files = {e.path for e in store.list("raw/")}
    time.sleep(1.0)
    assert {e.path for e in store.list("raw/")} == files  # nothing written after the run ended


def test_partitions_are_dealt_evenly_to_the_fewest_processes():
    deal = ingest_mod._deal
    # 3 partitions on 2 cores: 3 processes (2 would leave the larger share running on alone); the
    # parent's (first) share is the largest
    assert deal({0: 333, 1: 334, 2: 333}, 0, 2) == [[1], [0], [2]]
    assert deal({0: 10, 1: 10, 2: 10, 3: 10}, 0, 2) == [[0, 2], [1, 3]]  # already even with 2
    assert deal(dict.fromkeys(range(12), 10), 0, 2) == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9, 11]]
    assert deal({0: 100, 1: 60, 2: 50}, 0, 2) == [[1, 2], [0]]
    assert deal({0: 100, 1: 1, 2: 1}, 0, 2) == [[0], [1, 2]]  # never even: the fewest with the least largest share
    assert deal({0: 333, 1: 334, 2: 333}, 2, 2) == [[0, 2], [1]]  # SAFETYNET_KAFKA_CONSUMERS=2
    assert deal({0: 5, 1: 5}, 8, 2) == [[0], [1]]  # at most one process per partition
    assert len(deal(dict.fromkeys(range(12), 10), 0, 8)) == 12


def test_a_consumer_process_follows_its_parents_lease(local_store):
    """Before every intent, file write and commit a spawned consumer checks that its parent's lease
    generation is still the newest, and neither released nor expired."""
    feed = CLAIM.feed_id
    held = lease.acquire(local_store, feed, run_id="r1", ttl_s=30)
    check = ingest_mod._lease_follower(local_store, feed, (held.generation, held.ttl_s), os.getppid())
    check()  # held and fresh
    ingest_mod._lease_follower(local_store, feed, None, os.getppid())()  # no lease to follow (a bare ingest_topic)
    rec = {**held.record, "expires_at": (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()}
    local_store.write_bytes(paths.lease_generation(feed, held.generation), json.dumps(rec).encode())
    with pytest.raises(lease.LeaseLost, match="expired"):
        check()
    held.renew()
    check()
    local_store.write_bytes(paths.lease_generation(feed, held.generation + 1), b"{}")  # another run took it over
    with pytest.raises(lease.LeaseLost, match=f"taken over by generation {held.generation + 1}"):
        check()


def test_a_consumer_process_error_keeps_its_class():
    e = ingest_mod._consumer_error(CLAIM, "t", [1, 2], lease.LeaseLost("lease x: taken over"))
    assert isinstance(e, lease.LeaseLost) and str(e) == (f"{CLAIM.feed_id}: consumer process for t partitions [1, 2]: "
                                                         "LeaseLost: lease x: taken over")
    from connectors.mapping import MappingError

    m = ingest_mod._consumer_error(CLAIM, "t", [0], MappingError(["a", "b"]))
    assert isinstance(m, MappingError) and m.problems == ["a", "b"] and str(m).startswith(f"{CLAIM.feed_id}: ")
    o = ingest_mod._consumer_error(CLAIM, "t", [0], IsADirectoryError(21, "Is a directory", "x"))
    assert isinstance(o, IsADirectoryError) and "partitions [0]: IsADirectoryError: [Errno 21]" in str(o)
    s17 = "43010319500101001"
    pid = s17 + idno.check_char(s17)
    weird = ingest_mod._consumer_error(CLAIM, "t", [0], UnicodeDecodeError("utf-8", b"", 0, 1, f"bad {pid}"))
    assert isinstance(weird, RuntimeError) and pid not in str(weird)  # masked; a class that wants more args


def _outliving(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `procs` still running after `timeout` (a zombie no one has reaped yet has ended)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for x in procs:
            try:
                if x.is_running() and x.status() != psutil.STATUS_ZOMBIE:
                    alive.append(x)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_of_the_parent_leaves_no_consumer_process_and_a_restart_equals_one_run(broker, topic, tmp_path):
    msgs, exp = claim_events(40_000)
    publish(broker.bootstrap, topic, msgs)
    env = {**os.environ, "SAFETYNET_KAFKA_BOOTSTRAP": broker.bootstrap, "SAFETYNET_BATCH_MAX_RECORDS": "400",
           "SAFETYNET_PROGRESS": "false"}
    par = {"SAFETYNET_KAFKA_CONSUMERS": "3", "SAFETYNET_KAFKA_PARALLEL_MIN_RECORDS": "0"}
    code = ("import sys; from schemas.registry import get; c = get('medical_insurance.claim'); "
            f"type(c).topic = property(lambda self: {topic!r} if self is c else f'dept.{{self.department}}.{{self.feed}}.v1'); "
            "from safetynet.cli import main; sys.exit(main(['ingest', '--feed', 'medical_insurance.claim', '--no-files']))")

    def run(store: Path, group: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**env, "SAFETYNET_STORE": str(store),
                                                             "SAFETYNET_KAFKA_GROUP": group, **extra})

    def consumers(pid: int) -> list[psutil.Process]:
        out = []
        for ch in psutil.Process(pid).children(recursive=True):
            try:
                if "spawn_main" in " ".join(ch.cmdline()):
                    out.append(ch)
            except psutil.Error:
                pass
        return out

    # the reference: one uninterrupted run in one process
    ref_store = tmp_path / "ref"
    p = run(ref_store, "ref-" + uuid.uuid4().hex[:6], SAFETYNET_KAFKA_CONSUMERS="1")
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    # the victim: three consumer processes, the parent killed with SIGKILL three times, then run to the end
    store_dir, group = tmp_path / "victim", "victim-" + uuid.uuid4().hex[:6]
    victim = ObjectStore.from_settings(Settings(store=str(store_dir)))
    kills = 0
    for wait_files in (3, 12, 30):
        p = run(store_dir, group, **par)
        deadline = time.monotonic() + 120
        children: list[psutil.Process] = []
        while time.monotonic() < deadline and p.poll() is None:
            children = consumers(p.pid)
            if len(children) == 2 and len(victim.list(f"raw/{CLAIM.prefix}/")) >= wait_files:
                break
            time.sleep(0.01)
        if p.poll() is None and children:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            assert not _outliving(children, timeout=10), "consumer processes outlived their killed parent"
    assert kills >= 2, "the ingest finished before it could be killed: make the test data larger"
    p = run(store_dir, group, **par)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    ref = ObjectStore.from_settings(Settings(store=str(ref_store)))
    for zone in ("raw", "quarantine"):
        a, b = raw_snapshot(ref, zone), raw_snapshot(victim, zone)
        assert sorted(a) == sorted(b)  # the same files, named by the same offset ranges
        for name in a:
            assert a[name].equals(b[name]), name
    clean_feed(ref, CLAIM)
    clean_feed(victim, CLAIM)
    assert ref.read_bytes(clean_path(CLAIM)) == victim.read_bytes(clean_path(CLAIM))
    rows = sum(t.num_rows for z in ("raw", "quarantine") for t in raw_snapshot(ref, z).values())
    assert rows == exp["messages"]
