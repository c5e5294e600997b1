"""Another county's drops: the same contracts, its own code values, headers and export habits.

Written by hand (not by the synthetic generator), the way 娄星区's departments might export:

* 住建 房产登记: GBK CSV with the contract's Chinese labels, but 权属状态 `正常` / `注销`;
* 医保 参保登记: CSV with the county system's own English column names and 参保状态 `正常参保` …;
* 医保 医疗费用结算: JSON Lines holding the *event envelopes* of its outbox (a redelivered event,
  a correction and a reversal among them), with 是否住院 as the 医保 医疗类别 codes `21` / `11`.

Without a mapping the run exits 3 naming feed, field, value and count, publishes nothing new
and keeps the previous clean state; with the county's mapping files it reconciles exactly.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from connectors.base import connectors
from quality import freshness
from safetynet import pipeline
from safetynet.cli import EXIT_OK, EXIT_UNHEALTHY, main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.departments import drop_truth_as_files
from safetynet.demo.synth import generate
from safetynet.intake import health, ingest
from safetynet.intake.clean import clean_path
from safetynet.publish import snapshot
from safetynet.review.load import input_notes
from schemas import idno
from schemas.registry import get

SNAP = "2026-11-01"
PROPERTY_STATUS = {"正常": "现势", "注销": "已注销"}
ENROL_STATUS = {"正常参保": "参保缴费", "暂停参保": "暂停缴费", "终止参保": "终止参保"}
ENROL_HEADERS = {"AAC002": "id_no", "INSUR_TYPE": "scheme", "PSN_INSU_STAS": "status", "ACCT_MONTH": "month"}

MAPPINGS = {
    "housing.property": '[values.status]\n"正常" = "现势"\n"注销" = "已注销"\n',
    "medical_insurance.enrollment": (
        "[headers]\n" + "".join(f'"{h}" = "{f}"\n' for h, f in ENROL_HEADERS.items())
        + "[values.status]\n" + "".join(f'"{k}" = "{v}"\n' for k, v in ENROL_STATUS.items())
        + '[values.scheme]\n"职工基本医疗保险" = "职工医保"\n"城乡居民基本医疗保险" = "城乡居民医保"\n'),
    "medical_insurance.claim": '[values.inpatient]\n"21" = "true"\n"11" = "false"\n',
}


def test_a_txt_export_with_this_countys_headers_is_data_not_a_note(tmp_path):
    """Another county's 医保 exports a tab-separated .txt with its own column names, mapped in the
    deployment's mapping file: taken in as data (not left as a note); a real note still is left."""
    s = Settings(store=str(tmp_path / "store"), mappings=tmp_path / "mappings", progress=False)
    s.mappings.mkdir()
    (s.mappings / "medical_insurance.enrollment.toml").write_text(MAPPINGS["medical_insurance.enrollment"], "utf-8")
    st = ObjectStore.from_settings(s)
    pid = "43130219800101" + "123"
    pid += idno.check_char(pid)
    rows = ["\t".join(ENROL_HEADERS), "\t".join([pid, "城乡居民基本医疗保险", "正常参保", "202610"])]
    st.write_bytes("landing/medical_insurance/enrollment/CBXX_202610.txt", ("\r\n".join(rows) + "\r\n").encode("gbk"))
    st.write_bytes("landing/medical_insurance/enrollment/说明.txt", "本月数据请查收。\n".encode("gbk"))
    fc = ingest.ingest(s, st, ["medical_insurance.enrollment"], kafka=False).feeds["medical_insurance.enrollment"]
    assert (fc.input, fc.accepted) == (1, 1), fc.as_dict()
    assert fc.files and all("说明" not in f for f in fc.files)


@pytest.fixture(scope="module")
def district():
    return generate(persons=1500, seed=11)


def _people(d, n: int) -> list[str]:
    ids = d.table("public_security.person").column("id_no").to_pylist()
    return ids[:n]


def county_drops(d, store: ObjectStore) -> dict[str, int]:
    """Write the county's drops; returns the number of records per feed."""
    ids = _people(d, 60)
    # 住建: a full snapshot of 40 titles, county status codes, GBK
    prop = get("housing.property")
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow([f.label_zh for f in prop.fields])
    for i, pid in enumerate(ids[:40]):
        w.writerow([f"431302{i:06d}GB{i:05d}F0001", pid, "1", "住宅", "86.5", "娄星区某路", "2019/5/6",
                    "注销" if i % 10 == 0 else "正常"])
    store.write_bytes("landing/housing/property/property_20261120.csv", out.getvalue().encode("gbk"))
    # 医保 参保: the county system's English column names and its own codes
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(list(ENROL_HEADERS))
    for i, pid in enumerate(ids[:50]):
        w.writerow([pid, "城乡居民基本医疗保险" if i % 3 else "职工基本医疗保险",
                    "暂停参保" if i % 7 == 0 else "正常参保", "2026-10"])
    store.write_bytes("landing/medical_insurance/enrollment/enrollment_20261115.csv", out.getvalue().encode("utf-8"))
    # 医保 结算: the outbox export — envelopes, one redelivered, one correction, one reversal
    lines = []
    for i, pid in enumerate(ids[:30]):
        payload = {"claim_id": f"LX2026{i:05d}", "id_no": pid, "settle_date": "2026-10-0" + str(1 + i % 9),
                   "hospital_name": "娄底市中心医院", "inpatient": "21" if i % 2 else "11",
                   "diagnosis_code": "N18.5" if i % 5 == 0 else "J18.9", "diagnosis_name": "肺炎",
                   "total_amount": "12000.00", "fund_paid": "8000.00", "out_of_pocket": "4000.00",
                   "serious_illness": "否"}
        lines.append({"event_id": f"lx-claim-{i}", "source": "medical_insurance", "feed": "claim", "op": "upsert",
                      "occurred_at": f"2026-10-{10 + i % 9:02d}T09:00:00+08:00", "schema_version": 1,
                      "payload": payload})
    lines.append(lines[3])  # redelivered: same event id
    corrected = json.loads(json.dumps(lines[4]))
    corrected.update(event_id="lx-claim-4-fix", occurred_at="2026-10-25T09:00:00+08:00")
    corrected["payload"]["out_of_pocket"] = "3500.00"
    lines.append(corrected)
    lines.append({"event_id": "lx-claim-5-del", "source": "medical_insurance", "feed": "claim", "op": "delete",
                  "occurred_at": "2026-10-26T09:00:00+08:00", "schema_version": 1,
                  "payload": {"claim_id": "LX202600005"}})
    store.write_bytes("landing/medical_insurance/claim/claim_outbox_20261031.jsonl",
                      ("\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\n").encode())
    return {"housing.property": 40, "medical_insurance.enrollment": 50, "medical_insurance.claim": len(lines)}


def _clean_bytes(store: ObjectStore, fid: str) -> bytes:
    return store.read_bytes(clean_path(get(fid)))


@pytest.mark.slow
def test_county_variant_exits_3_without_a_mapping_and_reconciles_with_one(district, tmp_path, monkeypatch, capsys):
    for k in ("SAFETYNET_KAFKA_BOOTSTRAP", "SAFETYNET_MAPPINGS", "SAFETYNET_MAX_QUARANTINE_RATE"):
        monkeypatch.delenv(k, raising=False)
    root = tmp_path / "store"
    mapdir = tmp_path / "mappings"
    monkeypatch.setenv("SAFETYNET_MAPPINGS", str(mapdir))  # empty for now: built-in mappings only
    store = ObjectStore.from_settings(Settings(store=str(root)))
    drop_truth_as_files(district, store)
    run = ["run", "--snapshot-date", SNAP, "--store", str(root), "--no-progress", "--no-kafka"]
    assert main(run) == EXIT_OK
    manifest = store.read_bytes(f"_catalog/snapshots/{SNAP}.json")
    before = {fid: _clean_bytes(store, fid) for fid in MAPPINGS}
    capsys.readouterr()

    sent = county_drops(district, store)
    assert main(run) == EXIT_UNHEALTHY
    captured = capsys.readouterr()
    out = " ".join(captured.out.split())
    # one drift line per cause: feed, field, value and count — not 40 row errors
    assert "housing.property.status (权属状态): value 正常 in 36 of 40 records is not in the contract" in out
    assert "housing.property.status (权属状态): value 注销 in 4 of 40 records" in out
    assert "medical_insurance.enrollment: file enrollment_20261115.csv" in out and "AAC002" in out
    assert "medical_insurance.claim.inpatient (是否住院): value 11 in 16 of 33 records" in out
    assert "not published: unhealthy feed(s)" in captured.err  # the outcome: one line on stderr
    # nothing new published, previous clean state in force
    assert store.read_bytes(f"_catalog/snapshots/{SNAP}.json") == manifest
    assert {fid: _clean_bytes(store, fid) for fid in MAPPINGS} == before
    latest = health.latest(store, [get(f) for f in MAPPINGS])
    assert all(latest[f]["unhealthy"] for f in MAPPINGS)
    # the whole-file quarantine of the enrollment file counts its 50 records, not 1
    runs = sorted(e.path for e in store.list("_catalog/ingest/"))
    held_run = json.loads(store.read_bytes(runs[-1]))
    assert held_run["feeds"]["medical_insurance.enrollment"]["quarantined"] == {"file_header": 50}
    assert sorted(held_run["unhealthy"]) == sorted(MAPPINGS)
    # freshness lists them; the monitoring DAG's gate (no ingest in that run) blocks on them too
    report = freshness.check(store, "2026-11-01T12:00:00+08:00")
    assert report["unhealthy"] == sorted(MAPPINGS)
    assert "正常" in " ".join(report["feeds"]["housing.property"]["health"]["drift"])
    pol = pipeline.load_policy("430103", dt.date(2026, 11, 1), None)
    with pytest.raises(pipeline.QualityGateFailed) as gate:
        pipeline.build_snapshot(Settings(store=str(root)), store, dt.date(2026, 11, 1), pol, publish_kafka=False)
    [hf] = [f for f in gate.value.report.critical_failures if f.check == "feed_health"]
    assert hf.unexpected_count == 3 and hf.examples
    assert store.read_bytes(f"_catalog/snapshots/{SNAP}.json") == manifest

    # the operator publishes on the previous state of the three feeds: recorded, and shown
    accept = [a for f in MAPPINGS for a in ("--accept-unhealthy", f)]
    assert main(run + accept) == EXIT_OK
    m = snapshot.manifest(store, dt.date(2026, 11, 1))
    for fid in MAPPINGS:
        assert m["inputs"][fid]["accepted_unhealthy"] is True and m["inputs"][fid]["unhealthy"], fid
    assert {fid: _clean_bytes(store, fid) for fid in MAPPINGS} == before  # still the previous state
    w = snapshot.read(store, "warnings", dt.date(2026, 11, 1))
    stale = {r["rule_id"]: set(r["stale_inputs"]) for r in w.select(["rule_id", "stale_inputs"]).to_pylist()}
    assert "medical_insurance.claim" in stale["medical_burden"]
    notes = input_notes(m)
    assert {n["feed_id"] for n in notes if n["kind"] == "unhealthy"} == set(MAPPINGS)
    manifest = store.read_bytes(f"_catalog/snapshots/{SNAP}.json")

    # the county's mapping files: the same drops (held, re-offered for the changed mapping) reconcile
    mapdir.mkdir()
    for fid, text in MAPPINGS.items():
        (mapdir / f"{fid}.toml").write_text(text, encoding="utf-8")
    assert main(run) == EXIT_OK
    out = capsys.readouterr().out
    runs = sorted(e.path for e in store.list("_catalog/ingest/"))
    rep = json.loads(store.read_bytes(runs[-1]))
    assert rep["unhealthy"] == [] and rep["reconciles"]
    maps = connectors()
    for fid, n in sent.items():
        f = rep["feeds"][fid]
        assert (f["input"], f["accepted"], f["quarantined"]) == (n, n, {}), fid
        m = maps[fid].load_mapping(mapdir)
        assert f["mapping"]["sha256"] == m.sha256
        raw = store.dataset(f"raw/{get(fid).prefix}/").to_table()
        newest = raw.filter(pc.equal(raw["_mapping"], m.checksum))
        assert newest.num_rows == n  # lineage names the mapping applied
    # clean: the county's property snapshot replaced the old one, with contract codes
    prop = store.read_parquet(clean_path(get("housing.property")))
    assert prop.num_rows == 40
    assert sorted(prop["status"].to_pylist()) == sorted(["已注销"] * 4 + ["现势"] * 36)
    enrol = store.read_parquet(clean_path(get("medical_insurance.enrollment")))
    mine = pa.array(_people(district, 50))
    county = enrol.filter(pc.and_(pc.equal(enrol["month"], "2026-10"), pc.is_in(enrol["id_no"], mine)))
    assert county.num_rows == 50
    assert sorted(set(county["status"].to_pylist())) == ["参保缴费", "暂停缴费"]
    assert sorted(set(county["scheme"].to_pylist())) == ["城乡居民医保", "职工医保"]
    # claims: the outbox envelopes behave as events — redelivery counted once, correction, reversal
    claims = store.read_parquet(clean_path(get("medical_insurance.claim")))
    lx = claims.filter(pc.starts_with(claims["claim_id"], "LX2026"))
    assert lx.num_rows == 29  # 30 claims, one reversed
    by_id = {r["claim_id"]: r for r in lx.to_pylist()}
    assert "LX202600005" not in by_id
    assert str(by_id["LX202600004"]["out_of_pocket"]) == "3500.00"
    assert by_id["LX202600001"]["inpatient"] is True and by_id["LX202600002"]["inpatient"] is False
    cm = json.loads(store.read_bytes("_catalog/clean/medical_insurance/claim.json"))
    assert cm["counts"]["redelivered"] >= 1 and cm["counts"]["deleted"] >= 1 and cm["held_files"] == []
    # a new snapshot was published from the mapped data
    assert store.read_bytes(f"_catalog/snapshots/{SNAP}.json") != manifest
    assert snapshot.snapshots(store) == [dt.date(2026, 11, 1)]


def test_a_wrong_mapping_is_refused_at_start_with_every_problem(tmp_path, monkeypatch, capsys):
    mapdir = tmp_path / "m"
    mapdir.mkdir()
    (mapdir / "housing.property.toml").write_text(
        '[headers]\n"权属" = "state"\n[values.status]\n"正常" = "有效"\n[values.colour]\n"x" = "y"\n', "utf-8")
    (mapdir / "housing.nothing.toml").write_text("", "utf-8")
    monkeypatch.setenv("SAFETYNET_MAPPINGS", str(mapdir))
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    store = tmp_path / "store"
    ObjectStore.from_settings(Settings(store=str(store))).write_bytes(
        "landing/housing/property/p.csv", "不动产单元号\n1\n".encode())
    assert main(["ingest", "--store", str(store), "--no-progress", "--no-kafka"]) == 2
    err = capsys.readouterr().err
    for needle in ("has no field 'state'", "'正常' → '有效': not a value of the contract (现势 / 已注销 / 已转移)",
                   "[values.colour]", "housing.nothing.toml: no feed 'housing.nothing'", "nothing was ingested"):
        assert needle in err, needle
    assert not ObjectStore.from_settings(Settings(store=str(store))).list("raw/")


def test_an_empty_snapshot_delivery_is_unhealthy_and_keeps_the_register(local_settings, local_store):
    c = get("housing.property")
    head = ",".join(f.label_zh for f in c.fields)
    row = "P1,430103198001011236,1,住宅,80,某地,2020-01-01,现势"
    s17 = "43010319800101123"
    row = row.replace("430103198001011236", s17 + idno.check_char(s17))
    local_store.write_bytes("landing/housing/property/p_20261001.csv", f"{head}\n{row}\n".encode())
    s = local_settings.model_copy(update={"mappings": local_settings.work_dir / "none"})
    r1 = ingest.ingest(s, local_store, [c.feed_id], kafka=False)
    assert not r1.unhealthy
    from safetynet.intake.clean import clean_feed
    clean_feed(local_store, c)
    kept = local_store.read_parquet(clean_path(c))
    local_store.write_bytes("landing/housing/property/p_20261101.csv", f"{head}\n".encode())
    r2 = ingest.ingest(s, local_store, [c.feed_id], kafka=False)
    assert r2.unhealthy == [c.feed_id]
    assert "snapshot delivery p_20261101.csv is empty" in r2.feeds[c.feed_id].health.problems[0]
    clean_feed(local_store, c)
    assert local_store.read_parquet(clean_path(c)).equals(kept)
    assert pa.types.is_string(kept.schema.field("status").type)


def test_an_unhealthy_feed_fails_its_airflow_task_at_once(tmp_path, monkeypatch):
    """The ingest DAG's task for an unhealthy feed fails without retries (a data problem), naming the drift."""
    from airflow.sdk.exceptions import AirflowFailException

    from safetynet import orchestration

    for k in [k for k in __import__("os").environ if k.startswith("SAFETYNET_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SAFETYNET_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SAFETYNET_MAPPINGS", str(tmp_path / "mappings"))
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    c = get("housing.property")
    rows = [",".join(f.label_zh for f in c.fields)]
    for i in range(12):
        s17 = f"430103197001{i + 1:02d}123"
        rows.append(f"P{i},{s17 + idno.check_char(s17)},1,住宅,80,某地,2020-01-01,正常")
    store.write_bytes("landing/housing/property/p_20261101.csv", ("\n".join(rows) + "\n").encode("gbk"))
    with pytest.raises(AirflowFailException) as e:
        orchestration.ingest_feed("housing.property", skip_unchanged=True)
    assert "housing.property unhealthy" in str(e.value) and "value 正常 in 12 of 12 records" in str(e.value)
    assert not store.exists(clean_path(c))


def test_profile_suggests_the_mapping_that_then_ingests_cleanly(tmp_path, monkeypatch, capsys):
    """Onboarding: profile the export (nothing ingested), fill in the suggested file, check-config accepts it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFETYNET_MAPPINGS", str(tmp_path / "mappings"))
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(list(ENROL_HEADERS))
    for i in range(20):
        s17 = f"431302198{i % 10}0{1 + i % 9}1{i:01d}{i:03d}"[:17]
        w.writerow([s17 + idno.check_char(s17), "城乡居民医保", "正常参保" if i % 4 else "暂停参保",
                    "2026/10" if i % 5 else "十月"])
    (tmp_path / "enrol.csv").write_bytes(out.getvalue().encode("gbk"))
    assert main(["feeds", "profile", "enrol.csv", "--feed", "medical_insurance.enrollment"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert "AAC002 → ? (no field" in text and "required fields with no column: id_no (公民身份号码)" in text
    suggested = (tmp_path / "medical_insurance.enrollment.suggested.toml").read_text(encoding="utf-8")
    assert '"AAC002" = ""' in suggested
    (tmp_path / "mappings").mkdir()
    first = "[headers]\n" + "".join(f'"{h}" = "{f}"\n' for h, f in ENROL_HEADERS.items())
    (tmp_path / "mappings" / "medical_insurance.enrollment.toml").write_text(first, encoding="utf-8")
    assert main(["feeds", "profile", "enrol.csv", "--feed", "medical_insurance.enrollment"]) == EXIT_OK
    text = " ".join(capsys.readouterr().out.split())
    assert "status (参保状态) values the contract does not know: 正常参保 ×15, 暂停参保 ×5" in text
    assert "month (参保月份) month_format: 4 records, e.g. 十月" in text
    assert not re.search(r"[0-9]{17}[0-9X]", text)  # no ID number shown whole
    suggested = (tmp_path / "medical_insurance.enrollment.suggested.toml").read_text(encoding="utf-8")
    assert '"AAC002" = "id_no"' in suggested and '"正常参保" = "?"  # 15 records' in suggested
    # the suggestion is refused until filled in; filled in, check-config shows it in force
    (tmp_path / "mappings" / "medical_insurance.enrollment.toml").write_text(suggested, encoding="utf-8")
    assert main(["check-config", "--store", str(tmp_path / "store")]) == 2  # a configuration problem
    assert "'正常参保' → '?': not a value of the contract" in capsys.readouterr().out
    filled = suggested.replace('"正常参保" = "?"', '"正常参保" = "参保缴费"').replace('"暂停参保" = "?"', '"暂停参保" = "暂停缴费"')
    (tmp_path / "mappings" / "medical_insurance.enrollment.toml").write_text(filled, encoding="utf-8")
    assert main(["check-config", "--store", str(tmp_path / "store")]) == 0
    assert "medical_insurance.enrollment: sha256" in capsys.readouterr().out


def _unhealthy_property_drop(store, c) -> None:
    """A property drop of 10 records, 4 of them with a status the contract does not know (40 %)."""
    rows = [",".join(f.label_zh for f in c.fields)]
    for i in range(10):
        s17 = f"430103197001{i + 1:02d}123"
        rows.append(f"P{i},{s17 + idno.check_char(s17)},1,住宅,80,某地,2020-01-01,{'现势' if i < 6 else '正常'}")
    store.write_bytes("landing/housing/property/p_20261101.csv", ("\n".join(rows) + "\n").encode())


def test_release_accepts_a_held_delivery(local_settings, local_store, capsys):
    """An unhealthy delivery is held; the operator releases it: its accepted records join clean/."""
    from safetynet.intake.clean import clean_feed

    c = get("housing.property")
    _unhealthy_property_drop(local_store, c)
    r = ingest.ingest(local_settings, local_store, [c.feed_id], kafka=False)
    assert r.unhealthy == [c.feed_id]
    clean_feed(local_store, c)
    assert local_store.read_parquet(clean_path(c)).num_rows == 0
    root = local_settings.store
    assert main(["feeds", "release", c.feed_id, "--store", root, "--no-progress"]) == EXIT_OK
    assert "released 1 held file(s); clean state rebuilt: 6 rows" in " ".join(capsys.readouterr().out.split())
    assert local_store.read_parquet(clean_path(c)).num_rows == 6
    h = health.latest(local_store, [c])[c.feed_id]
    assert h["unhealthy"] is False and h["released"]["files"] and "4 of 10" in h["released"]["problems"][0]
    assert health.unhealthy(local_store, [c]) == {}


def test_raising_a_feeds_quarantine_threshold_takes_its_held_drops_in_again(local_settings, local_store, tmp_path):
    """The README's promise — held drops are taken in again when the feed's mapping changes — held
    for headers and values only: a mapping file raising `[health] max_quarantine_rate` left the
    drops held (its checksum ignores [health]), and only `feeds release` moved them."""
    c = get("housing.property")
    _unhealthy_property_drop(local_store, c)
    assert ingest.ingest(local_settings, local_store, [c.feed_id], kafka=False).unhealthy == [c.feed_id]
    again = ingest.ingest(local_settings, local_store, [c.feed_id], kafka=False)
    assert again.feeds[c.feed_id].input == 0  # held, not offered again under the same mapping
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "housing.property.toml").write_text("[health]\nmax_quarantine_rate = 0.5\n", encoding="utf-8")
    s = local_settings.model_copy(update={"mappings": maps})
    r = ingest.ingest(s, local_store, [c.feed_id], kafka=False)
    assert (r.feeds[c.feed_id].input, r.feeds[c.feed_id].accepted, r.unhealthy) == (10, 6, [])
