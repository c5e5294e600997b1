"""Benchmark: the review app's pages, served for real, against the SQL they run, measured in the same run.

A review database (SQLite in a temp dir by default; `--db postgresql://…` creates a throw-away
database on that server and drops it at the end) is migrated and filled with one snapshot of
synthetic warnings (default 200,000), their cases, households and members (SQLAlchemy Core bulk
inserts; then ANALYZE, as the loader does). A county reviewer (430103) and a street worker
(430103001) are added. The app (`create_app`) is served by uvicorn in a child process on a free
127.0.0.1 port; an httpx client logs in through the login form (CSRF token + cookie) and requests
each page N times (default 200):

  * list, first page (`/`): county reviewer; county reviewer with a decision recorded before each
    request (a new `actions` row: whatever the app caches about case statuses is stale); street worker;
  * filtered list (`/?street=430103003&severity=S1`);
  * deep page (`/?page=<last page>`);
  * household page (`/households/<no>`, random households within the scope).

Baseline, same run: the page's SQL executed directly on a DBAPI cursor N times — for a list page
the app's ORDER BY/LIMIT/OFFSET list statement plus the count(*) over the app's join and conditions
(`queries._base`/`_conds`), for the household page its household, members, warnings and actions
selects. The SQL is not written by hand: it is captured (statement text and bound parameters, as
sent to the driver) by running the app's own `queries.list_warnings` / `queries.household` with a
`before_cursor_execute` listener, then replayed. A diagnostic section times every statement the
list function runs (facet counts included; which ones a cached repeat skips) and the function
itself in-process, so the gap between page and baseline can be attributed.

Bounded: each measuring loop also stops when its `--budget` (seconds, default 90) is used, after at
least `--floor` samples (default 30); the table prints the n actually measured.

Prints p50/p95 per page (client round trip; `srv` = time inside the server process up to the
response start), the raw p50/p95 and their ratio; the last line is
`ratio=<max over pages of (page p95 / raw p95)>`.

    .venv/bin/python bench/review.py [--warnings 200000] [--requests 200] [--db postgresql://postgres@127.0.0.1:5432]
                                     [--budget 90] [--floor 30] [--diag-reps 10] [--quick]

Concurrent mode (`--concurrent`, issue #16): for each database in turn (`--backends`, default SQLite then
the PostgreSQL server `--pg`, a throw-away database created and dropped), the same 200,000-warning county is
built, the app served by uvicorn in a child process, and `--clients` (20) threads — half county reviewers,
half street workers of different streets, each its own HTTP connection and session — log in all at once
through the form and then, for `--duration` seconds (60), each walk the app at random: the list's first page,
a filtered list, a deep page by keyset cursor (or the next page by the pager's link), a household page and,
half the time after it, a decision on one of its cases (a transition the page offers: assign, visit, assist,
dismiss, close, with their fields), now and then a new login. Between two requests a client pauses
`--think` seconds (exponential, mean 1 s: staff read a page before the next click; 0: a closed loop, i.e.
saturation, where latency is set by throughput). Before the clock starts, each scope's first list page is
requested once (a warm server) and its total checked against the database.

Prints p50/p95 per operation (list, household, decision, login; and their kinds) per database against the
goals (p95 list ≤ 300 ms, household ≤ 150, decision ≤ 200, login ≤ 500; argon2 at or above OWASP's minimum),
with the machine's load and argon2's speed on it (the burst of logins is bounded by the cores free); the last
line is `p95_over_goal=<max over databases and operations of p95 / goal>` (≤ 1: every goal met).

    .venv/bin/python bench/review.py --concurrent [--clients 20] [--duration 60] [--think 1]
                                     [--backends sqlite,postgresql] [--pg postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SNAP = dt.date(2026, 11, 1)
PASSWORD = "bench-review-pw-2026"
COUNTY = ("bench_county", "county_reviewer", "430103")
STREET = ("bench_street", "street_worker", "430103001")
FILTERED = {"street": "430103003", "severity": "S1"}
POLICY = "430103-2026.11-bench"

# rule id → (relative frequency, feed of its facts, field, per-person rule)
RULE_SHAPE = {
    "medical_burden": (14, "medical_insurance.claim", "out_of_pocket", True),
    "income_drop": (12, "human_resources.employment", "wage", True),
    "unemployment": (16, "human_resources.unemployment", "status", True),
    "earner_death": (2, "public_security.person", "status", True),
    "serious_illness": (6, "medical_insurance.claim", "diagnosis_code", True),
    "uncovered_low_income": (10, "monitoring.household", "income_per_capita", False),
    "dangerous_house": (3, "housing.dangerous_house", "rating", False),
    "repeat_temporary_aid": (5, "civil_affairs.assistance_case", "category", False),
    "phase_out_risk": (6, "civil_affairs.assistance_case", "end_date", False),
    "severe_disability": (7, "disabled_persons_federation.disability", "grade", True),
    "deceased_recipient": (2, "public_security.person", "status", True),
    "recipient_vehicle": (6, "public_security.vehicle", "vehicle_type", True),
    "recipient_property": (4, "housing.property", "usage", True),
    "recipient_high_income": (5, "monitoring.household", "income_per_capita", False),
    "duplicate_enrolment": (2, "civil_affairs.assistance_case", "case_no", True),
}
STATUS_WEIGHTS = {"new": 70, "assigned": 10, "visited": 7, "assisted": 4, "dismissed": 6, "closed": 3}
CATEGORY_CHOICES = [(",,", 55), (",低保,", 20), (",特困,", 5), (",低保边缘,", 8), (",临时救助,", 5),
                     (",低保,临时救助,", 5), (",低保边缘,临时救助,", 2)]
SURNAMES = "王李张刘陈杨黄赵周吴徐孙胡朱高林何郭马罗"
GIVEN = "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def _hex(rng: random.Random) -> str:
    return f"{rng.getrandbits(96):024x}"


# ---- database -----------------------------------------------------------------------------------------
def create_database(args) -> tuple[str, callable]:
    """(SQLAlchemy URL of a fresh empty review database, a function removing it)."""
    if not args.db:
        root = tempfile.mkdtemp(prefix="bench-review-")
        return f"sqlite:///{root}/review.db", lambda: shutil.rmtree(root, ignore_errors=True)
    from sqlalchemy import create_engine, make_url, text

    admin_url = make_url(args.db)
    if admin_url.get_backend_name() != "postgresql":
        raise SystemExit("--db takes a PostgreSQL server URL (omit it for SQLite in a temp dir)")
    if "+" not in admin_url.drivername:  # the deployment's driver (docker-compose: postgresql+psycopg2)
        admin_url = admin_url.set(drivername="postgresql+psycopg2")
    if not admin_url.database:
        admin_url = admin_url.set(database="postgres")
    name = f"bench_review_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    print(f"created database {name} on {admin_url.host}:{admin_url.port or 5432}", flush=True)

    def drop() -> None:
        with admin.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"), {"n": name})
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()
        print(f"dropped database {name}", flush=True)

    return admin_url.set(database=name).render_as_string(hide_password=False), drop


class Progress:
    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.t0, self.next = label, total, 0, time.perf_counter(), 0

    def add(self, n: int) -> None:
        self.done += n
        if self.done >= self.next or self.done >= self.total:
            print(f"  {self.label}: {self.done:,}/{self.total:,} ({time.perf_counter() - self.t0:.1f}s)", flush=True)
            self.next = self.done + max(1, self.total // 5)


def synthesise(n_warnings: int, seed: int) -> dict[str, list[dict]]:
    """Rows for warnings, cases, households, members, actions of one snapshot (deterministic in seed)."""
    from quality.rules import RULES, SEVERITY_WEIGHT
    from safetynet.demo.synth.district import region_tree

    rng = random.Random(seed)
    tree = region_tree().table().to_pylist()  # 14 streets 430103001..014, 97 communities (street + 3 digits)
    comm_codes = [r["region_code"] for r in tree]
    comm_weights = [rng.lognormvariate(0, 0.5) for _ in comm_codes]
    rules = {r.id: r for r in RULES}
    rule_ids = [r for r in RULE_SHAPE if r in rules]
    rule_w = [RULE_SHAPE[r][0] for r in rule_ids]
    loaded = dt.datetime(2026, 11, 2, 6, 0, tzinfo=dt.UTC)
    serial: dict[str, int] = {}
    warnings_, cases, households, members, actions = [], [], [], [], []
    id_serial = 0
    hh_scores: dict[str, float] = {}
    while len(warnings_) < n_warnings:
        region = rng.choices(comm_codes, comm_weights)[0]
        street = region[:9]
        serial[street] = serial.get(street, 0) + 1
        hh = f"{street}{serial[street]:06d}"
        k = min(rng.choices((1, 2, 3, 4, 5, 6), (30, 25, 20, 13, 8, 4))[0], n_warnings - len(warnings_))
        cats = rng.choices([c for c, _ in CATEGORY_CHOICES], [w for _, w in CATEGORY_CHOICES])[0]
        n_members = rng.choices((1, 2, 3, 4, 5), (20, 28, 25, 17, 10))[0]
        people = []
        for seq in range(1, n_members + 1):
            id_serial += 1
            born = dt.date(1940, 1, 1) + dt.timedelta(days=rng.randrange(0, 365 * 82))
            # synthetic: county prefix + birth date + a running serial (no check digit)
            id_no = f"430103{born:%Y%m%d}{id_serial % 10000:04d}"
            name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
            age = (SNAP - born).days // 365
            people.append(id_no)
            members.append({"household_no": hh, "seq": seq, "id_no": id_no, "name": name, "data": {
                "gender": rng.choice(("男", "女")), "age": age,
                "relation_to_head": "户主" if seq == 1 else rng.choice(("配偶", "子女", "父母", "孙子女")),
                "status": "正常" if rng.random() > 0.02 else "死亡", "hukou_type": rng.choice(("城镇", "农村")),
                "alive": True, "working_age": 16 <= age <= 60,
                "income_monthly": round(rng.uniform(0, 4000), 2) if 16 <= age <= 60 else None,
                "oop_12m": round(rng.uniform(0, 30000), 2), "claims_12m": rng.randrange(0, 12),
                "disability_category": rng.choice((None,) * 9 + ("肢体",)), "disability_grade": None,
                "vehicles_active": rng.choice((0, 0, 0, 1)), "residences": rng.choice((0, 1, 1, 2)),
                "active_categories": [c for c in cats.split(",") if c]}})
        picked: list[str] = []
        while len(picked) < k:
            r = rng.choices(rule_ids, rule_w)[0]
            if r not in picked:
                picked.append(r)
        for rid in picked:
            rule = rules[rid]
            _, feed, field, per_person = RULE_SHAPE[rid]
            subject = rng.choice(people) if per_person else None
            facts = []
            for _ in range(rng.choice((1, 1, 2, 3))):
                day = SNAP - dt.timedelta(days=rng.randrange(1, 365))
                facts.append({"feed": feed, "record_key": f"{feed.split('.')[1][:3].upper()}{rng.randrange(10**9):09d}",
                              "id_no": subject or rng.choice(people), "field": field,
                              "value": f"{rng.uniform(100, 50000):.2f}", "date": day.isoformat()})
            mag = 1.0 if rng.random() < 0.4 else round(rng.uniform(1.0, 3.5), 2)
            score = round(SEVERITY_WEIGHT[rule.severity] * min(max(mag, 1.0), 3.0), 2)
            wid, key = _hex(rng), _hex(rng)
            warnings_.append({
                "snapshot_date": SNAP, "warning_id": wid, "alert_key": key, "rule_id": rid,
                "rule_version": rule.version, "rule_title_zh": rule.title_zh, "severity": rule.severity,
                "kind": rule.kind, "household_no": hh, "region_code": region, "street_code": street,
                "county_code": region[:6], "subject_id_no": subject, "categories": cats,
                "summary_zh": f"{rule.title_zh}：{field} = {facts[0]['value']}，超出阈值 {mag:.2f} 倍",
                "thresholds": {p: round(rng.uniform(1, 100), 1) for p in rule.params}, "facts": facts,
                "magnitude": mag, "score": score, "household_score": 0.0, "household_rank": 0,
                "policy_version": POLICY, "stale_inputs": [] if rng.random() > 0.05 else [feed]})
            status = rng.choices(list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values()))[0]
            cases.append({"alert_key": key, "household_no": hh, "region_code": region, "street_code": street,
                          "rule_id": rid, "status": status, "assignee_id": None, "first_snapshot": SNAP,
                          "last_snapshot": SNAP, "current_warning_id": wid,
                          "decided_warning_id": wid if status in ("dismissed", "closed") else None,
                          "reopen_note": None, "updated_at": loaded})
            if status != "new":  # one decision row each (who / when), as the household page's timeline shows
                actions.append({"alert_key": key, "action": {"assigned": "assign", "visited": "visit",
                                                             "assisted": "assist", "dismissed": "dismiss",
                                                             "closed": "dismiss"}[status],
                                "from_status": "new", "to_status": status, "user_id": None, "at": loaded,
                                "snapshot_date": SNAP, "warning_id": wid, "rule_version": rule.version,
                                "reason_code": "verified_no_risk" if status in ("dismissed", "closed") else None,
                                "assistance": "temporary" if status == "assisted" else None, "assignee_id": None,
                                "note": "入户核实" if status != "assigned" else None})
        hh_scores[hh] = round(sum(w["score"] for w in warnings_[len(warnings_) - k:]), 2)
        income = round(rng.uniform(200, 3000), 2)
        households.append({"household_no": hh, "snapshot_date": SNAP, "region_code": region, "street_code": street,
                           "county_code": region[:6], "data": {
                               "household_no": hh, "region_code": region, "street_code": street,
                               "county_code": region[:6], "hukou_type": rng.choice(("城镇", "农村")),
                               "members_total": n_members, "members_alive": n_members,
                               "working_age_members": rng.randrange(0, n_members + 1),
                               "income_total": round(income * n_members, 2), "income_per_capita": income,
                               "dibao_standard": 850, "low_income_line": 1275,
                               "oop_12m": round(rng.uniform(0, 60000), 2),
                               "medical_total_12m": round(rng.uniform(0, 120000), 2),
                               "dangerous_house_rating": "D级" if "dangerous_house" in picked else None,
                               "active_categories": [c for c in cats.split(",") if c],
                               "active_case_nos": [f"JZ{rng.randrange(10**8):08d}"] if cats != ",," else []}})
    rank = {h: i + 1 for i, h in enumerate(sorted(hh_scores, key=lambda h: (-hh_scores[h], h)))}
    for w in warnings_:
        w["household_score"], w["household_rank"] = hh_scores[w["household_no"]], rank[w["household_no"]]
    return {"households": households, "members": members, "warnings": warnings_, "cases": cases, "actions": actions}


def build(url: str, n_warnings: int, seed: int) -> dict:
    from sqlalchemy import insert, text

    from safetynet.review import auth, db
    from safetynet.review import models as m

    t0 = time.perf_counter()
    engine = db.engine_for(url)
    db.migrate(engine)
    ids = {u: auth.add_user(engine, u, PASSWORD, role, prefix, display_name=f"基准-{role}")
           for u, role, prefix in (COUNTY, STREET)}
    rows = synthesise(n_warnings, seed)
    print(f"synthesised {len(rows['warnings']):,} warnings, {len(rows['households']):,} households, "
          f"{len(rows['members']):,} members, {len(rows['actions']):,} decisions in {time.perf_counter() - t0:.1f}s",
          flush=True)
    for a in rows["actions"]:
        a["user_id"] = ids[STREET[0]]
    with engine.begin() as c:
        for table in ("households", "members", "warnings", "cases", "actions"):
            data, p = rows[table], Progress(f"insert {table}", len(rows[table]))
            for i in range(0, len(data), 5000):
                c.execute(insert(m.metadata.tables[table]), data[i:i + 5000])
                p.add(len(data[i:i + 5000]))
        c.execute(insert(m.snapshots).values(
            snapshot_date=SNAP, loaded_at=db.now(), manifest_sha256=hashlib.sha256(b"bench").hexdigest(),
            policy_version=POLICY, warnings=len(rows["warnings"]), households=len(rows["households"]), reopened=0))
        from safetynet.review import queries

        if hasattr(queries, "recount_facets"):  # the list's facet counts, as `load.load_snapshot` counts them
            queries.recount_facets(c, SNAP)
    with engine.begin() as c:  # planner statistics, as `load.load_snapshot` refreshes them after each load
        c.execute(text("ANALYZE"))
    print(f"built review database ({engine.dialect.name}) in {time.perf_counter() - t0:.1f}s", flush=True)
    engine.dispose()
    return {"households": [h["household_no"] for h in rows["households"]], "warnings": len(rows["warnings"])}


# ---- server -----------------------------------------------------------------------------------------
class Timed:
    """ASGI wrapper adding `x-bench-ms`: time inside the server up to the response start."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def send_(msg):
            if msg["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1000
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-bench-ms", f"{ms:.3f}".encode())]}
            await send(msg)

        await self.app(scope, receive, send_)


def serve(url: str, port: int) -> None:
    """Child process: the app on 127.0.0.1:port; exits when the parent goes away."""
    import uvicorn

    from safetynet.review import db
    from safetynet.review.app import create_app

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()
    engine = db.engine_for(url)
    uvicorn.run(Timed(create_app(engine)), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, url: str, log_path: Path):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


def login(base: str, username: str):
    import httpx

    c = httpx.Client(base_url=base, timeout=120, follow_redirects=False)
    r = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
    r = c.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"})
    if r.status_code != 303 or "sn_session" not in c.cookies:
        raise RuntimeError(f"login as {username} failed: {r.status_code} {r.text[:300]}")
    return c


def over(t0: float, budget: float, done: int, floor: int) -> bool:
    """True when a measuring loop has used its time budget (never before `floor` samples; budget 0: none)."""
    return budget > 0 and done >= floor and time.perf_counter() - t0 > budget


def time_pages(client, paths: list[str], budget: float, floor: int, before=None,
               warmup: int = 3) -> tuple[list[float], list[float]]:
    """(client round-trip ms, in-server ms) of GET path, for each path in turn (within the budget);
    `before()`, if given, runs untimed before every request."""
    for p in paths[:warmup]:
        if before:
            before()
        client.get(p).raise_for_status()
    rt, srv = [], []
    start = time.perf_counter()
    for p in paths:
        if over(start, budget, len(rt), floor):
            break
        if before:
            before()
        t0 = time.perf_counter()
        r = client.get(p)
        rt.append((time.perf_counter() - t0) * 1000)
        if r.status_code != 200:
            raise RuntimeError(f"GET {p}: {r.status_code} {r.text[:300]}")
        srv.append(float(r.headers["x-bench-ms"]))
    return rt, srv


# ---- the app's SQL, captured and replayed ----------------------------------------------------------------
class Capture:
    """Statements (as sent to the driver, with their bound parameters) the engine runs while active."""

    def __init__(self, engine):
        from sqlalchemy import event

        self.engine, self.on, self.got = engine, False, []
        event.listen(engine, "before_cursor_execute", self._hook)

    def _hook(self, conn, cursor, statement, parameters, context, executemany):
        if self.on:
            self.got.append((statement, parameters))

    def run(self, fn, *a, **kw) -> list[tuple[str, object]]:
        self.got, self.on = [], True
        try:
            fn(*a, **kw)
        finally:
            self.on = False
        return self.got


def kinds_of(stmts: list[tuple[str, object]]) -> list[str]:
    """Name each captured statement (whatever the app's query function runs: list, count, facets, …)."""
    out, counted = [], False
    for sql, _ in stmts:
        s = " ".join(sql.split())
        joined = "FROM warnings JOIN" in s and "JOIN cases" in s
        if s.startswith("SELECT max(snapshots.snapshot_date)"):
            k = "latest snapshot"
        elif s.startswith("SELECT max(actions.id)"):
            k = "cache version: max(actions.id)"
        elif s.startswith("SELECT max(snapshots.loaded_at)"):
            k = "cache version: last load"
        elif "FROM facet_counts" in s or "JOIN facet_counts" in s:
            k = "facet counts: read (first use, or after a load)"
        elif "JOIN actions ON actions.id >" in s:
            k = "facet counts: decisions since"
        elif "FROM warnings" in s and " LIMIT " in s:
            k = "list"
        elif s.startswith("SELECT count(*)") and joined:
            k = "facet category count" if counted else "count"
            counted = True
        elif joined and "GROUP BY" in s:
            by = s.split("GROUP BY ", 1)[1].split(" ORDER BY")[0].split(", ")
            k = f"facets+total: one GROUP BY over {len(by)} columns" if len(by) > 1 else \
                "facet " + by[0].split(".")[-1]
        elif "GROUP BY warnings.rule_id" in s:
            k = "facet rule titles"
        elif "FROM households" in s:
            k = "household"
        elif "FROM members" in s:
            k = "members"
        elif "FROM actions" in s:
            k = "actions"
        elif joined:
            k = "warnings"
        else:
            k = "other: " + s[:48]
        out.append(k)
    return out


def replay(raw, stmts: list[list[tuple[str, object]]], reps: int, budget: float,
           floor: int) -> tuple[list[float], list[list[float]]]:
    """Run the batches (cycling) `reps` times on a DBAPI cursor, fetching every row, within the budget:
    (ms per batch, ms per statement of the first batch's shape)."""
    cur = raw.cursor()
    for sql, params in stmts[0]:  # warm-up
        cur.execute(sql, params)
        cur.fetchall()
    total, per = [], [[] for _ in stmts[0]]
    start = time.perf_counter()
    for i in range(reps):
        if over(start, budget, len(total), floor):
            break
        batch = stmts[i % len(stmts)]
        t_batch = time.perf_counter()
        for j, (sql, params) in enumerate(batch):
            t0 = time.perf_counter()
            cur.execute(sql, params)
            cur.fetchall()
            if j < len(per):
                per[j].append((time.perf_counter() - t0) * 1000)
        total.append((time.perf_counter() - t_batch) * 1000)
    cur.close()
    return total, per


def page_count(cap: Capture, engine, queries, user, f) -> list[tuple[str, object]]:
    """The page's count(*) statement: the app's own join and conditions (`queries._base`, `queries._conds`)
    — what `list_warnings` ran for its total before the total came from the facet GROUP BY."""
    from sqlalchemy import func, select

    day = f.snapshot or queries.latest_snapshot(engine)

    def count() -> None:
        with engine.connect() as con:
            con.scalar(queries._base(select(func.count()), queries._conds(user, f, day)))

    return cap.run(count)


def app_version() -> str:
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True).stdout.strip()

    dirty = git("status", "--porcelain", "--", "safetynet/review")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes in safetynet/review" if dirty else "")


# ---- concurrent mode: 20 staff browsing, opening households and deciding at once ----------------------
GOALS_MS = {"list": 300, "household": 150, "decision": 200, "login": 500}  # p95 goals (issue #16, point 3)
# what a client does next, and how often: the list (first page, a filter, a deep page by cursor), a household
# (then, half the time, a decision on one of its cases), now and then a new login
MIX = {"list_first": 14, "list_filtered": 14, "list_deep": 14, "household": 50, "login": 3}
DECIDE_AFTER_VIEW = 0.5
ACTION_WEIGHTS = {"assign": 5, "visit": 5, "assist": 2, "dismiss": 2, "close": 1}
DECISION_FIELDS = {"dismiss": {"reason_code": "verified_no_risk", "note": "基准：已核实无风险"},
                   "assist": {"assistance": "temporary", "note": "基准：已启动临时救助"},
                   "visit": {"note": "基准：已入户走访"}, "close": {"note": "基准：办结"}, "assign": {}}
DECIDE_FORM = re.compile(r'<form method="post" action="/cases/([0-9a-f]+)/decide" class="decision" '
                         r'data-action="(\w+)">')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
ASSIGNEE = re.compile(r'<option value="(\d+)">')
NEXT_LINK = re.compile(r'<a href="/\?([^"]*)"[^>]*id="next-page"')


def staff_accounts(n: int) -> list[tuple[str, str, str]]:
    """(username, role, region prefix) for n clients: half county reviewers, half street workers
    (a street each, round the county's 14)."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append((f"bench_cr{i:02d}", "county_reviewer", "430103"))
        else:
            out.append((f"bench_sw{i:02d}", "street_worker", f"430103{(i // 2) % 14 + 1:03d}"))
    return out


class Recorder:
    """Every timed request of every client: (db, operation, kind, round-trip ms, in-server ms, status)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[tuple[str, str, float, float, int, float]] = []
        self.t0 = time.perf_counter()
        self.errors: list[str] = []

    def add(self, op: str, kind: str, ms: float, r) -> None:
        srv = float(r.headers.get("x-bench-ms", "nan"))
        with self.lock:
            self.rows.append((op, kind, ms, srv, r.status_code, time.perf_counter() - self.t0 - ms / 1000))

    def error(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(msg)


class Staff(threading.Thread):
    """One client: its own HTTP connection and session, a random walk through the app until `deadline`."""

    def __init__(self, base: str, account: tuple[str, str, str], plan: dict, rec: Recorder, start: threading.Barrier,
                 stop_at: list[float], think: float, seed: int):
        super().__init__(daemon=True, name=account[0])
        self.base, self.account, self.plan, self.rec, self.start_gate = base, account, plan, rec, start
        self.stop_at, self.think, self.rng = stop_at, think, random.Random(seed)
        self.client = None
        self.next_query: str | None = None  # the last list page's "next page" link, followed now and then

    def timed(self, op: str, kind: str, method: str, path: str, ok: tuple[int, ...] = (200,), **kw):
        t0 = time.perf_counter()
        r = self.client.request(method, path, **kw)
        ms = (time.perf_counter() - t0) * 1000
        self.rec.add(op, kind, ms, r)
        if r.status_code not in ok:
            self.rec.error(f"{self.account[0]} {method} {path[:80]}: {r.status_code} {r.text[:120]!r}")
        return r

    def login_form(self) -> str:
        """A new browser session at the login page (cookies dropped): the form's CSRF token."""
        import httpx

        if self.client is None:
            self.client = httpx.Client(base_url=self.base, timeout=120, follow_redirects=False)
        self.client.cookies.clear()
        return CSRF_FIELD.search(self.client.get("/login").text).group(1)

    def login(self, token: str, kind: str = "during the run") -> None:
        r = self.timed("login", kind, "POST", "/login", ok=(303,),
                       data={"username": self.account[0], "password": PASSWORD, "csrf_token": token, "next": "/"})
        if r.status_code != 303:
            raise RuntimeError(f"login {self.account[0]}: {r.status_code}")

    def pause(self) -> None:
        if self.think > 0:
            time.sleep(self.rng.expovariate(1 / self.think))

    def run(self) -> None:
        try:
            token = self.login_form()
            self.start_gate.wait()
            self.login(token, "all at once, at the start")  # twenty staff pressing 登录 at the same moment
            while time.perf_counter() < self.stop_at[0]:
                self.pause()
                op = self.rng.choices(list(MIX), list(MIX.values()))[0]
                if op == "login":
                    token = self.login_form()
                    self.pause()  # typing the password
                    self.login(token)
                elif op == "household":
                    self.household()
                else:
                    self.listing(op)
        except Exception as e:
            self.rec.error(f"{self.account[0]} stopped: {type(e).__name__}: {e}")
        finally:
            if self.client is not None:
                self.client.close()

    def listing(self, op: str) -> None:
        p = self.plan
        if op == "list_first":
            path, kind = "/", "first page"
        elif op == "list_filtered":
            f = self.rng.choice(p["filters"])
            path, kind = "/?" + "&".join(f"{k}={v}" for k, v in f.items()), "filtered"
        elif self.next_query and self.rng.random() < 0.5:  # the next page after the one last seen
            path, kind = "/?" + self.next_query.replace("&amp;", "&"), "next page (link)"
        else:  # a deep page, somewhere in the list
            path, kind = self.rng.choice(p["deep"]), p["deep_kind"]
        r = self.timed("list", kind, "GET", path)
        m = NEXT_LINK.search(r.text)
        self.next_query = m.group(1) if m else None

    def household(self) -> None:
        hh = self.rng.choice(self.plan["households"])
        r = self.timed("household", "page", "GET", f"/households/{hh}")
        if r.status_code != 200 or self.rng.random() >= DECIDE_AFTER_VIEW:
            return
        forms = DECIDE_FORM.findall(r.text)
        if not forms:
            return
        self.pause()  # reading the facts before deciding
        weights = [ACTION_WEIGHTS[a] for _, a in forms]
        key, action = self.rng.choices(forms, weights)[0]
        data = {"csrf_token": CSRF_FIELD.search(r.text).group(1), "action": action, "household_no": hh,
                **DECISION_FIELDS[action]}
        if action == "assign":
            ids = ASSIGNEE.findall(r.text)
            if not ids:
                return
            data["assignee_id"] = self.rng.choice(ids)
        # 409: another client decided on the case first (rare here: random households); counted, not an error
        self.timed("decision", action, "POST", f"/cases/{key}/decide", ok=(303, 409), data=data)


def concurrent_plan(url: str, account: tuple[str, str, str], households: list[str], rng: random.Random) -> dict:
    """What a client may request: households in its scope, filters, deep pages (by keyset cursor when the app
    pages by cursor, else by page number)."""
    from sqlalchemy import func, select

    from safetynet.review import db, queries
    from safetynet.review import models as m

    _, role, prefix = account
    mine = [h for h in households if h.startswith(prefix)]
    streets = sorted({h[:9] for h in households})
    engine = db.engine_for(url)
    try:
        with engine.connect() as c:
            w = m.warnings.c
            total = c.scalar(select(func.count()).select_from(m.warnings).where(w.region_code.startswith(prefix)))
            communities = sorted(c.execute(select(w.region_code).where(w.region_code.startswith(prefix)).distinct())
                                 .scalars())
            rules = sorted(c.execute(select(w.rule_id).distinct()).scalars())
            pages = -(-total // queries.PAGE_SIZE)
            encode = getattr(queries, "encode_cursor", None)
            if encode is not None:  # deep pages by keyset cursor: the key of a row deep in the list
                offsets = sorted(rng.randrange(pages // 2, pages) * queries.PAGE_SIZE - 1 for _ in range(40))
                q = (select(w.score, w.household_no, w.warning_id).where(w.region_code.startswith(prefix))
                     .order_by(*queries._order()))  # the list's order (the app's own)
                deep = []
                for off in offsets:
                    row = c.execute(q.offset(off).limit(1)).first()
                    deep.append(f"/?after={encode(tuple(row))}&page={off // queries.PAGE_SIZE + 2}")
                deep_kind = "deep page (cursor)"
            else:
                deep = [f"/?page={rng.randrange(pages // 2, pages + 1)}" for _ in range(40)]
                deep_kind = "deep page (offset)"
    finally:
        engine.dispose()
    filters = [{"severity": "S1"}, {"status": "visited"}, {"category": "低保"}]
    filters += [{"rule": r} for r in rng.sample(rules, 3)]
    filters += [{"community": cm} for cm in rng.sample(communities, 3)]
    if role == "county_reviewer":
        filters += [{"street": s, "severity": rng.choice(("S1", "S2"))} for s in rng.sample(streets, 3)]
    return {"households": mine, "filters": filters, "deep": deep, "deep_kind": deep_kind, "total": total}


def concurrent_run(backend: str, url: str, args) -> dict:
    """Build the database, serve the app, run the clients for `args.duration` seconds: the recorded requests."""
    from safetynet.review import auth, db

    info = build(url, args.warnings, args.seed)
    accounts = staff_accounts(args.clients)
    engine = db.engine_for(url)
    try:
        for uname, role, prefix in accounts:
            auth.add_user(engine, uname, PASSWORD, role, prefix, display_name=f"基准-{uname}")
    finally:
        engine.dispose()
    rng = random.Random(args.seed + 2)
    plans = [concurrent_plan(url, a, info["households"], rng) for a in accounts]
    plans_total = {a[2]: p["total"] for a, p in zip(accounts, plans, strict=True)}
    logdir = Path(tempfile.mkdtemp(prefix="bench-review-log-"))
    server = Server(url, logdir / "server.log")
    rec = Recorder()
    try:
        server.wait_ready()
        # a warm server, as after its first minutes: one list page per scope (the first use of a scope reads its
        # facet counts from the database — ~0.2 s for the county's 30,000 groups; again after each snapshot load)
        for prefix, uname in {prefix: u for u, _, prefix in accounts}.items():
            c = login(server.base, uname)
            r = c.get("/")
            r.raise_for_status()
            c.close()
            shown = int(re.search(r'<strong id="total">(\d+)</strong>', r.text).group(1))
            if shown != plans_total[prefix]:  # the app's counts are this data's
                raise RuntimeError(f"list total for {prefix}: {shown}, expected {plans_total[prefix]}")
        rec.rows.clear()
        rec.t0 = time.perf_counter()
        gate = threading.Barrier(len(accounts) + 1)
        stop_at = [float("inf")]
        staff = [Staff(server.base, a, p, rec, gate, stop_at, args.think, args.seed + 10 + i)
                 for i, (a, p) in enumerate(zip(accounts, plans, strict=True))]
        for s in staff:
            s.start()
        gate.wait()
        t0 = rec.t0 = time.perf_counter()
        stop_at[0] = t0 + args.duration
        print(f"  {backend}: {len(staff)} clients for {args.duration:g}s "
              f"(think time {'none' if args.think <= 0 else f'mean {args.think:g}s'}) …", flush=True)
        for s in staff:
            s.join(timeout=args.duration + 300)
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
        if rec.errors:  # the server's exception lines (ID numbers masked), not whole tracebacks
            from schemas.idno import mask_text

            lines = server.log_path.read_text(errors="replace").splitlines()
            rec.errors += [f"server: {mask_text(x)[:300]}" for x in lines
                           if re.match(r"^[A-Za-z_.]+(Error|Exception)\b", x)][:10]
        shutil.rmtree(logdir, ignore_errors=True)
    if os.environ.get("BENCH_REVIEW_DUMP"):  # development: every timed request, for a closer look
        import json

        Path(os.environ["BENCH_REVIEW_DUMP"] + f".{backend}.json").write_text(json.dumps(rec.rows))
    return {"rows": rec.rows, "errors": rec.errors, "elapsed": elapsed, "warnings": info["warnings"]}


# OWASP Password Storage Cheat Sheet: argon2id minimums, all equivalent — (memory KiB, passes), parallelism 1
OWASP_ARGON2ID = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))


def argon2_cost() -> str:
    from safetynet.review import auth

    p = getattr(auth, "_hasher", None) or auth.HASHER
    return f"argon2{p.type.name.lower()} m={p.memory_cost} KiB, t={p.time_cost}, p={p.parallelism}"


def owasp_ok() -> bool:
    """At or above OWASP's minimum for argon2id: at least the memory and the passes of one of its equivalent
    settings (m=47104 KiB t=1, 19456/2, 12288/3, 9216/4, 7168/5), p ≥ 1."""
    from safetynet.review import auth

    p = getattr(auth, "_hasher", None) or auth.HASHER
    return p.type.name == "ID" and p.parallelism >= 1 and any(
        p.memory_cost >= m_ and p.time_cost >= t_ for m_, t_ in OWASP_ARGON2ID)


def machine() -> str:
    """The machine as the run found it: load, cores, and argon2's time for one hash and for 20 hashed on as many
    threads as the app has hash slots (the floor of a burst of 20 logins)."""
    from safetynet.review import auth

    h = auth.hash_password("bench-machine-check")
    t0 = time.perf_counter()
    auth._hasher.verify(h, "bench-machine-check")
    one = (time.perf_counter() - t0) * 1000
    slots = getattr(auth, "HASH_SLOTS", 1)

    def some(n: int) -> None:
        for _ in range(n):
            auth._hasher.verify(h, "bench-machine-check")

    threads = [threading.Thread(target=some, args=(20 // slots + (i < 20 % slots),)) for i in range(slots)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    twenty = (time.perf_counter() - t0) * 1000
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores, load average {load}; argon2 verify {one:.0f} ms, "
            f"20 of them on {slots} thread(s) {twenty:.0f} ms")


def concurrent_main(args) -> None:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    version = app_version()
    print(f"app: commit {version}; {argon2_cost()}", flush=True)
    machines = [machine()]
    print(machines[0], flush=True)
    results = {}
    for backend in backends:
        if backend == "sqlite":
            url, remove = create_database(argparse.Namespace(db=""))
        elif backend == "postgresql":
            url, remove = create_database(argparse.Namespace(db=args.pg))
        else:
            raise SystemExit(f"unknown backend {backend!r} (sqlite, postgresql)")
        try:
            results[backend] = concurrent_run(backend, url, args)
        finally:
            remove()
        machines.append(machine())

    print()
    print(f"review app under load (commit {version}): {args.clients} clients, {args.duration:g}s each database, "
          f"{next(iter(results.values()))['warnings']:,} warnings in one county; think time "
          f"{'none (closed loop)' if args.think <= 0 else f'exponential, mean {args.think:g}s'}; {argon2_cost()}")
    print("ms = HTTP round trip on loopback (srv = inside the server process); goal = p95 goal in ms")
    for when, m_ in zip(["before", *(f"after {b}" for b in results)], machines, strict=False):
        print(f"{when}: {m_}")
    hdr = f"{'database':<11}{'operation':<30}{'n':>6}{'p50':>8}{'p95':>8}{'srv p95':>9}{'goal':>6}  {'':<4}"
    print(hdr)
    print("-" * len(hdr))
    worst = 0.0
    for backend, res in results.items():
        rows = res["rows"]
        for op, goal in GOALS_MS.items():
            mine = [r for r in rows if r[0] == op]
            if not mine:
                print(f"{backend:<11}{op:<30}{0:>6}")
                worst = float("inf")
                continue
            rt, srv = [r[2] for r in mine], [r[3] for r in mine]
            p95 = pct(rt, .95)
            worst = max(worst, p95 / goal)
            print(f"{backend:<11}{op:<30}{len(rt):>6}{pct(rt, .5):>8.1f}{p95:>8.1f}{pct(srv, .95):>9.1f}{goal:>6}  "
                  f"{'ok' if p95 <= goal else 'MISS'}")
            kinds = sorted({r[1] for r in mine})
            if len(kinds) > 1:
                for k in kinds:
                    sub = [r for r in mine if r[1] == k]
                    krt, ksrv = [r[2] for r in sub], [r[3] for r in sub]
                    print(f"{'':<11}{'  ' + k:<30}{len(krt):>6}{pct(krt, .5):>8.1f}{pct(krt, .95):>8.1f}"
                          f"{pct(ksrv, .95):>9.1f}")
        n = len(rows)
        codes = {}
        for r in rows:
            codes[r[4]] = codes.get(r[4], 0) + 1
        print(f"{'':<11}{n:,} requests in {res['elapsed']:.0f}s ({n / res['elapsed']:.0f}/s); answers "
              + ", ".join(f"{k}: {v}" for k, v in sorted(codes.items())))
        for e in res["errors"][:20]:
            print(f"{'':<11}error: {e}")
        if res["errors"]:
            worst = float("inf")
    print()
    owasp = owasp_ok()
    met = worst <= 1 and owasp
    print(f"goals (p95 list ≤ {GOALS_MS['list']}, household ≤ {GOALS_MS['household']}, decision ≤ "
          f"{GOALS_MS['decision']}, login ≤ {GOALS_MS['login']} ms; argon2 at or above OWASP's minimum: "
          f"{'yes' if owasp else 'NO'}) on {' and '.join(results)}: {'met' if met else 'NOT met'}")
    print(f"p95_over_goal={worst:.3f}")


# ---- main ---------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--warnings", type=int, default=200_000)
    ap.add_argument("--requests", type=int, default=200, help="requests (and raw SQL repetitions) per page")
    ap.add_argument("--db", default="", help="PostgreSQL server URL (a throw-away database is created on it)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20,000 warnings, 50 requests")
    ap.add_argument("--budget", type=float, default=90,
                    help="seconds per measuring loop: stop early (after at least --floor samples) when used; 0: none")
    ap.add_argument("--floor", type=int, default=30, help="fewest samples per loop under the budget")
    ap.add_argument("--diag-reps", type=int, default=10, help="repetitions of the per-statement list diagnostics")
    ap.add_argument("--seed", type=int, default=20261101)
    ap.add_argument("--concurrent", action="store_true",
                    help="concurrent mode: --clients staff browsing, opening households and deciding for --duration s")
    ap.add_argument("--clients", type=int, default=20, help="concurrent mode: clients")
    ap.add_argument("--duration", type=float, default=60, help="concurrent mode: seconds per database")
    ap.add_argument("--think", type=float, default=1.0,
                    help="concurrent mode: mean pause (s, exponential) between a client's requests; 0: none (a "
                         "closed loop: saturation, where latency is set by throughput)")
    ap.add_argument("--backends", default="sqlite,postgresql", help="concurrent mode: databases, in order")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                    help="concurrent mode: the PostgreSQL server (a throw-away database is created on it)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(args.serve, args.port)
    if args.quick:
        args.warnings, args.requests = 20_000, 50
    if args.concurrent:
        return concurrent_main(args)
    n = args.requests

    url, remove = create_database(args)
    server = engine = raw = None
    clients = []
    logdir = Path(tempfile.mkdtemp(prefix="bench-review-log-"))
    try:
        version = app_version()
        print(f"app: commit {version}", flush=True)
        info = build(url, args.warnings, args.seed)
        server = Server(url, logdir / "server.log")
        server.wait_ready()
        county, street = login(server.base, COUNTY[0]), login(server.base, STREET[0])
        clients = [county, street]

        from sqlalchemy import select

        from safetynet.review import db, queries
        from safetynet.review import models as m
        from safetynet.review.auth import User

        engine = db.engine_for(url)
        users = {}
        with engine.connect() as c:
            for uname, _, _ in (COUNTY, STREET):
                r = c.execute(select(m.users).where(m.users.c.username == uname)).first()
                users[uname] = User(r.id, r.username, r.display_name, r.role, r.region_prefix)
        cu, su = users[COUNTY[0]], users[STREET[0]]
        last = -(-info["warnings"] // queries.PAGE_SIZE)  # every synthetic warning is in the county's scope
        rng = random.Random(args.seed + 1)
        sample = [rng.choice(info["households"]) for _ in range(n)]  # county scope: every household
        with engine.connect() as c:  # a case to record decisions on (the "after a decision" page), in street 001
            w0 = c.execute(select(m.cases.c.alert_key, m.cases.c.status)
                           .where(m.cases.c.street_code == STREET[2], m.cases.c.status.in_(("new", "assigned")))
                           .order_by(m.cases.c.alert_key).limit(1)).first()
        state = {"status": w0.status}

        def decision() -> None:
            """A real decision (`queries.decide`, as the app records it), the case going visited ↔ assigned: it
            changes the case statuses the list counts, so whatever the app keeps of the counts must follow."""
            if state["status"] == "visited":
                state["status"] = queries.decide(engine, cu, w0.alert_key, "assign", assignee_id=su.id)["status"]
            else:
                state["status"] = queries.decide(engine, cu, w0.alert_key, "visit", note="bench")["status"]

        pages = [  # (label, client, path(s), user, Filters or None for the household page, before each request)
            ("list / (county)", county, ["/"] * n, cu, queries.Filters(), None),
            ("list / (county, after a decision)", county, ["/"] * n, cu, queries.Filters(), decision),
            ("list / (street worker)", street, ["/"] * n, su, queries.Filters(), None),
            ("list ?street=003&severity=S1", county, ["/?street={street}&severity={severity}".format(**FILTERED)] * n,
             cu, queries.Filters(**FILTERED), None),
            (f"list ?page={last} (deep)", county, [f"/?page={last}"] * n, cu, queries.Filters(page=last), None),
        ]
        if hasattr(queries, "encode_cursor"):  # the same deep page, reached by its keyset cursor
            with engine.connect() as c:
                w = m.warnings.c
                row = c.execute(select(w.score, w.household_no, w.warning_id).order_by(*queries._order())
                                .offset((last - 1) * queries.PAGE_SIZE - 1).limit(1)).first()
            token = queries.encode_cursor(tuple(row))
            pages.append(("list ?after=… (deep, cursor)", county, [f"/?after={token}&page={last}"] * n, cu,
                          queries.Filters(after=token, page=last), None))
        pages.append(("household /households/<no>", county, [f"/households/{h}" for h in sample], cu, None, None))
        print(f"serving on {server.base}; {n} requests per page, {info['warnings']:,} warnings, "
              f"{last} list pages", flush=True)

        results = []
        cap = Capture(engine)
        raw = engine.raw_connection()
        if engine.dialect.name == "postgresql":
            raw.dbapi_connection.autocommit = True  # no long-lived snapshot across the replay
        for label, client, paths, user, f, before in pages:
            t0 = time.perf_counter()
            rt, srv = time_pages(client, paths, args.budget, args.floor, before)
            # the app's own SQL for this page: run its query function once per distinct request, capturing
            warm = None
            if f is not None:
                cache = getattr(queries, "_GROUPS_CACHE", None)  # the app's in-process facet cache, if any:
                if cache is not None:  # emptied in this (the benchmark's) process, to capture a miss
                    cache.clear()
                got = cap.run(queries.list_warnings, engine, user, f)  # cache miss (or no cache)
                warm = {s for s, _ in cap.run(queries.list_warnings, engine, user, f)}  # a repeated request
                if before:
                    warm = {s for s, _ in got}
                kinds = kinds_of(got)
                listed = [g for g, k in zip(got, kinds, strict=True) if k == "list"]
                if len(listed) != 1:
                    raise RuntimeError(f"expected one list statement, got kinds {kinds}")
                base = [page_count(cap, engine, queries, user, f) + listed]
                full = [got]
            else:
                base, full = [], []
                for h in dict.fromkeys(sample):  # one capture per distinct household (their IN lists differ)
                    got = cap.run(queries.household, engine, user, h)
                    kinds = kinds_of(got)
                    base.append([g for g, k in zip(got, kinds, strict=True)
                                 if k in ("household", "members", "warnings", "actions")])
                    full.append(got)
                kinds = kinds_of(full[0])
            raw_ms, _ = replay(raw, base, n, args.budget, args.floor)
            results.append({"label": label, "rt": rt, "srv": srv, "raw": raw_ms, "sql": full, "kinds": kinds,
                            "warm": warm, "f": f, "user": user, "before": before})
            print(f"  {label}: {len(rt)} requests, page p95 {pct(rt, .95):.1f} ms; {len(raw_ms)}× raw SQL, "
                  f"p95 {pct(raw_ms, .95):.1f} ms ({time.perf_counter() - t0:.0f}s)", flush=True)

        # diagnostics: every statement the list function runs (count, list, facets, …), timed one by one
        diag_reps = min(n, args.diag_reps)
        diag = {}
        for r in results:
            if r["warm"] is not None:
                tot, per = replay(raw, r["sql"], diag_reps, args.budget, min(3, diag_reps))
                fn = []  # the query function itself, in this process (its SQL + its Python; no HTTP, no template)
                queries.list_warnings(engine, r["user"], r["f"])
                for _ in range(diag_reps):
                    if r["before"]:
                        r["before"]()
                    t1 = time.perf_counter()
                    queries.list_warnings(engine, r["user"], r["f"])
                    fn.append((time.perf_counter() - t1) * 1000)
                diag[r["label"]] = (tot, per, fn)
    finally:
        for c in clients:
            c.close()
        if server is not None:
            server.stop()
        if raw is not None:
            raw.close()
        if engine is not None:
            engine.dispose()
        remove()
        shutil.rmtree(logdir, ignore_errors=True)

    backend = "PostgreSQL" if args.db else "SQLite"
    print()
    print(f"review app (commit {version}), {backend}, {info['warnings']:,} warnings, up to {n} requests per page "
          f"(page = HTTP round trip on loopback; srv = inside the server; raw = the page's SQL on a DBAPI cursor)")
    hdr = (f"{'page':<34}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'srv p95':>9}{'raw n':>6}{'raw p50':>9}{'raw p95':>9}"
           f"{'ratio':>8}")
    print(hdr)
    print("-" * len(hdr))
    ratios = []
    for r in results:
        ratio = pct(r["rt"], .95) / pct(r["raw"], .95)
        ratios.append(ratio)
        print(f"{r['label']:<34}{len(r['rt']):>5}{pct(r['rt'], .5):>9.1f}{pct(r['rt'], .95):>9.1f}"
              f"{pct(r['srv'], .95):>9.1f}{len(r['raw']):>6}{pct(r['raw'], .5):>9.2f}{pct(r['raw'], .95):>9.2f}"
              f"{ratio:>8.2f}")
    if any(len(r["rt"]) < n or len(r["raw"]) < n for r in results):
        print(f"(n < {n}: that loop stopped at its --budget of {args.budget:g}s)")
    print("raw = the app's ORDER BY/LIMIT/OFFSET list statement + count(*) over its join and conditions (list pages); "
          "its household + members + warnings + actions selects (household page; not its audit-log append)")
    print()
    print(f"where a list page's time goes: every statement queries.list_warnings runs, up to {diag_reps}× (ms); "
          "* = only on a facet-cache miss (a repeated request skips it)")
    for label, (tot, per, fn) in diag.items():
        r = next(x for x in results if x["label"] == label)
        hit = [j for j, (sql, _) in enumerate(r["sql"][0]) if sql in r["warm"]]
        warm_tot = [sum(per[j][i] for j in hit) for i in range(len(tot))]
        line = f"  {label}: all {len(per)} statements p50 {pct(tot, .5):.1f} / p95 {pct(tot, .95):.1f}"
        if len(hit) < len(per):
            line += f"; the {len(hit)} of a repeated request p50 {pct(warm_tot, .5):.1f} / p95 {pct(warm_tot, .95):.1f}"
        print(line + f"; queries.list_warnings in-process p50 {pct(fn, .5):.1f}, page p50 {pct(r['rt'], .5):.1f}; "
              "median per statement:")
        top = sorted(zip(r["kinds"], per, range(len(per)), strict=True), key=lambda kv: -statistics.median(kv[1]))
        print("    " + ", ".join(f"{k}{'' if j in hit else '*'} {statistics.median(v):.1f}" for k, v, j in top))
    print()
    print(f"ratio = max over the {len(ratios)} pages of (page p95 / raw SQL p95); mean {statistics.mean(ratios):.2f}")
    print(f"ratio={max(ratios):.3f}")


if __name__ == "__main__":
    main()
