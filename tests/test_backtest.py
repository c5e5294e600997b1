"""`safetynet rules backtest`: a new policy file on published snapshots, on their published inputs.

The store holds a 2,500-person district (seed 9, as the review tests') dropped as files, ingested,
cleaned and published for 2026-11-01 with the shipped policy — by the pipeline's own functions,
without the GX quality gate (it decides whether to publish, which the backtest does not
revisit; skipping it saves its ~10 s). A test that changes data works on a copy.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from quality import evaluation, policy
from safetynet import pipeline
from safetynet.build import monitoring
from safetynet.cli import EXIT_USAGE, main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.departments import drop_truth_as_files
from safetynet.demo.synth import generate
from safetynet.intake import clean, ingest
from safetynet.publish import backtest, snapshot
from schemas import normalise
from schemas.registry import contracts, get
from tests.test_pipeline import has_id

FIRST = dt.date(2026, 11, 1)

SHIPPED = policy.POLICY_DIR / "430103-2026.toml"
CLAIM = get("medical_insurance.claim")


def changed_policy(path: Path, version: str = "430103-2026.backtest", **thresholds: float) -> Path:
    """A copy of the shipped policy file with another version and the given thresholds."""
    text = SHIPPED.read_text(encoding="utf-8")
    text, n = re.subn(r'^version = "[^"]*"', f'version = "{version}"', text, flags=re.M)
    assert n == 1
    for k, v in thresholds.items():
        text, n = re.subn(rf"^{k} = [^#\n]*", f"{k} = {v!r}  ", text, flags=re.M)
        assert n == 1, k
    path.write_text(text, encoding="utf-8")
    return path


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (directories too, hidden files too) → its bytes (None: a directory)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def run_backtest(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["rules", "backtest", "--no-progress", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def read_csv(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # BOM: Excel opens the Chinese
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    assert not has_id(raw.decode("utf-8-sig"))
    return rows


@pytest.fixture(scope="module")
def shipped() -> policy.Policy:
    return policy.load(SHIPPED)


@pytest.fixture(scope="module")
def published(tmp_path_factory, shipped) -> ObjectStore:
    """A store with the 2026-11-01 snapshot published (the only one)."""
    store_dir = tmp_path_factory.mktemp("backtest_store")
    s = Settings(store=str(store_dir), kafka_bootstrap=None, progress=False)
    store = ObjectStore.from_settings(s)
    drop_truth_as_files(generate(persons=2500, seed=9), store)
    report = ingest.ingest(s, store, kafka=False)
    assert report.reconciles and not report.unhealthy
    clean.clean_all(store, list(contracts().values()))
    pipeline.build_snapshot(s, store, FIRST, shipped, quality=False, publish_kafka=False)
    store.dir = store_dir  # type: ignore[attr-defined]
    return store


# ---- (1) the published policy reproduces the published warnings -------------------------------------
def test_the_published_policy_reproduces_every_published_warning(published, shipped):
    w = snapshot.read(published, "warnings", FIRST, identified=True)
    res = backtest.backtest(published, FIRST, shipped)
    assert res.old_policy == res.new_policy == shipped.version
    assert {d.rule_id for d in res.rules} >= set(w["rule_id"].to_pylist())
    for d in res.rules:
        assert (d.added, d.removed) == (0, 0), d
        assert d.kept == d.published == d.backtest, d
    assert sum(d.published for d in res.rules) == w.num_rows > 0
    assert res.changes == [] and res.not_reproduced == [] and res.notes == []


def test_the_rebuilt_inputs_are_the_clean_state_that_was_published(published):
    """`clean.clean_table` over the files the watermarks name gives the very tables `clean_feed` wrote."""
    m = snapshot.manifest(published, FIRST)
    con = normalise.connect()
    try:
        tables, checks = backtest.rebuild_inputs(published, m, con)
    finally:
        con.close()
    for fid, c in contracts().items():
        assert checks[fid].reproduced and checks[fid].rows == m["inputs"][fid]["rows"], fid
        assert tables[fid].equals(clean.read_clean(published, c)), fid


# ---- (2) a changed threshold moves its rule only --------------------------------------------------------
def test_a_lower_medical_threshold_adds_medical_burden_warnings_only(published, shipped, tmp_path, capsys):
    new = changed_policy(tmp_path / "new.toml", medical_burden_oop_12m=8000.0)
    rc, out, err = run_backtest(capsys, "--store", str(published.dir), "--policy", str(new),
                                "--snapshot-date", FIRST.isoformat(), "--out", str(tmp_path / "out"))
    assert rc == 0, err
    res = backtest.backtest(published, FIRST, policy.load(new))
    by = {d.rule_id: d for d in res.rules}
    mb = by.pop("medical_burden")
    assert mb.added > 0 and mb.removed == 0 and mb.kept == mb.published
    assert mb.backtest == mb.published + mb.added
    for d in by.values():  # the threshold is medical_burden's alone
        assert (d.added, d.removed) == (0, 0) and d.kept == d.published == d.backtest, d
    # the header names both versions; the table row shows the counts
    assert f"published policy {shipped.version} → new policy 430103-2026.backtest" in out
    row = next(line for line in out.splitlines() if "medical_burden" in line and "大额医疗支出" in line)
    assert re.findall(r"[+-]?\d[\d,]*", row.split("大额医疗支出", 1)[1])[-5:] == [
        str(mb.published), str(mb.backtest), str(mb.kept), f"+{mb.added}", "0"]
    assert not has_id(out + err)
    # the CSV holds exactly the added warnings, masked
    rows = read_csv(tmp_path / "out" / f"backtest-{FIRST}.csv")
    assert rows and list(rows[0]) == list(backtest.CSV_COLUMNS)
    assert len(rows) == mb.added
    assert {(r["change"], r["rule_id"], r["rule_title_zh"], r["snapshot_date"]) for r in rows} == {
        ("added", "medical_burden", "大额医疗支出", FIRST.isoformat())}
    assert all(re.fullmatch(r"\d{9}", r["street_code"]) and r["region_code"].startswith(r["street_code"])
               for r in rows)
    assert all(r["subject"] == "" or re.fullmatch(r"\d{6}\*{8}\d{3}[\dX]", r["subject"]) for r in rows)
    # the by-street counts add up to the same
    assert sum(a for _, a, _, _ in res.by_street()) == mb.added


def test_a_higher_threshold_removes_and_only_the_selected_rules_are_compared(published, tmp_path, capsys):
    new = changed_policy(tmp_path / "new.toml", medical_burden_oop_12m=1_000_000.0,
                         medical_burden_min_oop=1_000_000.0)
    res = backtest.backtest(published, FIRST, policy.load(new), backtest.select_rules(["medical_burden"]))
    assert [d.rule_id for d in res.rules] == ["medical_burden"]
    (mb,) = res.rules
    assert mb.published > 0 and mb.removed == mb.published and mb.backtest == mb.added == mb.kept == 0
    rc, out, err = run_backtest(capsys, "--store", str(published.dir), "--policy", str(new), "--rule",
                                "medical_burden", "--snapshot-date", FIRST.isoformat(), "--out", str(tmp_path))
    assert rc == 0, err
    assert "medical_burden" in out and "income_drop" not in out
    rows = read_csv(tmp_path / f"backtest-{FIRST}.csv")
    assert len(rows) == mb.removed and {r["change"] for r in rows} == {"removed"}


# ---- (3) the inputs are the published ones, not today's clean state --------------------------------------
def _claim_lines(store: ObjectStore, n: int) -> list[str]:
    """n large out-of-pocket claims for living persons of n households on an active case (so
    economically at risk) without a medical_burden warning."""
    w = snapshot.read(store, "warnings", FIRST, identified=True)
    warned = {r["household_no"] for r in w.to_pylist() if r["rule_id"] == "medical_burden"}
    hh = snapshot.read(store, "monitoring/household", FIRST).select(["household_no", "active_case_nos"]).to_pylist()
    on_case = {h["household_no"] for h in hh if h["active_case_nos"]}
    people = snapshot.read(store, "monitoring/person", FIRST, identified=True).select(
        ["id_no", "household_no", "alive"]).to_pylist()
    chosen, seen = [], set()
    for p in people:
        if p["alive"] and p["household_no"] in on_case and p["household_no"] not in warned | seen:
            chosen.append(p["id_no"])
            seen.add(p["household_no"])
        if len(chosen) == n:
            break
    return [json.dumps({"claim_id": f"BT{i:06d}", "id_no": id_no, "settle_date": "2026-10-20",
                        "hospital_name": "回测医院", "inpatient": True, "diagnosis_code": "K35",
                        "diagnosis_name": "阑尾炎", "total_amount": "100000.00", "fund_paid": "20000.00",
                        "out_of_pocket": "80000.00", "serious_illness": False}, ensure_ascii=False)
            for i, id_no in enumerate(chosen)]


def test_the_backtest_runs_on_the_published_inputs_not_on_later_data(published, shipped, tmp_path, monkeypatch):
    monkeypatch.delenv("SAFETYNET_KAFKA_BOOTSTRAP", raising=False)
    shutil.copytree(published.dir, tmp_path / "store")
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    # after publishing: a corrected delivery of the same claim file (new version, more claims)
    # and a new claim file, both ingested and cleaned
    lines = _claim_lines(store, 4)
    drop = f"landing/{CLAIM.prefix}/claim_20261031.jsonl"
    store.write_bytes(drop, store.read_bytes(drop) + ("\n".join(lines[:2]) + "\n").encode())
    store.write_bytes(f"landing/{CLAIM.prefix}/claim_20261102.jsonl", ("\n".join(lines[2:]) + "\n").encode())
    assert main(["ingest", "--no-kafka", "--no-progress", "--store", str(tmp_path / "store")]) == 0
    # today's clean state fires more medical_burden warnings than were published …
    published_w = snapshot.read(store, "warnings", FIRST, identified=True)
    n_published = sum(1 for r in published_w["rule_id"].to_pylist() if r == "medical_burden")
    con = normalise.connect()
    try:
        monitoring.register_clean(con, store)
        now = evaluation.evaluate(monitoring.build(con, FIRST, shipped), shipped)
    finally:
        con.close()
    assert sum(1 for r in now["rule_id"].to_pylist() if r == "medical_burden") >= n_published + 4
    # … the backtest, on the inputs as published, still reproduces the published warnings exactly
    res = backtest.backtest(store, FIRST, shipped)
    assert all((d.added, d.removed) == (0, 0) and d.kept == d.published for d in res.rules)
    assert res.not_reproduced == [] and res.notes == []
    # a manifest from before drop versions were recorded (names only) takes the corrected
    # version too: the rebuilt row count no longer matches the manifest, and the backtest says so
    ptr_path = f"_catalog/snapshots/{FIRST}.json"
    ptr = json.loads(store.read_bytes(ptr_path))
    m = json.loads(store.read_bytes(ptr["manifest"]))
    for i in m["inputs"].values():
        (i.get("watermarks") or {}).pop("file_versions", None)
    data = json.dumps(m).encode()
    store.write_bytes(ptr["manifest"], data)  # (a version is immutable: this test forges an older kind)
    store.write_bytes(ptr_path, json.dumps({**ptr, "manifest_sha256": hashlib.sha256(data).hexdigest()}).encode())
    res = backtest.backtest(store, FIRST, shipped)
    assert [i.feed_id for i in res.not_reproduced] == ["medical_insurance.claim"]
    assert res.inputs["medical_insurance.claim"].rows == m["inputs"]["medical_insurance.claim"]["rows"] + 2
    assert any("medical_insurance.claim: rebuilt" in n for n in res.notes)


def _raw(store: ObjectStore, name: str, rows: list[dict]) -> str:
    path = f"raw/{CLAIM.prefix}/ingest_date=2026-10-31/{name}.parquet"
    store.write_parquet(path, pa.Table.from_pylist(rows, schema=CLAIM.raw_schema()))
    return path


def test_published_raw_takes_files_and_kafka_offsets_up_to_the_watermarks(local_store):
    topic = CLAIM.topic

    def batch(p: int, first: int, last: int) -> str:
        return _raw(local_store, f"{topic}+{p}+{first:020d}+{last:020d}",
                    [{"_source": "kafka", "_kafka_partition": p, "_kafka_offset": o} for o in range(first, last + 1)])

    def drop(name: str, version: str, n: int) -> str:
        return _raw(local_store, f"file+{name}+{version}", [{"_source": "file", "_row_number": i} for i in range(n)])

    batch(0, 0, 9), batch(0, 10, 19), batch(0, 20, 29), batch(1, 0, 4), batch(1, 5, 9), batch(2, 0, 3)
    drop("a.csv", "v1", 3), drop("a.csv", "v2", 4), drop("b.csv", "v1", 5), drop("c.csv", "v1", 6)
    wm = {"kafka": {"0": 14, "1": 9}, "files": ["a.csv", "b.csv"], "file_versions": {"a.csv": ["v1"], "b.csv": ["v1"]}}
    data, n = backtest.published_raw(local_store, CLAIM, wm)
    t = data.to_table()
    kafka = sorted((r["_kafka_partition"], r["_kafka_offset"]) for r in t.to_pylist() if r["_source"] == "kafka")
    assert kafka == [(0, o) for o in range(15)] + [(1, o) for o in range(10)]  # 0: up to 14 (a straddling batch)
    assert n == 6 and t.num_rows - len(kafka) == 3 + 5  # a.csv v1 and b.csv; not a.csv v2, not c.csv
    # names only (an older manifest): every version of a named file, but not a held one
    held = drop("b.csv", "v2", 7)
    local_store.write_bytes(f"_catalog/held/{CLAIM.prefix}.json", json.dumps({held: {"run_id": "x"}}).encode())
    data, _ = backtest.published_raw(local_store, CLAIM, {"kafka": {}, "files": ["a.csv", "b.csv"]})
    assert data.count_rows() == 3 + 4 + 5
    assert backtest.published_raw(local_store, CLAIM, None) == (None, 0)


# ---- (4) nothing is written to the store -----------------------------------------------------------------
def test_the_backtest_writes_nothing_to_the_store(published, tmp_path, capsys):
    new = changed_policy(tmp_path / "new.toml", medical_burden_oop_12m=8000.0, recipient_high_income_multiple=1.2)
    before = tree(published.dir)
    rc, _, err = run_backtest(capsys, "--store", str(published.dir), "--policy", str(new),
                              "--snapshot-date", FIRST.isoformat(), FIRST.isoformat(), "--out", str(tmp_path / "o"))
    assert rc == 0, err
    assert tree(published.dir) == before  # same paths (directories too), same bytes
    assert [p.name for p in (tmp_path / "o").iterdir()] == [f"backtest-{FIRST}.csv"]


# ---- (5) clear errors ----------------------------------------------------------------------------------------
def test_errors_are_clear_and_exit_2(published, tmp_path, capsys):
    store = str(published.dir)
    rc, _, err = run_backtest(capsys, "--store", store, "--policy", str(SHIPPED), "--snapshot-date", "2026-10-01")
    assert rc == EXIT_USAGE and "no published snapshot for 2026-10-01" in err and FIRST.isoformat() in err
    rc, _, err = run_backtest(capsys, "--store", store, "--policy", str(SHIPPED), "--snapshot-date",
                              FIRST.isoformat(), "--rule", "medical_burden", "no_such_rule")
    assert rc == EXIT_USAGE and "unknown rule id(s): no_such_rule" in err and "income_drop" in err
    bad = changed_policy(tmp_path / "bad.toml", medical_burden_income_share=7.0)
    rc, _, err = run_backtest(capsys, "--store", store, "--policy", str(bad), "--snapshot-date", FIRST.isoformat())
    assert rc == EXIT_USAGE and "is invalid" in err and "medical_burden_income_share" in err
    rc, _, err = run_backtest(capsys, "--store", str(tmp_path / "nowhere"), "--policy", str(SHIPPED),
                              "--snapshot-date", FIRST.isoformat())
    assert rc == EXIT_USAGE and "does not exist" in err and not (tmp_path / "nowhere").exists()


def test_a_closed_pipe_is_no_crash(published, tmp_path):
    """`… | head`: the reader goes away before the tables are printed; the command still ends well."""
    p = subprocess.Popen([sys.executable, "-m", "safetynet.cli", "rules", "backtest", "--store", str(published.dir),
                          "--policy", str(SHIPPED), "--snapshot-date", FIRST.isoformat(), "--out", str(tmp_path)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})
    p.stdout.close()  # like `| head -0`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (tmp_path / f"backtest-{FIRST}.csv").exists()


def test_rules_list(capsys):
    assert main(["rules", "list"]) == 0
    out = capsys.readouterr().out
    assert "medical_burden" in out and "medical_burden_oop_12m" in out and "大额医疗支出" in out


def test_the_csv_neutralises_spreadsheet_formulas():
    row = {"snapshot_date": FIRST.isoformat(), "change": "added", "rule_id": "medical_burden",
           "rule_title_zh": "大额医疗支出", "household_no": "-430103", "street_code": "430103001",
           "region_code": "430103001001", "subject": "", "summary_zh": '=HYPERLINK("http://x","点击")'}
    res = backtest.Backtest(FIRST, "a", "b", [], [row])
    (line,) = list(csv.DictReader(io.StringIO(backtest.csv_bytes(res).decode("utf-8-sig"))))
    assert line["summary_zh"].startswith("'=HYPERLINK") and line["household_no"] == "'-430103"
    assert line["street_code"] == "430103001"


def test_the_warnings_export_neutralises_formulas_too(tmp_path):
    """`safetynet warnings export` (safetynet.publish.export.write) and the review app share `csv_safe`."""
    import openpyxl
    import pyarrow as pa

    from quality.evaluation import SCHEMA
    from safetynet.publish import export

    row = {f.name: None for f in SCHEMA}
    row.update(snapshot_date=FIRST, warning_id="w1", rule_id="medical_burden", rule_title_zh="大额医疗支出",
               severity="S2", household_no="430103001000001", region_code="430103001001", street_code="430103001",
               summary_zh='=HYPERLINK("http://x","点击")', household_score=30.0, household_rank=1, score=30.0,
               top_signals=["@SUM(1)"], policy_version="430103-2026.1")
    w = pa.Table.from_pylist([row], schema=SCHEMA)
    export.write(w, tmp_path / "w.csv")
    (line,) = list(csv.reader(io.StringIO((tmp_path / "w.csv").read_bytes().decode("utf-8-sig"))))[1:]
    assert "'=HYPERLINK(\"http://x\",\"点击\")" in line and "'@SUM(1)" in line
    export.write(w, tmp_path / "w.xlsx")
    cells = [c.value for c in openpyxl.load_workbook(tmp_path / "w.xlsx").active[2]]
    assert cells[8].startswith("'=") and not any(isinstance(c, str) and c.startswith("=") for c in cells)
