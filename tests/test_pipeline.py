"""`safetynet run` end to end on a store holding only file drops; publishing, pseudonyms, exports, Kafka."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import uuid

import openpyxl
import pyarrow as pa
import pytest
from kafka import KafkaConsumer, TopicPartition

from safetynet import pipeline
from safetynet.cli import main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.departments import drop_truth_as_files
from safetynet.demo.synth import generate
from safetynet.publish import snapshot
from schemas import idno, outputs
from tests.test_synth import reference_fired

SNAP = dt.date(2026, 11, 1)
ID18 = re.compile(r"(?<![0-9])[0-9]{17}[0-9X](?![0-9])")


def has_id(text: str) -> bool:
    """Whether a valid 18-digit ID number (GB 11643 check character) appears in the text."""
    return any(idno.is_valid(m) for m in ID18.findall(text))



@pytest.fixture(scope="module")
def district():
    return generate(persons=2500, seed=5)


@pytest.fixture()
def run_store(tmp_path, district, monkeypatch):
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    drop_truth_as_files(district, store)
    rc = main(["run", "--snapshot-date", "2026-11-01", "--store", str(tmp_path / "store"), "--no-progress"])
    assert rc == 0
    return store


def _files(store: ObjectStore) -> dict[str, bytes]:
    return {e.path: store.read_bytes(e.path) for prefix in ("monitoring/", "warnings/", "identified/", "_catalog/snapshots/")
            for e in store.list(prefix)}


def test_run_on_file_drops_publishes_the_snapshot_and_its_warnings(district, run_store):
    assert snapshot.snapshots(run_store) == [SNAP]
    w = snapshot.read(run_store, "warnings", SNAP, identified=True)
    fired: dict[str, set] = {}
    for r in w.select(["rule_id", "household_no"]).to_pylist():
        fired.setdefault(r["rule_id"], set()).add(r["household_no"])
    ref = reference_fired(district)
    assert {k: v for k, v in ref.items() if v} == fired
    m = snapshot.manifest(run_store, SNAP)
    assert m["datasets"]["monitoring/person"]["rows"] == district.table("public_security.person").num_rows
    assert all(not v.get("missing") for v in m["inputs"].values())
    assert m["policy_version"] == "430103-2026.1"


def test_a_rerun_writes_identical_bytes_and_ids(tmp_path, run_store):
    before = _files(run_store)
    assert main(["run", "--snapshot-date", "2026-11-01", "--store", run_store.url, "--no-progress"]) == 0
    after = _files(run_store)
    assert before.keys() == after.keys()
    assert [k for k in before if before[k] != after[k]] == []


def test_downstream_datasets_carry_pseudonyms_not_id_numbers(district, run_store):
    person = snapshot.read(run_store, "monitoring/person", SNAP)
    assert "id_no" not in person.column_names and "name" not in person.column_names
    assert "person_key" in person.column_names
    ident = snapshot.read(run_store, "monitoring/person", SNAP, identified=True)
    assert ident["id_no"].to_pylist()[:5] and person["person_key"].to_pylist()[0] != ident["id_no"].to_pylist()[0]
    w = snapshot.read(run_store, "warnings", SNAP)
    assert "subject_id_no" not in w.column_names
    text = json.dumps(w.to_pylist(), default=str, ensure_ascii=False)
    assert not has_id(text)  # facts carry pseudonyms too
    for name, doc in outputs.DATASETS.items():  # every published column is documented (中文 + English)
        for variant in (False, True):
            try:
                t = snapshot.read(run_store, name, SNAP, identified=variant)
            except KeyError:
                continue
            missing = [c for c in t.column_names if c not in doc]
            assert not missing, (name, missing)


def test_a_snapshot_without_manifest_is_invisible(run_store):
    run_store.delete(f"_catalog/snapshots/{SNAP}.json")
    assert snapshot.snapshots(run_store) == []
    with pytest.raises(snapshot.SnapshotNotFound):
        snapshot.read(run_store, "warnings", SNAP)


def test_export_csv_with_bom_and_xlsx_with_masked_ids(tmp_path, run_store):
    out_csv, out_xlsx = tmp_path / "w.csv", tmp_path / "w.xlsx"
    assert main(["warnings", "export", "--snapshot-date", "2026-11-01", "--store", run_store.url, "--out", str(out_csv)]) == 0
    assert main(["warnings", "export", "--store", run_store.url, "--out", str(out_xlsx)]) == 0
    raw = out_csv.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8-sig"))))
    n = snapshot.read(run_store, "warnings", SNAP).num_rows
    assert len(rows) == n + 1 and rows[0][0] == "预警编号 warning_id" and "预警说明 summary_zh" in rows[0]
    assert not has_id(raw.decode("utf-8-sig"))
    masked = [r[7] for r in rows[1:] if r[7]]
    assert masked and all(re.fullmatch(r"[0-9]{6}\*{8}[0-9]{3}[0-9X]", m) for m in masked)
    ws = openpyxl.load_workbook(out_xlsx).active
    assert ws.max_row == n + 1 and ws.cell(1, 9).value == "预警说明 summary_zh"
    assert not any(has_id(str(c)) for row in ws.iter_rows(values_only=True) for c in row if c)


def test_warnings_go_to_kafka_keyed_by_warning_id_and_a_replay_adds_no_key(broker, district, tmp_path):
    s = Settings(store=str(tmp_path / "s"), kafka_bootstrap=broker.bootstrap, progress=False)
    store = ObjectStore.from_settings(s)
    drop_truth_as_files(district, store)
    from safetynet.cli import run_ingest

    run_ingest(s.model_copy(update={"kafka_bootstrap": None}), store, kafka=False)
    pol = pipeline.load_policy("430103", SNAP, None)
    topic = f"hub.warnings.v1.t{uuid.uuid4().hex[:6]}"
    original = pipeline.WARNINGS_TOPIC
    pipeline.WARNINGS_TOPIC = topic
    try:
        r1 = pipeline.build_snapshot(s, store, SNAP, pol)
        r2 = pipeline.build_snapshot(s, store, SNAP, pol)  # a replay of the same snapshot
    finally:
        pipeline.WARNINGS_TOPIC = original
    assert r1.kafka_published == r2.kafka_published == r1.warnings.num_rows > 0
    c = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                      consumer_timeout_ms=3000)
    tps = [TopicPartition(topic, p) for p in c.partitions_for_topic(topic)]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    keys, values = [], []
    for m in c:
        keys.append(m.key.decode())
        values.append(m.value.decode())
    c.close()
    assert len(keys) == 2 * r1.warnings.num_rows
    assert set(keys) == set(r1.warnings["warning_id"].to_pylist())  # the replay added no new key
    assert not any(has_id(v) for v in values)


@pytest.mark.slow
def test_a_region_without_policy_is_a_clear_error(tmp_path, district, monkeypatch, capsys):
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "st")))
    drop_truth_as_files(district, store)
    rc = main(["run", "--snapshot-date", "2031-11-01", "--store", str(tmp_path / "st"), "--no-progress"])
    assert rc == 2  # a configuration problem, as from `policy show`
    assert "no policy parameters for region 430103 and year 2031" in capsys.readouterr().err


def test_policy_file_option(tmp_path, run_store, capsys):
    f = tmp_path / "p.toml"
    assert main(["policy", "init", "--region", "430103", "--year", "2026", "--urban-dibao", "2000",
                 "--rural-dibao", "2000", "--out", str(f)]) == 0
    assert main(["run", "--snapshot-date", "2026-11-01", "--store", run_store.url, "--policy", str(f),
                 "--no-progress"]) == 0
    w = snapshot.read(run_store, "warnings", SNAP)
    assert set(w["policy_version"].to_pylist()) == {"430103-2026.1"}
    n_uncovered = pa.compute.sum(pa.compute.equal(w["rule_id"], "uncovered_low_income")).as_py()
    assert n_uncovered > 0  # a 2000-yuan standard puts many more households under it


def test_the_whole_run_on_s3_publishes_the_same_bytes_as_the_local_run(district, s3_settings, s3_store, tmp_path,
                                                                        monkeypatch):
    """`safetynet run` with the store on an S3 endpoint (moto): identical published files and manifest."""
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    local = ObjectStore.from_settings(Settings(store=str(tmp_path / "local")))
    for st in (local, s3_store):
        drop_truth_as_files(district, st)
    assert main(["run", "--snapshot-date", "2026-11-01", "--store", local.url, "--no-progress"]) == 0
    for k in ("endpoint", "access_key", "secret_key", "region"):
        v = getattr(s3_settings, f"s3_{k}")
        monkeypatch.setenv(f"SAFETYNET_S3_{k.upper()}", v.get_secret_value() if hasattr(v, "get_secret_value") else v)
    assert main(["run", "--snapshot-date", "2026-11-01", "--store", s3_settings.store, "--no-progress"]) == 0
    a, b = _files(local), _files(s3_store)
    assert a.keys() == b.keys() and len(a) >= 6
    assert [k for k in a if a[k] != b[k]] == []  # byte for byte, manifest included
    assert snapshot.read(s3_store, "warnings", SNAP).num_rows > 0
    assert s3_store.exists("docs/quality/index.html")
