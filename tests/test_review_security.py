"""Security of the review app, route by route, on SQLite and on PostgreSQL.

* every route of the app has a row in `ROUTES` (how to call it with an object id) or a justified
  entry in `EXCLUDED` — a new route without either fails `test_every_route_has_a_case`;
* unauthenticated (no cookie, forged cookie): HTML GET → 303 to /login, HTML POST → 401, /api → 401;
* every role × every object route with an object of ANOTHER region → 403/404, nothing of it shown,
  nothing changed, nothing logged as seen;
* exports (CSV/XLSX, page and API), /api/v1/warnings, /api/v1/stats and the list page hold only the
  user's region (checked row by row against the database);
* role rights: who may unmask, decide, read the audit log;
* CSRF: every unsafe route refuses a missing / wrong / other session's token and changes nothing;
* injection and XSS payloads in every filter, the audit filters, a decision note, the login name;
* security headers, cookie flags, login throttling (per account and per client address).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import func, insert, select
from starlette.routing import Mount

from safetynet.review import auth, queries
from safetynet.review import models as m
from safetynet.review.app import EXPORT_HEADERS, create_app
from safetynet.review.queries import TRANSITIONS, region_names
from schemas.idno import mask
from tests.review_support import (
    ACCOUNTS,
    FIRST,
    PASSWORD,
    STREET_A,
    STREET_B,
    client_for,
    csrf_of,
    login,
)

pytestmark = pytest.mark.integration

# ---- the route table ----------------------------------------------------------------------------
Call = Callable[..., object]  # (client, object id, csrf token or None) → response


def _form(c, url: str, csrf: str | None, **data):
    if csrf is not None:
        data["csrf_token"] = csrf
    return c.post(url, data=data)


def _api_post(c, url: str, csrf: str | None, body: dict | None = None):
    return c.post(url, json=body, headers={"X-CSRF-Token": csrf} if csrf is not None else {})


@dataclass(frozen=True)
class RouteCase:
    obj: str | None  # "household" | "alert": the path takes an object id of that kind; None: no object
    call: Call

    def __call__(self, c, oid: str = "", csrf: str | None = None):
        return self.call(c, oid, csrf)


ROUTES: dict[tuple[str, str], RouteCase] = {
    ("GET", "/"): RouteCase(None, lambda c, o, t: c.get("/")),
    ("POST", "/logout"): RouteCase(None, lambda c, o, t: _form(c, "/logout", t)),
    ("GET", "/households/{household_no}"): RouteCase("household", lambda c, o, t: c.get(f"/households/{o}")),
    ("POST", "/households/{household_no}/unmask"): RouteCase(
        "household", lambda c, o, t: _form(c, f"/households/{o}/unmask", t)),
    ("POST", "/cases/{alert_key}/decide"): RouteCase(
        "alert", lambda c, o, t: _form(c, f"/cases/{o}/decide", t, action="visit", note="")),
    ("GET", "/export.xlsx"): RouteCase(None, lambda c, o, t: c.get("/export.xlsx")),
    ("GET", "/export.csv"): RouteCase(None, lambda c, o, t: c.get("/export.csv")),
    ("GET", "/charts"): RouteCase(None, lambda c, o, t: c.get("/charts")),
    ("GET", "/audit"): RouteCase(None, lambda c, o, t: c.get("/audit")),
    ("GET", "/api/v1/me"): RouteCase(None, lambda c, o, t: c.get("/api/v1/me")),
    ("GET", "/api/v1/warnings"): RouteCase(None, lambda c, o, t: c.get("/api/v1/warnings")),
    ("GET", "/api/v1/households/{household_no}"): RouteCase(
        "household", lambda c, o, t: c.get(f"/api/v1/households/{o}")),
    ("POST", "/api/v1/households/{household_no}/unmask"): RouteCase(
        "household", lambda c, o, t: _api_post(c, f"/api/v1/households/{o}/unmask", t)),
    ("POST", "/api/v1/cases/{alert_key}/decisions"): RouteCase(
        "alert", lambda c, o, t: _api_post(c, f"/api/v1/cases/{o}/decisions", t, {"action": "visit"})),
    ("GET", "/api/v1/stats"): RouteCase(None, lambda c, o, t: c.get("/api/v1/stats")),
    ("GET", "/api/v1/audit"): RouteCase(None, lambda c, o, t: c.get("/api/v1/audit")),
    ("GET", "/api/v1/export.csv"): RouteCase(None, lambda c, o, t: c.get("/api/v1/export.csv")),
    ("GET", "/api/v1/export.xlsx"): RouteCase(None, lambda c, o, t: c.get("/api/v1/export.xlsx")),
}

# Routes deliberately reachable without a session, and why (each still tested where it matters).
EXCLUDED: dict[tuple[str, str], str] = {
    ("*", "/static"): "CSS/JS assets: public by nature, hold no data",
    ("GET", "/healthz"): "liveness probe for compose/load balancer: answers only ok + latest snapshot date "
                         "(test_healthz_discloses_nothing)",
    ("GET", "/login"): "the login form must be reachable before a session exists",
    ("POST", "/login"): "logging in: guarded by its own CSRF cookie and throttling (tested below)",
    ("POST", "/api/v1/login"): "API login: public by purpose, JSON body only (no cross-site form can send it), "
                               "throttled like the form (tested below)",
    ("GET", "/api/docs"): "Swagger UI: a static description of the API, no data",
    ("GET", "/api/openapi.json"): "OpenAPI schema: a description of the API, no data",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI's OAuth2 helper page (docs-type), no data",
}


def app_routes(app) -> set[tuple[str, str]]:
    out = set()
    for r in app.routes:
        if isinstance(r, Mount):
            out.add(("*", r.path))
            continue
        for meth in set(r.methods or ()) - {"HEAD"}:
            out.add((meth, r.path))
    return out


OBJECT_ROUTES = [k for k, v in ROUTES.items() if v.obj]
UNSAFE_ROUTES = [k for k in ROUTES if k[0] != "GET"]


def rid(k: tuple[str, str]) -> str:
    return f"{k[0]} {k[1]}"


# ---- the world: objects in and out of each region, one logged-in client per account ---------------
@dataclass
class Obj:
    household_no: str
    alert_key: str
    secrets: list[str] = field(default_factory=list)  # strings that must never show to an outsider

    def id_for(self, kind: str) -> str:
        return self.household_no if kind == "household" else self.alert_key


@dataclass
class World:
    kind: str
    engine: object
    clients: dict
    csrf: dict
    users: dict  # username → id
    a: Obj  # community 430103001001 (street A)
    b: Obj  # street B
    x: Obj  # another county (430105), seeded here: visible only to admin
    missing: Obj
    comm_alerts: list  # (alert_key, household_no) in community 430103001001, all `new` at start
    warnings_total: int

    def foreign(self, username: str) -> Obj:
        """An object outside `username`'s region (admin sees everything: a missing one)."""
        return {"admin": self.missing, "county": self.x, "auditor": self.x, "county_other": self.b,
                "street_a": self.b, "community_a": self.b, "street_b": self.a}[username]


FOREIGN_REGION = "430105001001"
FOREIGN_ID = "430105198001010016"


def _secrets(engine, household_no: str, alert_key: str) -> list[str]:
    with engine.connect() as c:
        mem = c.execute(select(m.members.c.id_no, m.members.c.name)
                        .where(m.members.c.household_no == household_no)).all()
        summ = c.scalar(select(m.warnings.c.summary_zh).where(m.warnings.c.alert_key == alert_key))
    out = [household_no, alert_key, summ]
    for id_no, name in mem:
        out += [id_no, mask(id_no)]
        if len(name) >= 2:
            out.append(name)
    return [s for s in out if s]


def _seed_foreign(engine) -> Obj:
    """A household, a member, a warning and its case in county 430105: nobody but admin may see them."""
    hh, alert, wid = "430105001000001", "f0" * 12, "e0" * 12
    with engine.begin() as c:
        tmpl = dict(c.execute(select(m.warnings).where(m.warnings.c.snapshot_date == FIRST)
                              .order_by(m.warnings.c.warning_id).limit(1)).mappings().one())
        htmpl = dict(c.execute(select(m.households).limit(1)).mappings().one())
        data = dict(htmpl["data"], household_no=hh, region_code=FOREIGN_REGION, street_code=FOREIGN_REGION[:9],
                    county_code="430105")
        c.execute(insert(m.households).values(household_no=hh, snapshot_date=FIRST, region_code=FOREIGN_REGION,
                                              street_code=FOREIGN_REGION[:9], county_code="430105", data=data))
        c.execute(insert(m.members).values(household_no=hh, seq=1, id_no=FOREIGN_ID, name="外区甲乙", data={}))
        c.execute(insert(m.warnings).values(**{
            **tmpl, "warning_id": wid, "alert_key": alert, "household_no": hh, "region_code": FOREIGN_REGION,
            "street_code": FOREIGN_REGION[:9], "county_code": "430105", "subject_id_no": FOREIGN_ID,
            "summary_zh": "外区测试预警说明文字", "facts": [{"feed": "civil_affairs.x", "record_key": "r1",
                                                     "id_no": FOREIGN_ID, "field": "f", "value": "1", "date": None}]}))
        c.execute(insert(m.cases).values(alert_key=alert, household_no=hh, region_code=FOREIGN_REGION,
                                         street_code=FOREIGN_REGION[:9], rule_id=tmpl["rule_id"], status="new",
                                         first_snapshot=FIRST, last_snapshot=FIRST, current_warning_id=wid,
                                         updated_at=dt.datetime.now(dt.UTC)))
        queries.recount_facets(c, FIRST)  # as the loader does for the warnings it loads (not done by hand SQL)
    queries.FACETS.clear()
    return Obj(hh, alert, [hh, alert, FOREIGN_ID, mask(FOREIGN_ID), "外区甲乙", "外区测试预警说明文字"])


@pytest.fixture(scope="module")
def world(review_db) -> World:
    eng = review_db.engine
    x = _seed_foreign(eng)
    w, c_ = m.warnings.c, m.cases.c
    with eng.connect() as c:
        comm = c.execute(select(w.alert_key, w.household_no).where(w.snapshot_date == FIRST,
                                                                   w.region_code == STREET_A + "001")
                         .order_by(w.warning_id)).all()
        b = c.execute(select(w.alert_key, w.household_no).where(w.snapshot_date == FIRST,
                                                                w.street_code == STREET_B)
                      .order_by(w.warning_id)).first()
        total = c.scalar(select(func.count()).select_from(m.warnings).where(w.snapshot_date == FIRST))
        statuses = {r.status for r in c.execute(select(c_.status).where(c_.alert_key.in_([k for k, _ in comm])))}
        users = dict(c.execute(select(m.users.c.username, m.users.c.id)).all())
    assert len(comm) >= 5 and b is not None and statuses == {"new"}
    a = Obj(comm[0].household_no, comm[0].alert_key, _secrets(eng, comm[0].household_no, comm[0].alert_key))
    bo = Obj(b.household_no, b.alert_key, _secrets(eng, b.household_no, b.alert_key))
    missing = Obj("430103999000999", "0" * 24, ["430103999000999", "0" * 24])
    clients = {u: client_for(eng, u) for u in ACCOUNTS}
    csrf = {u: csrf_of(c) for u, c in clients.items()}
    return World(review_db.kind, eng, clients, csrf, users, a, bo, x, missing, [tuple(r) for r in comm], total)


def db_state(engine) -> tuple:
    """Everything an unsafe request could change: case lifecycles, decisions, sessions, audited views."""
    with engine.connect() as c:
        cases = tuple(c.execute(select(m.cases.c.alert_key, m.cases.c.status, m.cases.c.assignee_id,
                                       m.cases.c.reopen_note, m.cases.c.current_warning_id)
                                .order_by(m.cases.c.alert_key)).all())
        actions = tuple(c.execute(select(m.actions.c.id).order_by(m.actions.c.id)).scalars())
        sessions = c.scalar(select(func.count()).select_from(m.sessions))
        audited = c.scalar(select(func.count()).select_from(m.audit).where(
            m.audit.c.action.in_(("unmask", "decision", "logout", "view_household"))))
        tables = [c.scalar(select(func.count()).select_from(t)) for t in (m.warnings, m.households, m.members,
                                                                          m.users)]
    return cases, actions, sessions, audited, tables


# ---- the route table is complete ------------------------------------------------------------------
def test_every_route_has_a_case(review_db):
    have = app_routes(create_app(review_db.engine))
    missing = have - set(ROUTES) - set(EXCLUDED)
    assert not missing, f"routes without a security case (add them to ROUTES or, justified, EXCLUDED): {missing}"
    stale = (set(ROUTES) | set(EXCLUDED)) - have
    assert not stale, f"ROUTES/EXCLUDED name routes the app no longer has: {stale}"
    assert not set(ROUTES) & set(EXCLUDED)


def test_healthz_discloses_nothing(world):
    r = client_for(world.engine, None).get("/healthz")
    assert r.status_code == 200
    assert set(r.json()) == {"ok", "snapshot"}


# ---- unauthenticated --------------------------------------------------------------------------
@pytest.mark.parametrize("cookie", ["none", "forged"])
@pytest.mark.parametrize("route", list(ROUTES), ids=rid)
def test_unauthenticated_refused(world, route, cookie):
    from fastapi.testclient import TestClient

    c = TestClient(create_app(world.engine), follow_redirects=False,
                   cookies={"sn_session": "forged-" + "x" * 40} if cookie == "forged" else None)
    case = ROUTES[route]
    before = db_state(world.engine)
    r = case(c, world.a.id_for(case.obj or "household"), "whatever")
    method, path = route
    if path.startswith("/api/"):
        assert r.status_code == 401, r.text[:300]
        assert r.headers["content-type"].startswith("application/json")
    elif method == "GET":
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login")
    else:
        assert r.status_code == 401
    for s in world.a.secrets:
        assert s not in r.text
    assert db_state(world.engine) == before


# ---- other regions' objects ----------------------------------------------------------------------
@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=rid)
@pytest.mark.parametrize("username", list(ACCOUNTS))
def test_object_of_another_region_refused(world, username, route):
    obj = world.foreign(username)
    case = ROUTES[route]
    before = db_state(world.engine)
    r = case(world.clients[username], obj.id_for(case.obj), world.csrf[username])
    assert r.status_code in (403, 404), f"{username} {rid(route)} {obj.household_no}: {r.status_code} {r.text[:300]}"
    if username == "admin":
        assert r.status_code == 404  # admin: a missing object, answered exactly as an out-of-scope one
    assert "location" not in r.headers
    body = r.text
    for s in obj.secrets:
        assert s not in body, f"{username} {rid(route)}: response holds {s!r}"
    assert db_state(world.engine) == before


# ---- exports, lists, stats hold only the user's region ----------------------------------------------
def _scoped(engine, prefix: str) -> dict[str, tuple[str, str, str]]:
    """warning_id → (household_no, street_code, region_code) of the latest snapshot within `prefix`
    (filtered here in Python, not by the app's SQL)."""
    with engine.connect() as c:
        day = c.scalar(select(func.max(m.snapshots.c.snapshot_date)))
        rows = c.execute(select(m.warnings.c.warning_id, m.warnings.c.household_no, m.warnings.c.street_code,
                                m.warnings.c.region_code).where(m.warnings.c.snapshot_date == day)).all()
    return {r[0]: (r[1], r[2], r[3]) for r in rows if r[3].startswith(prefix)}


MASKED = re.compile(r"^(\d{6}\*{8}[0-9X]{4})?$")
FULL_ID = re.compile(r"(?<![0-9A-Za-z])\d{17}[0-9X](?![0-9A-Za-z])")


def _check_export_rows(rows: list[list], expected: dict) -> None:
    names = region_names()
    got = {}
    for r in rows:
        wid, hh, street, community, masked = r[1], r[4], r[5], r[6], r[7] or ""
        assert wid in expected, f"exported warning {wid} ({hh}) is outside the user's region"
        e_hh, e_street, e_region = expected[wid]
        assert (hh, street, community) == (e_hh, names.get(e_street, ""), names.get(e_region, ""))
        assert MASKED.match(masked), masked
        got[wid] = r
    assert set(got) == set(expected) and len(rows) == len(expected)


def _compatible(code: str, prefix: str) -> bool:
    return code[:len(prefix)] == prefix[:len(code)]


SCOPED_ENDPOINTS = ["/", "/export.csv", "/export.xlsx", "/api/v1/export.csv", "/api/v1/export.xlsx",
                    "/api/v1/warnings", "/api/v1/stats"]


@pytest.mark.parametrize("endpoint", SCOPED_ENDPOINTS)
@pytest.mark.parametrize("username", list(ACCOUNTS))
def test_listing_holds_only_own_region(world, username, endpoint):
    from openpyxl import load_workbook

    prefix = ACCOUNTS[username][1]
    expected = _scoped(world.engine, prefix)
    if username == "county_other":
        assert expected == {}
    c = world.clients[username]
    r = c.get(endpoint, params={"limit": 500} if endpoint == "/api/v1/warnings" else None)
    assert r.status_code == 200, r.text[:300]
    if endpoint.endswith(".csv"):
        text = r.content.decode("utf-8-sig")
        assert not FULL_ID.search(text)
        rows = list(csv.reader(io.StringIO(text)))
        assert rows[0] == EXPORT_HEADERS
        _check_export_rows(rows[1:], expected)
    elif endpoint.endswith(".xlsx"):
        wb = load_workbook(io.BytesIO(r.content), read_only=True)
        rows = [["" if v is None else v for v in row] for row in wb.active.iter_rows(values_only=True)]
        assert rows[0] == EXPORT_HEADERS
        assert not any(FULL_ID.search(str(v)) for row in rows for v in row)
        _check_export_rows(rows[1:], expected)
    elif endpoint == "/api/v1/warnings":
        d = r.json()
        assert d["total"] == len(expected) and len(d["rows"]) == len(expected)  # 500 > any region's count
        assert {x["warning_id"] for x in d["rows"]} == set(expected)
        for x in d["rows"]:
            assert x["region_code"].startswith(prefix) and x["street_code"] == expected[x["warning_id"]][1]
            assert "subject_id_no" not in x and MASKED.match(x["subject_id_masked"] or "")
        for name in ("street", "community"):
            assert all(_compatible(k, prefix) for k, _ in d["facets"][name]), d["facets"][name]
        for name in ("street", "community", "rule", "severity", "status"):
            assert sum(n for _, n in d["facets"][name]) == len(expected)
    elif endpoint == "/api/v1/stats":
        s = r.json()
        assert sum(x["count"] for x in s["by_street"]) == len(expected)
        assert sum(x["count"] for x in s["by_rule"]) == len(expected)
        assert sum(x["total"] for x in s["progress"]) == len(expected)
        assert sum(sum(v) for v in s["over_time"]["series"].values()) == len(expected)  # one snapshot loaded
        assert all(_compatible(x["code"], prefix) for x in s["by_street"] + s["progress"])
    else:
        total = int(re.search(r'<strong id="total">(\d+)</strong>', r.text).group(1))
        assert total == len(expected)
        shown = set(re.findall(r'href="/households/(\d+)"', r.text))
        assert shown <= {v[0] for v in expected.values()}
        assert len(shown) == len({v[0] for v in expected.values()}) or total > 50


# ---- role rights ----------------------------------------------------------------------------------
IN_SCOPE_OF_A = ["admin", "county", "street_a", "community_a", "auditor"]  # all see community 430103001001


def _ids_of(engine, household_no: str) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(select(m.members.c.id_no).where(m.members.c.household_no == household_no)).scalars())


def _unmasks(engine, username: str, household_no: str) -> int:
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(m.audit).where(
            m.audit.c.username == username, m.audit.c.action == "unmask", m.audit.c.object_id == household_no))


@pytest.mark.parametrize("username", IN_SCOPE_OF_A)
def test_unmask_only_for_roles_allowed(world, username):
    c, hh = world.clients[username], world.a.household_no
    ids = _ids_of(world.engine, hh)
    assert ids
    for r in (c.get(f"/households/{hh}"), c.get(f"/api/v1/households/{hh}")):  # the masked view: all may read it
        assert r.status_code == 200
        assert mask(ids[0]) in r.text
        assert not any(i in r.text for i in ids)
    n0 = _unmasks(world.engine, username, hh)
    html = _form(c, f"/households/{hh}/unmask", world.csrf[username])
    api = _api_post(c, f"/api/v1/households/{hh}/unmask", world.csrf[username])
    if username in ("auditor", "community_a"):
        assert (html.status_code, api.status_code) == (403, 403)
        assert not any(i in html.text or i in api.text for i in ids)
        assert _unmasks(world.engine, username, hh) == n0
    else:
        assert (html.status_code, api.status_code) == (200, 200)
        assert all(i in html.text and i in api.text for i in ids)
        assert _unmasks(world.engine, username, hh) == n0 + 2  # every reveal is audited


def _decision_args(world, action: str) -> dict:
    return {"assign": {"assignee_id": world.users["street_a"]}, "dismiss": {"reason_code": "other", "note": "说明"},
            "assist": {"assistance": "temporary"}}.get(action, {})


@pytest.mark.parametrize("action", list(TRANSITIONS))
@pytest.mark.parametrize("username", ["auditor", "community_a"])
def test_decide_rights(world, username, action):
    """auditor: no decision at all; community assistant: only `visit`."""
    c, csrf = world.clients[username], world.csrf[username]
    alert, hh = world.comm_alerts[1] if (username, action) == ("community_a", "visit") else world.comm_alerts[0]
    args = _decision_args(world, action)
    before = db_state(world.engine)
    if username == "community_a" and action == "visit":
        r = _form(c, f"/cases/{alert}/decide", csrf, action="visit", note="已入户", household_no=hh)
        assert r.status_code == 303 and r.headers["location"] == f"/households/{hh}#case-{alert}"
        with world.engine.connect() as con:
            assert con.scalar(select(m.cases.c.status).where(m.cases.c.alert_key == alert)) == "visited"
            last = con.execute(select(m.actions).order_by(m.actions.c.id.desc())).mappings().first()
        assert (last["alert_key"], last["action"], last["user_id"]) == (alert, "visit", world.users[username])
        return
    api = _api_post(c, f"/api/v1/cases/{alert}/decisions", csrf, {"action": action, **args})
    html = _form(c, f"/cases/{alert}/decide", csrf, action=action, household_no=hh,
                 **{k: str(v) for k, v in args.items()})
    assert (api.status_code, html.status_code) == (403, 403), (api.text[:200], html.text[:200])
    assert db_state(world.engine) == before


@pytest.mark.parametrize("username", list(ACCOUNTS))
def test_audit_log_only_for_auditor_and_admin(world, username):
    c = world.clients[username]
    page, api = c.get("/audit"), c.get("/api/v1/audit")
    if username in ("auditor", "admin"):
        assert (page.status_code, api.status_code) == (200, 200)
        assert api.json()["chain_ok"] is True and api.json()["total"] > 0
        assert 'id="chain"' in page.text
    else:
        assert (page.status_code, api.status_code) == (403, 403)
        assert "rows" not in api.json()
        assert 'id="chain"' not in page.text


# ---- CSRF -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["missing", "wrong", "other_session"])
@pytest.mark.parametrize("route", UNSAFE_ROUTES, ids=rid)
def test_unsafe_request_without_csrf_refused(world, route, variant):
    c = world.clients["street_a"]  # may unmask and decide on world.a: only the token is wrong
    mine = world.csrf["street_a"]
    wrong = ("y" if mine[0] == "x" else "x") + mine[1:]  # always differs (a token may start with "x": 1 in 64)
    token = {"missing": None, "wrong": wrong,
             "other_session": world.csrf["street_b"]}[variant]
    case = ROUTES[route]
    before = db_state(world.engine)
    r = case(c, world.a.id_for(case.obj or "household"), token)
    assert r.status_code == 403, r.text[:300]
    assert db_state(world.engine) == before
    assert not any(i in r.text for i in _ids_of(world.engine, world.a.household_no))
    assert c.get("/api/v1/me").status_code == 200  # the session is still there (logout refused)


def test_login_form_requires_its_csrf_token(world):
    c = client_for(world.engine, None)
    c.get("/login")
    for token in (None, "forged"):
        data = {"username": "street_a", "password": PASSWORD, "next": "/"}
        if token:
            data["csrf_token"] = token
        r = c.post("/login", data=data)
        assert r.status_code == 403
        assert "sn_session" not in r.headers.get("set-cookie", "")


def test_logout_with_token_ends_session(world):
    c = client_for(world.engine, "street_a")
    r = _form(c, "/logout", csrf_of(c))
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/api/v1/me").status_code == 401


# ---- injection and XSS ---------------------------------------------------------------------------
PAYLOADS = ["'; DROP TABLE warnings; --", "' OR '1'='1", "%", "_", "<script>alert(1)</script>",
            '"><img src=x onerror=alert(1)>', "{{7*7}}"]
PAYLOAD_IDS = ["drop", "or1", "percent", "underscore", "script", "img", "ssti"]
RAW = ("<script>alert(1)", "<img src=x", "onerror=alert(1)>")
LIST_FIELDS = ["street", "community", "rule", "severity", "status", "category", "q"]



def _no_raw(html: str) -> None:
    for raw in RAW:
        assert raw not in html, f"unescaped payload {raw!r} in the page"


def _tables_intact(world) -> None:
    with world.engine.connect() as c:
        # (warnings_total was counted after seeding the foreign warning)
        assert c.scalar(select(func.count()).select_from(m.warnings)) == world.warnings_total
        assert c.scalar(select(func.count()).select_from(m.users)) >= len(ACCOUNTS)


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
@pytest.mark.parametrize("field_", LIST_FIELDS)
def test_list_filter_injection(world, field_, payload, request):
    c = world.clients["admin"]  # sees everything: any leak shows as rows
    page = c.get("/", params={field_: payload})
    api = c.get("/api/v1/warnings", params={field_: payload})
    assert (page.status_code, api.status_code) == (200, 200)
    _no_raw(page.text)
    if field_ == "q":
        assert f'name="q" value="{_esc(payload)}"' in page.text  # echoed, escaped, not evaluated
    _tables_intact(world)
    total = int(re.search(r'<strong id="total">(\d+)</strong>', page.text).group(1))
    assert (total, api.json()["total"], api.json()["rows"]) == (0, 0, []), f"{field_}={payload!r} matched rows"


def _esc(s: str) -> str:
    from markupsafe import escape

    return str(escape(s))


AUDIT_FIELDS = ["username", "action", "object_id"]


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
@pytest.mark.parametrize("field_", AUDIT_FIELDS)
def test_audit_filter_injection(world, field_, payload):
    c = world.clients["auditor"]
    page = c.get("/audit", params={field_: payload})
    api = c.get("/api/v1/audit", params={field_: payload})
    assert (page.status_code, api.status_code) == (200, 200)
    _no_raw(page.text)
    with world.engine.connect() as con:
        exact = con.scalar(select(func.count()).select_from(m.audit).where(getattr(m.audit.c, field_) == payload))
        everything = con.scalar(select(func.count()).select_from(m.audit))
    assert exact < everything
    assert api.json()["total"] == exact  # equality only: '%' / OR-payloads match no more than themselves
    assert f"共 {exact} 条" in page.text
    assert all(row[field_] == payload for row in api.json()["rows"])
    _tables_intact(world)


@pytest.fixture(scope="module")
def other_ip(world):
    """A client from its own address, so its failed logins don't count against the shared clients' one."""
    from fastapi.testclient import TestClient

    return TestClient(create_app(world.engine), follow_redirects=False, client=("198.51.100.20", 50000))


def _login_form(c, username: str, password: str):
    c.get("/login")
    token = c.cookies.get("sn_login_csrf")
    return c.post("/login", data={"username": username, "password": password, "csrf_token": token, "next": "/"})


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
def test_login_username_injection(world, other_ip, payload):
    r = _login_form(other_ip, payload, "wrong-password-1")
    assert r.status_code == 401
    _no_raw(r.text)
    assert "sn_session" not in r.headers.get("set-cookie", "")
    api = other_ip.post("/api/v1/login", json={"username": payload, "password": PASSWORD})
    assert api.status_code == 401
    _tables_intact(world)
    # stored in the audit log as a failed login: shown escaped there
    page = world.clients["auditor"].get("/audit", params={"action": "login_failed", "object_id": payload})
    assert page.status_code == 200 and "共 2 条" in page.text
    _no_raw(page.text)
    assert _esc(payload) in page.text


NOTE = "<script>alert(1)</script>\"><img src=x onerror=alert(1)>{{7*7}} '; DROP TABLE warnings; --"


@pytest.mark.parametrize("via", ["form", "api"])
def test_decision_note_stored_and_shown_escaped(world, via):
    alert, hh = world.comm_alerts[2] if via == "form" else world.comm_alerts[3]
    c, csrf = world.clients["street_a"], world.csrf["street_a"]
    if via == "form":
        r = _form(c, f"/cases/{alert}/decide", csrf, action="visit", note=NOTE, household_no=hh)
        assert r.status_code == 303
    else:
        r = _api_post(c, f"/api/v1/cases/{alert}/decisions", csrf, {"action": "visit", "note": NOTE})
        assert r.status_code == 200 and r.json()["status"] == "visited"
    with world.engine.connect() as con:
        assert con.scalar(select(m.actions.c.note).where(m.actions.c.alert_key == alert)) == NOTE
    _tables_intact(world)
    for who in ("street_a", "county", "auditor"):
        page = world.clients[who].get(f"/households/{hh}")
        assert page.status_code == 200
        _no_raw(page.text)
        assert _esc(NOTE) in page.text
    api = world.clients["street_a"].get(f"/api/v1/households/{hh}").json()
    assert any(NOTE in e["text"] for e in api["timeline"])  # JSON carries the text as is (JSON, not HTML)


@pytest.mark.parametrize("field_", LIST_FIELDS + ["audit_username", "note", "login"])
def test_nul_byte_is_not_a_server_error(world, field_, request):
    """A NUL character (PostgreSQL refuses it in text) in any text input: a 4xx or an empty result, never a 500."""
    from fastapi.testclient import TestClient

    payload = "43\x00' OR 1=1"
    c = TestClient(create_app(world.engine), follow_redirects=False, raise_server_exceptions=False,
                   cookies=world.clients["admin"].cookies)
    if field_ in LIST_FIELDS:
        r = c.get("/api/v1/warnings", params={field_: payload})
        assert r.status_code < 500
        assert r.status_code != 200 or r.json()["total"] == 0
    elif field_ == "audit_username":
        r = c.get("/api/v1/audit", params={"username": payload})
        assert r.status_code < 500
    elif field_ == "note":
        alert = world.comm_alerts[4][0]
        before = db_state(world.engine)
        r = c.post(f"/api/v1/cases/{alert}/decisions",
                   json={"action": "dismiss", "reason_code": "other", "note": payload},
                   headers={"X-CSRF-Token": world.csrf["admin"]})
        assert r.status_code < 500
        if r.status_code != 200:  # refused: nothing changed (accepted is fine too: SQLite keeps the NUL)
            assert db_state(world.engine) == before
    else:
        anon = TestClient(create_app(world.engine), follow_redirects=False, raise_server_exceptions=False,
                          client=("198.51.100.21", 50000))
        r = _login_form(anon, payload, "wrong-password-1")
        assert r.status_code in (400, 401, 403, 422)


# ---- headers, cookies -------------------------------------------------------------------------------
HEADER_PAGES = [("anon", "/login"), ("anon", "/"), ("street_a", "/"), ("street_a", "/charts"),
                ("street_a", "household"), ("street_a", "/households/430103999000999"), ("street_a", "/audit"),
                ("auditor", "/audit"), ("street_a", "/api/v1/me"), ("street_a", "/export.csv")]


@pytest.mark.parametrize("who,path", HEADER_PAGES, ids=[f"{w}:{p}" for w, p in HEADER_PAGES])
def test_security_headers(world, who, path):
    c = client_for(world.engine, None) if who == "anon" else world.clients[who]
    r = c.get(f"/households/{world.a.household_no}" if path == "household" else path)
    assert r.status_code in (200, 303, 403, 404)
    csp = r.headers["content-security-policy"]
    for d in ("default-src 'self'", "script-src 'self'", "frame-ancestors 'none'", "object-src 'none'",
              "base-uri 'none'", "form-action 'self'"):
        assert d in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] in ("no-referrer", "same-origin", "strict-origin",
                                            "strict-origin-when-cross-origin")
    assert r.headers["cache-control"] == "no-store"
    if r.headers.get("content-type", "").startswith("text/html"):
        assert not re.search(r"<script(?![^>]*\bsrc=)", r.text), "inline script (CSP would block it)"
        assert not re.search(r"<[^>]*\son[a-z]+\s*=", r.text), "inline event handler"


def _cookie(resp, name: str) -> str:
    for v in resp.headers.get_list("set-cookie"):
        if v.startswith(name + "="):
            return v
    raise AssertionError(f"no Set-Cookie for {name}: {resp.headers.get_list('set-cookie')}")


@pytest.mark.parametrize("secure", [False, True])
def test_cookie_flags(world, secure):
    from fastapi.testclient import TestClient

    c = TestClient(create_app(world.engine, secure_cookies=secure), follow_redirects=False,
                   base_url="https://testserver" if secure else "http://testserver")
    form = c.get("/login")
    lc = _cookie(form, "sn_login_csrf").lower()
    assert "httponly" in lc and "samesite=strict" in lc
    r = login(c, "street_b")
    sc = _cookie(r, "sn_session")
    low = sc.lower()
    assert "httponly" in low and "samesite=strict" in low and "path=/" in low
    assert ("; secure" in low) == secure
    assert ("strict-transport-security" in r.headers) == secure
    token = sc.split(";", 1)[0].split("=", 1)[1]
    with world.engine.connect() as con:  # only the token's hash is stored server-side
        assert con.scalar(select(func.count()).select_from(m.sessions).where(m.sessions.c.token_hash == token)) == 0


# ---- login throttling -------------------------------------------------------------------------------
def test_login_throttled_per_account(world):
    from fastapi.testclient import TestClient

    auth.add_user(world.engine, "throttle_probe", PASSWORD, "street_worker", STREET_A, "限流测试")
    c = TestClient(create_app(world.engine), follow_redirects=False, client=("203.0.113.5", 50000))
    for _ in range(auth.THROTTLE_MAX_FAILURES):
        assert _login_form(c, "throttle_probe", "wrong-password-0").status_code == 401
    r = _login_form(c, "throttle_probe", PASSWORD)  # the right password, too late
    assert r.status_code == 429
    assert "sn_session" not in r.headers.get("set-cookie", "")
    api = c.post("/api/v1/login", json={"username": "throttle_probe", "password": PASSWORD})
    assert api.status_code == 429
    # another account from the same address is not affected (5 < the per-address limit)
    assert _login_form(c, "street_b", PASSWORD).status_code == 303
    with world.engine.connect() as con:
        n = con.scalar(select(func.count()).select_from(m.audit).where(
            m.audit.c.action == "login_failed", m.audit.c.object_id == "throttle_probe",
            m.audit.c.detail.like('%"throttled"%')))
    assert n == 2


def test_login_throttled_per_address(world):
    from fastapi.testclient import TestClient

    auth.add_user(world.engine, "ip_probe", PASSWORD, "street_worker", STREET_A, "限流测试2")
    c = TestClient(create_app(world.engine), follow_redirects=False, client=("203.0.113.6", 50000))
    for i in range(4 * auth.THROTTLE_MAX_FAILURES):  # different (unknown) names: only the address adds up
        assert c.post("/api/v1/login", json={"username": f"nobody{i}", "password": "x" * 12}).status_code == 401
    assert c.post("/api/v1/login", json={"username": "ip_probe", "password": PASSWORD}).status_code == 429
    other = TestClient(create_app(world.engine), follow_redirects=False, client=("203.0.113.7", 50000))
    assert other.post("/api/v1/login", json={"username": "ip_probe", "password": PASSWORD}).status_code == 200
