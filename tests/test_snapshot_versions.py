"""Snapshot versions: publishing a date again makes a new immutable version, switched in by a pointer.

Unit level on small tables (local store and S3 through moto), then the pipeline: a date published
twice with a late feed in between, a review decision made on the first version still resolving
its files, and the household page saying the data changed since.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading

import pyarrow as pa
import pytest

from quality.evaluation import SCHEMA as WARNINGS
from safetynet.core.store import ObjectStore
from safetynet.publish import snapshot
from safetynet.publish.snapshot import Pseudonymiser, SnapshotNotFound

D = dt.date(2026, 11, 1)
PS = Pseudonymiser(b"test-secret")


def _tables(n_warnings: int = 1, day: dt.date = D) -> dict[str, pa.Table]:
    person = pa.table({"snapshot_date": pa.array([day, day], pa.date32()),
                       "id_no": ["430103199001011234", "43010319920202123X"], "name": ["甲", "乙"],
                       "birth_date": pa.array([dt.date(1990, 1, 1), dt.date(1992, 2, 2)], pa.date32()),
                       "household_no": ["H1", "H1"]})
    household = pa.table({"snapshot_date": pa.array([day], pa.date32()), "household_no": ["H1"],
                          "income_per_capita": pa.array([1.5]).cast(pa.decimal128(14, 2))})
    rows = []
    for i in range(n_warnings):
        row = {f.name: None for f in WARNINGS}
        row.update(snapshot_date=day, warning_id=f"w{i}", alert_key=f"a{i}", rule_id="income_drop", rule_version=2,
                   rule_title_zh="家庭收入骤降", severity="S2", kind="forward", household_no="H1",
                   region_code="430103001001", street_code="430103001", subject_id_no="430103199001011234",
                   summary_zh="测试", thresholds="{}", facts=[], magnitude=1.0, score=30.0, household_score=30.0,
                   household_rank=1, top_signals=[], policy_version="p1", stale_inputs=[])
        rows.append(row)
    return {"monitoring/person": person, "monitoring/household": household,
            "warnings": pa.Table.from_pylist(rows, schema=WARNINGS)}


def _publish(store: ObjectStore, n: int = 1, inputs: dict | None = None, publisher: str = "") -> dict:
    return snapshot.publish(store, D, _tables(n), PS, policy_version="p1", inputs=inputs or {"feed": {"rows": n}},
                            quality={"ok": True}, publisher=publisher)


@pytest.fixture
def store(tmp_path) -> ObjectStore:
    from safetynet.core.settings import Settings

    return ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))


def _files_match_manifest(store: ObjectStore, m: dict) -> None:
    for path, f in m["files"].items():
        assert hashlib.sha256(store.read_bytes(path)).hexdigest() == f["sha256"], path
        assert f"/snapshot_date={D}/version={m['version']}/" in path  # one version's prefix only


def test_versions_identical_republish_and_reading_old_versions(store):
    m1 = _publish(store, 1)
    assert (m1["status"], m1["version"]) == ("published", 1)
    layout = sorted(e.path for e in store.list("warnings/"))
    assert layout == [f"warnings/snapshot_date={D}/version=1/part-00000.parquet"]
    # the partition columns live in the path only
    import pyarrow.parquet as pq

    assert "snapshot_date" not in pq.read_schema(store.full(layout[0])).names
    before = {e.path: store.read_bytes(e.path) for e in store.list("")}
    again = _publish(store, 1)  # identical data, inputs and policy: nothing written
    assert (again["status"], again["version"]) == ("unchanged", 1)
    assert {e.path: store.read_bytes(e.path) for e in store.list("")} == before
    m2 = _publish(store, 3, inputs={"feed": {"rows": 3}})  # a late feed: different inputs and data
    assert (m2["status"], m2["version"]) == ("published", 2)
    assert snapshot.versions(store, D) == [1, 2] and snapshot.pointer(store, D)["version"] == 2
    assert snapshot.read(store, "warnings", D).num_rows == 3
    assert snapshot.read(store, "warnings", D, version=1).num_rows == 1  # v1 still resolves
    assert snapshot.read(store, "warnings", D, version=1)["snapshot_date"][0].as_py() == D
    for v in (1, 2):
        _files_match_manifest(store, snapshot.manifest(store, D, v))
    with pytest.raises(SnapshotNotFound, match="has no version 7; versions: v1, v2"):
        snapshot.manifest(store, D, 7)


def test_a_publish_that_dies_before_its_manifest_is_invisible_and_pruned(store, monkeypatch):
    _publish(store, 1)
    real = store.create

    def die_at_manifest(rel: str, data: bytes) -> bool:
        if rel.endswith("/v2.json"):
            raise KeyboardInterrupt("killed")
        return real(rel, data)

    monkeypatch.setattr(store, "create", die_at_manifest)
    with pytest.raises(KeyboardInterrupt):
        _publish(store, 2, inputs={"feed": {"rows": 2}})
    monkeypatch.undo()
    # v2's data files are there, but without a manifest it does not exist: readers stay on v1
    assert any("/version=2/" in e.path for e in store.list("warnings/"))
    assert snapshot.versions(store, D) == [1] and snapshot.read(store, "warnings", D).num_rows == 1
    m3 = _publish(store, 3, inputs={"feed": {"rows": 3}})  # the next publish takes v3, never v2's prefix
    assert m3["version"] == 3
    _files_match_manifest(store, m3)
    res = snapshot.prune(store, keep=5)
    assert not any("/version=2/" in e.path for e in store.list(""))  # the orphan's data and claim are gone
    assert res.kept == {D.isoformat(): [1, 3]}


def test_concurrent_publishes_never_interleave_and_the_pointer_settles_on_the_highest(store):
    _publish(store, 1)
    results: list[dict] = []
    barrier = threading.Barrier(4)

    def pub(n: int) -> None:
        barrier.wait()
        results.append(_publish(store, n, inputs={"feed": {"rows": n}}, publisher=f"p{n}"))

    threads = [threading.Thread(target=pub, args=(n,)) for n in (2, 3, 4, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(r["version"] for r in results) == [2, 3, 4, 5]  # each its own version
    current = snapshot.pointer(store, D)["version"]
    assert current == 5 and snapshot.versions(store, D) == [1, 2, 3, 4, 5]
    assert {r["status"] for r in results if r["version"] != 5} <= {"superseded", "published"}
    assert [r["status"] for r in results if r["version"] == 5] == ["published"]
    for v in range(1, 6):  # every version complete and consistent with its own manifest
        m = snapshot.manifest(store, D, v)
        _files_match_manifest(store, m)
        assert snapshot.read(store, "warnings", D, version=v).num_rows == m["datasets"]["warnings"]["rows"]


def test_prune_keeps_the_newest_the_current_and_referenced_versions(store):
    for n in range(1, 5):
        _publish(store, n, inputs={"feed": {"rows": n}})
    assert snapshot.versions(store, D) == [1, 2, 3, 4]
    dry = snapshot.prune(store, keep=1, referenced={(D, 2)}, dry_run=True)
    assert dry.removed == {D.isoformat(): [1, 3]} and snapshot.versions(store, D) == [1, 2, 3, 4]
    res = snapshot.prune(store, keep=1, referenced={(D, 2)})
    assert res.kept == {D.isoformat(): [2, 4]} and snapshot.versions(store, D) == [2, 4]
    assert not any("/version=1/" in e.path or "/version=3/" in e.path for e in store.list(""))
    assert snapshot.read(store, "warnings", D, version=2).num_rows == 2
    with pytest.raises(ValueError):
        snapshot.prune(store, keep=0)


def test_a_store_published_before_versions_still_reads(store):
    """The old layout: the manifest itself at _catalog/snapshots/D.json (read as version 0)."""
    t = _tables(2)["warnings"]
    from safetynet.core.store import parquet_bytes

    data = parquet_bytes(t)
    path = f"warnings/snapshot_date={D}/part-00000.parquet"
    store.write_bytes(path, data)
    store.write_bytes(f"_catalog/snapshots/{D}.json", json.dumps({
        "snapshot_date": D.isoformat(), "policy_version": "old", "inputs": {}, "quality": {},
        "datasets": {"warnings": {"rows": 2, "path": path, "identified_path": path}},
        "files": {path: {"rows": 2, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}}).encode())
    assert snapshot.pointer(store, D)["version"] == 0
    assert snapshot.read(store, "warnings", D).num_rows == 2
    m = _publish(store, 1)  # publishing again makes v1 and points at it
    assert m["version"] == 1 and snapshot.read(store, "warnings", D).num_rows == 1


def test_exclusive_create_locally_and_on_s3(store, s3_store):
    for st in (store, s3_store):
        assert st.create("_catalog/x/v1.claim", b"a") is True
        assert st.create("_catalog/x/v1.claim", b"b") is False
        assert st.read_bytes("_catalog/x/v1.claim") == b"a"


def test_versions_on_s3(s3_store):
    assert _publish(s3_store, 1)["version"] == 1
    assert _publish(s3_store, 1)["status"] == "unchanged"
    assert _publish(s3_store, 2, inputs={"feed": {"rows": 2}})["version"] == 2
    assert snapshot.read(s3_store, "warnings", D, version=1).num_rows == 1
    assert snapshot.read(s3_store, "warnings", D).num_rows == 2


# ---- the pipeline: a late feed between two publishes of one date --------------------------------------
@pytest.mark.slow
def test_a_late_feed_makes_version_2_and_a_decision_on_v1_still_resolves_v1(tmp_path, monkeypatch):
    from sqlalchemy import select

    from safetynet.cli import main
    from safetynet.core.settings import Settings
    from safetynet.demo.departments import drop_truth_as_files
    from safetynet.demo.departments import json_value as _json
    from safetynet.demo.synth import generate
    from safetynet.review import auth, db, queries
    from safetynet.review import models as m
    from safetynet.review.auth import User
    from safetynet.review.load import load_snapshot

    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    root = tmp_path / "store"
    store = ObjectStore.from_settings(Settings(store=str(root)))
    drop_truth_as_files(generate(persons=1500, seed=3), store)
    run = ["run", "--snapshot-date", D.isoformat(), "--store", str(root), "--no-progress"]
    assert main(run) == 0
    assert snapshot.versions(store, D) == [1]
    assert main(run) == 0  # nothing new arrived: the same version, nothing written
    assert snapshot.versions(store, D) == [1]

    eng = db.engine_for(f"sqlite:///{tmp_path / 'review.db'}")
    db.migrate(eng)
    load_snapshot(eng, store, D)
    uid = auth.add_user(eng, "county", "Correct-horse-42", "county_reviewer", "430103", "测试·区县")
    user = User(uid, "county", "测试·区县", "county_reviewer", "430103")
    w1 = snapshot.read(store, "warnings", D, identified=True)
    burden = next(r for r in w1.to_pylist() if r["rule_id"] == "medical_burden")
    queries.decide(eng, user, burden["alert_key"], "visit", note="已入户核实")

    # a late 医保 delivery: one more claim for a member of that household
    person = next(r for r in snapshot.read(store, "monitoring/person", D, identified=True).to_pylist()
                  if r["household_no"] == burden["household_no"])
    claim = {"claim_id": "LATE000001", "id_no": person["id_no"], "settle_date": "2026-10-20", "hospital_name": "测试医院",
             "inpatient": "是", "diagnosis_code": "K80.2", "total_amount": "9000", "fund_paid": "6000",
             "out_of_pocket": "3000"}
    store.write_bytes("landing/medical_insurance/claim/claim_late_20261031.jsonl",
                      (json.dumps(claim, ensure_ascii=False, default=_json) + "\n").encode())
    assert main(run) == 0
    assert snapshot.versions(store, D) == [1, 2] and snapshot.pointer(store, D)["version"] == 2
    m1, m2 = snapshot.manifest(store, D, 1), snapshot.manifest(store, D, 2)
    assert m2["inputs"]["medical_insurance.claim"]["rows"] == m1["inputs"]["medical_insurance.claim"]["rows"] + 1
    assert {"policy_version", "quality", "inputs"} <= set(m2) and m2["quality"]["ok"] is True

    # the decision was made on v1: it says so, and v1's files still resolve to the warning it saw
    with eng.connect() as c:
        act = c.execute(select(m.actions).where(m.actions.c.alert_key == burden["alert_key"],
                                                m.actions.c.user_id.is_not(None))).mappings().one()
    assert (act["snapshot_date"], act["snapshot_version"]) == (D, 1)
    seen = snapshot.read(store, "warnings", act["snapshot_date"], identified=True, version=act["snapshot_version"])
    assert act["warning_id"] in seen["warning_id"].to_pylist()
    now = {r["alert_key"]: r for r in snapshot.read(store, "warnings", D, identified=True).to_pylist()}
    assert now[burden["alert_key"]]["warning_id"] != act["warning_id"]  # the late claim is a new fact

    # staff see it: the loaded version, and "data changed since" on the household page
    load_snapshot(eng, store, D)
    with eng.connect() as c:
        assert c.scalar(select(m.snapshots.c.version).where(m.snapshots.c.snapshot_date == D)) == 2
    page = queries.household(eng, user, burden["household_no"])
    assert page["snapshot_version"] == 2
    changed = next(w for w in page["warnings"] if w["alert_key"] == burden["alert_key"])
    assert "data changed since" in changed["changed_since"] and "第1版" in changed["changed_since"]
    assert "第2版" in changed["changed_since"]
    untouched = [w for w in page["warnings"] if w["alert_key"] != burden["alert_key"]]
    assert all("changed_since" not in w for w in untouched)
    from tests.review_support import client_for

    html = client_for(eng, "county").get(f"/households/{burden['household_no']}").text
    assert "快照 2026-11-01 第2版" in html and html.count('data-testid="changed-since"') == 1
    assert "处置后数据已变化 data changed since：上次处置依据 2026-11-01 第1版，现为 2026-11-01 第2版" in html


@pytest.mark.parametrize("secret", [b"short", b"k" * 64, b"a-secret-longer-than-one-sha256-block-" * 3])
def test_pseudonym_column_equals_the_keyed_hash_of_each_value(secret):
    """`Pseudonymiser.column` (HMAC from copied padded-key states) == `key` (hmac.new) for every value."""
    import hashlib
    import hmac

    import pyarrow as pa

    from safetynet.publish.snapshot import Pseudonymiser

    ps = Pseudonymiser(secret)
    values = ["430103199001011234", None, "", "中文", "43010319900101123X"]
    got = ps.column(pa.chunked_array([values[:2], values[2:]])).to_pylist()
    assert got == [ps.key(v) for v in values]
    assert got[0] == hmac.new(secret, values[0].encode(), hashlib.sha256).hexdigest()[:32] and got[1] is None
