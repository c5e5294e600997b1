"""The monitoring DAG fanned out by county on Airflow's CeleryExecutor: two workers, Redis, PostgreSQL.

Nothing is run by hand in Airflow: in a fresh PostgreSQL database (`sn_celery_<random>`, dropped
afterwards; `SAFETYNET_TEST_POSTGRES`) the api-server, scheduler and dag-processor run as child
process groups, with two `airflow celery worker`s (distinct Celery hostnames, concurrency 1) on Redis
(`SAFETYNET_TEST_REDIS`, default `redis://127.0.0.1:6379/13`, a database for this test; a queue of
this run's own, whose keys are deleted afterwards; task results go to the metadata database). The test talks to the REST API.

A two-county synthetic city (`generate(..., counties=("430103", "430104"))`) is delivered (Kafka
events and file drops) and ingested with `safetynet ingest`; the store is copied. Then the
scheduler runs the `monitoring` DAG (its daily run, made when the DAG is unpaused) on the workers:
`counties` → one mapped `build_county` per county (each with its county's policy file) →
`build_snapshot` (gate, publish, Kafka). On the copy, `safetynet run` builds the same snapshot in one process.

What is proven:
- the two workers shared the run: each ran exactly one county task, and the two tasks' execution
  intervals overlapped. Which worker takes a task is Celery's choice (left alone, one worker may run
  both in turn), so the test makes the split certain: a cluster policy of this test's AIRFLOW_HOME
  (tests/airflow_county_rendezvous.py, copied in as `config/airflow_local_settings.py`; production code
  is untouched) makes each county task wait, before it builds, until every county task of the run has
  started (bounded: after 120 s it goes on and the assertions fail, saying so). Two county tasks running
  at once, with one task slot per worker, are on different workers;
- the two published snapshots are identical: every file's sha256 and the content hash;
- no staged part is left, and no ID number is in any Airflow log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from safetynet.demo.broker import free_port
from tests import airflow_county_rendezvous as rendezvous
from tests.airflow_env import ROOT, migrate
from tests.airflow_env import airflow_env as make_env
from tests.pg import temp_database
from tests.test_airflow_postgres import WAIT, Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.distributed]

PERSONS, SEED = 3000, 17
COUNTIES = ("430103", "430104")
REDIS = os.environ.get("SAFETYNET_TEST_REDIS", "redis://127.0.0.1:6379/13")
SAFETYNET = Path(sys.executable).parent / "safetynet"


@pytest.fixture(scope="module")
def broker():
    """This module's own broker: it publishes to the contract topics `dept.*.v1`, as test_dags and
    test_airflow_postgres do on theirs, and the scenarios must not see each other's events."""
    from safetynet.demo.broker import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="module")
def pg_url() -> str:
    url, drop = temp_database("sn_celery")
    yield url
    drop()


@pytest.fixture(scope="module")
def queue() -> str:
    """This run's Celery queue on the Redis database; its keys are deleted afterwards."""
    import redis

    name = f"sn-monitoring-{uuid.uuid4().hex[:8]}"
    try:
        r = redis.Redis.from_url(REDIS, socket_connect_timeout=5)
        r.ping()
    except redis.RedisError as e:
        pytest.fail(f"Redis is not reachable at {REDIS} (set SAFETYNET_TEST_REDIS): {e}")
    yield name
    for pattern in (f"*{name}*", "_kombu.binding_deadlines", "unacked*"):  # the queue and kombu's bookkeeping
        for key in r.scan_iter(match=pattern):
            r.delete(key)
    r.close()


@pytest.fixture(scope="module")
def city(tmp_path_factory, broker) -> dict[str, Any]:
    """The two-county city delivered and ingested into the Airflow stack's store."""
    from connectors.kafka_producer import ensure_topics, publish
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.demo.departments import drop_files
    from safetynet.demo.synth import emit, generate
    from schemas.registry import contracts, get

    home = tmp_path_factory.mktemp("airflow_celery")
    env = make_env(home, broker.bootstrap)  # the hub's settings; the Airflow ones are set by `stack`
    store = ObjectStore.from_settings(Settings(store=env["SAFETYNET_STORE"], progress=False))
    d = generate(persons=PERSONS, seed=SEED, counties=COUNTIES)
    em = emit(d)
    ensure_topics(broker.bootstrap, [c.topic for c in contracts().values()])
    for fid, msgs in em.events.items():
        publish(broker.bootstrap, get(fid).topic, msgs)
    drop_files(store, em.files)
    r = subprocess.run([str(SAFETYNET), "ingest"], env=env, cwd=home, capture_output=True, text=True, timeout=900,
                       check=False)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    single = home / "single-process-store"
    shutil.copytree(env["SAFETYNET_STORE"], single)
    return {"home": home, "env": env, "store": store, "single": single}


@pytest.fixture(scope="module")
def stack(city, pg_url, queue, broker):
    home, port = city["home"], free_port()
    db = pg_url.replace("postgresql+psycopg2://", "db+postgresql://")
    env = make_env(
        home, broker.bootstrap, pg_url,
        AIRFLOW__CORE__EXECUTOR="CeleryExecutor", AIRFLOW__CORE__PARALLELISM="4",
        AIRFLOW__CELERY__BROKER_URL=REDIS, AIRFLOW__CELERY__RESULT_BACKEND=db,
        AIRFLOW__OPERATORS__DEFAULT_QUEUE=queue, AIRFLOW__CELERY__WORKER_CONCURRENCY="1",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32), AIRFLOW__API__WORKERS="1",
        AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
        AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
        # the county tasks meet before they build: the cluster policy below switched on (test only)
        **{rendezvous.ENV: str(home / "county-rendezvous")},
    )
    (home / "config").mkdir(exist_ok=True)  # AIRFLOW_HOME/config is on every Airflow process's sys.path
    shutil.copyfile(Path(rendezvous.__file__), home / "config" / "airflow_local_settings.py")
    env["SAFETYNET_KAFKA_GROUP"] = city["env"]["SAFETYNET_KAFKA_GROUP"]
    migrate(env, home)
    s = Stack(env, home, port)
    try:
        s.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port))
        s.start("dag-processor", "dag-processor")
        s.start("scheduler", "scheduler")
        for i in (1, 2):  # no log server (it would listen on every interface): the logs are local files here
            s.start(f"worker{i}", "celery", "worker", "--queues", queue, "--concurrency", "1", "--skip-serve-logs",
                    "--celery-hostname", f"sn-worker{i}@%h", "--without-mingle", "--without-gossip")

        s.wait_dags({"monitoring"})
        # both workers consuming before the run is made (a worker still starting would leave both county
        # tasks to the other)
        for i in (1, 2):
            s.wait(f"worker{i} ready", lambda i=i: re.search(rf"sn-worker{i}@\S+ ready\.",
                                                             (home / f"worker{i}.log").read_text(errors="replace")),
                   timeout=WAIT)
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def runs(stack, city) -> dict[str, Any]:
    import time

    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.publish import snapshot

    out: dict[str, Any] = {"seconds": {}}
    t0 = time.monotonic()
    stack.api("PATCH", "/dags/monitoring", {"is_paused": False})  # the scheduler makes its daily run
    run = stack.wait("a scheduled monitoring run", lambda: next(iter(stack.runs("monitoring")), None), timeout=WAIT)
    out["run"] = stack.wait_run_done("monitoring", run["dag_run_id"], timeout=WAIT)
    stack.api("PATCH", "/dags/monitoring", {"is_paused": True})
    out["seconds"]["monitoring on 2 Celery workers"] = round(time.monotonic() - t0)
    tis = stack.api("GET", f"/dags/monitoring/dagRuns/{run['dag_run_id']}/taskInstances?limit=100")["task_instances"]
    out["tis"] = tis
    out["xcom"] = stack.xcom("monitoring", run["dag_run_id"], "build_snapshot")
    day = dt.date.fromisoformat(out["xcom"]["snapshot_date"])
    out["celery"] = snapshot.manifest(city["store"], day)
    met = rendezvous.run_dir(stack.env[rendezvous.ENV], run["dag_run_id"])  # what each county's rendezvous saw
    out["rendezvous"] = {c: (met / f"{c}.outcome").read_text() if (met / f"{c}.outcome").exists() else None
                         for c in COUNTIES}
    out["workers"] = {}  # which worker executed which county task of the run (its own log says)
    for name in ("worker1", "worker2"):
        text = (stack.home / f"{name}.log").read_text(errors="replace")
        out["workers"][name] = sorted(int(m) for m in re.findall(
            rf"Executing workload in Celery:.*task_id='build_county'.*run_id='{re.escape(run['dag_run_id'])}'"
            r".*?map_index=(\d+)", text))

    t1 = time.monotonic()
    env = {**city["env"], "SAFETYNET_STORE": str(city["single"])}
    env.pop("SAFETYNET_KAFKA_BOOTSTRAP")  # the same build; the notice and warnings need not be produced twice
    r = subprocess.run([str(SAFETYNET), "run", "--snapshot-date", day.isoformat(), "--no-kafka"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=900, check=False)
    out["cli"] = r
    out["seconds"]["safetynet run (one process)"] = round(time.monotonic() - t1)
    single = ObjectStore.from_settings(Settings(store=str(city["single"]), progress=False))
    out["single"] = snapshot.manifest(single, day) if r.returncode == 0 else None
    print("distributed steps (s):", json.dumps(out["seconds"]))
    return out


def test_the_county_tasks_ran_on_the_celery_workers(runs):
    assert runs["run"]["state"] == "success", runs["run"]
    tis = runs["tis"]
    mapped = [t for t in tis if t["task_id"] == "build_county"]
    assert sorted(t["map_index"] for t in mapped) == [0, 1]
    assert {t["state"] for t in tis} == {"success"}
    assert sorted(t.get("rendered_map_index") or "" for t in mapped) == list(COUNTIES)
    print("county tasks per Celery worker:", runs["workers"], "rendezvous:", runs["rendezvous"])
    # each county task waited, before building, until both had started (the test's rendezvous)
    assert all(o and o.startswith("met") for o in runs["rendezvous"].values()), \
        f"the county tasks did not meet (both running at once): {runs['rendezvous']}, workers {runs['workers']}"
    # so their execution intervals overlap: each started before the other ended
    span = {t["rendered_map_index"]: tuple(dt.datetime.fromisoformat(t[k]) for k in ("start_date", "end_date"))
            for t in mapped}
    assert max(a for a, _ in span.values()) < min(b for _, b in span.values()), span
    # both workers share this machine's hostname (the task instances' `hostname`): their logs tell them apart.
    # Two county tasks running at once, with one task slot per worker: one county task on each worker
    assert sorted(runs["workers"]["worker1"] + runs["workers"]["worker2"]) == [0, 1], runs["workers"]
    assert [len(runs["workers"]["worker1"]), len(runs["workers"]["worker2"])] == [1, 1], runs["workers"]
    x = runs["xcom"]
    assert x["counties"] == list(COUNTIES) and x["publish"] == "published" and x["quality_ok"] is True
    assert [p["county"] for p in x["parts"]] == list(COUNTIES)
    assert x["policy_version"] == "430103-2026.1+430104-2026.1"
    assert x["persons"] == PERSONS


def test_the_celery_snapshot_equals_the_single_process_build(runs):
    r = runs["cli"]
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    a, b = runs["celery"], runs["single"]
    assert {p: f["sha256"] for p, f in a["files"].items()} == {p: f["sha256"] for p, f in b["files"].items()}
    assert a["content_sha256"] == b["content_sha256"]
    assert (a["version"], b["version"]) == (1, 1)


def test_no_staged_part_is_left_and_no_id_number_in_the_worker_logs(stack, city, runs):
    from schemas import idno

    assert city["store"].list("_staging/") == []
    leaks = []
    for f in [*stack.logs, *(p for p in (stack.home / "logs").rglob("*") if p.is_file())]:
        leaks += [f"{f.name}: {m[:6]}…" for m in re.findall(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])",
                                                              f.read_text(errors="replace")) if idno.is_valid(m)]
    assert leaks == []
