"""Benchmark: event → warning list latency on the real stack (issue #16, point 1).

For each district size (`--persons 20000`, or `--sizes 20000,1000000`), in a fresh temp directory:

1. an embedded Kafka-protocol broker (Tansu), a store; the synthetic district (`safetynet.demo.synth`) is
   generated, its events published to the department topics and its files dropped into `landing/` (above
   200,000 persons, `--district auto`: every feed as one JSON Lines drop instead — producing millions of events
   would take longer than the run; the events measured still go through Kafka); then
   `safetynet run --snapshot-date D` (D = today, UTC: the date an asset-triggered monitoring run builds)
   ingests everything with the consumer group Airflow's tasks use and publishes the first snapshot;
2. the review app (`safetynet -v serve`, SQLite review DB, watching for new versions through the
   `hub.snapshots.v1` notice and the catalog watch) with one county reviewer (`safetynet users add`);
3. Airflow 3 (SQLite metadata, LocalExecutor): api-server, dag-processor, scheduler and triggerer, each its own
   process group, with the DAGs of `dags/` and the ingest DAG's Kafka `AssetWatcher` pointed at the broker
   (its wake-up group's offsets are first committed at the topics' ends, so the district's backlog wakes
   nothing); both DAGs are unpaused, and the runs unpausing makes are waited out;
4. department events, one per kind, for existing persons and households of the district, each made so that it
   newly fires one rule (chosen from the published snapshot: the household has no warning of that rule yet),
   wrapped with `schemas.envelope.wrap` as the demo's emitter does and produced with
   `connectors.kafka_producer.publish` to the feed's topic. They go one at a time: the next is produced when
   the previous one's warning is visible (or timed out), and never less than `--gap` seconds (default 0; the
   wake-up is debounced on both edges, `safetynet.wakeup.MIN_INTERVAL_S`: an event within the interval after a
   wake-up is woken for at its end, never left to the ingest DAG's 10-minute cron);
5. each event's latency: from its produce to the moment `/api/v1/warnings?q=<household>&rule=<rule>` of the
   review app's JSON API (polled every 0.5 s) shows a warning of that rule for that household that was not
   there before. `--timeout` (600 s) bounds the wait: a timeout is a miss, reported as such.

Prints per event the kind, rule, seconds and the stages observed for it — the ingest run (Airflow REST API:
wake-up → run queued, queued → start, the feed's task, run end), the asset-triggered monitoring run
(queue/start/end), the snapshot version it published (the version manifest's mtime) and the review app's
load of it (its log) — then per size `size=N events=E p50_s=… p95_s=… max_s=… missed=M`, and as the LAST
line `latency_p95_s=<p95 of the largest size run>` (a miss counts as the timeout). Nothing personal is
printed: households by their register number's last 4 digits, persons not at all.

    .venv/bin/python bench/latency.py [--persons 20000 | --sizes 20000,1000000] [--seed 7]
                                      [--kinds earner_death,…] [--gap 0] [--timeout 600] [--keep]
                                      [--wakeup-reset earliest|latest]

Every process it starts (broker, review app, Airflow's four) runs in its own process group and is stopped
with it at the end, also on an error or Ctrl-C. `--keep` leaves the temp directory (logs, store) behind.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from safetynet.wakeup import MIN_INTERVAL_S  # noqa: E402
from tests.airflow_env import AIRFLOW  # noqa: E402 — the tests' isolated AIRFLOW_HOME
from tests.airflow_env import airflow_env as make_airflow_env  # noqa: E402

SAFETYNET = Path(sys.executable).parent / "safetynet"
UTC = dt.UTC
KINDS = ("earner_death", "deceased_recipient", "medical_burden", "unemployment", "serious_illness",
         "dangerous_house", "disaster_damage", "recipient_vehicle", "duplicate_enrolment", "phase_out_risk",
         "recipient_property", "severe_disability")
REVIEWER, PASSWORD = "bench_county", "bench-" + secrets.token_urlsafe(12)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of xs."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))] if s else float("nan")


def tail4(household_no: str) -> str:
    return "…" + household_no[-4:]


def iso(t: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(t.replace("Z", "+00:00")) if t else None


# ==== processes ===============================================================================
class Procs:
    """Child processes, each its own process group (`start_new_session`), stopped as groups."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "ab") as out:
            p = subprocess.Popen(argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs[name] = p
        return p

    def check(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; log:\n{self.tail(name)}")

    def tail(self, name: str, n: int = 30) -> str:
        f = self.logs / f"{name}.log"
        return "\n".join(f.read_text(errors="replace").splitlines()[-n:]) if f.exists() else ""

    def stop(self) -> None:
        for p in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # whatever of the group is left (task runners, workers)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        self.procs.clear()


def wait_for(what: str, cond: Callable[[], Any], timeout: float, every: float = 1.0,
             check: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check:
            check()
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 30) -> Any:
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


class AirflowApi:
    def __init__(self, port: int):
        self.base = f"http://127.0.0.1:{port}/api/v2"

    def __call__(self, method: str, path: str, body: dict | None = None) -> Any:
        return http_json(method, self.base + path, body)

    def runs(self, dag_id: str) -> list[dict]:
        return self("GET", f"/dags/{dag_id}/dagRuns?order_by=run_after&limit=200")["dag_runs"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        tis = self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {t["task_id"]: t for t in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        try:
            return self("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
                               "?deserialize=true")["value"]
        except urllib.error.HTTPError:
            return None


# ==== the events ==============================================================================
class Events:
    """Builds one department event per kind for existing persons/households of the district."""

    def __init__(self, d, store, day: dt.date, seed: int):
        import duckdb

        from safetynet.publish import snapshot

        self.d, self.day, self.seed = d, day, seed
        self.con = duckdb.connect()
        self.con.register("mp", snapshot.read(store, "monitoring/person", day, identified=True))
        self.con.register("mh", snapshot.read(store, "monitoring/household", day))
        self.con.register("w", snapshot.read(store, "warnings", day, identified=True).select(["household_no", "rule_id"]))
        for name, fid in (("cases", "civil_affairs.assistance_case"), ("pay", "civil_affairs.assistance_payment"),
                          ("claims", "medical_insurance.claim"), ("vehicles", "public_security.vehicle"),
                          ("dis", "disabled_persons_federation.disability")):
            self.con.register(name, d.table(fid))
        self.con.execute("""CREATE TEMP TABLE members AS
            SELECT c.case_no, c.category, c.status, m.id_no FROM cases c, unnest(c.members) AS u(m)""")
        self.used: set[str] = set()
        self.n = 0

    def pick(self, rule: str, sql: str) -> tuple:
        """The first row of `sql` (columns household_no first) whose household is unused and has no `rule` warning."""
        q = (f"SELECT * FROM ({sql}) x WHERE x.household_no NOT IN (SELECT household_no FROM w WHERE rule_id = '{rule}') "
             f"ORDER BY md5(x.household_no || '{self.seed}') LIMIT 200")
        for row in self.con.execute(q).fetchall():
            if row[0] not in self.used:
                self.used.add(row[0])
                return row
        raise LookupError(f"{rule}: no household of the district fits (all used or already warned)")

    def truth_row(self, fid: str, key: str, value: str) -> dict:
        import pyarrow.compute as pc

        from safetynet.demo.synth.emit import _canon
        from schemas.registry import get

        c = get(fid)
        t = self.d.table(fid)
        rows = t.filter(pc.equal(t[key], value)).slice(0, 1).to_pylist()
        if not rows:
            raise LookupError(f"{fid}: no truth row")
        return {f.name: _canon(f, rows[0][f.name]) for f in c.fields}

    def person(self, id_no: str) -> dict:
        return self.truth_row("public_security.person", "id_no", id_no)

    def date(self, days: int) -> str:
        return (self.day + dt.timedelta(days=days)).isoformat()

    def uid(self, prefix: str, width: int = 9) -> str:
        self.n += 1
        return f"{prefix}{self.seed % 100:02d}{int(time.time()) % 10**6:06d}{self.n:0{width - 8}d}"

    # -- one builder per kind: (household_no, [(feed_id, payload), …]) ----------------------------
    def earner_death(self):
        hh, id_no = self.pick("earner_death", """
            SELECT p.household_no, p.id_no FROM mp p JOIN mh h USING (household_no)
            WHERE p.alive AND p.age BETWEEN 22 AND 55 AND p.wage_months_12m >= 6 AND h.at_risk""")
        return hh, [("public_security.person", {**self.person(id_no), "status": "死亡", "status_date": self.date(-7)})]

    def deceased_recipient(self):
        hh, id_no, last = self.pick("deceased_recipient", """
            SELECT p.household_no, p.id_no, max(pay.month) AS last FROM members m JOIN mp p USING (id_no)
            JOIN pay USING (case_no)
            WHERE m.status = '在保' AND m.category IN ('低保', '特困') AND p.alive GROUP BY ALL
            HAVING max(pay.month) >= '2026-09'""")
        y, mo = map(int, last.split("-"))
        died = dt.date(y, mo, 10) - dt.timedelta(days=31)  # the month before the last payment: paid after death
        return hh, [("public_security.person", {**self.person(id_no), "status": "死亡",
                                                "status_date": died.replace(day=10).isoformat()})]

    def _claim(self, id_no: str, code: str, name: str, total: str, fund: str, oop: str, serious: bool) -> dict:
        return {"claim_id": self.uid("LB" + self.day.strftime("%Y%m%d"), 11), "id_no": id_no,
                "settle_date": self.date(-9), "hospital_name": "长沙市第一医院", "inpatient": True,
                "diagnosis_code": code, "diagnosis_name": name, "total_amount": total, "fund_paid": fund,
                "out_of_pocket": oop, "serious_illness": serious}

    def medical_burden(self):
        hh, id_no = self.pick("medical_burden", """
            SELECT p.household_no, p.id_no FROM mp p JOIN mh h USING (household_no)
            WHERE p.alive AND len(h.active_case_nos) > 0""")
        return hh, [("medical_insurance.claim",
                     self._claim(id_no, "K80.2", "胆囊结石伴胆囊炎", "90000.00", "60000.00", "30000.00", False))]

    def unemployment(self):
        hh, id_no = self.pick("unemployment", """
            SELECT p.household_no, p.id_no FROM mp p JOIN mh h USING (household_no)
            WHERE p.alive AND p.age BETWEEN 18 AND 58 AND len(h.active_case_nos) > 0""")
        return hh, [("human_resources.unemployment", {"id_no": id_no, "registered_date": self.date(-5),
                                                      "status": "登记", "status_date": self.date(-5)})]

    def _low_or_edge(self) -> str:
        return """(SELECT household_no FROM mh WHERE income_per_capita < low_income_line
                   OR list_contains(active_categories, '低保边缘') OR list_contains(active_categories, '低收入'))"""

    def serious_illness(self):
        hh, id_no = self.pick("serious_illness", f"""
            SELECT p.household_no, p.id_no FROM mp p
            WHERE p.alive AND p.household_no IN {self._low_or_edge()}
              AND p.id_no NOT IN (SELECT id_no FROM claims WHERE coalesce(serious_illness, false)
                  OR regexp_matches(diagnosis_code, '^(C|N18\\.5|N18\\.6|Z49|I21|I63|D61|B20|F20|G35)'))""")
        return hh, [("medical_insurance.claim",
                     self._claim(id_no, "C34.9", "支气管和肺恶性肿瘤", "6000.00", "4800.00", "1200.00", True))]

    def dangerous_house(self):
        hh, region = self.pick("dangerous_house", "SELECT household_no, region_code FROM mh WHERE members_alive > 0")
        return hh, [("housing.dangerous_house", {"household_no": hh, "region_code": region, "rating": "D",
                                                 "assessed_date": self.date(-3), "renovated": False})]

    def disaster_damage(self):
        hh, id_no, region = self.pick("disaster_damage",
                                      "SELECT household_no, id_no, region_code FROM mp WHERE alive")
        return hh, [("emergency_management.disaster", {"id_no": id_no, "disaster_date": self.date(-4),
                                                       "disaster_type": "洪涝", "direct_loss": "18000.00",
                                                       "house_damage": "倒塌", "region_code": region})]

    def _recipient(self, rule: str) -> tuple:
        return self.pick(rule, """
            SELECT p.household_no, p.id_no, p.region_code FROM members m JOIN mp p USING (id_no)
            WHERE m.status IN ('在保', '渐退期') AND m.category IN ('低保', '特困') AND p.alive""")

    def recipient_vehicle(self):
        hh, id_no, _ = self._recipient("recipient_vehicle")
        taken = {r[0] for r in self.con.execute("SELECT plate_no FROM vehicles").fetchall()}
        plate = next(p for p in (f"湘AL{i:04d}" for i in range(self.seed % 5000, 10**4)) if p not in taken)
        return hh, [("public_security.vehicle", {"plate_no": plate, "owner_id_no": id_no, "vehicle_type": "小型汽车",
                                                 "registered_date": self.date(-20), "status": "正常"})]

    def recipient_property(self):
        hh, id_no, region = self._recipient("recipient_property")
        out = []
        for j in (1, 2):
            out.append(("housing.property", {
                "property_id": f"{region}LB{self.uid('', 9)}F{j:04d}", "owner_id_no": id_no, "share": "1",
                "usage": "住宅", "area_m2": f"{70 + 15 * j}.50", "address": f"湖南省长沙市天心区芙蓉南路{100 + j}号",
                "registered_date": self.date(-15 - j), "status": "现势"}))
        return hh, out

    def duplicate_enrolment(self):
        hh, id_no, region = self.pick("duplicate_enrolment", """
            SELECT p.household_no, p.id_no, p.region_code FROM members m JOIN mp p USING (id_no)
            WHERE m.status IN ('在保', '渐退期') AND p.alive""")
        case_no = f"{region[:9]}LS{self.day.year}{self.uid('', 9)[-6:]}"
        return hh, [("civil_affairs.assistance_case", {
            "case_no": case_no, "applicant_id_no": id_no, "category": "刚性支出困难", "urban_rural": "城镇",
            "region_code": region, "monthly_amount": "500.00", "start_date": self.date(-10), "status": "在保",
            "members": [{"id_no": id_no, "relation": "户主"}]})]

    def phase_out_risk(self):
        hh, case_no = self.pick("phase_out_risk", """
            SELECT p.household_no, c.case_no FROM cases c JOIN mp p ON p.id_no = c.applicant_id_no
            WHERE c.status = '在保' AND p.alive
              AND c.case_no NOT IN (SELECT case_no FROM members m JOIN mp q USING (id_no)
                                    WHERE q.household_no IN (SELECT household_no FROM w WHERE rule_id = 'phase_out_risk'))""")
        rec = self.truth_row("civil_affairs.assistance_case", "case_no", case_no)
        return hh, [("civil_affairs.assistance_case", {**rec, "status": "渐退期", "end_date": self.date(30)})]

    def severe_disability(self):
        hh, id_no = self.pick("severe_disability", f"""
            SELECT p.household_no, p.id_no FROM mp p
            WHERE p.alive AND p.household_no IN {self._low_or_edge()} AND p.id_no NOT IN (SELECT id_no FROM dis)""")
        return hh, [("disabled_persons_federation.disability", {"id_no": id_no, "category": "肢体", "grade": 1,
                                                                "issued_date": self.date(-6)})]

    def build(self, kind: str) -> tuple[str, list[tuple[str, bytes, bytes]]]:
        """(household_no, [(topic, key, value), …]) of one event of `kind`."""
        import uuid

        from connectors.base import connectors
        from schemas import envelope
        from schemas.registry import get

        hh, recs = getattr(self, kind)()
        msgs = []
        # whole seconds, as the demo's emitter writes them (sub-millisecond digits break the clean step: see the report)
        now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).replace(microsecond=0).isoformat()
        for fid, payload in recs:
            c = get(fid)
            mkey = connectors()[fid].message_key if fid in connectors() else c.key[0]
            env = envelope.wrap({k: v for k, v in payload.items() if v is not None}, event_id=str(uuid.uuid4()),
                                source=c.department, feed=c.feed, occurred_at=now, schema_version=c.version)
            msgs.append((c.topic, str(payload[mkey]).encode(), envelope.encode(env)))
        return hh, msgs


# ==== the review app's JSON API ==============================================================
class Review:
    def __init__(self, port: int):
        import httpx

        self.c = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def login(self) -> None:
        r = self.c.post("/api/v1/login", json={"username": REVIEWER, "password": PASSWORD})
        r.raise_for_status()

    def warnings(self, household_no: str, rule: str) -> tuple[str | None, set[str]]:
        r = self.c.get("/api/v1/warnings", params={"q": household_no, "rule": rule, "limit": 50})
        if r.status_code == 401:
            self.login()
            r = self.c.get("/api/v1/warnings", params={"q": household_no, "rule": rule, "limit": 50})
        r.raise_for_status()
        j = r.json()
        return j["snapshot"], {row["warning_id"] for row in j["rows"]
                               if row["household_no"] == household_no and row["rule_id"] == rule}


# ==== one size ================================================================================
def run_size(persons: int, args, work: Path) -> dict:
    from connectors.kafka_producer import ensure_topics, publish
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.demo.broker import EmbeddedBroker
    from safetynet.demo.departments import drop_files, drop_truth_as_files
    from safetynet.demo.synth import emit, generate
    from schemas.registry import contracts, get

    stages: dict[str, float] = {}
    day = dt.datetime.now(UTC).date()
    procs = Procs(work)
    broker = EmbeddedBroker(log_file=work / "broker.log")
    try:
        t = time.perf_counter()
        broker.start()
        home = work / "airflow"
        home.mkdir()
        api_port, review_port = free_port(), free_port()
        env = make_airflow_env(
            home, broker.bootstrap,
            AIRFLOW__CORE__EXECUTOR="LocalExecutor", AIRFLOW__CORE__PARALLELISM="4",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32), AIRFLOW__API__WORKERS="1",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            SAFETYNET_REVIEW_DB=str(work / "review.db"))
        conn = json.loads(env["AIRFLOW_CONN_SAFETYNET_KAFKA"])
        conn["extra"]["auto.offset.reset"] = args.wakeup_reset
        env["AIRFLOW_CONN_SAFETYNET_KAFKA"] = json.dumps(conn)
        store = ObjectStore.from_settings(Settings(store=env["SAFETYNET_STORE"], progress=False))
        log(f"size {persons:,}: generating the district")
        d = generate(persons=persons, seed=args.seed)
        via = args.district if args.district != "auto" else ("kafka" if persons <= 200_000 else "files")
        em = emit(d) if via == "kafka" else None
        stages["generate+emit"] = time.perf_counter() - t
        t = time.perf_counter()
        ensure_topics(broker.bootstrap, [c.topic for c in contracts().values()])
        if em is not None:  # the departments' events to the topics, their files to the drop folders
            for fid, msgs in em.events.items():
                publish(broker.bootstrap, get(fid).topic, msgs)
            drop_files(store, em.files)
            what = f"{em.total_events:,} events"
        else:  # every feed as one JSON Lines drop (millions of events would take longer to produce than the run)
            drop_truth_as_files(d, store)
            what = f"{len(contracts())} JSON Lines drops"
        del em
        stages["deliver district"] = time.perf_counter() - t
        log(f"delivered the district ({what}); migrating Airflow's metadata and running the first snapshot")
        t = time.perf_counter()
        mig = subprocess.Popen([str(AIRFLOW), "db", "migrate"], env=env, cwd=home, stdout=open(work / "migrate.log", "wb"),  # noqa: SIM115
                               stderr=subprocess.STDOUT, start_new_session=True)
        procs.procs["airflow-db-migrate"] = mig
        r = subprocess.run([str(SAFETYNET), "run", "--snapshot-date", day.isoformat()], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=args.setup_timeout, check=False)
        (work / "first-run.log").write_text(r.stdout + r.stderr)
        if r.returncode != 0:
            raise RuntimeError(f"safetynet run exited {r.returncode}; see {work / 'first-run.log'}:\n{r.stderr[-1500:]}")
        stages["first snapshot (safetynet run)"] = time.perf_counter() - t
        if mig.wait(timeout=args.setup_timeout) != 0:
            raise RuntimeError(f"airflow db migrate failed: {(work / 'migrate.log').read_text()[-1500:]}")
        del procs.procs["airflow-db-migrate"]

        # the review app
        t = time.perf_counter()
        subprocess.run([str(SAFETYNET), "users", "add", REVIEWER, "--role", "county_reviewer", "--region", "430103"],
                       env={**env, "SAFETYNET_NEW_PASSWORD": PASSWORD}, cwd=ROOT, check=True, capture_output=True,
                       timeout=120)
        procs.start("review", [str(SAFETYNET), "-v", "serve", "--port", str(review_port)], env, ROOT)
        review = Review(review_port)

        def review_ready() -> bool:
            try:
                review.login()
                return review.c.get("/api/v1/warnings", params={"limit": 1}).json()["snapshot"] == day.isoformat()
            except Exception:
                return False

        wait_for("the review app with the first snapshot", review_ready, args.setup_timeout, 1, procs.check)
        stages["review app start + first load"] = time.perf_counter() - t

        # Airflow: the wake-up group starts at the topics' ends, then the four processes
        t = time.perf_counter()
        commit_wakeup_offsets(broker.bootstrap, json.loads(env["AIRFLOW_CONN_SAFETYNET_KAFKA"])["extra"]["group.id"])
        for name, a in (("api-server", ["api-server", "--host", "127.0.0.1", "--port", str(api_port)]),
                        ("dag-processor", ["dag-processor"]), ("scheduler", ["scheduler"]),
                        ("triggerer", ["triggerer"])):
            procs.start(name, [str(AIRFLOW), *a], env, home)
        af = AirflowApi(api_port)

        def dags_parsed() -> bool:
            try:
                return {x["dag_id"] for x in af("GET", "/dags")["dags"]} >= {"ingest", "monitoring"}
            except (OSError, urllib.error.HTTPError, ValueError):
                return False

        wait_for("Airflow's api-server and the parsed DAGs", dags_parsed, args.setup_timeout, 2, procs.check)
        for dag_id in ("ingest", "monitoring"):
            af("PATCH", f"/dags/{dag_id}", {"is_paused": False})
        wait_for("the Kafka watcher running in the triggerer", lambda: watcher_running(home / "airflow.db"),
                 args.setup_timeout, 1, procs.check)
        time.sleep(5)  # unpausing makes the cron runs of the last tick: let the scheduler create them …

        def idle() -> bool:  # … and wait them out
            return all(r["state"] not in ("queued", "running") for dag in ("ingest", "monitoring") for r in af.runs(dag))

        wait_for("the runs unpausing made", idle, args.setup_timeout, 2, procs.check)
        # a wake-up by the district's backlog (none: the watcher's group starts at the topics' ends) is over,
        # and its debounce interval too: the first event wakes at once, as after any quiet spell
        lw = last_wake(home / "airflow.db")
        if lw is not None:
            time.sleep(max(0.0, (lw + dt.timedelta(seconds=MIN_INTERVAL_S) - dt.datetime.now(UTC)).total_seconds()))
        stages["airflow start + first runs"] = time.perf_counter() - t
        log(f"stack ready ({', '.join(f'{k} {v:.0f}s' for k, v in stages.items())}); events next")

        # the events
        ev = Events(d, store, day, args.seed)
        results = []
        last_produce = 0.0
        for kind in args.kinds:
            try:
                hh, msgs = ev.build(kind)
            except LookupError as e:
                log(f"skipped {kind}: {e}")
                continue
            _, before = review.warnings(hh, kind)
            if before:
                log(f"skipped {kind}: household {tail4(hh)} already has that warning")
                continue
            wait = last_produce + args.gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            procs.check()
            t0_wall = dt.datetime.now(UTC)
            t0 = time.monotonic()
            for topic, key, value in msgs:
                publish(broker.bootstrap, topic, [(key, value)])
            last_produce = t0
            seen = None
            while time.monotonic() - t0 < args.timeout:
                _, now = review.warnings(hh, kind)
                if now - before:
                    seen = time.monotonic() - t0
                    break
                procs.check()
                time.sleep(0.5)
            res = {"kind": kind, "rule": kind, "household": tail4(hh), "feeds": sorted({m[0] for m in msgs}),
                   "produced": t0_wall, "seconds": seen, "missed": seen is None}
            results.append(res)
            log(f"{kind}: " + (f"{seen:.1f} s" if seen is not None else f"MISSED (> {args.timeout:.0f} s)"))
        attach_stages(results, af, store, day, work / "review.log")
        return {"persons": persons, "events": results, "setup": stages, "district": what}
    finally:
        procs.stop()
        broker.stop()


def commit_wakeup_offsets(bootstrap: str, group: str) -> None:
    """Commit the wake-up group's offsets at every department topic's end: the district's backlog wakes nothing."""
    from kafka import KafkaConsumer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from safetynet.orchestration import department_topics

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in department_topics() for p in sorted(c.partitions_for_topic(t) or [])]
        ends = c.end_offsets(tps)
        c.commit({tp: OffsetAndMetadata(off, "", -1) for tp, off in ends.items()})
    finally:
        c.close()


def watcher_running(db: Path) -> bool:
    """The AssetWatcher's trigger is assigned to a triggerer (Airflow's metadata DB, read only)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
            rows = con.execute("SELECT classpath, triggerer_id FROM trigger").fetchall()
    except sqlite3.Error:
        return False
    return any(cp.endswith(".KafkaWakeupTrigger") and tid is not None for cp, tid in rows)


def last_wake(db: Path) -> dt.datetime | None:
    """When the Kafka watcher last woke the ingest DAG (its Asset's newest event), from the metadata DB."""
    import sqlite3

    from safetynet.orchestration import KAFKA_ACTIVITY_URI

    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as con:
        t = con.execute("SELECT max(e.timestamp) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ?",
                        (KAFKA_ACTIVITY_URI,)).fetchone()[0]
    return dt.datetime.fromisoformat(t).replace(tzinfo=UTC) if t else None


def attach_stages(results: list[dict], af: AirflowApi, store, day: dt.date, review_log: Path) -> None:
    """Per event: the ingest run that ingested its feed, the monitoring run after it, the version it published
    and the review app's load of it."""
    from safetynet.core import paths
    from schemas.registry import get

    ingest_runs = af.runs("ingest")
    mon_runs = af.runs("monitoring")
    tasks: dict[str, dict] = {}
    versions = {}
    for e in store.list(paths.snapshot_versions(day), ".json"):
        m = re.search(r"/v(\d+)\.json$", e.path)
        if m:
            versions[int(m.group(1))] = dt.datetime.fromtimestamp(e.mtime_ns / 1e9, UTC)
    loads = []
    for line in review_log.read_text(errors="replace").splitlines():
        m = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\S*\s.*snapshot (\S+) loaded in ([\d.]+)s", line)
        if m:  # log times are local
            loads.append((dt.datetime.fromisoformat(m.group(1)).astimezone(UTC), float(m.group(3))))
    for r in results:
        t0 = r["produced"]
        feed_ids = [fid for fid in _feed_ids() if get(fid).topic in r["feeds"]]
        # the run whose task for the event's feed succeeded first after the produce (a task starts reading
        # seconds after its start_date: a cron run already under way may be the one that ingests the event)
        ing = None
        for run in ingest_runs:
            end = iso(run.get("end_date"))
            if run.get("start_date") is None or (end is not None and end < t0):
                continue
            if run["dag_run_id"] not in tasks:
                tasks[run["dag_run_id"]] = af.tasks("ingest", run["dag_run_id"])
            ti = [tasks[run["dag_run_id"]].get(f) for f in feed_ids]
            ok = bool(ti) and all(x and x["state"] == "success" and iso(x["end_date"]) >= t0 for x in ti)
            if ok and (ing is None or max(iso(x["end_date"]) for x in ti) < max(iso(x["end_date"]) for x in ing[1])):
                ing = (run, ti)
        st: dict[str, Any] = {}
        if ing:
            run, ti = ing
            st["ingest_run"] = f"{run['run_type']}"
            st["produce→ingest queued"] = (iso(run["queued_at"]) - t0).total_seconds()
            st["ingest queued→start"] = (iso(run["start_date"]) - iso(run["queued_at"])).total_seconds()
            feed_end = max(iso(x["end_date"]) for x in ti)
            st["feed task"] = sum(x["duration"] or 0 for x in ti)
            st["ingest start→feed task end"] = (feed_end - iso(run["start_date"])).total_seconds()
            st["ingest run"] = (iso(run["end_date"]) - iso(run["start_date"])).total_seconds() if run["end_date"] else None
            mon = next((m for m in mon_runs if m["run_type"] == "asset_triggered" and m.get("start_date")
                        and iso(m["queued_at"]) >= feed_end - dt.timedelta(seconds=1)), None)
            if mon:
                st["feed task end→monitoring queued"] = (iso(mon["queued_at"]) - feed_end).total_seconds()
                st["monitoring queued→start"] = (iso(mon["start_date"]) - iso(mon["queued_at"])).total_seconds()
                if mon["end_date"]:
                    st["monitoring run"] = (iso(mon["end_date"]) - iso(mon["start_date"])).total_seconds()
                x = af.xcom("monitoring", mon["dag_run_id"], "build_snapshot") or {}
                v = x.get("version")
                if v in versions:
                    st["published v"] = v
                    st["monitoring start→published"] = (versions[v] - iso(mon["start_date"])).total_seconds()
                    load = next((lo for lo in loads if lo[0] >= versions[v] - dt.timedelta(seconds=1)), None)
                    if load:
                        st["published→review loaded"] = (load[0] - versions[v]).total_seconds()
                        st["review load"] = load[1]
        r["stages"] = st


def _feed_ids() -> list[str]:
    from schemas.registry import contracts

    return list(contracts())


# ==== report ==================================================================================
def report(out: dict) -> float:
    ev = out["events"]
    secs = [e["seconds"] for e in ev if e["seconds"] is not None]
    missed = sum(e["missed"] for e in ev)
    timeout = out["timeout"]
    counted = secs + [timeout] * missed  # a miss counts as the timeout, never as nothing
    print(f"\n== {out['persons']:,} persons (district: {out['district']}); setup: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in out["setup"].items()))
    print(f"{'kind':22} {'household':10} {'seconds':>8}  stages (s)")
    for e in ev:
        s = "MISSED" if e["missed"] else f"{e['seconds']:.1f}"
        st = "; ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in e.get("stages", {}).items())
        print(f"{e['kind']:22} {e['household']:10} {s:>8}  {st}")
    p95 = pct(counted, 0.95)
    print(f"size={out['persons']} events={len(ev)} p50_s={pct(counted, 0.5):.1f} p95_s={p95:.1f} "
          f"max_s={max(counted) if counted else float('nan'):.1f} missed={missed}")
    return p95


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--persons", type=int, default=20_000)
    ap.add_argument("--sizes", help="comma-separated district sizes, e.g. 20000,1000000 (overrides --persons)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"event kinds, in order (default: all {len(KINDS)})")
    ap.add_argument("--gap", type=float, default=0.0, help="least seconds between two events' produce (default 0)")
    ap.add_argument("--timeout", type=float, default=600.0, help="per event: a miss after this many seconds")
    ap.add_argument("--wakeup-reset", choices=("earliest", "latest"), default="earliest",
                    help="auto.offset.reset of the Kafka watcher's group (default earliest, as tests/airflow_env.py; "
                    "its offsets are first committed at the topics' ends, which the embedded broker does not always "
                    "honour: then the watcher drains the district's backlog once — at 1 M persons use latest, as "
                    "production does)")
    ap.add_argument("--district", choices=("auto", "kafka", "files"), default="auto",
                    help="how the district's data arrives before the events: its departments' events on the topics "
                    "(kafka), or every feed as one JSON Lines drop (files); auto: kafka up to 200,000 persons")
    ap.add_argument("--setup-timeout", type=float, default=3600.0)
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (logs, store)")
    args = ap.parse_args(argv)
    # Ctrl-C and SIGTERM (also when started in the background, where SIGINT is ignored) unwind through the
    # `finally` blocks that stop every process group this bench started
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    args.kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(args.kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else [args.persons]
    p95s: list[tuple[int, float]] = []
    for n in sizes:
        work = Path(tempfile.mkdtemp(prefix=f"sn-latency-{n}-"))
        log(f"work dir {work}")
        try:
            out = run_size(n, args, work)
            out["timeout"] = args.timeout
            p95s.append((n, report(out)))
        finally:
            if args.keep:
                log(f"kept {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
    print(f"latency_p95_s={max(p95s)[1]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
