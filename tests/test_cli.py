"""Every command and subcommand of the README, as a new user meets it (issue #14).

A small demo district is built once for the module, in the default store (`./var/store` under a
scratch working directory, as `make demo` makes it); then each command runs as its own process
(`python -m safetynet.cli`, the console script's code path) with its help (exit 0), its success
path, and one bad input: the exit code, and stderr one actionable line without a Python class name
or a traceback. Operator-experience details of the issue are checked beside them: no store is
created by a command that only reads, options after the subcommand, `--db` as a path, one date
form, `| head`, the policy checked before the ingest, the landing folder's strays and empty files,
the gate's report printed once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import pty
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from quality.policy import POLICY_DIR
from safetynet.cli import (
    EXIT_OK,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    _subparsers,
    build_parser,
    main,
)

ROOT = Path(__file__).resolve().parents[1]
SNAP = "2026-11-01"
SHIPPED = POLICY_DIR / "430103-2026.toml"
PASSWORD = "cli-test-password-1"
#: a Python class name in a message: ValueError, KeyError, SnapshotNotFound, BrokenPipeError …
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|NotFound|Warning)\b")


@dataclass
class Env:
    """A scratch working directory holding the demo's default store, and how to run commands there."""

    cwd: Path
    env: dict
    demo: subprocess.CompletedProcess

    @property
    def store(self) -> Path:
        return self.cwd / "var" / "store"

    @property
    def db(self) -> Path:
        return self.cwd / "var" / "review.db"

    def run(self, *args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "safetynet.cli", *args], cwd=self.cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **kw)


def clean_env(extra: dict | None = None) -> dict:
    """The environment without any SAFETYNET_* setting of the machine (a broker, a store …)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAFETYNET_")}
    env["PYTHONPATH"] = str(ROOT)  # `python -m safetynet.cli` from another working directory
    return {**env, **(extra or {})}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Env:
    cwd = tmp_path_factory.mktemp("cli")
    env = clean_env({"SAFETYNET_MAPPINGS": str(cwd / "mappings")})
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "demo", "--persons", "2000"], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == EXIT_OK, r.stdout[-3000:] + r.stderr[-3000:]
    return Env(cwd, env, r)


def one_line(err: str) -> str:
    """stderr is one actionable line: no traceback, no class name, no `--debug` hint."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "--debug" not in err, err
    assert not CLASS_NAME.search(err), err
    assert lines[0].startswith("safetynet"), err
    return lines[0]


def bad(r: subprocess.CompletedProcess, code: int = EXIT_USAGE, *needles: str) -> str:
    assert r.returncode == code, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    line = one_line(r.stderr)
    for n in needles:
        assert n in line, (n, line)
    return line


def ok(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == EXIT_OK, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr
    for n in needles:
        assert n in r.stdout, (n, r.stdout[-3000:])
    return r.stdout


# ---- the command tree, the README and the tests agree ------------------------------------------------------
def command_paths() -> list[tuple[str, ...]]:
    """Every command and subcommand the parser has, e.g. ('users', 'add')."""
    out = []

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if path and (not subs or not subs[0].required):
            out.append(path)
        for a in subs:
            for name, child in a.choices.items():
                walk(child, (*path, name))

    walk(build_parser(), ())
    return out


#: the commands this module runs (success path and a bad input each), by test
TESTED = {
    ("feeds",): "test_feeds", ("feeds", "profile"): "test_feeds_profile", ("feeds", "release"): "test_feeds_release",
    ("check-config",): "test_check_config", ("generate",): "test_generate", ("ingest",): "test_ingest",
    ("run",): "test_run", ("warnings", "export"): "test_warnings_export", ("snapshots", "list"): "test_snapshots_list",
    ("snapshots", "prune"): "test_snapshots_prune", ("policy", "init"): "test_policy_init",
    ("policy", "show"): "test_policy_show", ("rules", "list"): "test_rules_list",
    ("rules", "backtest"): "test_rules_backtest", ("demo",): "test_demo", ("serve",): "test_serve",
    ("users", "add"): "test_users", ("users", "list"): "test_users", ("users", "disable"): "test_users",
    ("users", "enable"): "test_users", ("review", "load"): "test_review_load",
    ("review", "migrate"): "test_review_migrate", ("review", "verify-audit"): "test_review_verify_audit",
    ("store", "verify"): "test_store_verify", ("regions", "import"): "test_regions_import",
    ("regions", "list"): "test_regions_list", ("regions", "show"): "test_regions_show",
}


def test_every_command_is_in_the_readme_and_tested_here():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [ln for ln in readme.splitlines() if ln.startswith("| `safetynet ")]
    paths = command_paths()
    assert set(paths) == set(TESTED), set(paths) ^ set(TESTED)
    for path in paths:
        row = [r for r in rows if r.startswith(f"| `safetynet {path[0]}")]
        assert row, f"README's command table lacks `safetynet {path[0]}`"
        if len(path) > 1:
            assert any(re.search(rf"(?<![\w-]){re.escape(path[1])}(?![\w-])", r.split("` |")[0]) for r in row), \
                f"README's command table lacks `safetynet {' '.join(path)}`"
    for name in set(TESTED.values()):
        assert name in globals(), name


@pytest.mark.parametrize("path", command_paths(), ids=" ".join)
def test_help(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: safetynet {' '.join(path)}"), out[:200]


def test_a_wrong_argument_is_one_line_naming_the_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["warnings", "export", "--snapshot-date", SNAP])
    assert e.value.code == EXIT_USAGE
    line = one_line(capsys.readouterr().err)
    assert "the following arguments are required: --out" in line and "safetynet warnings export --help" in line


# ---- the demo and the store default ----------------------------------------------------------------------
def test_demo(demo, tmp_path):
    out = demo.demo.stdout
    assert f"store file://{demo.store}" in out  # the default store of every command
    assert "review database" in out and "warnings loaded" in out
    assert "open the review app: .venv/bin/safetynet serve   →" in out  # no --store: it is the default
    assert (demo.store / "_catalog" / "demo.json").exists()
    # the district's own street and community list, imported as any county's: the summary names its streets
    assert "imported the region list 430103 湖南省长沙市天心区: 14 streets/towns" in out
    assert (demo.store / "_catalog" / "regions" / "430103.json").exists()
    assert re.search(r"│ 430103001 │ 坡子街街道 +│", out), out[-3000:]
    assert not re.search(r"\bINFO\b", demo.demo.stderr)  # GX's info lines only with -v
    assert re.search(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} WARNING ", demo.demo.stderr, re.M), demo.demo.stderr[:500]
    # a store the demo did not make is never wiped
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    bad(demo.run("demo", "--persons", "700", "--store", str(foreign)), EXIT_USAGE, "the demo did not make")
    assert (foreign / "keep.txt").exists()


def test_a_second_demo_names_the_review_database_too(demo, capsys, monkeypatch):
    """The review-database line when the snapshot is already loaded (what a second `make demo` prints)."""
    from safetynet.cli import _console
    from safetynet.core.settings import Settings
    from safetynet.demo.cli import _demo_review

    monkeypatch.chdir(demo.cwd)
    s = Settings(store=str(demo.store), work_dir=demo.cwd / "var")
    _demo_review(s, _console())
    out = capsys.readouterr().out
    assert f"review database {demo.db}: snapshot {SNAP} already loaded" in out


def test_reading_commands_never_create_a_store(demo, tmp_path):
    nowhere = tmp_path / "nowhere"
    for args in (["warnings", "export", "--out", str(tmp_path / "w.csv")], ["snapshots", "list"],
                 ["snapshots", "prune", "--keep", "1"], ["feeds", "release", "housing.property"],
                 ["review", "load"], ["ingest", "--no-kafka"],
                 *([["store", "verify"]] if importlib.util.find_spec("safetynet.verify") else []),
                 ["run", "--snapshot-date", SNAP, "--no-kafka"], ["regions", "list"], ["regions", "show", "430103"],
                 ["rules", "backtest", "--policy", str(SHIPPED), "--snapshot-date", SNAP]):
        bad(demo.run(*args, "--store", str(nowhere)), EXIT_USAGE, f"no store at {nowhere}")
        assert not nowhere.exists(), args
    # the default, from a directory without one, is named where it was looked for
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "warnings", "export", "--out", "w.xlsx"], cwd=empty,
                       env=demo.env, capture_output=True, text=True, timeout=120)
    bad(r, EXIT_USAGE, f"no store at {empty / 'var' / 'store'}")
    assert list(empty.iterdir()) == []


# ---- feeds ------------------------------------------------------------------------------------------------
def test_feeds(demo):
    out = ok(demo.run("feeds"), "medical_insurance.claim", "dept.disabled_persons_federation.disability.v1")
    assert "…" not in out  # ids and topics are what users type
    topics = ok(demo.run("feeds", "--topics")).split()
    assert "hub.warnings.v1" in topics and "dept.medical_insurance.claim.v1" in topics
    assert {f["feed_id"] for f in json.loads(ok(demo.run("feeds", "--json")))} >= {"housing.property"}
    bad(demo.run("feeds", "--bogus"), EXIT_USAGE, "unrecognized arguments: --bogus")


def test_feeds_profile(demo, tmp_path):
    export = next((demo.store / "landing" / "housing" / "property").glob("*.csv"))
    out = tmp_path / "suggested.toml"
    ok(demo.run("feeds", "profile", str(export), "--feed", "housing.property", "--out", str(out)), "suggested mapping")
    assert out.exists()
    bad(demo.run("feeds", "profile", str(export), "--feed", "housing.proprety"), EXIT_USAGE,
        "unknown feed 'housing.proprety'; did you mean housing.property?")
    bad(demo.run("feeds", "profile", str(tmp_path / "missing.csv"), "--feed", "housing.property"), EXIT_USAGE,
        "no such file or folder")


def test_feeds_release(demo):
    ok(demo.run("feeds", "release", "housing.property"), "housing.property: released 0 held file(s)")
    bad(demo.run("feeds", "release", "no.such_feed"), EXIT_USAGE, "unknown feed")


# ---- check-config -----------------------------------------------------------------------------------------
def test_check_config(demo):
    out = ok(demo.run("check-config"), "store reachable")
    assert "s3://bucket[/prefix]" in out  # a help text, printed as it is (it once crashed as rich markup)
    r = demo.run("check-config", env={"SAFETYNET_STORE": "http://minio:9000/x"})
    bad(r, EXIT_USAGE, "SAFETYNET_STORE", "file:// or s3://")
    # a configuration problem (a mapping that does not load) is listed, and exits 2
    (demo.cwd / "mappings").mkdir(exist_ok=True)
    (demo.cwd / "mappings" / "housing.nothing.toml").write_text("", encoding="utf-8")
    try:
        r = demo.run("check-config")
        assert r.returncode == EXIT_USAGE and "no feed 'housing.nothing'" in r.stdout, r.stdout[-1000:]
    finally:
        (demo.cwd / "mappings" / "housing.nothing.toml").unlink()


# ---- generate, ingest, run --------------------------------------------------------------------------------
def test_generate(demo, tmp_path):
    ok(demo.run("generate", "--persons", "700", "--out", str(tmp_path / "gen")), "wrote landing files")
    assert any((tmp_path / "gen").rglob("*.csv"))
    bad(demo.run("generate", "--persons", "700"), EXIT_USAGE, "no Kafka to publish to")
    bad(demo.run("generate", "--persons", "300", "--out", str(tmp_path / "small")), EXIT_USAGE, "persons must be at least")


def test_ingest(demo):
    out = ok(demo.run("ingest", "--no-kafka"), "nothing was waiting")
    assert "接入汇总" in out
    bad(demo.run("ingest", "--feed", "housing.proprety"), EXIT_USAGE, "did you mean housing.property?")


@pytest.mark.slow
def test_ingest_of_the_landing_folder(tmp_path):
    """A typo'd feed folder, a note, an empty file: named and left alone; a delivery quarantined whole: exit 3."""
    store = tmp_path / "store"
    land = store / "landing"
    for d in ("housing/proprety", "medical_insurance/claim", "housing/property"):
        (land / d).mkdir(parents=True)
    (land / "housing/proprety/p.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (land / "medical_insurance/claim/notes.txt").write_text("Please take these, thanks.\nThe clerk\n", encoding="utf-8")
    (land / "housing/property/empty.csv").write_bytes(b"")
    (land / "medical_insurance/claim/bad.csv").write_text("x,y,z\n1,2,3\n4,5,6\n7,8,9\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "ingest", "--store", str(store), "--no-kafka"],
                       cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_UNHEALTHY, r.stderr[-2000:]
    err = " ".join(r.stderr.split())
    assert "landing/housing/proprety/: 1 file(s) in a folder that is no feed's — did you mean landing/housing/property/?; left in place" in err
    assert "medical_insurance.claim/notes.txt is not delimited data with the feed's columns" in err
    assert "housing.property/empty.csv is an empty file (0 bytes)" in err
    assert "lacks required column" not in err.split("empty.csv")[1][:80]  # not reported as missing columns
    assert "snapshot delivery empty.csv is empty" in err
    assert re.search(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} WARNING ", r.stderr, re.M)
    ledger = store / "_catalog" / "drops" / "medical_insurance" / "claim"
    assert (ledger / "bad.csv.json").exists() and not (ledger / "notes.txt.json").exists()
    assert (land / "housing/proprety/p.csv").exists() and not (store / "raw" / "housing" / "proprety").exists()


@pytest.mark.slow
def test_a_small_delivery_quarantined_whole_is_unhealthy(tmp_path):
    """One file of one record, unreadable as the feed (no contract column): fewer rejects than a
    rate verdict needs, but nothing usable arrived — exit 3, not 0."""
    store = tmp_path / "store"
    (store / "landing/medical_insurance/claim").mkdir(parents=True)
    (store / "landing/medical_insurance/claim/claims_20261030.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "safetynet.cli", "ingest", "--store", str(store), "--no-kafka"],
                       cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == EXIT_UNHEALTHY, r.stderr[-2000:]
    assert "every record of the delivery was quarantined (1 of 1, 1 file(s))" in " ".join(r.stderr.split())


def test_run(demo):
    runs = lambda: sorted((demo.store / "_catalog" / "ingest").glob("*.json"))  # noqa: E731
    before = runs()
    r = demo.run("run", "--snapshot-date", SNAP, "--no-kafka")
    out = ok(r, f"snapshot {SNAP}", "unchanged")  # the demo published these very inputs
    assert not re.search(r"\bINFO\b", r.stderr), r.stderr[-1000:]
    assert len(runs()) == len(before) + 1
    bad(demo.run("run", "--snapshot-date", "20261101"), EXIT_USAGE, "not a date YYYY-MM-DD", "write 2026-11-01")
    # a policy of another county: refused before anything is ingested, let alone built
    other = demo.cwd / "431302-2026.toml"
    ok(demo.run("policy", "init", "--region", "431302", "--year", "2026", "--urban-dibao", "700", "--rural-dibao",
                "560", "--out", str(other), "--force"))
    t0 = time.perf_counter()
    bad(demo.run("run", "--snapshot-date", SNAP, "--no-kafka", "--policy", str(other)), EXIT_USAGE,
        "policy 431302 does not match data of 430103")
    assert time.perf_counter() - t0 < 30
    assert len(runs()) == len(before) + 1  # no ingest ran
    bad(demo.run("run", "--snapshot-date", "2031-11-01", "--no-kafka"), EXIT_USAGE,
        "no policy parameters for region 430103 and year 2031")
    assert len(runs()) == len(before) + 1
    assert "published" in out


def test_a_blocked_gate_prints_its_report_once(demo, monkeypatch, capsys):
    from safetynet import pipeline

    class Report:
        def summary(self) -> str:
            return "质量门禁 REPORT-LINE"

    def blocked(*a, **k):
        raise pipeline.QualityGateFailed(f"quality gate failed for snapshot {SNAP} (1 critical failure)", Report())

    monkeypatch.setattr(pipeline, "build_snapshot", blocked)
    monkeypatch.chdir(demo.cwd)
    for k in [k for k in os.environ if k.startswith("SAFETYNET_")]:
        monkeypatch.delenv(k)
    rc = main(["run", "--snapshot-date", SNAP, "--no-kafka", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == EXIT_UNHEALTHY
    assert (cap.out + cap.err).count("REPORT-LINE") == 1
    assert "Data Docs:" in cap.out
    assert one_line(cap.err) == f"safetynet: not published: quality gate failed for snapshot {SNAP} (1 critical failure)"


def test_progress_is_drawn_on_a_terminal_only(demo):
    """stderr a terminal: the spinner of the ingest; stdout, a pipe, stays plain."""
    import threading

    master, slave = pty.openpty()
    seen = bytearray()

    def drain() -> None:  # read the terminal while the command runs: a full pty would block it
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the command closed its end
                return
            if not chunk:
                return
            seen.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        p = subprocess.Popen([sys.executable, "-m", "safetynet.cli", "ingest", "--no-kafka"], cwd=demo.cwd,
                             env={**demo.env, "COLUMNS": "120"}, stdout=subprocess.PIPE, stderr=slave,
                             stdin=subprocess.DEVNULL)
        os.close(slave)
        out, _ = p.communicate(timeout=300)
        reader.join(timeout=10)
    finally:
        os.close(master)
    seen = bytes(seen)
    assert p.returncode == EXIT_OK
    assert "接入 ingesting".encode() in seen or "清洗 cleaning".encode() in seen, seen[-500:]
    assert b"\x1b[" not in out  # no terminal codes in the piped output


# ---- published data ---------------------------------------------------------------------------------------
def test_warnings_export(demo, tmp_path):
    ok(demo.run("warnings", "export", "--out", str(tmp_path / "w.xlsx")), "warnings of snapshot")
    ok(demo.run("warnings", "export", "--snapshot-date", SNAP, "--out", str(tmp_path / "w.csv")))
    assert (tmp_path / "w.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    bad(demo.run("warnings", "export", "--out", str(tmp_path / "w.xls")), EXIT_USAGE, "export to .csv or .xlsx, not .xls")
    bad(demo.run("warnings", "export", "--snapshot-date", "2026-10-01", "--out", str(tmp_path / "x.csv")), EXIT_USAGE,
        "no published snapshot for 2026-10-01", SNAP)


def test_snapshots_list(demo):
    ok(demo.run("snapshots", "list"), SNAP, "●")
    assert json.loads(ok(demo.run("snapshots", "list", "--json")))[0]["snapshot_date"] == SNAP
    bad(demo.run("snapshots", "list", "--date", "2026-10-01"), EXIT_USAGE, "no published snapshot 2026-10-01")


def test_snapshots_prune(demo):
    ok(demo.run("snapshots", "prune", "--keep", "1", "--dry-run", "--db", str(demo.db)), "dry run: nothing deleted")
    bad(demo.run("snapshots", "prune", "--keep", "0"), EXIT_USAGE, "keep at least 1")
    bad(demo.run("snapshots", "prune", "--keep", "1", "--db", str(demo.cwd / "typo.db")), EXIT_USAGE,
        "no review database at")
    assert not (demo.cwd / "typo.db").exists()


# ---- policy and rules ---------------------------------------------------------------------------------------
def explanations(text: str) -> dict[str, str]:
    """parameter → its explanation: the comment lines right above it, the comment beside it and
    the comment lines continuing under it."""
    out: dict[str, str] = {}
    above: list[str] = []
    last = None
    for ln in text.splitlines():
        m = re.match(r"^(\w+) = .*?(?:#\s*(.*))?$", ln)
        if m:
            out[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
            above, last = [], m.group(1)
        elif ln.startswith("#"):
            above.append(ln[1:].strip())
        elif ln.strip().startswith("#") and last:
            out[last] = f"{out[last]} {ln.strip()[1:].strip()}"
        else:  # a blank line or a section header: the title's comments belong to no parameter
            above, last = [], None
    return out


def test_policy_init(demo, tmp_path):
    f = tmp_path / "431302-2026.toml"
    ok(demo.run("policy", "init", "--region", "431302", "--year", "2026", "--urban-dibao", "700", "--rural-dibao",
                "560", "--name", "娄底市娄星区", "--out", str(f)), "wrote")
    written, shipped = explanations(f.read_text("utf-8")), explanations(SHIPPED.read_text("utf-8"))
    params = [k for k in shipped if k not in ("region_code", "region_name", "year", "version", "source")]
    assert len(params) >= 25
    for k in params:
        assert written[k] and written[k] == shipped[k], k  # the same explanation in both
    bad(demo.run("policy", "init", "--region", "4313", "--year", "2026", "--urban-dibao", "700", "--rural-dibao",
                 "560", "--out", str(tmp_path / "x.toml")), EXIT_USAGE, "not a 6-digit county code")
    bad(demo.run("policy", "init", "--region", "431302", "--year", "2026", "--urban-dibao", "700", "--rural-dibao",
                 "560", "--out", str(f)), EXIT_USAGE, "exists (use --force to overwrite)")


def test_policy_show(demo, tmp_path):
    assert json.loads(ok(demo.run("policy", "show")))["version"] == "430103-2026.1"
    bad(demo.run("policy", "show", "--region", "431302"), EXIT_USAGE, "no policy parameters for region 431302")
    # a file without a parameter names it (and no default stands in for it)
    partial = tmp_path / "partial.toml"
    partial.write_text(re.sub(r"(?m)^death_grace_days = .*\n", "", SHIPPED.read_text("utf-8")), encoding="utf-8")
    bad(demo.run("policy", "show", "--file", str(partial)), EXIT_USAGE, "thresholds.death_grace_days: missing")


def test_rules_list(demo):
    ok(demo.run("rules", "list"), "medical_burden", "duplicate_enrolment")
    bad(demo.run("rules", "lst"), EXIT_USAGE, "invalid choice: 'lst'")


def test_rules_backtest(demo, tmp_path):
    ok(demo.run("rules", "backtest", "--no-progress", "--policy", str(SHIPPED), "--snapshot-date", SNAP, "--out",
                str(tmp_path)), "nothing was published")
    assert (tmp_path / f"backtest-{SNAP}.csv").exists()
    bad(demo.run("rules", "backtest", "--policy", str(SHIPPED), "--snapshot-date", "2026-10-01"), EXIT_USAGE,
        "no published snapshot for 2026-10-01")


# ---- region names -----------------------------------------------------------------------------------------
def test_regions_import(demo, tmp_path):
    f = tmp_path / "娄星区.csv"
    f.write_bytes("统计用区划代码,名称\n431302001000,乐坪街道\n431302001001,测试社区\n".encode("gbk"))
    ok(demo.run("regions", "import", str(f)), "imported the region list 431302 湖南省娄底市娄星区: 1 streets/towns, "
       "1 communities/villages from 娄星区.csv (gb18030")
    ok(demo.run("regions", "import", str(f)), "unchanged")
    f.write_bytes("431302001000,乐坪街道\n431302001001,\n".encode("gbk"))
    bad(demo.run("regions", "import", str(f)), EXIT_USAGE, "not imported — 1 problem: line 2: no name")
    bad(demo.run("regions", "import", str(tmp_path / "missing.csv")), EXIT_USAGE, "missing.csv: no such file")


def test_regions_list(demo):
    out = ok(demo.run("regions", "list"), "national reference: 2023年统计用区划代码", "430103", "湖南省长沙市天心区")
    assert "regions-430103.csv" in out  # the demo's own list
    assert json.loads(ok(demo.run("regions", "list", "--json")))["imported"][0]["county"] == "430103"
    bad(demo.run("regions", "list", "--bogus"), EXIT_USAGE, "unrecognized arguments: --bogus")


def test_regions_show(demo):
    ok(demo.run("regions", "show", "430103"), "430103 天心区 (county", "430103001 坡子街街道")
    ok(demo.run("regions", "show", "430103001000"), "湖南省 43 › 长沙市 4301 › 天心区 430103 › 坡子街街道 430103001",
       "430103001001 西牌楼社区")
    bad(demo.run("regions", "show", "429006001"), EXIT_USAGE, "no region 429006001", "天门市 429006001",
        "no list of county 429006 is imported")
    bad(demo.run("regions", "show", "43010"), EXIT_USAGE, "not a region code of 2, 4, 6, 9 or 12 digits")


# ---- the review app ---------------------------------------------------------------------------------------
def test_serve(demo):
    from safetynet.demo.broker import free_port

    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "safetynet.cli", "serve", "--port", str(port), "--poll-minutes", "0"],
                         cwd=demo.cwd, env=demo.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, status = time.monotonic() + 120, None
        while time.monotonic() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=2) as resp:
                    status = resp.status
                break
            except OSError:
                time.sleep(0.2)
        assert status == 200, p.stderr.read() if p.poll() is not None else "no answer"
    finally:
        p.terminate()
        p.wait(timeout=30)
    bad(demo.run("serve", "--port", "eighty"), EXIT_USAGE, "invalid int value: 'eighty'")
    # a store that is not there yet is waited for, never made
    nowhere = demo.cwd / "no_store_yet"
    p = subprocess.Popen([sys.executable, "-m", "safetynet.cli", "serve", "--port", str(free_port()), "--store",
                          str(nowhere), "--poll-minutes", "0"], cwd=demo.cwd, env=demo.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert f"no store at {nowhere} yet" in p.stderr.readline()
    finally:
        p.terminate()
        p.wait(timeout=30)
    assert not nowhere.exists()


def test_users(demo):
    db = os.path.relpath(demo.db, demo.cwd)  # a path, not a URL, and after the subcommand
    ok(demo.run("users", "add", "cli_admin", "--role", "admin", "--region", "", "--name", "命令行·管理员", "--db", db,
                env={"SAFETYNET_NEW_PASSWORD": PASSWORD}), "added cli_admin")
    out = ok(demo.run("users", "list", "--db", db))
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[0].split()[:3] == ["username", "role", "角色"]  # a header
    row = next(ln for ln in lines if ln.startswith("cli_admin "))
    demo_row = next(ln for ln in lines if ln.startswith("demo_community "))
    from rich.cells import cell_len

    # aligned columns, CJK counted two wide: the display name starts at the same column in every row
    assert cell_len(row[:row.index("命令行")]) == cell_len(demo_row[:demo_row.index("演示")])
    ok(demo.run("users", "--db", db, "disable", "cli_admin"), "disabled cli_admin")
    assert "DISABLED" in next(ln for ln in ok(demo.run("users", "list")).splitlines() if ln.startswith("cli_admin "))
    ok(demo.run("users", "enable", "cli_admin"), "enabled cli_admin")
    bad(demo.run("users", "add", "cli_two", "--role", "admin", "--region", ""), EXIT_USAGE, "SAFETYNET_NEW_PASSWORD")
    bad(demo.run("users", "add", "cli_two", "--role", "admin", "--region", "", env={"SAFETYNET_NEW_PASSWORD": "short"}),
        EXIT_USAGE, "密码至少")
    bad(demo.run("users", "list", "--db", "var/typo.db"), EXIT_USAGE, "no review database at")
    bad(demo.run("users", "disable", "nobody"), EXIT_USAGE, "没有用户 nobody")
    bad(demo.run("users", "enable", "nobody"), EXIT_USAGE, "没有用户 nobody")
    assert not (demo.cwd / "var" / "typo.db").exists()


def test_review_load(demo):
    ok(demo.run("review", "load"), f"snapshot {SNAP}: already loaded")
    ok(demo.run("review", "load", "--date", SNAP, "--db", str(demo.db)), "already loaded")
    bad(demo.run("review", "load", "--date", "2026-10-01"), EXIT_USAGE, "no published snapshot 2026-10-01")
    bad(demo.run("review", "load", "--date", "2026/11/01"), EXIT_USAGE, "not a date YYYY-MM-DD")


def test_review_migrate(demo, tmp_path):
    ok(demo.run("review", "migrate"), "review database at head")
    ok(demo.run("review", "migrate", "--db", str(tmp_path / "new" / "r.db")), "review database at head")
    bad(demo.run("review", "migrate", "--db", ""), EXIT_USAGE, "empty database path")


def test_review_verify_audit(demo):
    ok(demo.run("review", "verify-audit"), "audit chain: OK")
    bad(demo.run("review", "verify-audit", "--db", "elsewhere.db"), EXIT_USAGE, "no review database at")


# ---- conventions ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [["feeds", "--json"], ["rules", "list"], ["snapshots", "list"], ["users", "list"],
                                  ["review", "verify-audit"], ["policy", "show"]], ids=" ".join)
def test_a_reader_that_goes_away_ends_nothing_badly(demo, args):
    """`safetynet … | head`: the rest of the output is dropped quietly, the exit code is the command's."""
    p = subprocess.Popen([sys.executable, "-m", "safetynet.cli", *args], cwd=demo.cwd, env=demo.env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    p.stdout.close()  # like `| head -0`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == EXIT_OK, err
    assert "BrokenPipe" not in err and "Traceback" not in err and not err.strip(), err


def test_debug_and_verbose_after_the_subcommand(demo):
    r = demo.run("policy", "show", "--region", "431302", "--debug")
    assert r.returncode != EXIT_OK and "Traceback" in r.stderr and "PolicyError" in r.stderr
    r = demo.run("snapshots", "list", "-v")
    assert r.returncode == EXIT_OK


def test_one_date_form_everywhere(capsys):
    for args in (["run", "--snapshot-date"], ["snapshots", "list", "--date"], ["review", "load", "--date"],
                 ["warnings", "export", "--out", "x.csv", "--snapshot-date"]):
        with pytest.raises(SystemExit) as e:
            main([*args, "20261101"])
        assert e.value.code == EXIT_USAGE
        assert "not a date YYYY-MM-DD: '20261101' (write 2026-11-01)" in one_line(capsys.readouterr().err)
    assert build_parser().parse_args(["run", "--snapshot-date", SNAP]).snapshot_date == dt.date(2026, 11, 1)


def test_global_options_are_known_to_every_subcommand():
    for p in _subparsers(build_parser()):
        opts = {o for a in p._actions for o in a.option_strings}
        assert {"--debug", "-v"} <= opts, p.prog


# ---- store verify: last (safetynet/verify.py is another piece of work) ---------------------------------------
@pytest.mark.skipif(importlib.util.find_spec("safetynet.verify") is None,
                    reason="safetynet/verify.py (`store verify`) is not in this tree yet")
def test_store_verify(demo):
    ok(demo.run("store", "verify"))
    assert json.loads(ok(demo.run("store", "verify", "--json"))) is not None
    bad(demo.run("store", "verify", "--store", str(demo.cwd / "no_store")), EXIT_USAGE, "no store at")
