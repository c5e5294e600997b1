"""Airflow as production runs it: PostgreSQL metadata, LocalExecutor, a scheduler making the runs.

`test_dags.py` runs the DAGs in-process (`dag.test()`); here nothing is run by hand. In a fresh
PostgreSQL database on the machine's server (`SAFETYNET_TEST_POSTGRES`, default
`postgresql://postgres@127.0.0.1:5432/postgres`; a database `sn_airflow_<random>` is created and
dropped), the api-server, scheduler and dag-processor run as child process groups, and the test
only talks to the REST API (unpause, trigger) and reads the store.

The scenario, in order:
1. `ingest` is unpaused: the scheduler makes its cron run (run_type `scheduled`). One feed's
   events were delivered three times over (a department redelivering) in small batches, so its
   task runs long; its task process is SIGKILLed mid-run, after some batches are durable.
   Airflow marks the attempt failed and retries it; the retry finishes the feed.
   → no loss, no duplicate: raw + quarantine rows == everything delivered, clean == truth.
2. `monitoring` is unpaused: the scheduler makes its daily cron run; it publishes a snapshot.
3. A feed withheld so far arrives; a manual `ingest` run (REST API) ingests it, its Asset event
   makes the scheduler create an asset-triggered `monitoring` run, which publishes too.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from safetynet.demo.broker import free_port
from tests.airflow_env import AIRFLOW, migrate
from tests.airflow_env import airflow_env as make_env
from tests.pg import temp_database

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PERSONS, SEED = 2000, 11
VICTIM = "human_resources.employment"  # the largest feed: its task is killed mid-run
REDELIVERIES = 3  # the victim's events are published this many times
LATE = "public_security.vehicle"  # withheld until step 3
PICK = "feeds_with_work"  # the ingest DAG's branch task
ID18 = r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])"
# every wait is on a state (a run, a task, a file), never a fixed sleep; the bound only stops a hung
# stack, so it is generous: the whole suite took 24 min on a loaded machine
WAIT = float(os.environ.get("SAFETYNET_TEST_WAIT_S", "1200"))


# ==== PostgreSQL and the Airflow processes ====================================================
@pytest.fixture(scope="module")
def pg_url() -> str:
    """A fresh, empty database for Airflow's metadata; dropped afterwards."""
    url, drop = temp_database("sn_airflow")
    yield url
    drop()


class Stack:
    """api-server, scheduler and dag-processor, each its own process group, logs under AIRFLOW_HOME."""

    def __init__(self, env: dict[str, str], home: Path, port: int):
        self.env, self.home, self.port = env, home, port
        self.base = f"http://127.0.0.1:{port}/api/v2"
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list[Path] = []

    def start(self, name: str, *args: str) -> None:
        log = self.home / f"{name}.log"
        self.logs.append(log)
        with open(log, "ab") as out:
            self.procs[name] = subprocess.Popen([str(AIRFLOW), *args], env=self.env, cwd=self.home, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise AssertionError(f"airflow {name} exited with {p.returncode}:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 40) -> str:
        lines = (self.home / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        for p in self.procs.values():  # the whole group: LocalExecutor workers, supervisors, gunicorn/uvicorn
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)

    # -- the REST API (SimpleAuthManager in all-admins mode: test only; production uses FAB) --
    def api(self, method: str, path: str, body: dict | None = None) -> Any:
        req = urllib.request.Request(self.base + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from e

    def runs(self, dag_id: str) -> list[dict]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns?order_by=run_after&limit=100")["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {t["task_id"]: t for t in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
                               "?deserialize=true")["value"]

    def wait(self, what: str, cond, timeout: float, every: float = 1.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            got = cond()
            if got:
                return got
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\nscheduler:\n"
                             f"{self.tail('scheduler')}")

    def wait_dags(self, dag_ids: set[str]) -> None:
        """Until the api-server answers and lists every one of `dag_ids` (parsed by the dag-processor)."""

        def ready() -> bool:
            try:
                return {d["dag_id"] for d in self.api("GET", "/dags")["dags"]} >= dag_ids
            except (AssertionError, OSError):
                return False

        self.wait("the api-server and the parsed DAGs", ready, timeout=WAIT, every=2)

    def wait_run_done(self, dag_id: str, run_id: str, timeout: float) -> dict:
        def done() -> dict | None:
            (r,) = [r for r in self.runs(dag_id) if r["dag_run_id"] == run_id]
            return r if r["state"] in ("success", "failed") else None

        return self.wait(f"{dag_id} run {run_id}", done, timeout, every=2)


@pytest.fixture(scope="module")
def broker():
    """This module's own broker: it publishes to the contract topics `dept.*.v1`, as test_dags does
    on the session broker, and the two scenarios must not see each other's events."""
    from safetynet.demo.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_url, broker):
    home = tmp_path_factory.mktemp("airflow_pg")
    port = free_port()
    env = make_env(
        home, broker.bootstrap, pg_url,
        AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32), AIRFLOW__API__WORKERS="1",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        # the victim's task must take long enough to be killed after some batches are durable
        SAFETYNET_BATCH_MAX_RECORDS="400", SAFETYNET_WRITER_PROCESS_MIN_RECORDS="200",
    )
    migrate(env, home)
    s = Stack(env, home, port)
    try:
        s.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        s.start("dag-processor", "dag-processor")
        s.start("scheduler", "scheduler")

        s.wait_dags({"ingest", "monitoring"})
        yield s
    finally:
        s.stop()


# ==== the scenario ============================================================================
def _task_process(stack: Stack, ti_id: str) -> psutil.Process | None:
    """The process running task instance `ti_id`: a descendant of *our* scheduler (LocalExecutor
    worker → supervisor → task process), titled `airflow worker -- <ti id>` by the task runner."""
    try:
        procs = psutil.Process(stack.procs["scheduler"].pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    for p in procs:
        try:
            if " ".join(p.cmdline()).startswith(f"airflow worker -- {ti_id}"):
                return p
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.fixture(scope="module")
def scenario(stack, broker) -> dict[str, Any]:
    from connectors.kafka_producer import ensure_topics, publish
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.demo.departments import drop_files
    from safetynet.demo.synth import emit, generate
    from schemas.registry import contracts, get

    store = ObjectStore.from_settings(Settings(store=stack.env["SAFETYNET_STORE"], progress=False))
    d = generate(persons=PERSONS, seed=SEED)
    em = emit(d)
    ensure_topics(broker.bootstrap, [c.topic for c in contracts().values()])

    def deliver(feeds: set[str]) -> None:
        for fid, msgs in em.events.items():
            if fid in feeds:
                for _ in range(REDELIVERIES if fid == VICTIM else 1):
                    publish(broker.bootstrap, get(fid).topic, msgs)
        drop_files(store, {p: b for p, b in em.files.items() if ".".join(p.split("/")[:2]) in feeds})

    out: dict[str, Any] = {"em": em, "store": store, "seconds": {}}
    t0 = time.monotonic()
    deliver(set(contracts()) - {LATE})

    # 1. the scheduler makes the ingest run; the victim's task is killed mid-run and retried
    stack.api("PATCH", "/dags/ingest", {"is_paused": False})
    run = stack.wait("a scheduled ingest run", lambda: next(iter(stack.runs("ingest")), None), timeout=WAIT)
    raw_prefix = f"raw/{get(VICTIM).prefix}/"

    ti_id = stack.wait(f"the {VICTIM} task instance", lambda: stack.tasks("ingest", run["dag_run_id"]).get(VICTIM),
                       timeout=WAIT)["id"]

    polls = iter(range(10**9))

    def durable_batches_while_running() -> psutil.Process | None:
        w = _task_process(stack, ti_id)
        if w is None and next(polls) % 40 == 39:  # a state, not a clock: the task must still be running
            state = stack.tasks("ingest", run["dag_run_id"])[VICTIM]["state"]
            assert state not in ("success", "failed"), f"{VICTIM} ended ({state}) before 5 batches were seen durable"
        return w if w is not None and len(store.list(raw_prefix, ".parquet")) >= 5 else None

    worker = stack.wait(f"{VICTIM} running with ≥ 5 durable batches", durable_batches_while_running,
                        timeout=WAIT, every=0.05)
    out["files_at_kill"] = len(store.list(raw_prefix, ".parquet"))
    worker.send_signal(signal.SIGKILL)
    out["killed_pid"] = worker.pid
    out["ingest"] = stack.wait_run_done("ingest", run["dag_run_id"], timeout=WAIT)
    out["ingest_tasks"] = stack.tasks("ingest", run["dag_run_id"])
    out["victim_xcom"] = stack.xcom("ingest", run["dag_run_id"], VICTIM)
    stack.api("PATCH", "/dags/ingest", {"is_paused": True})  # no cron run in between the steps below
    out["seconds"]["ingest (scheduled, kill + retry)"] = round(time.monotonic() - t0)

    # 2. the scheduler makes monitoring's daily run
    t1 = time.monotonic()
    stack.api("PATCH", "/dags/monitoring", {"is_paused": False})
    first = stack.wait("a scheduled monitoring run", lambda: next(iter(stack.runs("monitoring")), None), WAIT)
    out["monitoring_cron"] = stack.wait_run_done("monitoring", first["dag_run_id"], timeout=WAIT)
    out["monitoring_cron_xcom"] = stack.xcom("monitoring", first["dag_run_id"], "build_snapshot")
    out["seconds"]["monitoring (scheduled)"] = round(time.monotonic() - t1)

    # 3. the late feed arrives; a manual ingest run; its Asset event makes a monitoring run
    t2 = time.monotonic()
    deliver({LATE})
    stack.api("PATCH", "/dags/ingest", {"is_paused": False})
    manual = stack.api("POST", "/dags/ingest/dagRuns", {"logical_date": None})
    out["ingest_manual"] = stack.wait_run_done("ingest", manual["dag_run_id"], timeout=WAIT)
    # unpausing may also have made a cron run (a 10-minute tick passed), before or after the manual one
    # (max_active_runs=1): every run the DAG has is waited out, also one a tick makes while pausing
    for _ in range(3):
        stack.wait("every ingest run done", lambda: all(r["state"] in ("success", "failed")
                                                        for r in stack.runs("ingest")), timeout=WAIT, every=2)
        stack.api("PATCH", "/dags/ingest", {"is_paused": True})
        if all(r["state"] in ("success", "failed") for r in stack.runs("ingest")):
            break
        stack.api("PATCH", "/dags/ingest", {"is_paused": False})
    out["ingest_late_runs"] = {r["dag_run_id"]: (r["run_type"], stack.tasks("ingest", r["dag_run_id"]))
                               for r in stack.runs("ingest") if r["dag_run_id"] != run["dag_run_id"]}

    def asset_run() -> dict | None:
        return next((r for r in stack.runs("monitoring") if r["run_type"] == "asset_triggered"), None)

    triggered = stack.wait("an asset-triggered monitoring run", asset_run, timeout=WAIT)
    out["monitoring_asset"] = stack.wait_run_done("monitoring", triggered["dag_run_id"], timeout=WAIT)
    out["monitoring_asset_xcom"] = stack.xcom("monitoring", triggered["dag_run_id"], "build_snapshot")
    out["seconds"]["late feed: manual ingest + asset-triggered monitoring"] = round(time.monotonic() - t2)
    out["pg_runs"] = _pg_dag_runs(stack.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    print("scheduler scenario (s):", json.dumps(out["seconds"], ensure_ascii=False))
    return out


def _pg_dag_runs(url: str) -> list[tuple]:
    """The run records as PostgreSQL holds them (not through Airflow)."""
    import psycopg2

    with psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://")) as conn, conn.cursor() as cur:
        cur.execute("SELECT dag_id, run_type, state FROM dag_run ORDER BY id")
        return cur.fetchall()


# ==== tests ====================================================================================
def test_the_scheduler_made_the_runs_and_postgres_holds_them(scenario):
    assert scenario["ingest"]["run_type"] == "scheduled" and scenario["ingest"]["state"] == "success"
    assert scenario["monitoring_cron"]["run_type"] == "scheduled"
    assert scenario["ingest_manual"]["run_type"] == "manual"
    assert scenario["monitoring_asset"]["run_type"] == "asset_triggered"
    runs = scenario["pg_runs"]
    assert ("ingest", "scheduled", "success") in runs and ("monitoring", "asset_triggered", "success") in runs
    assert all(state == "success" for _, _, state in runs), runs


def test_the_killed_ingest_task_was_retried_with_no_loss_and_no_duplicate(scenario):
    from schemas.registry import get

    tasks, em, store = scenario["ingest_tasks"], scenario["em"], scenario["store"]
    assert tasks[VICTIM]["try_number"] == 2 and tasks[VICTIM]["state"] == "success", tasks[VICTIM]
    assert {t["state"] for k, t in tasks.items() if k != LATE} == {"success"}
    assert scenario["files_at_kill"] >= 5
    c = get(VICTIM)
    # raw + quarantine hold every delivered record once: the first attempt's durable batches were
    # committed, its in-flight batch was re-read by the retry and rewritten under the same name
    stored = sum(store.read_parquet(e.path).num_rows for zone in ("raw", "quarantine")
                 for e in store.list(f"{zone}/{c.prefix}/", ".parquet"))
    delivered = em.expected[VICTIM].input + (REDELIVERIES - 1) * len(em.events[VICTIM])
    assert stored == delivered
    counts = json.loads(store.read_bytes(f"_catalog/clean/{c.prefix}.json"))["counts"]
    assert counts["rows"] == em.clean_rows[VICTIM]
    x = scenario["victim_xcom"]  # the retry's own report: it read what the killed attempt had not committed
    assert 0 < x["input"] < delivered and x["cleaned"] and x["clean_reconciles"]


def test_clean_state_equals_the_truth_after_the_scheduled_runs(scenario):
    from safetynet.intake import clean
    from schemas.registry import contracts

    em, store = scenario["em"], scenario["store"]
    for fid, c in contracts().items():
        got = clean.read_clean(store, c)
        assert got.num_rows == em.clean_rows[fid], fid


def test_both_monitoring_runs_published_their_snapshot(scenario):
    """The daily run (late feed missing) and the asset-triggered one (late feed in) each published
    their own version: both still exist, each consistent with its manifest, the pointer at the later."""
    from safetynet.publish import snapshot

    store = scenario["store"]
    cron, asset = scenario["monitoring_cron_xcom"], scenario["monitoring_asset_xcom"]
    assert cron["persons"] == asset["persons"] == PERSONS
    assert LATE in cron["stale_inputs"] and asset["stale_inputs"] == []
    for x in (cron, asset):
        day = dt_date(x["snapshot_date"])
        assert x["publish"] == "published", x
        m = snapshot.manifest(store, day, x["version"])  # this run's own version, not overwritten
        assert x["manifest"] == f"_catalog/snapshots/{day}/v{x['version']}.json"
        assert m["datasets"]["warnings"]["rows"] == x["warnings"] > 0
        assert snapshot.read(store, "warnings", day, version=x["version"]).num_rows == x["warnings"]
        assert snapshot.read(store, "monitoring/person", day, version=x["version"]).num_rows == PERSONS
    assert snapshot.manifest(store, dt_date(asset["snapshot_date"]), asset["version"])["inputs"][LATE]["rows"] > 0
    assert snapshot.manifest(store, dt_date(cron["snapshot_date"]), cron["version"])["inputs"][LATE]["rows"] == 0
    if cron["snapshot_date"] == asset["snapshot_date"]:  # the usual case: one day, two versions
        day = dt_date(asset["snapshot_date"])
        assert asset["version"] > cron["version"]
        assert snapshot.pointer(store, day)["version"] == max(snapshot.versions(store, day)) == asset["version"]
    # after the first run only the late feed's task changed anything, in exactly one run
    late = scenario["ingest_late_runs"]
    assert "manual" in {rt for rt, _ in late.values()}
    assert sorted(t[LATE]["state"] for _, t in late.values()) == ["skipped"] * (len(late) - 1) + ["success"]
    assert {s["state"] for _, t in late.values() for k, s in t.items() if k not in (LATE, PICK)} == {"skipped"}
    assert {t[PICK]["state"] for _, t in late.values()} == {"success"}  # the branch: every feed on these runs


def test_no_unmasked_id_number_in_any_log(stack, scenario):
    import re

    from schemas import idno

    files = list(stack.logs) + [p for p in (stack.home / "logs").rglob("*") if p.is_file()]
    leaks = [f"{f.name}: {m[:6]}…" for f in files for m in re.findall(ID18, f.read_text(errors="replace"))
             if idno.is_valid(m)]
    assert len(files) > 3 and leaks == []


def dt_date(s: str):
    import datetime as dt

    return dt.date.fromisoformat(s)
