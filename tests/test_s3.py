"""The object store over the S3 wire protocol (moto server), including an endpoint outage mid-ingest."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from kafka import KafkaConsumer, TopicPartition

from connectors.kafka_producer import publish
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_feed, clean_path
from safetynet.intake.ingest import ingest
from tests.kafka_events import claim_events
from tests.test_kafka_ingest import CLAIM, raw_snapshot, topic  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def test_store_round_trip_over_s3(s3_store: ObjectStore):
    s3_store.write_bytes("landing/a/b/x.csv", "编号\n1\n".encode("gbk"))
    assert s3_store.read_bytes("landing/a/b/x.csv").decode("gbk") == "编号\n1\n"
    assert [e.path for e in s3_store.list("landing/")] == ["landing/a/b/x.csv"]
    assert s3_store.exists("landing/a/b/x.csv") and not s3_store.exists("landing/none")
    s3_store.delete("landing/a/b/x.csv")
    assert s3_store.list("landing/") == []
    with pytest.raises(FileNotFoundError):
        s3_store.read_bytes("landing/a/b/x.csv")


def test_ingest_and_clean_on_s3_equal_the_local_run(broker, topic, s3_settings, s3_store, local_settings, local_store):
    msgs, exp = claim_events(2000)
    publish(broker.bootstrap, topic, msgs)
    csv = ("结算单号,公民身份号码,结算日期,定点医疗机构,是否住院,疾病诊断编码,医疗费用总额,基金支付,个人自付\n"
           "F1,{},2026/9/3,医院,是,I10,100,80,20\n".format(claim_events(1)[0][0][1].decode().split('"id_no": "')[1][:18]))
    for st, s in ((s3_store, s3_settings), (local_store, local_settings)):
        st.write_bytes("landing/medical_insurance/claim/claim_20261001.csv", csv.encode("gbk"))
        s = s.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        fc = ingest(s, st, [CLAIM.feed_id]).feeds[CLAIM.feed_id]
        assert fc.input == exp["messages"] + 1 and fc.reconciles
        clean_feed(st, CLAIM)
    assert s3_store.read_bytes(clean_path(CLAIM)) == local_store.read_bytes(clean_path(CLAIM))
    a, b = raw_snapshot(s3_store), raw_snapshot(local_store)
    assert a.keys() == b.keys() and all(a[k].drop_columns([]).equals(b[k]) for k in a if not k.startswith("file+"))


@pytest.mark.slow
def test_s3_outage_during_ingest_retries_and_loses_nothing(broker, topic, s3_server, s3_settings, s3_store, caplog):
    from moto.server import ThreadedMotoServer

    msgs, exp = claim_events(20_000)
    publish(broker.bootstrap, topic, msgs)
    s = s3_settings.model_copy(update={"kafka_bootstrap": broker.bootstrap, "batch_max_records": 500})
    bucket = s.store[5:]
    seen: dict = {}

    def outage() -> None:
        # wait until ingest is writing, take the endpoint down for 4 s, then bring it back
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(_moto_keys(bucket)) < 4:
            time.sleep(0.01)
        s3_server["server"].stop()
        seen["down_at_files"] = len(_moto_keys(bucket))
        time.sleep(2)
        seen["committed_while_down"] = _committed(broker.bootstrap, s.kafka_group, topic)
        seen["files_while_down"] = _moto_keys(bucket)
        time.sleep(2)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_server["port"], verbose=False)
        server.start()
        s3_server["server"] = server

    t = threading.Thread(target=outage)
    t.start()
    with caplog.at_level(logging.WARNING, logger="safetynet.core.store"):
        fc = ingest(s, s3_store, [CLAIM.feed_id], files=False).feeds[CLAIM.feed_id]
    t.join()
    assert any("retry" in r.getMessage() for r in caplog.records), "the outage was never hit"
    assert fc.input == exp["messages"] and fc.reconciles
    rows = sum(t.num_rows for t in raw_snapshot(s3_store).values()) + sum(
        t.num_rows for t in raw_snapshot(s3_store, "quarantine").values())
    assert rows == exp["messages"]
    # while the endpoint was down, no offset was committed past what the store held
    for part, off in seen["committed_while_down"].items():
        if off:
            lasts = [int(k.rsplit("+", 1)[-1][: -len(".parquet")]) for k in seen["files_while_down"]
                     if k.startswith(f"raw/{CLAIM.prefix}/") and k.split("/")[-1].split("+")[1] == str(part)]
            assert lasts and max(lasts) + 1 >= off, (part, off)


def _moto_keys(bucket: str) -> list[str]:
    from moto.backends import get_backend

    for account in get_backend("s3").values():
        for region in account.values():
            b = getattr(region, "buckets", {}).get(bucket)
            if b is not None:
                return list(b.keys.keys())
    return []


def _committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: c.committed(TopicPartition(topic, p)) for p in sorted(c.partitions_for_topic(topic) or [])}
    finally:
        c.close()
