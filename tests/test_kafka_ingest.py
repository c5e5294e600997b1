"""Kafka connector against the real (embedded) broker: batches, commits, replay, SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.kafka_producer import ensure_topics, publish
from connectors.kafka_topic import KafkaTopicSource
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_feed, clean_path
from safetynet.intake.ingest import ingest, write_kafka_batch
from schemas import normalise
from schemas.registry import get
from tests.kafka_events import claim_events

pytestmark = pytest.mark.integration
CLAIM = get("medical_insurance.claim")


@pytest.fixture
def topic(broker, monkeypatch) -> str:
    """A unique topic for this test, standing in for the claim feed's topic."""
    name = f"dept.medical_insurance.claim.v1.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [name], partitions=3)
    monkeypatch.setattr(type(CLAIM), "topic", property(lambda c: name if c is CLAIM else f"dept.{c.department}.{c.feed}.v{c.version}"))
    return name


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in sorted(c.partitions_for_topic(topic) or [])}
    finally:
        c.close()


def raw_snapshot(store: ObjectStore, zone: str = "raw") -> dict[str, pa.Table]:
    """Every file of a zone for the claim feed, minus the wall-clock `_ingested_at` column."""
    out = {}
    for e in store.list(f"{zone}/{CLAIM.prefix}/", ".parquet"):
        t = store.read_parquet(e.path)
        out[e.path.rsplit("/", 1)[-1]] = t.drop_columns(["_ingested_at"])
    return out


def test_events_reconcile_and_clean_applies_dedup_corrections_deletes(broker, topic, local_settings, local_store):
    msgs, exp = claim_events(3000)
    publish(broker.bootstrap, topic, msgs)
    s = local_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "batch_max_records": 700})
    fc = ingest(s, local_store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    assert fc.input == exp["messages"] and fc.reconciles
    assert dict(fc.quarantined) == {"json_malformed": exp["bad"]}
    cc = clean_feed(local_store, CLAIM)
    assert (cc.redelivered, cc.deleted, cc.rows) == (exp["redelivered"], exp["deletes"], exp["clean_rows"])
    # offsets committed to the end, and every file is named (topic, partition, first, last)
    ends = committed(broker.bootstrap, s.kafka_group, topic)
    files = raw_snapshot(local_store)
    assert sum(ends.values()) == exp["messages"]
    for name, t in files.items():
        _, part, first, last = name[: -len(".parquet")].split("+")
        offs = t["_kafka_offset"].to_pylist()
        assert min(offs) >= int(first) and max(offs) <= int(last) and set(t["_kafka_partition"].to_pylist()) == {int(part)}
    # a second run finds nothing new
    assert ingest(s, local_store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id].input == 0


def test_a_batch_written_but_not_committed_is_rewritten_under_the_same_name(broker, topic, local_settings, local_store):
    msgs, exp = claim_events(500)
    publish(broker.bootstrap, topic, msgs)
    s = local_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "batch_max_records": 100})
    con = normalise.connect()
    with KafkaTopicSource(s, topic, local_store) as src:  # "crash" after writing the first batch, before commit
        b = next(src.batches())
        src.record_intent(b)
        write_kafka_batch(local_store, con, CLAIM, b)
    first_files = set(raw_snapshot(local_store))
    publish(broker.bootstrap, topic, claim_events(50, seed=99)[0])  # more data arrives meanwhile
    s2 = s.model_copy(update={"batch_max_records": 130})  # and the batch size changed: the intent still wins
    fc = ingest(s2, local_store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    assert first_files <= set(raw_snapshot(local_store))
    total = sum(t.num_rows for t in raw_snapshot(local_store).values()) + sum(
        t.num_rows for t in raw_snapshot(local_store, "quarantine").values())
    assert total == fc.input == exp["messages"] + len(claim_events(50, seed=99)[0])  # no duplicate row


@pytest.mark.slow
def test_sigkill_mid_batch_then_restart_equals_an_uninterrupted_run(broker, topic, tmp_path):
    msgs, exp = claim_events(40_000)
    publish(broker.bootstrap, topic, msgs)
    # batches of 400 go to the separate writer process (min 200), so the kill hits both processes
    env = {**os.environ, "SAFETYNET_KAFKA_BOOTSTRAP": broker.bootstrap, "SAFETYNET_BATCH_MAX_RECORDS": "400",
           "SAFETYNET_WRITER_PROCESS_MIN_RECORDS": "200", "SAFETYNET_PROGRESS": "false"}
    root = Path(__file__).resolve().parents[1]
    code = ("import sys; from schemas.registry import get; c = get('medical_insurance.claim'); "
            f"type(c).topic = property(lambda self: {topic!r} if self is c else f'dept.{{self.department}}.{{self.feed}}.v1'); "
            "from safetynet.cli import main; sys.exit(main(['ingest', '--feed', 'medical_insurance.claim', '--no-files']))")

    def run(store: Path, group: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env={**env, "SAFETYNET_STORE": str(store),
                                                             "SAFETYNET_KAFKA_GROUP": group})

    # the reference: one uninterrupted run
    ref_store = tmp_path / "ref"
    p = run(ref_store, "ref-" + uuid.uuid4().hex[:6])
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    # the victim: killed with SIGKILL three times at different points, then run to the end
    store_dir, group = tmp_path / "victim", "victim-" + uuid.uuid4().hex[:6]
    victim = ObjectStore.from_settings(Settings(store=str(store_dir)))
    kills = 0
    for wait_files in (2, 8, 20):
        p = run(store_dir, group)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if len(victim.list(f"raw/{CLAIM.prefix}/")) >= wait_files:
                break
            time.sleep(0.01)
        if p.poll() is None:
            writers = psutil.Process(p.pid).children(recursive=True)
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            kills += 1
            # the orphaned writer process notices its parent is gone and exits
            _, alive = psutil.wait_procs(writers, timeout=30)
            assert not alive, f"writer processes outlived the killed consumer: {alive}"
    assert kills >= 2, "the consumer finished before it could be killed: make the test data larger"
    p = run(store_dir, group)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]

    ref = ObjectStore.from_settings(Settings(store=str(ref_store)))
    a, b = raw_snapshot(ref), raw_snapshot(victim)
    assert sorted(a) == sorted(b)  # the same files, named by the same offset ranges
    for name in a:
        assert a[name].equals(b[name]), name
    assert raw_snapshot(ref, "quarantine").keys() == raw_snapshot(victim, "quarantine").keys()
    clean_feed(ref, CLAIM)
    clean_feed(victim, CLAIM)
    assert ref.read_bytes(clean_path(CLAIM)) == victim.read_bytes(clean_path(CLAIM))  # byte-identical clean state
    rows = sum(t.num_rows for t in a.values()) + sum(t.num_rows for t in raw_snapshot(ref, "quarantine").values())
    assert rows == exp["messages"]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "consumer-processes"])
def test_writer_process_does_not_rerun_the_host_program(broker, topic, tmp_path, parallel):
    """Inside an Airflow task the main script is the `airflow` CLI, whose import fails in a
    process without Airflow's DB settings; `spawn` would re-run it in a consumer process."""
    msgs, exp = claim_events(3_000)
    publish(broker.bootstrap, topic, msgs)
    host = tmp_path / "host.py"
    host.write_text(
        "import os, sys\n"
        "if __name__ != '__main__':\n"
        "    raise SystemExit('the host program was re-run in a child process')\n"
        "from schemas.registry import get\n"
        "c = get('medical_insurance.claim')\n"
        f"type(c).topic = property(lambda self: {topic!r} if self is c else f'dept.{{self.department}}.{{self.feed}}.v1')\n"
        "from safetynet.cli import main\n"
        "sys.exit(main(['ingest', '--feed', 'medical_insurance.claim', '--no-files']))\n")
    env = {**os.environ, "SAFETYNET_KAFKA_BOOTSTRAP": broker.bootstrap, "SAFETYNET_BATCH_MAX_RECORDS": "1000",
           "SAFETYNET_WRITER_PROCESS_MIN_RECORDS": "500", "SAFETYNET_PROGRESS": "false",
           "SAFETYNET_STORE": str(tmp_path / "store"), "SAFETYNET_KAFKA_GROUP": "host-" + uuid.uuid4().hex[:6],
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           **({"SAFETYNET_KAFKA_CONSUMERS": "2", "SAFETYNET_KAFKA_PARALLEL_MIN_RECORDS": "0"} if parallel else {})}
    r = subprocess.run([sys.executable, str(host)], env=env, capture_output=True, text=True, timeout=300,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    rows = sum(store.read_parquet(e.path).num_rows for zone in ("raw", "quarantine")
               for e in store.list(f"{zone}/{CLAIM.prefix}/", ".parquet"))
    assert rows == exp["messages"]


def test_an_event_time_with_microseconds_cleans(broker, topic, local_settings, local_store):
    """A department's occurred_at with microseconds (`…16.225429+08:00`) once made the clean step fail for
    ever (the contracts keep milliseconds; the record was durable and its offset committed): now it is cut."""
    import json

    from schemas import envelope

    msgs, _ = claim_events(5)
    sub_ms = []
    for key, value in msgs:
        try:
            obj = json.loads(value)
        except ValueError:
            continue  # claim_events plants a malformed message among them
        if envelope.is_envelope(obj):
            obj[envelope.OCCURRED_AT] = "2026-10-05T17:02:16.225429+08:00"
        sub_ms.append((key, json.dumps(obj, ensure_ascii=False).encode()))
    publish(broker.bootstrap, topic, sub_ms)
    s = local_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    ingest(s, local_store, [CLAIM.feed_id], files=False)
    cc = clean_feed(local_store, CLAIM)
    assert cc.rows > 0
    got = local_store.read_parquet(clean_path(CLAIM))["_occurred_at"].to_pylist()
    assert {v.microsecond for v in got} <= {225000}


def test_backlog_tells_which_topics_have_records_past_the_committed_offsets(broker, topic, local_settings, local_store):
    """The probe a wake-up takes (`connectors.kafka_topic.backlog`): nothing committed is read, and a
    topic is waiting exactly while records lie past the group's committed offsets."""
    from connectors.kafka_topic import backlog

    s = local_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    empty = f"dept.empty.{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, [empty], partitions=3)
    assert backlog(s, [topic, empty]) == {topic: False, empty: False}
    publish(broker.bootstrap, topic, claim_events(30)[0])
    assert backlog(s, [topic, empty]) == {topic: True, empty: False}
    assert backlog(s, [topic]) == {topic: True}  # the probe committed nothing
    ingest(s, local_store, [CLAIM.feed_id], kafka=True, files=False)
    assert backlog(s, [topic, empty]) == {topic: False, empty: False}
    publish(broker.bootstrap, topic, claim_events(1, seed=99)[0])
    assert backlog(s, [topic, empty]) == {topic: True, empty: False}


def test_another_departments_habits_headers_tombstones_gzip_reach_raw_or_quarantine(broker, topic, local_settings,
                                                                                 local_store):
    """Written by hand, not by the generator: a 岳麓区 (430104) hospital system that sends gzip-compressed
    batches, puts trace headers on every record (those batches take kafka-python's own decoding, not the
    connector's batch decoder), and deletes with a Kafka tombstone (a null value) besides its envelopes.
    Every record lands in raw or in quarantine with a reason; the offsets are committed to the end."""
    from kafka import KafkaProducer

    from schemas import envelope, idno

    def claim(i: int) -> bytes:
        s17 = f"43010419{60 + i:02d}0{1 + i % 9}1{i % 10}00{i}"[:17]
        return envelope.encode(envelope.wrap(
            {"claim_id": f"YL-2026-{i:04d}", "id_no": s17 + idno.check_char(s17), "settle_date": "2026-10-08",
             "hospital_name": "岳麓区人民医院", "inpatient": True, "diagnosis_code": "N18.5", "total_amount": "23456.70",
             "fund_paid": "15000.00", "out_of_pocket": "8456.70"},
            event_id=f"yl-{i}", source="medical_insurance", feed="claim", occurred_at="2026-10-08T17:30:00+08:00",
            schema_version=1))

    p = KafkaProducer(bootstrap_servers=broker.bootstrap, compression_type="gzip", linger_ms=20)
    for i in range(6):  # with headers: kafka-python decodes these batches record by record
        p.send(topic, key=f"YL-2026-{i:04d}".encode(), value=claim(i), partition=0,
               headers=[("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"), ("source-system", b"HIS")])
    for i in range(6, 12):  # no headers: the connector's batch decoder
        p.send(topic, key=f"YL-2026-{i:04d}".encode(), value=claim(i), partition=1)
    p.send(topic, key=b"YL-2026-0003", value=None, partition=1)  # a tombstone: no envelope, no record
    p.flush()
    p.close()
    s = local_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    fc = ingest(s, local_store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    assert fc.input == 13 and fc.reconciles
    assert fc.accepted == 12 and dict(fc.quarantined) == {"tombstone": 1}, dict(fc.quarantined)
    raw = pa.concat_tables(raw_snapshot(local_store).values())
    assert sorted(raw["claim_id"].to_pylist()) == [f"YL-2026-{i:04d}" for i in range(12)]
    assert set(raw["hospital_name"].to_pylist()) == {"岳麓区人民医院"}
    quarantined = pa.concat_tables(raw_snapshot(local_store, "quarantine").values())
    assert quarantined.num_rows == 1 and quarantined["_kafka_partition"].to_pylist() == [1]
    # named for what it is (not "not valid JSON"), with the feed and where it lies
    reason = quarantined["_reason"][0].as_py()
    assert reason.startswith(f"{CLAIM.feed_id}: record — tombstone: a Kafka message without a value"), reason
    assert "op \"delete\"" in reason and reason.endswith(f"[{topic}/1@6]"), reason  # topic/partition@offset
    assert committed(broker.bootstrap, s.kafka_group, topic) == {0: 6, 1: 7, 2: None}


def test_profile_samples_the_topic_as_the_connector_connects(broker, topic, tmp_path, monkeypatch):
    """`safetynet feeds profile --kafka` reads a bounded sample from the beginning of the topic,
    commits nothing, and connects with the connector's settings (security, bootstrap wait): it
    once built a bare consumer from the address alone, so a SASL cluster refused it."""
    from connectors import kafka_topic
    from safetynet import cli

    msgs, _ = claim_events(40)
    publish(broker.bootstrap, topic, msgs)
    s = Settings(store=str(tmp_path / "store"), kafka_bootstrap=broker.bootstrap, kafka_retry_s=5)
    assert len(kafka_topic.sample(s, topic, 25)) == 25
    assert sorted(v or b"" for v in kafka_topic.sample(s, topic, 1000)) == sorted(v or b"" for _, v in msgs)

    seen = {}
    real = kafka_topic.KafkaConsumer

    def spy(**kw):
        seen.update(kw)
        return real(**kw)

    monkeypatch.setattr(kafka_topic, "KafkaConsumer", spy)
    out = tmp_path / "claim.suggested.toml"
    monkeypatch.setenv("SAFETYNET_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    monkeypatch.setenv("SAFETYNET_KAFKA_RETRY_S", "5")
    monkeypatch.setenv("SAFETYNET_STORE", str(tmp_path / "store"))
    assert cli.main(["feeds", "profile", "--feed", CLAIM.feed_id, "--kafka", broker.bootstrap, "--sample", "30",
                     "--out", str(out)]) == 0
    assert out.exists() and seen["bootstrap_servers"] == broker.bootstrap and seen["group_id"] is None
    assert seen["bootstrap_timeout_ms"] == kafka_topic.broker_wait_ms(Settings(kafka_retry_s=5))
    assert seen["security_protocol"] == "PLAINTEXT" and not seen["enable_auto_commit"]
