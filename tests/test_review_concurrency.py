"""Issue #13 (1): many staff logging in and deciding at once, against the *served* review app (uvicorn on a
free loopback port, real HTTP through httpx), on SQLite and on PostgreSQL.

24 clients (street workers, county reviewers, community assistants) start together at a barrier, log in at
the same instant (half through the form, half through the API), then for a few rounds each views a
household, reads the case statuses from the list, and decides on the SAME few cases as everybody else,
from what it saw (so most decisions race, many from a stale status); half decide through the API, half
through the household page's form; halfway through each logs in again. Afterwards:

* the audit chain verifies (`audit.verify`, and `safetynet review verify-audit` exits 0), and it holds
  exactly one entry per login, household view and applied decision;
* every contested case's actions form one chain — each `from_status` the previous `to_status`, from the
  status it had before, its final status the last `to_status` — with one action per decision answered
  as applied: none applied twice, none lost;
* an auditor polling the audit log (`chain_ok`) meanwhile never sees the chain reported broken;
* nothing answered 5xx; the losers of a race got 409 with a message telling them to refresh.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter, defaultdict

import pytest
from sqlalchemy import func, select

from safetynet.cli import main
from safetynet.review import audit, auth
from safetynet.review import models as m
from safetynet.review.queries import TRANSITIONS
from tests.review_support import PASSWORD, STREET_A, live_server

pytestmark = pytest.mark.integration

COMMUNITY = STREET_A + "001"  # holds the planted households: enough cases, all in every client's scope
CASES = 8  # contested cases: every client decides on all of them
ROUNDS = 4
# (username prefix, role, region prefix, how many)
STAFF = [("sw", "street_worker", STREET_A, 14), ("cr", "county_reviewer", STREET_A[:6], 6),
         ("ca", "community_assistant", COMMUNITY, 4)]
CLIENTS = sum(n for *_, n in STAFF)
AUDITOR_POLLS = 40
# how often a client picks each action among those valid from the status it saw: mostly the ones that keep
# a case open (assign ↔ visit), so it stays contested for several rounds before it is closed
WEIGHTS = {"assign": 6, "visit": 6, "assist": 1, "dismiss": 1, "close": 1}
ARGS = {"dismiss": {"reason_code": "verified_no_risk", "note": "已核实，无风险"},
        "assist": {"assistance": "temporary", "note": "已启动临时救助"},
        "visit": {"note": "已入户走访"}, "close": {"note": "办结"}, "assign": {}}


def _count(engine, table) -> int:
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(table))


class Tally:
    """What the clients saw, shared by their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.codes: Counter = Counter()
        self.bad: list[str] = []  # unexpected answers (any 5xx among them)
        self.logins = self.views = 0
        self.applied: Counter = Counter()  # alert_key → decisions answered as applied
        self.conflicts: Counter = Counter()  # 409 messages (API detail, or the error page's text)
        self.errors: list[str] = []
        self.chain_ok: list[bool] = []  # the auditor's `chain_ok`, polled while the clients work

    def answer(self, what: str, r, ok: tuple[int, ...]) -> bool:
        with self.lock:
            self.requests += 1
            self.codes[r.status_code] += 1
            if r.status_code not in ok:
                self.bad.append(f"{what}: {r.status_code} {r.text[:300]}")
        return r.status_code in ok


def _client(url: str, username: str, role: str, i: int, cases: list[tuple[str, str]], assignee: int,
            start: threading.Barrier, decide: threading.Barrier, tally: Tally) -> None:
    import httpx

    rng = random.Random(i)
    form = i % 2 == 1  # odd clients use the pages (form login, form decisions), even ones the API
    allowed = set(auth.ROLES[role].decide)
    try:
        # trust_env=False: never through a proxy from the environment — loopback only
        with httpx.Client(base_url=url, timeout=120, follow_redirects=False, trust_env=False) as hc:
            start.wait()
            csrf = _login(hc, username, form, tally)
            decide.wait()
            for rnd in range(ROUNDS):
                if rnd == ROUNDS // 2:
                    csrf = _login(hc, username, form, tally)  # a new session, mid-way: logins race decisions
                hh = cases[(i + rnd) % len(cases)][1]
                if tally.answer("view", hc.get(f"/api/v1/households/{hh}"), (200,)):
                    with tally.lock:
                        tally.views += 1
                r = hc.get("/api/v1/warnings", params={"community": COMMUNITY, "limit": 500})
                listed = r.json()["rows"] if tally.answer("list", r, (200,)) else []
                seen = {w["alert_key"]: w["status"] for w in listed}
                order = list(cases)
                if rnd:  # round 0: everybody on the same case at the same moment; then each in its own order
                    rng.shuffle(order)
                for key, household_no in order:
                    options = [a for a in allowed if seen.get(key) in TRANSITIONS[a][0]]
                    if not options:
                        continue
                    action = rng.choices(sorted(options), weights=[WEIGHTS[a] for a in sorted(options)])[0]
                    body = {"action": action, **ARGS[action]}
                    if action == "assign":
                        body["assignee_id"] = assignee
                    if form:
                        r = hc.post(f"/cases/{key}/decide", data={**body, "csrf_token": csrf,
                                                                   "household_no": household_no})
                        ok = tally.answer("decide (form)", r, (303, 409))
                    else:
                        r = hc.post(f"/api/v1/cases/{key}/decisions", json=body, headers={"X-CSRF-Token": csrf})
                        ok = tally.answer("decide (API)", r, (200, 409))
                    with tally.lock:
                        if ok and r.status_code != 409:
                            tally.applied[key] += 1
                        elif r.status_code == 409:
                            msg = r.json()["detail"] if not form else _error_text(r.text)
                            tally.conflicts[msg] += 1
    except Exception as e:
        with tally.lock:
            tally.errors.append(f"{username}: {type(e).__name__}: {e}")
        start.abort()
        decide.abort()


def _auditor(url: str, done: threading.Event, tally: Tally) -> None:
    """The auditor's view while everybody works: the chain verifies at every moment, not only at rest."""
    import httpx

    try:
        with httpx.Client(base_url=url, timeout=120, follow_redirects=False, trust_env=False) as hc:
            _login(hc, "auditor", False, tally)
            for _ in range(AUDITOR_POLLS):
                if done.is_set():
                    break
                r = hc.get("/api/v1/audit")
                if tally.answer("audit log", r, (200,)):
                    with tally.lock:
                        tally.chain_ok.append(r.json()["chain_ok"])
                time.sleep(0.2)
    except Exception as e:
        with tally.lock:
            tally.errors.append(f"auditor: {type(e).__name__}: {e}")


def _login(hc, username: str, form: bool, tally: Tally) -> str:
    """Log in (the form or the API); the session's CSRF token."""
    if form:
        r = hc.get("/login")
        tally.answer("login form", r, (200,))
        token = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
        r = hc.post("/login", data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"})
        if tally.answer("login (form)", r, (303,)):
            with tally.lock:
                tally.logins += 1
        r = hc.get("/api/v1/me")
        tally.answer("me", r, (200,))
        return r.json()["csrf_token"]
    r = hc.post("/api/v1/login", json={"username": username, "password": PASSWORD})
    if tally.answer("login (API)", r, (200,)):
        with tally.lock:
            tally.logins += 1
    return r.json()["csrf_token"]


def _error_text(html: str) -> str:
    """The message of the error page (the form's 409)."""
    found = re.search(r"(该预警[^<]*|当前状态[^<]*)", html)
    return found.group(1).strip() if found else html[:120]


def test_concurrent_logins_and_decisions_keep_one_audit_chain_and_one_case_history(review_db, capsys):
    eng = review_db.engine
    for prefix, role, region, n in STAFF:
        for k in range(n):
            auth.add_user(eng, f"{prefix}{k:02d}", PASSWORD, role, region, f"并发·{prefix}{k:02d}")
    users = {u["username"]: u for u in auth.list_users(eng)}
    staff = [(f"{prefix}{k:02d}", role) for prefix, role, _, n in STAFF for k in range(n)]
    assert len(staff) >= 20
    with eng.connect() as c:
        rows = c.execute(select(m.cases.c.alert_key, m.cases.c.household_no, m.cases.c.status)
                         .where(m.cases.c.region_code == COMMUNITY, m.cases.c.status == "new")
                         .order_by(m.cases.c.alert_key).limit(CASES)).all()
    assert len(rows) == CASES
    cases = [(r.alert_key, r.household_no) for r in rows]
    before = {r.alert_key: r.status for r in rows}
    audit_before, actions_before = _count(eng, m.audit), _count(eng, m.actions)
    assert audit.verify(eng).ok

    server = live_server(eng)
    tally = Tally()
    start, decide = threading.Barrier(CLIENTS, timeout=120), threading.Barrier(CLIENTS, timeout=300)
    threads = [threading.Thread(target=_client, name=f"client-{name}", daemon=True,
                                args=(server.url, name, role, i, cases, users["community_a"]["id"], start, decide,
                                      tally))
               for i, (name, role) in enumerate(staff)]
    done = threading.Event()
    auditor = threading.Thread(target=_auditor, name="auditor", daemon=True, args=(server.url, done, tally))
    t0 = time.monotonic()
    try:
        auditor.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        done.set()
        auditor.join(timeout=60)
        assert not any(t.is_alive() for t in [*threads, auditor]), "a client did not finish within 300 s"
    finally:
        server.stop()
    took = time.monotonic() - t0

    assert not tally.errors, tally.errors
    assert not tally.bad, f"{len(tally.bad)} unexpected answers, e.g. {tally.bad[:5]}"
    assert not [code for code in tally.codes if code >= 500]
    assert tally.logins == 2 * CLIENTS + 1  # each client twice, and the auditor
    assert tally.chain_ok and all(tally.chain_ok), f"the audit page said BROKEN mid-run: {tally.chain_ok}"

    # the audit chain: intact, and one entry per login, view and applied decision — none lost, none forked
    check = audit.verify(eng)
    assert check.ok, f"audit chain broken at {check.first_bad_id}: {check.reason}"
    decisions = sum(tally.applied.values())
    added = _count(eng, m.audit) - audit_before
    assert added == tally.logins + tally.views + decisions
    assert check.entries == audit_before + added
    capsys.readouterr()
    assert main(["review", "--db", review_db.url, "verify-audit"]) == 0
    assert "audit chain: OK" in capsys.readouterr().out
    with eng.connect() as c:
        prevs = c.execute(select(m.audit.c.prev_hash, func.count()).group_by(m.audit.c.prev_hash)
                          .having(func.count() > 1)).all()
    assert not prevs, f"entries sharing a prev_hash: {prevs[:3]}"

    # every case: one chain of statuses, one action per decision answered as applied
    assert _count(eng, m.actions) - actions_before == decisions
    with eng.connect() as c:
        acts = defaultdict(list)
        for a in c.execute(select(m.actions).where(m.actions.c.alert_key.in_(before))
                           .order_by(m.actions.c.id)).mappings():
            acts[a["alert_key"]].append(a)
        final = dict(c.execute(select(m.cases.c.alert_key, m.cases.c.status)
                               .where(m.cases.c.alert_key.in_(before))).all())
        logged = defaultdict(list)  # the decisions' audit entries, in chain order
        for e in c.execute(select(m.audit.c.object_id, m.audit.c.detail).where(
                m.audit.c.action == "decision", m.audit.c.object_id.in_(before)).order_by(m.audit.c.id)):
            d = json.loads(e.detail)
            logged[e.object_id].append((d["decision"], d["from_status"], d["to_status"]))
    for key, status in before.items():
        chain = acts[key]
        assert len(chain) == tally.applied[key], f"{key}: {len(chain)} actions for {tally.applied[key]} applied"
        for prev, a in zip([None, *chain], chain, strict=False):
            expected = status if prev is None else prev["to_status"]
            assert a["from_status"] == expected, f"{key}: action {a['id']} from {a['from_status']}, was {expected}"
            assert a["from_status"] in TRANSITIONS[a["action"]][0] and a["to_status"] == TRANSITIONS[a["action"]][1]
        assert final[key] == (chain[-1]["to_status"] if chain else status)
        assert logged[key] == [(a["action"], a["from_status"], a["to_status"]) for a in chain]

    # the race was real: losers got 409s, telling them to refresh
    conflicts = sum(tally.conflicts.values())
    assert conflicts > 0 and decisions > 0
    assert all("请刷新" in msg for msg in tally.conflicts), list(tally.conflicts)[:5]
    with capsys.disabled():
        print(f"\n[{review_db.kind}] {CLIENTS} clients, {tally.requests} requests in {took:.1f} s "
              f"({dict(sorted(tally.codes.items()))}); {tally.logins} logins, {tally.views} household views, "
              f"{decisions} decisions applied, {conflicts} answered 409; {added} audit entries added, "
              f"chain verified OK by the auditor {len(tally.chain_ok)}× mid-run, "
              f"{check.entries} in the verified chain; final statuses {dict(Counter(final.values()))}; "
              f"409 messages: {dict(Counter(re.sub(r'「[^」]*」', '「…」', x) for x in tally.conflicts.elements()))}")
