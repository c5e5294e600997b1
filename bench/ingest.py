"""Benchmark: the Kafka connector against raw kafka-python consumption, measured in the same run.

On the embedded broker, N claim events (default 1,000,000) are produced once; then, alternately,
(a) a bare kafka-python consumer with the connector's own consumer settings reads every message
of the topic, and (b) the connector reads the same topic to durable Parquet (decode, validate,
split, write, commit; a backlog this large is read by several consumer processes, see
`SAFETYNET_KAFKA_CONSUMERS`); then, for reference only, (a') the bare consumer again with the
connector's batch-at-a-time record decoder (`connectors.kafka_records`) instead of kafka-python's
one object per message. Each measurement runs in a fresh child process, so its peak RSS is its
own. Prints per round records/s, the CPU seconds each measurement used (its processes, start-up
included) and the load average before it — on a shared machine the ratio follows the cores left
free: with none free it falls towards (a)'s CPU over (b)'s, however many processes (b) runs — then
records/s and peak memory of both; the last line is `ratio=<(b)/(a)>`.

    .venv/bin/python bench/ingest.py [--events 1000000] [--rounds 2] [--partitions 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from connectors.kafka_producer import (
    ensure_topics,
    producer,
)
from safetynet.core.settings import Settings
from safetynet.demo.broker import EmbeddedBroker
from schemas import envelope, idno

FEED = "medical_insurance.claim"


def make_events(n: int, dirt_every: int = 500):
    """Claim events as a department sends them; every `dirt_every`-th one is broken (quarantined)."""
    for i in range(n):
        s17 = f"430103{1950 + i % 50}{1 + i % 12:02d}{1 + i % 28:02d}{i % 1000:03d}"
        pid = s17 + idno.check_char(s17)
        if i % dirt_every == 7:
            pid = pid[:17] + ("0" if pid[17] != "0" else "1")
        payload = {"claim_id": f"CL{i:09d}", "id_no": pid, "settle_date": f"2026-09-{1 + i % 28:02d}",
                   "hospital_name": f"长沙市第{1 + i % 9}人民医院", "inpatient": i % 3 == 0, "diagnosis_code": "I10",
                   "diagnosis_name": "特发性(原发性)高血压", "total_amount": f"{1000 + i % 5000}.50",
                   "fund_paid": f"{700 + i % 3000}.00", "out_of_pocket": f"{300 + i % 2000}.50",
                   "serious_illness": False}
        v = envelope.wrap(payload, event_id=f"e{i}", source="medical_insurance", feed="claim",
                          occurred_at=f"2026-10-{1 + i % 28:02d}T08:00:00+08:00", schema_version=1)
        yield f"CL{i:09d}".encode(), envelope.encode(v)


def _baseline(bootstrap: str, topic: str, settings: Settings, q: mp.Queue, batch_decoder: bool = False) -> None:
    """(a) kafka-python as it comes: one ConsumerRecord per message. With `batch_decoder`, (a'): the
    same consumer with the connector's batch-at-a-time decoder (`connectors.kafka_records`)."""
    from kafka import KafkaConsumer, TopicPartition

    from connectors.kafka_records import count, install
    from connectors.kafka_topic import consumer_config

    c = KafkaConsumer(group_id=f"bench-raw-{uuid.uuid4().hex[:6]}", **consumer_config(settings))
    if batch_decoder:
        install(c)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    t0 = time.perf_counter()
    n = nbytes = 0
    done: set = set()
    while len(done) < len(tps):
        records = c.poll(timeout_ms=1000, max_records=settings.batch_max_records)
        n += count(records) if batch_decoder else sum(map(len, records.values()))
        for msgs in records.values():
            nbytes += sum(len(v) for r in msgs for v in r.values) if batch_decoder else sum(len(m.value) for m in msgs)
        for tp in tps:
            hw = c.highwater(tp)
            if hw is not None and c.position(tp) >= hw:
                done.add(tp)
    secs = time.perf_counter() - t0
    c.close()
    q.put({"records": n, "bytes": nbytes, "seconds": secs,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _connector(bootstrap: str, topic: str, settings: Settings, q: mp.Queue) -> None:
    from safetynet.core import paths
    from safetynet.core.store import ObjectStore
    from safetynet.intake.ingest import ingest
    from schemas.registry import get

    c = get(FEED)
    type(c).topic = property(lambda self: topic if self is c else f"dept.{self.department}.{self.feed}.v1")
    root = tempfile.mkdtemp(prefix="bench-store-")
    s = settings.model_copy(update={"store": root, "kafka_group": f"bench-conn-{uuid.uuid4().hex[:6]}"})
    store = ObjectStore.from_settings(s)
    t0 = time.perf_counter()
    fc = ingest(s, store, [FEED], files=False).feeds[FEED]
    secs = time.perf_counter() - t0
    size = sum(e.size for e in store.list(paths.RAW)) + sum(e.size for e in store.list(paths.QUARANTINE))
    shutil.rmtree(root, ignore_errors=True)
    q.put({"records": fc.input, "accepted": fc.accepted, "quarantined": fc.quarantined_total, "seconds": secs,
           "parquet_bytes": size, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           # the largest consumer process it spawned (0: none)
           "peak_rss_consumer_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024})


def _baseline_batches(bootstrap: str, topic: str, settings: Settings, q: mp.Queue) -> None:
    _baseline(bootstrap, topic, settings, q, batch_decoder=True)


def measure(fn, *args) -> dict:
    """Run `fn` in a fresh child; its result, with the CPU seconds of the child and its children
    (the connector's consumer processes) and the 1-minute load average before it."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    q: mp.Queue = mp.get_context("spawn").Queue()
    p = mp.get_context("spawn").Process(target=fn, args=(*args, q))
    p.start()
    out = q.get(timeout=1800)
    p.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {**out, "cpu_s": round(cpu, 2), "load_before": round(load, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=3)
    args = ap.parse_args()
    with EmbeddedBroker() as b:
        topic = f"dept.medical_insurance.claim.v1.bench{uuid.uuid4().hex[:6]}"
        ensure_topics(b.bootstrap, [topic], partitions=args.partitions)
        t0 = time.perf_counter()
        p = producer(b.bootstrap)
        for k, v in make_events(args.events):
            p.send(topic, key=k, value=v)
        p.flush()
        p.close()
        print(f"produced {args.events:,} events in {time.perf_counter() - t0:.1f}s", flush=True)
        settings = Settings(kafka_bootstrap=b.bootstrap, progress=False)
        base, conn, fast = [], [], []
        for r in range(args.rounds):
            base.append(measure(_baseline, b.bootstrap, topic, settings))
            conn.append(measure(_connector, b.bootstrap, topic, settings))
            fast.append(measure(_baseline_batches, b.bootstrap, topic, settings))
            x, y, z = base[-1], conn[-1], fast[-1]
            print(f"round {r + 1}: raw {x['records'] / x['seconds']:,.0f} rec/s ({x['seconds']:.1f} s, "
                  f"{x['cpu_s']:.1f} CPU s, load {x['load_before']:.2f}), connector "
                  f"{y['records'] / y['seconds']:,.0f} rec/s ({y['seconds']:.1f} s, {y['cpu_s']:.1f} CPU s, "
                  f"load {y['load_before']:.2f}): ratio {x['seconds'] / y['seconds']:.3f}; raw with the connector's "
                  f"batch decoder {z['records'] / z['seconds']:,.0f} rec/s ({z['seconds']:.1f} s, {z['cpu_s']:.1f} CPU s)",
                  flush=True)
    for x in base + conn + fast:
        assert x["records"] == args.events, x
    a = statistics.median(x["records"] / x["seconds"] for x in base)
    c = statistics.median(x["records"] / x["seconds"] for x in conn)
    f = statistics.median(x["records"] / x["seconds"] for x in fast)
    print(json.dumps({"events": args.events, "partitions": args.partitions, "baseline": base, "connector": conn,
                      "baseline_batch_decoder": fast}))
    print(f"(a) raw kafka-python consumption: {a:,.0f} records/s, peak RSS {max(x['peak_rss_mb'] for x in base):,.0f} MB")
    print(f"(a') the same with the connector's batch decoder (not the baseline; where the connector's time goes): "
          f"{f:,.0f} records/s, the connector at {c / f:.3f} of it")
    spawned = max(x["peak_rss_consumer_mb"] for x in conn)
    print(f"(b) connector topic → durable Parquet: {c:,.0f} records/s, peak RSS {max(x['peak_rss_mb'] for x in conn):,.0f} MB"
          + (f" (+ consumer processes, each at most {spawned:,.0f} MB)" if spawned > 50 else "")
          + f" ({conn[-1]['accepted']:,} accepted, {conn[-1]['quarantined']:,} quarantined, "
          f"{conn[-1]['parquet_bytes'] / 1e6:,.1f} MB Parquet)")
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print(f"ratio={c / a:.3f}")


if __name__ == "__main__":
    main()
