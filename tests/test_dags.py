"""The Airflow DAGs (`dags/`) against real Airflow: DagBag, the orchestration graph, end-to-end runs.

Airflow runs in subprocesses with its own `AIRFLOW_HOME` (SQLite metadata, `airflow db migrate`
once), so this test process never imports Airflow or reads a user's `~/airflow`. The first
ingest run goes through the real CLI (`airflow dags test ingest <date>`); the others through a
*driver* subprocess that loads the DagBag once and runs `dag.test()` — the function the CLI
calls — on request, answering over a pipe (Airflow's start-up costs ~15 s per process here).

The district: a small synthetic one, its events published to the session's embedded broker
(this module owns the contract topic names `dept.*.v1` on it) and its files dropped into the
landing zone. Scenario, in order: a feed is missing (`public_security.vehicle`: no events, no
files) → ingest, freshness, monitoring for a past date, monitoring again (identical bytes and
warning ids) → the feed arrives → ingest again (only that feed changes; the rest are skipped
and emit no asset event) → freshness clean.

`SNAPSHOT_UPDATE=1` rewrites `tests/snapshots/orchestration_graph.json` from the DAGs. The
snapshot holds each per-feed part (an ingest task, a clean Asset) once, as a template with
`<feed_id>`, `<department>/<feed>` and `<topic>` placeholders; the test checks that those parts
exist for exactly the registry's feeds, so adding a feed changes neither this file nor the snapshot.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.airflow_env import AIRFLOW, ROOT, migrate
from tests.airflow_env import airflow_env as make_env

pytestmark = pytest.mark.integration

SNAPSHOT_FILE = Path(__file__).parent / "snapshots" / "orchestration_graph.json"
SNAPSHOT_DATE = "2026-11-01"
MISSING = "public_security.vehicle"  # withheld in the first part of the scenario
PICK = "feeds_with_work"  # the ingest DAG's branch task
PERSONS, SEED = 2000, 11
ID18 = re.compile(r"(?<![0-9])[0-9]{17}[0-9Xx](?![0-9])")


# ==== the driver (runs in the Airflow subprocess) ==============================================
def _asset_expr(a: Any) -> Any:
    from airflow.sdk import Asset, AssetAll, AssetAny

    if isinstance(a, Asset):
        return f"{a.name} <{a.uri}>"
    if isinstance(a, AssetAny):
        return {"any": [_asset_expr(x) for x in a.objects]}
    if isinstance(a, AssetAll):
        return {"all": [_asset_expr(x) for x in a.objects]}
    return repr(a)


def _timetable(tt: Any) -> dict:
    out: dict[str, Any] = {"timetable": type(tt).__name__}
    if hasattr(tt, "expression"):
        out.update(cron=tt.expression, timezone=str(tt.timezone))
    if getattr(tt, "asset_condition", None) is not None:
        out["assets"] = _asset_expr(tt.asset_condition)
    if getattr(tt, "timetable", None) is not None:
        out["time"] = _timetable(tt.timetable)
    return out


def _graph(bag: Any) -> dict:
    """DAG ids, tasks, Assets in/out, schedules and retry policy: what a wiring review must see."""
    out = {}
    for dag_id, d in sorted(bag.dags.items()):
        tasks = {}
        for t in sorted(d.tasks, key=lambda t: t.task_id):
            tasks[t.task_id] = {
                "operator": type(t).__name__, "args": [str(a) for a in getattr(t, "op_args", [])],
                "inlets": [_asset_expr(a) for a in t.inlets], "outlets": [_asset_expr(a) for a in t.outlets],
                "upstream": sorted(t.upstream_task_ids), "retries": t.retries, "retry_delay": str(t.retry_delay),
                "retry_exponential_backoff": bool(t.retry_exponential_backoff),
                "max_retry_delay": str(t.max_retry_delay), "execution_timeout": str(t.execution_timeout),
            }
        out[dag_id] = {"file": Path(d.fileloc).name, "schedule": _timetable(d.timetable),
                       "max_active_runs": d.max_active_runs, "max_active_tasks": d.max_active_tasks,
                       "catchup": d.catchup, "tags": sorted(d.tags), "tasks": tasks}
    return out


def _assets(cond: Any) -> list[Any]:
    if cond is None:
        return []
    if hasattr(cond, "objects"):
        return [a for o in cond.objects for a in _assets(o)]
    return [cond]


def _watchers(bag: Any) -> list[dict]:
    found = []
    for dag_id, d in sorted(bag.dags.items()):
        for asset in _assets(getattr(d.timetable, "asset_condition", None)):
            for w in getattr(asset, "watchers", []):
                classpath, kwargs = w.trigger.serialize()
                found.append({"dag_id": dag_id, "asset": asset.name, "uri": asset.uri, "name": w.name,
                              "classpath": classpath, "kwargs": kwargs})
    return found


def _v(x: Any) -> Any:
    return getattr(x, "value", x)  # an enum's value (states)


def _run_info(dag_id: str, run_id: str) -> dict:
    from airflow import settings
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    with settings.Session() as s:
        dr = s.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        tis = s.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)).all()
        xs = s.scalars(XComModel.get_many(run_id=run_id, dag_ids=dag_id, key="return_value")).all()
        events = s.execute(select(AssetModel.uri, AssetEvent.source_task_id).join(AssetEvent.asset).where(
            AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == run_id)).all()
        return {"dag_id": dag_id, "run_id": run_id, "state": _v(dr.state),
                "logical_date": dr.logical_date.isoformat() if dr.logical_date else None,
                "tasks": {ti.task_id: _v(ti.state) for ti in tis},
                "tries": {ti.task_id: ti.try_number for ti in tis},
                "xcom": {x.task_id: XComModel.deserialize_value(x) for x in xs},
                "asset_events": sorted([uri, task] for uri, task in events)}


def _latest_run(dag_id: str, logical_date: str) -> str:
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    with settings.Session() as s:
        return s.scalars(select(DagRun.run_id).where(
            DagRun.dag_id == dag_id, DagRun.logical_date == dt.datetime.fromisoformat(logical_date))).one()


def _watch(bag: Any, timeout_s: float) -> dict:
    """Run the ingest DAG's Kafka watcher trigger as the triggerer would, until its first event."""
    import asyncio

    from airflow.sdk.module_loading import import_string

    (w,) = [w for w in _watchers(bag) if w["dag_id"] == "ingest"]
    trigger = import_string(w["classpath"])(**w["kwargs"])

    async def first() -> dict:
        try:
            async for ev in trigger.run():
                return ev.payload
        finally:
            await trigger.cleanup()
        raise AssertionError("the trigger ended without an event")

    return {"payload": asyncio.run(asyncio.wait_for(first(), timeout_s))}


def _driver() -> None:
    """Entry point of the driver subprocess: commands (JSON lines) on stdin, replies on fd $SN_DRIVER_FD."""
    import traceback

    out = os.fdopen(int(os.environ["SN_DRIVER_FD"]), "w", buffering=1)

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj, default=str, ensure_ascii=False) + "\n")
        out.flush()

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    try:
        import airflow.providers.apache.kafka  # noqa: F401

        provider = True
    except ImportError:
        provider = False
    reply({"import_errors": bag.import_errors, "warnings": {k: list(v) for k, v in bag.captured_warnings.items()},
           "dag_ids": sorted(bag.dags), "graph": _graph(bag), "watchers": _watchers(bag), "kafka_provider": provider})
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["op"] == "test":
                ld = cmd["logical_date"]  # None: a run without logical date, as an asset-triggered one
                dr = bag.dags[cmd["dag_id"]].test(logical_date=dt.datetime.fromisoformat(ld) if ld else None)
                reply(_run_info(cmd["dag_id"], dr.run_id))
            elif cmd["op"] == "inspect":
                reply(_run_info(cmd["dag_id"], _latest_run(cmd["dag_id"], cmd["logical_date"])))
            elif cmd["op"] == "watch":
                reply(_watch(bag, cmd.get("timeout_s", 60)))
            else:
                reply({"error": f"unknown op {cmd['op']!r}"})
        except Exception:
            reply({"error": traceback.format_exc()})


# ==== fixtures (this process) ==================================================================
class Driver:
    def __init__(self, env: dict[str, str], log: Path):
        r, w = os.pipe()
        self.log = log
        self._log = open(log, "ab")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from tests.test_dags import _driver; _driver()"], cwd=ROOT,
            env={**env, "SN_DRIVER_FD": str(w)}, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT,
            pass_fds=(w,), text=True, start_new_session=True)
        os.close(w)
        self._replies = os.fdopen(r, "r")
        self.hello = self._read()

    def _read(self) -> dict:
        line = self._replies.readline()
        if not line:
            raise RuntimeError(f"the Airflow driver exited (code {self.proc.poll()}); log:\n{self.tail()}")
        obj = json.loads(line)
        if "error" in obj:
            raise RuntimeError(f"driver: {obj['error']}\nlog:\n{self.tail()}")
        return obj

    def call(self, **cmd: Any) -> dict:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def test(self, dag_id: str, logical_date: str | None) -> dict:
        return self.call(op="test", dag_id=dag_id, logical_date=logical_date)

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(timeout=10)
        self._replies.close()
        self._log.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def _after_now() -> str:
    """The next whole second: a check "as of" it sees everything written before the call (a
    truncated now could fall a fraction of a second before the last record's `_ingested_at`)."""
    return (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).replace(microsecond=0).isoformat()


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory, broker) -> dict[str, Any]:
    """A private AIRFLOW_HOME with migrated SQLite metadata; the hub's settings for the tasks."""
    home = tmp_path_factory.mktemp("airflow_home")
    env = make_env(home, broker.bootstrap)
    migrate(env, home)
    return {"env": env, "home": home, "store": Path(env["SAFETYNET_STORE"]), "logs": [home / "driver.log"]}


@pytest.fixture(scope="module")
def driver(airflow_env):
    d = Driver(airflow_env["env"], airflow_env["logs"][0])
    yield d
    d.stop()


@pytest.fixture(scope="module")
def scenario(airflow_env, driver, broker) -> dict[str, Any]:
    """The end-to-end scenario; each step's run info and the published bytes, for the tests below."""
    from connectors.kafka_producer import ensure_topics, publish
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.demo.departments import drop_files
    from safetynet.demo.synth import emit, generate
    from schemas.registry import contracts, get

    env = airflow_env["env"]
    store = ObjectStore.from_settings(Settings(store=str(airflow_env["store"]), progress=False))
    d = generate(persons=PERSONS, seed=SEED)
    em = emit(d)
    assert str(d.as_of) == SNAPSHOT_DATE
    ensure_topics(broker.bootstrap, [c.topic for c in contracts().values()])

    def deliver(feeds: set[str]) -> None:
        for fid, msgs in em.events.items():
            if fid in feeds:
                publish(broker.bootstrap, get(fid).topic, msgs)
        drop_files(store, {p: b for p, b in em.files.items() if ".".join(p.split("/")[:2]) in feeds})

    out: dict[str, Any] = {"em": em, "store": store, "seconds": {}}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        out["seconds"][step] = round(now - clock[0], 1)
        clock[0] = now

    deliver(set(contracts()) - {MISSING})
    lap("generate+deliver")

    # 1. ingest through the real CLI
    first = _now()
    cli = subprocess.run([str(AIRFLOW), "dags", "test", "ingest", first], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    cli_log = airflow_env["home"] / "cli-ingest.log"
    cli_log.write_text(cli.stdout + cli.stderr)
    airflow_env["logs"].append(cli_log)
    assert cli.returncode == 0, (cli.stdout + cli.stderr)[-5000:]
    out["ingest1"] = driver.call(op="inspect", dag_id="ingest", logical_date=first)
    lap("ingest (airflow dags test CLI)")
    # 2. freshness now: the missing feed is reported
    out["freshness1"] = driver.test("freshness", _now())
    out["freshness1_report"] = json.loads(store.read_bytes(out["freshness1"]["xcom"]["check_freshness"]["report"]))
    lap("freshness (first dag.test in the driver)")
    # 3. monitoring for a past date (a backfill), then again for the same date
    snap = f"{SNAPSHOT_DATE}T00:00:00+00:00"
    out["monitoring1"] = driver.test("monitoring", snap)
    out["published1"] = _published(store)
    lap("monitoring")
    out["monitoring2"] = driver.test("monitoring", snap)
    out["published2"] = _published(store)
    lap("monitoring re-run")
    # 4. the missing feed arrives: only its task changes anything
    deliver({MISSING})
    out["ingest2"] = driver.test("ingest", _now())
    lap("deliver + ingest (late feed)")
    out["freshness2"] = driver.test("freshness", _after_now())
    before_third = _now()
    out["freshness3"] = driver.test("freshness", None)
    lap("freshness x2")
    out["before_third"] = before_third
    print("scenario steps (s):", json.dumps(out["seconds"], ensure_ascii=False))
    return out


def _published(store) -> dict[str, bytes]:
    prefixes = ("monitoring/", "warnings/", "identified/", "_catalog/snapshots/")
    return {e.path: store.read_bytes(e.path) for prefix in prefixes for e in store.list(prefix)}


# ==== the graph snapshot, registry-aware ========================================================
# The ingest DAG has one task per feed and the monitoring DAG one clean Asset per feed, both
# generated from the registry: a feed added to it changes the graph, not its wiring. So the
# snapshot keeps every per-feed part once, as a template with the placeholders below, and the
# test checks separately that the per-feed parts are there for exactly the registry's feeds.
EACH_FEED = "<each feed>"  # a list element standing for one element per feed
_BOUNDED = r"(?<![A-Za-z0-9]){}(?![A-Za-z0-9_])"  # a name, not part of a longer one (`ingest_<id>` still counts)


def _feed_names(c: Any) -> list[tuple[re.Pattern, str]]:
    """How a feed is named in the graph → its placeholder (the topic first: it contains the id)."""
    return [(re.compile(_BOUNDED.format(re.escape(name))), ph)
            for name, ph in ((c.topic, "<topic>"), (c.feed_id, "<feed_id>"), (c.prefix, "<department>/<feed>"))]


def _text(x: Any) -> str:
    return x if isinstance(x, str) else json.dumps(x, ensure_ascii=False, sort_keys=True)


def _owner(x: Any, feeds: list[Any]) -> Any | None:
    """The one feed `x` (a key or a list element) names, or None (none, or several)."""
    t = _text(x)
    found = [c for c in feeds if any(p.search(t) for p, _ in _feed_names(c))]
    return found[0] if len(found) == 1 else None


def _generic(x: Any, c: Any) -> Any:
    """`x` with feed `c`'s names replaced by placeholders."""
    t = json.dumps(x, ensure_ascii=False)
    for p, ph in _feed_names(c):
        t = p.sub(ph, t)
    return json.loads(t)


def _specific(x: Any, c: Any) -> Any:
    """The inverse: a template made concrete for feed `c`."""
    t = json.dumps(x, ensure_ascii=False)
    for name, ph in ((c.topic, "<topic>"), (c.feed_id, "<feed_id>"), (c.prefix, "<department>/<feed>")):
        t = t.replace(ph, name)
    return json.loads(t)


def graph_template(node: Any, feeds: list[Any], where: str = "graph", problems: list[str] | None = None
                   ) -> tuple[Any, list[str]]:
    """(the graph with its per-feed parts folded into templates, problems).

    Dict entries whose key names one feed (`ingest.tasks.<feed_id>`) and list elements that name
    one feed (the monitoring schedule's Assets) are grouped by their generic form; a group of two
    or more is per-feed. It is stored once, generically (a dict entry under its placeholder key, a
    list element as `{EACH_FEED: template}`); a feed whose entry differs from the others' common
    form stays as it is, under its own name, so the snapshot shows it. A problem is reported when
    a per-feed group does not cover exactly the registry's feeds."""
    problems = [] if problems is None else problems
    if isinstance(node, dict):
        out: dict = {}
        groups: dict[str, list[tuple[Any, str, Any]]] = {}
        for k, v in node.items():
            c = _owner(k, feeds)
            if c is None:
                out[k] = graph_template(v, feeds, f"{where}.{k}", problems)[0]
            else:
                groups.setdefault(_generic(k, c), []).append((c, k, v))
        for gk, members in groups.items():
            if len(members) == 1 and len(feeds) > 1:  # one feed named once: not a per-feed part
                (_, k, v), = members
                out[k] = graph_template(v, feeds, f"{where}.{k}", problems)[0]
                continue
            _cover(f"{where}.{gk}", [c for c, _, _ in members], feeds, problems)
            forms = [json.dumps(_generic(v, c), ensure_ascii=False, sort_keys=True) for c, _, v in members]
            common = max(set(forms), key=lambda f: (forms.count(f), f))
            out[gk] = json.loads(common)
            out.update({k: v for (_, k, v), f in zip(members, forms, strict=True) if f != common})
        return out, problems
    if isinstance(node, list):
        items: list = []
        lgroups: dict[str, list[Any]] = {}
        for x in node:
            c = _owner(x, feeds)
            if c is None:
                items.append(graph_template(x, feeds, f"{where}[]", problems)[0])
            else:
                lgroups.setdefault(json.dumps(_generic(x, c), ensure_ascii=False, sort_keys=True), []).append((c, x))
        for gk, members in sorted(lgroups.items()):
            if len(members) == 1 and len(feeds) > 1:
                items.append(members[0][1])
                continue
            _cover(f"{where}[{gk}]", [c for c, _ in members], feeds, problems)
            items.append({EACH_FEED: json.loads(gk)})
        return items, problems
    return node, problems


def _cover(where: str, got: list[Any], feeds: list[Any], problems: list[str]) -> None:
    have, want = sorted(c.feed_id for c in got), sorted(c.feed_id for c in feeds)
    if have != want:
        twice = sorted({f for f in have if have.count(f) > 1})
        problems.append(f"{where}: one per registered feed expected; missing {sorted(set(want) - set(have))}, "
                        f"twice {twice}")


def graph_expand(node: Any, feeds: list[Any]) -> Any:
    """The inverse of `graph_template`: every template made concrete for each of `feeds`."""
    if isinstance(node, dict):
        out: dict = {}
        generic = [k for k in node if "<feed_id>" in k or "<department>/<feed>" in k or "<topic>" in k]
        for k in generic:
            out.update({_specific(k, c): _specific(node[k], c) for c in feeds})
        out.update({k: graph_expand(v, feeds) for k, v in node.items() if k not in generic})
        return out
    if isinstance(node, list):
        items: list = []
        for x in node:
            if isinstance(x, dict) and list(x) == [EACH_FEED]:
                items += [_specific(x[EACH_FEED], c) for c in feeds]
            else:
                items.append(graph_expand(x, feeds))
        return items
    return node


# ==== tests ====================================================================================
def test_dagbag_loads_every_dag_without_import_errors(driver):
    assert driver.hello["import_errors"] == {}
    assert driver.hello["dag_ids"] == ["freshness", "ingest", "monitoring"]


def test_orchestration_graph_matches_the_committed_snapshot(driver):
    """The wiring, with the per-feed parts as templates: (a) they are there for exactly the
    registry's feeds, (b) the template and everything else equal the committed snapshot."""
    from schemas.registry import contracts

    graph, problems = graph_template(driver.hello["graph"], list(contracts().values()))
    assert problems == [], "the DAGs' per-feed tasks/Assets do not match the feed registry"
    text = json.dumps(graph, ensure_ascii=False, indent=1, sort_keys=True) + "\n"
    if os.environ.get("SNAPSHOT_UPDATE") == "1":
        SNAPSHOT_FILE.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT_FILE.write_text(text, encoding="utf-8")
    assert SNAPSHOT_FILE.exists(), "no committed graph snapshot: run with SNAPSHOT_UPDATE=1 and review it"
    assert json.loads(SNAPSHOT_FILE.read_text(encoding="utf-8")) == graph, (
        "the DAG wiring changed: review the difference, then regenerate with SNAPSHOT_UPDATE=1")


def test_the_graph_snapshot_stays_when_a_feed_is_added_and_names_a_feed_left_out(driver):
    """On the real graph: with one feed more in the registry and in the DAGs (its task and Asset
    made from the templates) the snapshot is unchanged; with the feed in the registry but not in
    the DAGs, the comparison names it."""
    import dataclasses

    from schemas.registry import contracts

    feeds = list(contracts().values())
    graph = driver.hello["graph"]
    template, problems = graph_template(graph, feeds)
    assert problems == [] and EACH_FEED in json.dumps(template, ensure_ascii=False)
    assert graph_expand(template, feeds) == graph  # the template loses nothing
    new = dataclasses.replace(feeds[0], feed="zz_feed_added_by_the_test")
    assert new.feed_id not in contracts()
    assert graph_template(graph_expand(template, [*feeds, new]), [*feeds, new]) == (template, [])
    _, problems = graph_template(graph, [*feeds, new])
    assert problems and all(new.feed_id in p for p in problems), problems
    gone, _ = graph_template(graph, feeds[1:])  # a feed in the DAGs but not in the registry: shown by name
    assert gone != template and feeds[0].feed_id in json.dumps(gone, ensure_ascii=False)


def test_graph_is_generated_from_the_feed_registry(driver):
    from schemas.registry import contracts

    g = driver.hello["graph"]
    ingest = g["ingest"]["tasks"]
    pick = ingest.pop(PICK)  # the branch: which feeds a run reads
    assert sorted(ingest) == sorted(contracts())
    assert pick["upstream"] == [] and all(t["upstream"] == [PICK] for t in ingest.values())
    for fid, c in contracts().items():  # one feed id everywhere: task id, its argument, the Asset name and URI
        assert ingest[fid]["args"] == [fid]
        assert ingest[fid]["outlets"] == [f"{fid} <safetynet://clean/{c.department}/{c.feed}>"]
    assert g["monitoring"]["schedule"]["assets"] == {"any": [t["outlets"][0] for _, t in sorted(ingest.items())]}
    assert g["ingest"]["max_active_runs"] == 1 and all(t["retries"] >= 1 for t in ingest.values())


def test_wakeup_debounces_a_burst_on_both_edges_and_never_carries_the_message():
    from safetynet.wakeup import Debounce, record_of

    class Msg:
        def __init__(self, off: int):
            self.off = off

        def topic(self) -> str:
            return "dept.medical_insurance.claim.v1"

        def partition(self) -> int:
            return 2

        def offset(self) -> int:
            return self.off

        def timestamp(self) -> tuple[int, int]:
            return (1, 1_795_000_000_000)

        def key(self) -> bytes:
            return b"430103199001011234"

        def value(self) -> bytes:
            return b'{"id_no": "430103199001011234"}'

    d = Debounce(min_interval_s=10)
    assert d.due(0.0) is None  # nothing seen: nothing due
    d.seen(record_of(Msg(0)))
    first = d.due(100.0)  # the first record after a quiet spell wakes at once (leading edge)
    assert first == {"topic": "dept.medical_insurance.claim.v1", "partition": 2, "offset": 0,
                     "timestamp_ms": 1_795_000_000_000, "records": 1}
    for i in range(1, 1001):  # a burst within the interval: gathered, not dropped
        d.seen(record_of(Msg(i)))
        assert d.due(100.0 + i / 1000) is None
    tail = d.due(110.0)  # the burst's tail wakes once more when the interval has passed (trailing edge)
    assert tail is not None and (tail["offset"], tail["records"]) == (1, 1000)
    assert d.due(200.0) is None  # and then nothing until a record comes
    d.seen(record_of(Msg(1001)))
    assert d.due(200.5)["offset"] == 1001  # long after the last wake-up: at once again
    assert "430103" not in json.dumps([first, tail])


def test_kafka_watcher_is_wired_to_the_package_trigger(driver):
    from safetynet import orchestration as orch
    from safetynet.orchestration import department_topics
    from safetynet.wakeup import MIN_INTERVAL_S

    if not driver.hello["kafka_provider"]:
        assert driver.hello["watchers"] == []  # the DAG still loads and runs on its cron schedule
        pytest.skip("apache-airflow-providers-apache-kafka is not installed: the AssetWatcher is not created")
    (w,) = driver.hello["watchers"]
    assert (w["dag_id"], w["uri"]) == ("ingest", orch.KAFKA_ACTIVITY_URI)
    assert w["classpath"] == "safetynet.wakeup.KafkaWakeupTrigger"
    assert w["kwargs"]["min_interval_s"] == MIN_INTERVAL_S
    assert sorted(w["kwargs"]["topics"]) == sorted(department_topics())
    assert w["kwargs"]["kafka_config_id"] == orch.KAFKA_CONN_ID


def test_kafka_watcher_trigger_fires_on_department_topic_activity(driver, scenario):
    """The watcher's trigger, run as the triggerer would against the embedded broker (confluent-kafka)."""
    if not driver.hello["kafka_provider"]:
        pytest.skip("apache-airflow-providers-apache-kafka is not installed")
    from schemas.registry import contracts

    payload = driver.call(op="watch", timeout_s=90)["payload"]
    assert payload["topic"] in {c.topic for c in contracts().values()}
    assert set(payload) == {"topic", "partition", "offset", "timestamp_ms", "records"} and payload["records"] >= 1


def test_ingest_runs_every_feed_and_counts_reconcile(scenario):
    from schemas.registry import contracts

    run, em = scenario["ingest1"], scenario["em"]
    assert run["state"] == "success"
    assert set(run["tasks"].values()) == {"success"}
    for fid in contracts():
        x = run["xcom"][fid]
        assert x["reconciles"] and x["clean_reconciles"], fid
        e = em.expected[fid] if fid != MISSING else None
        if e is None:
            assert (x["input"], x["accepted"]) == (0, 0)
            assert x["clean"]["rows"] == 0
        else:
            assert (x["input"], x["accepted"], {k: v for k, v in x["quarantined"].items() if v}) == \
                (e.input, e.accepted, e.quarantined), fid
            assert x["clean"]["rows"] == em.clean_rows[fid], fid
    assert [u for u, _ in run["asset_events"]] == sorted(f"safetynet://clean/{c.department}/{c.feed}"
                                                         for c in contracts().values())


def test_freshness_reports_the_missing_feed(scenario):
    from quality import freshness
    from schemas.registry import contracts

    run = scenario["freshness1"]
    assert run["state"] == "success"
    x = run["xcom"]["check_freshness"]
    assert x["stale"] == [MISSING]
    assert x["feeds"][MISSING]["status"] == "missing"
    assert all(x["feeds"][f]["status"] == "fresh" for f in contracts() if f != MISSING)
    report = scenario["freshness1_report"]  # `_catalog/freshness/<date>.json`, as that run wrote it
    assert report["stale"] == [MISSING] and report["as_of"] == x["as_of"]
    assert report["feeds"][MISSING]["last_arrival"] is None and report["feeds"][MISSING]["cadence_hours"] == 168
    assert freshness.read_report(scenario["store"], dt.date.fromisoformat(x["as_of"][:10]))["as_of"] >= x["as_of"]


def test_monitoring_for_a_past_date_publishes_with_stale_inputs_marked(scenario):
    from safetynet.publish import snapshot

    run = scenario["monitoring1"]
    assert run["state"] == "success", run
    x = run["xcom"]["build_snapshot"]
    day = dt.date.fromisoformat(SNAPSHOT_DATE)
    store = scenario["store"]
    assert x["snapshot_date"] == SNAPSHOT_DATE and x["quality_ok"] is True
    assert snapshot.snapshots(store) == [day]
    m = snapshot.manifest(store, day)
    w = snapshot.read(store, "warnings", day)
    assert x["warnings"] == w.num_rows == m["datasets"]["warnings"]["rows"] > 0
    assert x["persons"] == m["datasets"]["monitoring/person"]["rows"] == PERSONS
    # the run completes for what is there, and says what was stale
    assert x["stale_inputs"] == [MISSING]
    assert "recipient_vehicle" in x["rules_on_stale_inputs"]
    assert all(feeds == [MISSING] for feeds in x["rules_on_stale_inputs"].values())
    assert "dangerous_house" not in x["rules_on_stale_inputs"]  # reads no vehicle data
    assert m["inputs"][MISSING]["rows"] == 0
    assert run["asset_events"] == [["safetynet://catalog/snapshots", "build_snapshot"]]


def test_monitoring_fans_out_one_task_per_county(driver, scenario):
    """counties → build_county (mapped, one per county, each with its policy) → build_snapshot (gate,
    publish); a one-county district maps one task and publishes what a single process publishes."""
    g = driver.hello["graph"]["monitoring"]["tasks"]
    assert sorted(g) == ["build_county", "build_snapshot", "counties"]
    assert g["counties"]["upstream"] == [] and g["build_county"]["upstream"] == ["counties"]
    assert g["build_snapshot"]["upstream"] == ["build_county"]
    assert g["build_snapshot"]["outlets"] == ["snapshot <safetynet://catalog/snapshots>"]
    run = scenario["monitoring1"]
    assert run["tasks"] == {"counties": "success", "build_county": "success", "build_snapshot": "success"}
    assert run["xcom"]["counties"] == ["430103"]
    x = run["xcom"]["build_snapshot"]
    assert x["counties"] == ["430103"] and [p["county"] for p in x["parts"]] == ["430103"]
    assert x["policy_version"] == "430103-2026.1"
    assert scenario["store"].list("_staging/") == []  # the run's staged part is gone once published


def test_monitoring_rerun_for_the_same_date_is_identical(scenario):
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b = scenario["published1"], scenario["published2"]
    assert scenario["monitoring2"]["state"] == "success"
    assert a.keys() == b.keys() and a
    assert [k for k in a if a[k] != b[k]] == []
    ids = [pq.read_table(pa.BufferReader(v))["warning_id"].to_pylist() for k, v in sorted(a.items())
           if k.startswith("warnings/")]
    assert ids and ids[0]
    x1, x2 = scenario["monitoring1"]["xcom"]["build_snapshot"], scenario["monitoring2"]["xcom"]["build_snapshot"]
    # the re-run found the same data, inputs and policy: the same version, nothing written
    assert (x1["publish"], x2["publish"]) == ("published", "unchanged") and x1["version"] == x2["version"] == 1
    how = ("publish", "build_mode", "households_reevaluated", "build_reason", "parts")  # how it ran, not what it made
    assert {k: v for k, v in x1.items() if k not in how} == {k: v for k, v in x2.items() if k not in how}
    assert x1["build_mode"] == "full" and (x2["build_mode"], x2["households_reevaluated"]) == ("incremental", 0)


def test_a_late_feed_arriving_changes_only_its_own_asset(scenario):
    from quality import freshness
    from schemas.registry import get

    run, em = scenario["ingest2"], scenario["em"]
    assert run["state"] == "success"
    assert run["tasks"][MISSING] == "success"
    assert run["tasks"][PICK] == "success"  # a manual run reads every feed
    assert {t: s for t, s in run["tasks"].items() if t not in (MISSING, PICK)} == \
        {t: "skipped" for t in run["tasks"] if t not in (MISSING, PICK)}  # nothing new: no asset event, no wasted build
    c = get(MISSING)
    assert run["asset_events"] == [[f"safetynet://clean/{c.department}/{c.feed}", MISSING]]
    x = run["xcom"][MISSING]
    e = em.expected[MISSING]
    assert (x["input"], x["accepted"]) == (e.input, e.accepted) and x["clean"]["rows"] == em.clean_rows[MISSING]
    assert scenario["freshness2"]["xcom"]["check_freshness"]["stale"] == []
    as_of = freshness.snapshot_as_of(dt.date.fromisoformat(SNAPSHOT_DATE))
    assert freshness.stale_feeds(scenario["store"], as_of) == []


def test_a_run_without_logical_date_uses_its_run_after(scenario):
    """Asset-triggered runs have no logical date (no `ds`/`ts`): the templates fall back to `run_after`."""
    run = scenario["freshness3"]
    assert run["state"] == "success" and run["logical_date"] is None
    x = run["xcom"]["check_freshness"]
    as_of = dt.datetime.fromisoformat(x["as_of"])
    assert dt.datetime.fromisoformat(scenario["before_third"]) <= as_of <= dt.datetime.now(dt.UTC)
    assert x["stale"] == []


def test_a_retry_after_a_kill_between_ingest_and_clean_rebuilds_clean(airflow_env, scenario, broker, monkeypatch):
    """Attempt 1 made its raw files durable and committed, then died before cleaning; the retry
    finds nothing new to read but sees the clean state behind raw/ and rebuilds it."""
    from connectors.kafka_producer import publish
    from safetynet import orchestration
    from safetynet.core.settings import Settings
    from safetynet.intake.ingest import ingest
    from schemas.registry import get

    for k in ("SAFETYNET_STORE", "SAFETYNET_WORK_DIR", "SAFETYNET_KAFKA_BOOTSTRAP", "SAFETYNET_KAFKA_GROUP",
              "SAFETYNET_PROGRESS", "SAFETYNET_MAX_QUARANTINE_RATE"):
        monkeypatch.setenv(k, airflow_env["env"][k])
    c, store, em = get(MISSING), scenario["store"], scenario["em"]
    before = json.loads(store.read_bytes(f"_catalog/clean/{c.prefix}.json"))["counts"]
    publish(broker.bootstrap, c.topic, em.events[MISSING])  # the department redelivers everything
    s = Settings()
    first = ingest(s, store, [MISSING], kafka=True, files=True).feeds[MISSING]  # attempt 1, killed after this
    assert first.input == len(em.events[MISSING]) and orchestration.clean_is_behind(store, c)
    retry = orchestration.ingest_feed(MISSING)
    assert (retry["input"], retry["cleaned"]) == (0, True)
    assert retry["clean"]["rows"] == before["rows"]  # redelivered events add no row
    assert retry["clean"]["redelivered"] == before["redelivered"] + first.accepted
    again = orchestration.ingest_feed(MISSING)
    assert (again["input"], again["cleaned"]) == (0, False)


def test_a_wakeup_reads_only_the_feeds_with_work(airflow_env, scenario, broker, monkeypatch):
    """The ingest DAG's branch on a wake-up (an asset-triggered run): the feeds with Kafka records past
    the connector's committed offsets or files waiting; a scheduled or manual run reads every feed."""
    from connectors.kafka_producer import publish
    from safetynet import orchestration
    from safetynet.demo.departments import drop_files
    from schemas.registry import contracts, get

    for k in ("SAFETYNET_STORE", "SAFETYNET_WORK_DIR", "SAFETYNET_KAFKA_BOOTSTRAP", "SAFETYNET_KAFKA_GROUP",
              "SAFETYNET_PROGRESS", "SAFETYNET_MAX_QUARANTINE_RATE"):
        monkeypatch.setenv(k, airflow_env["env"][k])
    em, store = scenario["em"], scenario["store"]
    for fid in contracts():  # whatever earlier tests left unread is read first
        orchestration.ingest_feed(fid)
    assert orchestration.feeds_with_work("asset_triggered") == []  # all read: a wake-up starts no feed task
    assert orchestration.feeds_with_work("scheduled") == orchestration.feeds_with_work("manual") == list(contracts())

    kafka_feed = next(f for f, msgs in em.events.items() if msgs and f != MISSING)
    publish(broker.bootstrap, get(kafka_feed).topic, em.events[kafka_feed][:1])  # one department event
    file_feed, files = next((".".join(p.split("/")[:2]), {p: b}) for p, b in em.files.items())
    renamed = {p.rsplit("/", 1)[0] + "/again-" + p.rsplit("/", 1)[1]: b for p, b in files.items()}
    drop_files(store, renamed)  # a new file in a drop folder
    assert orchestration.feeds_with_work("asset_triggered") == [f for f in contracts() if f in {kafka_feed, file_feed}]
    orchestration.ingest_feed(kafka_feed)
    orchestration.ingest_feed(file_feed)
    assert orchestration.feeds_with_work("asset_triggered") == []


def test_no_unmasked_id_number_in_any_airflow_log(airflow_env, scenario):
    from schemas import idno

    files = list(airflow_env["logs"]) + [p for p in (airflow_env["home"] / "logs").rglob("*") if p.is_file()]
    leaks = []
    for f in files:
        text = f.read_text(errors="replace")
        leaks += [f"{f.name}: {m[:6]}…" for m in ID18.findall(text) if idno.is_valid(m)]
    assert files and leaks == []
