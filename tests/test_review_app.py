"""Behaviour of the review app, on SQLite and on PostgreSQL: ID masking, the case lifecycle (valid and
invalid transitions, required fields, assignment scope, what each decision records), the snapshot
loader (idempotent, manifest-gated, lifecycle carried over a modified next snapshot), the audit log
(append-only in the database, hash chain catching an edit or a deletion, never an unmasked ID),
account administration through `safetynet users …`, and the Alembic migrations.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil

import pytest
from sqlalchemy import func, inspect, select, text, update
from sqlalchemy.exc import DBAPIError

from safetynet.cli import main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.publish import snapshot
from safetynet.review import audit, auth, db, queries
from safetynet.review import models as m
from safetynet.review.auth import User
from safetynet.review.load import load_snapshot, material_change
from safetynet.review.queries import STATUS_ZH, TRANSITIONS
from schemas.idno import mask, mask_value
from tests.review_support import (
    ACCOUNTS,
    FIRST,
    NEXT,
    PASSWORD,
    STREET_A,
    STREET_B,
    client_for,
    csrf_of,
    login,
    new_review_db,
)

pytestmark = pytest.mark.integration


# ---- helpers ----------------------------------------------------------------------------------------
def _users(engine) -> dict[str, User]:
    return {u["username"]: User(u["id"], u["username"], u["display_name"], u["role"], u["region_prefix"])
            for u in auth.list_users(engine)}


def _count(engine, table, *where) -> int:
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(table).where(*where))


def _case(engine, alert_key: str) -> dict:
    with engine.connect() as c:
        return dict(c.execute(select(m.cases).where(m.cases.c.alert_key == alert_key)).mappings().one())


def _set_status(engine, alert_key: str, status: str) -> None:
    """A case put in `status` by hand (no decision recorded): the list's facet counts moved with it, as a
    decision moves them, and this process's copies of them dropped (they follow decisions, not hand SQL)."""
    with engine.begin() as c:
        old = c.scalar(select(m.cases.c.status).where(m.cases.c.alert_key == alert_key))
        c.execute(update(m.cases).where(m.cases.c.alert_key == alert_key).values(status=status, assignee_id=None))
        queries.move_facet_counts(c, alert_key, old, status)
    queries.FACETS.clear()


def _last_action(engine, alert_key: str) -> dict | None:
    with engine.connect() as c:
        r = c.execute(select(m.actions).where(m.actions.c.alert_key == alert_key)
                      .order_by(m.actions.c.id.desc())).mappings().first()
    return dict(r) if r else None


def _utc(t: dt.datetime) -> dt.datetime:
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


@pytest.fixture
def scratch_db(review_db, tmp_path):
    """A fresh, migrated, empty review database of the same kind as `review_db` (for destructive tests)."""
    rdb, close = new_review_db(review_db.kind, tmp_path)
    yield rdb
    close()


@pytest.fixture(scope="module")
def world(review_db):
    """Users by name (plus a disabled street worker and a second community's assistant) and the alerts of
    community 430103001001 (street A), each test taking its own."""
    eng = review_db.engine
    auth.add_user(eng, "street_a_off", PASSWORD, "street_worker", STREET_A, "测试·停用")
    auth.set_active(eng, "street_a_off", False)
    auth.add_user(eng, "community_a5", PASSWORD, "community_assistant", STREET_A + "005", "测试·五社区")
    with eng.connect() as c:
        alerts = c.execute(select(m.warnings.c.alert_key, m.warnings.c.household_no)
                           .where(m.warnings.c.snapshot_date == FIRST, m.warnings.c.region_code == STREET_A + "001")
                           .order_by(m.warnings.c.warning_id)).all()
    assert len(alerts) >= 5
    return {"users": _users(eng), "alerts": [tuple(a) for a in alerts]}


# ---- masking ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("id_no,shown", [
    ("430103199001011234", "430103********1234"),
    ("43010319900101123X", "430103********123X"),
    ("430103200512310000", "430103********0000"),
    (None, ""), ("", ""),
    ("430103900101123", "430103*****1123"),  # a legacy 15-digit number: 前6后4 too
    ("12345", "*****"),  # 10 characters or fewer: nothing shown
    ("AB", "**"),
])
def test_mask_id(id_no, shown):
    """The app masks ID numbers with `schemas.idno.mask`, as every export, report and log does."""
    assert mask(id_no) == shown
    if id_no and len(id_no) == 18:
        assert len(shown) == 18 and shown[6:14] == "*" * 8 and id_no[6:14] not in shown


def test_mask_name():
    """A name (a `direct` identifier that is not an ID number) keeps its first character."""
    assert [mask_value(n, "direct") for n in ("张三", "欧阳娜娜", "李")] == ["张*", "欧***", "李*"]


# ---- lifecycle ----------------------------------------------------------------------------------------
def _valid_args(world, action: str) -> dict:
    return {"assign": {"assignee_id": world["users"]["community_a"].id},
            "dismiss": {"reason_code": "verified_no_risk", "note": "已核实，无风险"},
            "assist": {"assistance": "temporary", "note": "已启动临时救助"},
            "visit": {"note": "已入户走访"}, "close": {"note": "办结"}}[action]


@pytest.mark.parametrize("status", list(STATUS_ZH))
@pytest.mark.parametrize("action", list(TRANSITIONS))
def test_transition(review_db, world, action, status):
    """Every action from every status: allowed exactly when TRANSITIONS says; what the decision records."""
    eng = review_db.engine
    alert = world["alerts"][0][0]
    actor = world["users"]["street_a"]
    _set_status(eng, alert, status)
    n_actions = _count(eng, m.actions)
    frm, to = TRANSITIONS[action]
    args = _valid_args(world, action)
    if status not in frm:
        with pytest.raises(queries.Conflict):
            queries.decide(eng, actor, alert, action, **args)
        assert _case(eng, alert)["status"] == status
        assert _count(eng, m.actions) == n_actions
        return
    t0 = dt.datetime.now(dt.UTC)
    res = queries.decide(eng, actor, alert, action, ip="192.0.2.9", **args)
    t1 = dt.datetime.now(dt.UTC)
    assert res["status"] == to and res["status_zh"] == STATUS_ZH[to]
    case = _case(eng, alert)
    assert case["status"] == to
    if action == "assign":
        assert case["assignee_id"] == args["assignee_id"]
    if to in ("dismissed", "closed"):
        assert case["decided_warning_id"] == case["current_warning_id"]
    a = _last_action(eng, alert)
    assert _count(eng, m.actions) == n_actions + 1
    with eng.connect() as c:
        w = c.execute(select(m.warnings.c.snapshot_date, m.warnings.c.rule_version)
                      .where(m.warnings.c.warning_id == case["current_warning_id"])).one()
    assert (a["action"], a["from_status"], a["to_status"], a["user_id"]) == (action, status, to, actor.id)
    assert t0 - dt.timedelta(seconds=1) <= _utc(a["at"]) <= t1 + dt.timedelta(seconds=1)
    assert (a["snapshot_date"], a["rule_version"], a["warning_id"]) == (FIRST, w.rule_version,
                                                                        case["current_warning_id"])
    assert a["note"] == args.get("note")
    assert a["reason_code"] == args.get("reason_code") and a["assistance"] == args.get("assistance")
    assert a["assignee_id"] == (args["assignee_id"] if action == "assign" else None)
    with eng.connect() as c:
        e = c.execute(select(m.audit).order_by(m.audit.c.id.desc())).mappings().first()
    d = json.loads(e["detail"])
    assert (e["action"], e["object_id"], e["username"], e["ip"]) == ("decision", alert, "street_a", "192.0.2.9")
    assert (d["decision"], d["from_status"], d["to_status"], d["snapshot"], d["rule_version"]) == (
        action, status, to, FIRST.isoformat(), w.rule_version)


@pytest.mark.parametrize("action,kw,msg", [
    ("dismiss", {"reason_code": "", "note": "说明"}, "原因"),
    ("dismiss", {"reason_code": "not_a_reason", "note": "说明"}, "原因"),
    ("dismiss", {"reason_code": "other", "note": ""}, "说明"),
    ("dismiss", {"reason_code": "other", "note": "   \n "}, "说明"),
    ("assist", {"assistance": ""}, "救助"),
    ("assist", {"assistance": "cash_gift"}, "救助"),
    ("delete", {}, "未知操作"),
], ids=["dismiss-no-reason", "dismiss-bad-reason", "dismiss-no-note", "dismiss-blank-note", "assist-no-type",
        "assist-bad-type", "unknown-action"])
def test_decision_requires_its_fields(review_db, world, action, kw, msg):
    eng = review_db.engine
    alert = world["alerts"][1][0]
    _set_status(eng, alert, "visited")  # both dismiss and assist apply from here
    n = _count(eng, m.actions)
    with pytest.raises(queries.Conflict, match=msg):
        queries.decide(eng, world["users"]["street_a"], alert, action, **kw)
    assert _case(eng, alert)["status"] == "visited" and _count(eng, m.actions) == n


def test_decision_api_answers_409_on_missing_fields(review_db, world):
    eng = review_db.engine
    alert = world["alerts"][1][0]
    _set_status(eng, alert, "new")
    c = client_for(eng, "street_a")
    h = {"X-CSRF-Token": csrf_of(c)}
    r = c.post(f"/api/v1/cases/{alert}/decisions", json={"action": "dismiss", "reason_code": "other"}, headers=h)
    assert r.status_code == 409 and "说明" in r.json()["detail"]
    r = c.post(f"/api/v1/cases/{alert}/decisions", json={"action": "close"}, headers=h)  # new → close: invalid
    assert r.status_code == 409
    assert _case(eng, alert)["status"] == "new"


# (actor, assignee, allowed) for a case in community 430103001001
ASSIGN = [
    ("street_a", "community_a", True), ("street_a", "street_a", True),
    ("street_a", "street_b", False),  # another street
    ("street_a", "county", False),  # above the actor's own scope
    ("street_a", "county_other", False), ("street_a", "auditor", False), ("street_a", "admin", False),  # roles
    ("street_a", "street_a_off", False),  # disabled
    ("street_a", "community_a5", False),  # same street, another community than the case's
    ("street_a", None, False), ("street_a", 999_999, False),
    ("county", "county", True), ("county", "street_a", True), ("county", "community_a", True),
    ("county", "street_b", False), ("county", "county_other", False),
    ("admin", "county", True), ("admin", "county_other", False),
]


@pytest.mark.parametrize("actor,assignee,ok", ASSIGN, ids=[f"{a}->{b}" for a, b, _ in ASSIGN])
def test_assign_only_within_scope(review_db, world, actor, assignee, ok):
    eng = review_db.engine
    alert = world["alerts"][2][0]
    _set_status(eng, alert, "new")
    users = world["users"]
    aid = users[assignee].id if isinstance(assignee, str) else assignee
    if ok:
        queries.decide(eng, users[actor], alert, "assign", assignee_id=aid)
        assert (_case(eng, alert)["status"], _case(eng, alert)["assignee_id"]) == ("assigned", aid)
    else:
        with pytest.raises(queries.Conflict, match="辖区"):
            queries.decide(eng, users[actor], alert, "assign", assignee_id=aid)
        assert (_case(eng, alert)["status"], _case(eng, alert)["assignee_id"]) == ("new", None)


def test_assign_dropdown_lists_only_assignable_users(review_db, world):
    eng = review_db.engine
    alert, hh = world["alerts"][2]
    _set_status(eng, alert, "new")
    users = world["users"]
    region = _case(eng, alert)["region_code"]
    got = {u["id"] for u in queries.assignable_users(eng, users["street_a"], region)}
    assert got == {users["street_a"].id, users["community_a"].id}
    page = client_for(eng, "street_a").get(f"/households/{hh}").text
    options = set(re.findall(r'<option value="(\d+)">', page))
    assert options == {str(users["street_a"].id), str(users["community_a"].id)}


def test_decide_outside_scope_is_not_found(review_db, world):
    eng = review_db.engine
    alert = world["alerts"][3][0]
    before = _case(eng, alert)
    with pytest.raises(queries.NotFound):
        queries.decide(eng, world["users"]["street_b"], alert, "visit")
    with pytest.raises(queries.Forbidden):
        queries.decide(eng, world["users"]["community_a"], alert, "dismiss", reason_code="other", note="x")
    assert _case(eng, alert) == before


# ---- the loader -------------------------------------------------------------------------------------
def _db_counts(engine) -> dict:
    return {t.name: _count(engine, t) for t in (m.snapshots, m.warnings, m.households, m.members, m.cases,
                                                m.actions, m.audit)}


def test_reload_of_same_manifest_changes_nothing(review_db, published):
    eng = review_db.engine
    before = _db_counts(eng)
    res = load_snapshot(eng, published, FIRST)
    assert res.loaded is False and res.snapshot_date == FIRST
    assert load_snapshot(eng, published).loaded is False  # latest published = FIRST
    assert _db_counts(eng) == before


def _copy_store(published, dest) -> ObjectStore:
    shutil.copytree(published.dir, dest)
    return ObjectStore.from_settings(Settings(store=str(dest)))


def test_snapshot_without_manifest_is_invisible(review_db, published, tmp_path):
    """Data files of 2026-12-01 written, its manifest not (yet): the loader does not see that snapshot."""
    eng = review_db.engine
    store = _copy_store(published, tmp_path / "store")
    n = 0
    for d in list((tmp_path / "store").rglob(f"snapshot_date={FIRST.isoformat()}")):
        shutil.copytree(d, d.with_name(f"snapshot_date={NEXT.isoformat()}"))
        n += 1
    assert n >= 5  # warnings, monitoring/person, monitoring/household (+ identified variants)
    assert snapshot.snapshots(store) == [FIRST]
    before = _db_counts(eng)
    assert load_snapshot(eng, store).loaded is False  # the latest *published* one: already loaded
    with pytest.raises(FileNotFoundError):
        load_snapshot(eng, store, NEXT)
    assert _db_counts(eng) == before
    assert _count(eng, m.warnings, m.warnings.c.snapshot_date == NEXT) == 0


def test_a_snapshot_published_on_an_unhealthy_feed_shows_a_banner(scratch_db, published, tmp_path):
    """The operator published with --accept-unhealthy: staff see which feed the list lacks, in Chinese."""
    store = _copy_store(published, tmp_path / "store")
    ptr_path = f"_catalog/snapshots/{FIRST.isoformat()}.json"
    ptr = json.loads(store.read_bytes(ptr_path))
    manifest = json.loads(store.read_bytes(ptr["manifest"]))
    manifest["inputs"]["housing.property"].update(
        unhealthy=["housing.property: 930 of 932 records quarantined (99.8% > 5%)"], accepted_unhealthy=True)
    data = json.dumps(manifest, ensure_ascii=False).encode()
    store.write_bytes(ptr["manifest"], data)  # (a version is immutable: this test forges one)
    store.write_bytes(ptr_path, json.dumps({**ptr, "manifest_sha256": hashlib.sha256(data).hexdigest()}).encode())
    load_snapshot(scratch_db.engine, store, FIRST)
    auth.add_user(scratch_db.engine, "county", PASSWORD, "county_reviewer", "430103", "测试·区县")
    page = client_for(scratch_db.engine, "county").get("/").text
    assert 'id="note-housing.property"' in page
    assert "数据源异常：房产登记（housing.property）最近一次交付未通过健康检查" in page
    assert "note-medical_insurance.claim" not in page


# lifecycle carry-over across a modified next snapshot ----------------------------------------------------
SCENARIOS = ("same", "newfact", "mag_up", "mag_small", "sev_up", "sev_down", "closed", "open", "gone")
UP = {"S3": "S2", "S2": "S1"}
DOWN = {"S1": "S2", "S2": "S3"}


def _wid(old: str, tag: str) -> str:
    return hashlib.sha256(f"{old}/{tag}".encode()).hexdigest()[:24]


def _pick(rows: list[dict]) -> dict[str, dict]:
    need = {"sev_up": lambda r: r["severity"] in UP, "sev_down": lambda r: r["severity"] in DOWN,
            "mag_up": lambda r: r["magnitude"] > 0 and r["facts"],
            "mag_small": lambda r: r["magnitude"] > 0 and r["facts"]}
    out, used = {}, set()
    for name in ("sev_up", "sev_down", "mag_up", "mag_small") + tuple(s for s in SCENARIOS if s not in need):
        r = next(r for r in rows if r["alert_key"] not in used and need.get(name, lambda r: True)(r))
        out[name] = r
        used.add(r["alert_key"])
    return out


NEW_FACT = {"feed": "medical_insurance.claim", "record_key": "CLAIM-NEXT-0001", "field": "out_of_pocket",
            "value": "18000.00", "date": NEXT}


@pytest.fixture(scope="module")
def next_store(published, tmp_path_factory):
    """A copy of the store with a 2026-12-01 snapshot published from the first one's tables, each scenario's
    warning modified (new facts, magnitude, severity; a new `warning_id` as the pipeline would give it)."""
    import copy

    import pyarrow as pa

    from safetynet.publish.snapshot import Pseudonymiser, publish

    store = _copy_store(published, tmp_path_factory.mktemp("next") / "store")
    w = snapshot.read(store, "warnings", FIRST, identified=True)
    rows = sorted(w.to_pylist(), key=lambda r: r["warning_id"])
    picked = _pick(rows)
    by_key = {r["alert_key"]: copy.deepcopy(r) for r in rows}
    changed = {}
    for name, first in picked.items():
        r = by_key[first["alert_key"]]
        if name in ("newfact", "closed", "open"):
            r["facts"].append({**NEW_FACT, "id_no": r["facts"][0]["id_no"] if r["facts"] else None})
        elif name in ("mag_up", "mag_small"):
            r["magnitude"] *= 1.25 if name == "mag_up" else 1.1
            r["facts"][0]["value"] = f"changed-{r['facts'][0]['value']}"  # the same record, another value
        elif name in ("sev_up", "sev_down"):
            r["severity"] = (UP if name == "sev_up" else DOWN)[r["severity"]]
            r["rule_version"] += 1
        if name != "same":
            r["warning_id"] = _wid(r["warning_id"], name)
        changed[name] = r
    del by_key[picked["gone"]["alert_key"]]
    fresh = dict(copy.deepcopy(rows[-1]), alert_key=_wid("new", "alert"), warning_id=_wid("new", "warning"))
    out = [dict(r, snapshot_date=NEXT) for r in [*by_key.values(), fresh]]

    def on_next(t: pa.Table) -> pa.Table:
        if "snapshot_date" not in t.column_names:
            return t
        i = t.schema.get_field_index("snapshot_date")
        return t.set_column(i, t.schema.field(i), pa.array([NEXT] * t.num_rows, t.schema.field(i).type))

    tables = {"warnings": pa.Table.from_pylist(out, schema=w.schema),
              "monitoring/person": on_next(snapshot.read(store, "monitoring/person", FIRST, identified=True)),
              "monitoring/household": on_next(snapshot.read(store, "monitoring/household", FIRST))}
    publish(store, NEXT, tables, Pseudonymiser(b"review-tests"),
            policy_version=snapshot.manifest(store, FIRST)["policy_version"], inputs={})
    assert snapshot.snapshots(store) == [FIRST, NEXT]
    return {"store": store, "first": picked, "next": changed, "new_alert": fresh["alert_key"]}


@pytest.fixture(scope="module")
def carried(review_db, next_store, tmp_path_factory):
    """A fresh review DB: first snapshot loaded, cases decided per scenario, then the next snapshot loaded."""
    rdb, close = new_review_db(review_db.kind, tmp_path_factory.mktemp(f"carry_{review_db.kind}"))
    eng = rdb.engine
    load_snapshot(eng, next_store["store"], FIRST)
    uid = auth.add_user(eng, "lc_admin", PASSWORD, "admin", "", "生命周期")
    u = User(uid, "lc_admin", "生命周期", "admin", "")
    for name, r in next_store["first"].items():
        k = r["alert_key"]
        if name == "open":
            queries.decide(eng, u, k, "visit", note="走访中")
        elif name == "closed":
            queries.decide(eng, u, k, "visit")
            queries.decide(eng, u, k, "assist", assistance="temporary")
            queries.decide(eng, u, k, "close", note="办结")
        else:
            queries.decide(eng, u, k, "dismiss", reason_code="verified_no_risk", note="核实无风险")
    before = {n: _case(eng, r["alert_key"]) for n, r in next_store["first"].items()}
    n_actions = _count(eng, m.actions)
    res = load_snapshot(eng, next_store["store"], NEXT)
    yield {"engine": eng, "res": res, "before": before, "n_actions": n_actions, "user": u, **next_store}
    close()


def _reopens(engine, alert_key: str) -> list[dict]:
    with engine.connect() as c:
        return [dict(r) for r in c.execute(select(m.actions).where(m.actions.c.alert_key == alert_key,
                                                                  m.actions.c.action == "reopen")).mappings()]


def test_carry_over_counts(carried):
    res = carried["res"]
    assert res.loaded and res.snapshot_date == NEXT
    assert (res.reopened, res.kept_closed, res.new_cases) == (4, 3, 1)
    eng = carried["engine"]
    assert _count(eng, m.actions) == carried["n_actions"] + 4
    with eng.connect() as c:
        assert c.scalar(select(m.snapshots.c.reopened).where(m.snapshots.c.snapshot_date == NEXT)) == 4


@pytest.mark.parametrize("name", ["same", "mag_small", "sev_down", "gone"])
def test_unchanged_facts_stay_dismissed(carried, name):
    eng = carried["engine"]
    k = carried["first"][name]["alert_key"]
    case = _case(eng, k)
    assert case["status"] == "dismissed" and case["reopen_note"] is None
    assert _reopens(eng, k) == []
    assert case["decided_warning_id"] == carried["before"][name]["decided_warning_id"]
    if name == "gone":  # not in the next snapshot: untouched
        assert case["last_snapshot"] == FIRST and case["current_warning_id"] == carried["first"][name]["warning_id"]
    else:
        assert case["last_snapshot"] == NEXT and case["current_warning_id"] == carried["next"][name]["warning_id"]


@pytest.mark.parametrize("name,fragment", [("newfact", "新增事实"), ("mag_up", "超出程度"), ("sev_up", "严重程度"),
                                           ("closed", "新增事实")])
def test_material_change_reopens(carried, name, fragment):
    eng = carried["engine"]
    k, new = carried["first"][name]["alert_key"], carried["next"][name]
    case = _case(eng, k)
    assert case["status"] == "new" and case["assignee_id"] is None
    assert fragment in case["reopen_note"]
    if fragment == "新增事实":
        assert NEW_FACT["record_key"] in case["reopen_note"]
    if name == "sev_up":
        assert f"{carried['first'][name]['severity']} → {new['severity']}" in case["reopen_note"]
    [a] = _reopens(eng, k)
    assert (a["from_status"], a["to_status"], a["user_id"]) == (carried["before"][name]["status"], "new", None)
    assert (a["snapshot_date"], a["warning_id"], a["rule_version"]) == (NEXT, new["warning_id"], new["rule_version"])
    assert a["note"] == case["reopen_note"]
    assert case["current_warning_id"] == new["warning_id"] and case["last_snapshot"] == NEXT
    # staff see why: the list and the household page carry the note; a new decision is possible again
    u = carried["user"]
    d = queries.household(eng, u, case["household_no"])
    assert any(w["alert_key"] == k and w["reopen_note"] == case["reopen_note"] for w in d["warnings"])
    assert any("重新开启" in e["text"] for e in d["timeline"])
    rows = queries.list_warnings(eng, u, queries.Filters(q=case["household_no"]))["rows"]
    assert any(r["alert_key"] == k and r["reopen_note"] for r in rows)


def test_open_case_keeps_its_status(carried):
    eng = carried["engine"]
    k = carried["first"]["open"]["alert_key"]
    case = _case(eng, k)
    assert case["status"] == "visited" and case["reopen_note"] is None and _reopens(eng, k) == []
    assert case["current_warning_id"] == carried["next"]["open"]["warning_id"]


def test_new_alert_opens_a_case(carried):
    case = _case(carried["engine"], carried["new_alert"])
    assert (case["status"], case["first_snapshot"], case["last_snapshot"]) == ("new", NEXT, NEXT)


def test_reload_of_next_snapshot_does_not_reopen_twice(carried):
    eng = carried["engine"]
    n = _count(eng, m.actions)
    assert load_snapshot(eng, carried["store"], NEXT).loaded is False
    assert _count(eng, m.actions) == n


def _w(**kw) -> dict:
    base = {"warning_id": "w1", "severity": "S2", "magnitude": 2.0,
            "facts": [{"feed": "f", "record_key": "k1", "field": "x", "value": "1", "date": None}]}
    return {**base, **kw}


@pytest.mark.parametrize("new,material", [
    (_w(), False),  # the same warning version
    (_w(warning_id="w2"), False),  # new id, nothing material
    (_w(warning_id="w2", magnitude=2.39), False),
    (_w(warning_id="w2", magnitude=2.4), True),  # exactly 1.2×
    (_w(warning_id="w2", severity="S3"), False),
    (_w(warning_id="w2", severity="S1"), True),
    (_w(warning_id="w2", facts=[]), False),  # fewer facts
    (_w(warning_id="w2", facts=[{"feed": "f", "record_key": "k1", "field": "x", "value": "9", "date": None}]), False),
    (_w(warning_id="w2", facts=_w()["facts"] + [{"feed": "g", "record_key": "k1", "field": "y", "value": "1",
                                                 "date": None}]), True),  # same key, another feed: a new record
])
def test_material_change(new, material):
    assert (material_change(_w(), new) is not None) == material


# ---- the audit log ------------------------------------------------------------------------------------
def test_audit_is_append_only_in_the_database(review_db):
    eng = review_db.engine
    audit.record(eng, None, "-", "user_admin", "user", "probe", "", note="append-only probe")
    n = _count(eng, m.audit)
    stmts = ["UPDATE audit SET username = 'mallory'", "UPDATE audit SET detail = '{}' WHERE id = 1",
             "DELETE FROM audit WHERE id = 1", "DELETE FROM audit"]
    if review_db.kind == "postgresql":
        stmts.append("TRUNCATE audit")
    for stmt in stmts:
        with pytest.raises(DBAPIError, match="append-only"), eng.begin() as c:
            c.execute(text(stmt))
    assert _count(eng, m.audit) == n
    assert audit.verify(eng).ok


def _drop_trigger(engine, kind: str, name: str) -> None:
    with engine.begin() as c:
        c.execute(text(f"DROP TRIGGER {name} ON audit" if kind == "postgresql" else f"DROP TRIGGER {name}"))


def _seed_audit(engine, n: int = 6) -> None:
    for i in range(n):
        audit.record(engine, None, "192.0.2.1", "view_household", "household", f"43010300100000{i}", "430103001001",
                     warnings=i)
    chk = audit.verify(engine)
    assert chk.ok and chk.entries == n


def test_audit_verify_detects_an_edited_entry(scratch_db):
    eng, kind = scratch_db.engine, scratch_db.kind
    _seed_audit(eng)
    _drop_trigger(eng, kind, "audit_no_update")  # what an attacker with DDL rights would do first
    with eng.connect() as c:
        original = c.scalar(select(m.audit.c.detail).where(m.audit.c.id == 3))
    with eng.begin() as c:
        c.execute(update(m.audit).where(m.audit.c.id == 3).values(detail='{"warnings":0}'))
    chk = audit.verify(eng)
    assert (chk.ok, chk.first_bad_id, chk.entries) == (False, 3, 2) and "修改" in chk.reason
    assert main(["review", "--db", scratch_db.url, "verify-audit"]) == 1
    auth.add_user(eng, "auditor", PASSWORD, "auditor", "430103")
    page = client_for(eng, "auditor").get("/audit").text
    assert "发现篡改：记录 3" in page
    with eng.begin() as c:  # put it back: the chain is whole again
        c.execute(update(m.audit).where(m.audit.c.id == 3).values(detail=original))
    assert audit.verify(eng).ok
    assert main(["review", "--db", scratch_db.url, "verify-audit"]) == 0


def test_audit_verify_detects_a_deleted_entry(scratch_db):
    eng, kind = scratch_db.engine, scratch_db.kind
    _seed_audit(eng)
    _drop_trigger(eng, kind, "audit_no_update" if kind == "postgresql" else "audit_no_delete")
    with eng.begin() as c:  # the last one: only the chain head notices
        c.execute(text("DELETE FROM audit WHERE id = 6"))
    chk = audit.verify(eng)
    assert (chk.ok, chk.first_bad_id, chk.entries) == (False, None, 5) and "末尾" in chk.reason
    with eng.begin() as c:  # one in the middle
        c.execute(text("DELETE FROM audit WHERE id = 2"))
    chk = audit.verify(eng)
    assert (chk.ok, chk.first_bad_id, chk.entries) == (False, 3, 1) and "删除" in chk.reason


def _ids_in_audit(engine) -> tuple[set[str], list[str]]:
    """(known ID numbers found in any audit column, every 18-character ID-shaped string found)."""
    with engine.connect() as c:
        ids = set(c.execute(select(m.members.c.id_no)).scalars()) | set(
            c.execute(select(m.warnings.c.subject_id_no).where(m.warnings.c.subject_id_no.is_not(None))).scalars())
        rows = c.execute(select(m.audit.c.username, m.audit.c.ip, m.audit.c.object_type, m.audit.c.object_id,
                                m.audit.c.region_code, m.audit.c.detail)).all()
    blob = "\n".join("\t".join(str(v) for v in r) for r in rows)
    shaped = re.findall(r"(?<![0-9A-Za-z])\d{17}[0-9Xx](?![0-9A-Za-z])", blob)
    return {i for i in ids if i in blob}, shaped


def _member_with_warning(engine, region_prefix: str) -> tuple[str, str]:
    with engine.connect() as c:
        return tuple(c.execute(select(m.members.c.id_no, m.members.c.household_no)
                               .join(m.warnings, m.warnings.c.household_no == m.members.c.household_no)
                               .where(m.warnings.c.region_code.like(region_prefix + "%"))
                               .order_by(m.members.c.id_no).limit(1)).one())


def test_audit_never_holds_an_unmasked_id_number(review_db, world):
    from fastapi.testclient import TestClient

    from safetynet.review.app import create_app

    eng = review_db.engine
    id_no, hh = _member_with_warning(eng, STREET_A + "001")
    alert = world["alerts"][4][0]
    _set_status(eng, alert, "new")
    s = client_for(eng, "street_a")
    tok = csrf_of(s)
    # searching by ID number (page and API): finds the household, audited as an unmask with the ID masked
    page = s.get("/", params={"q": id_no})
    assert page.status_code == 200 and f'href="/households/{hh}"' in page.text
    assert s.get("/api/v1/warnings", params={"q": id_no.lower()}).json()["total"] >= 1
    assert s.get(f"/households/{hh}").status_code == 200
    r = s.post(f"/households/{hh}/unmask", data={"csrf_token": tok})
    assert r.status_code == 200 and id_no in r.text
    r = s.post(f"/api/v1/households/{hh}/unmask", headers={"X-CSRF-Token": tok})
    assert r.status_code == 200 and id_no in r.text
    assert s.post(f"/api/v1/cases/{alert}/decisions", json={"action": "visit", "note": "已核实身份"},
                  headers={"X-CSRF-Token": tok}).status_code == 200
    assert s.get("/export.csv").status_code == 200 and s.get("/api/v1/export.xlsx").status_code == 200
    assert s.get("/api/v1/stats").status_code == 200
    community = client_for(eng, "community_a")  # may not unmask: an 18-character search is no ID search
    assert community.get("/api/v1/warnings", params={"q": id_no}).json()["total"] == 0
    other = TestClient(create_app(eng), follow_redirects=False, client=("192.0.2.77", 1))
    assert other.post("/api/v1/login", json={"username": "street_a", "password": "wrong-password"}).status_code == 401
    assert client_for(eng, "auditor").get("/audit").status_code == 200
    known, shaped = _ids_in_audit(eng)
    assert known == set() and shaped == []
    with eng.connect() as c:
        searches = c.execute(select(m.audit.c.object_id).where(m.audit.c.action == "unmask",
                                                               m.audit.c.object_type == "search",
                                                               m.audit.c.username == "street_a")
                             .order_by(m.audit.c.id)).scalars().all()
        unmasks = _count(eng, m.audit, m.audit.c.action == "unmask", m.audit.c.object_id == hh)
    assert searches == [mask(id_no), mask(id_no.lower())]
    assert unmasks == 2


@pytest.fixture(scope="module")
def blank_db(review_db, tmp_path_factory):
    """A migrated review DB of the same kind with the first snapshot and one street worker (no scenario)."""
    rdb, close = new_review_db(review_db.kind, tmp_path_factory.mktemp(f"blank_{review_db.kind}"))
    yield rdb
    close()


def test_export_searched_by_id_number_is_logged_masked(blank_db, published):
    eng = blank_db.engine
    load_snapshot(eng, published, FIRST)
    auth.add_user(eng, "street_x", PASSWORD, "street_worker", STREET_A)
    id_no, _ = _member_with_warning(eng, STREET_A)
    c = client_for(eng, "street_x")
    assert c.get("/export.csv", params={"q": id_no}).status_code == 200
    known, shaped = _ids_in_audit(eng)
    assert known == set() and shaped == []


def test_failed_login_with_id_number_as_name_is_logged_masked(blank_db):
    eng = blank_db.engine
    c = client_for(eng, None)
    r = c.post("/api/v1/login", json={"username": "430103199001011234", "password": "wrong-password"})
    assert r.status_code == 401
    _, shaped = _ids_in_audit(eng)
    assert "430103199001011234" not in shaped


# ---- accounts through the CLI --------------------------------------------------------------------------
def test_cli_users_add_list_disable(review_db, monkeypatch, capsys):
    eng, url = review_db.engine, review_db.url
    monkeypatch.setenv("SAFETYNET_NEW_PASSWORD", PASSWORD)
    assert main(["users", "--db", url, "add", "cli_worker", "--role", "street_worker", "--region", STREET_B,
                 "--name", "命令行·街道"]) == 0
    assert "added cli_worker" in capsys.readouterr().out
    assert main(["users", "--db", url, "add", "cli_worker", "--role", "street_worker", "--region", STREET_B]) == 2
    assert main(["users", "--db", url, "add", "cli_bad", "--role", "street_worker", "--region", "4301"]) == 2
    assert main(["users", "--db", url, "add", "cli_bad", "--role", "auditor", "--region", STREET_B]) == 2
    assert main(["users", "--db", url, "add", "x y", "--role", "admin", "--region", ""]) == 2
    with pytest.raises(SystemExit):
        main(["users", "--db", url, "add", "cli_bad", "--role", "root", "--region", ""])
    monkeypatch.setenv("SAFETYNET_NEW_PASSWORD", "short")
    assert main(["users", "--db", url, "add", "cli_bad", "--role", "admin", "--region", ""]) == 2
    capsys.readouterr()
    assert "cli_bad" not in {u["username"] for u in auth.list_users(eng)}

    assert main(["users", "--db", url, "list"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert set(ACCOUNTS) | {"cli_worker"} <= set(lines)
    assert "active" in lines["cli_worker"] and STREET_B in lines["cli_worker"] and "命令行·街道" in lines["cli_worker"]

    page = client_for(eng, "cli_worker")  # the new account works, with its role and region
    api = client_for(eng, None)
    assert api.post("/api/v1/login", json={"username": "cli_worker", "password": PASSWORD}).status_code == 200
    me = page.get("/api/v1/me").json()
    assert (me["role"], me["region_prefix"]) == ("street_worker", STREET_B)
    assert api.get("/api/v1/me").status_code == 200
    uid = _users(eng)["cli_worker"].id
    assert _count(eng, m.sessions, m.sessions.c.user_id == uid) == 2

    assert main(["users", "--db", url, "disable", "cli_worker"]) == 0
    assert _count(eng, m.sessions, m.sessions.c.user_id == uid) == 0  # its sessions ended at once
    r = page.get("/")
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert api.get("/api/v1/me").status_code == 401
    assert api.post("/api/v1/login", json={"username": "cli_worker", "password": PASSWORD}).status_code == 401
    c = client_for(eng, None)
    c.get("/login")
    r = c.post("/login", data={"username": "cli_worker", "password": PASSWORD,
                               "csrf_token": c.cookies.get("sn_login_csrf"), "next": "/"})
    assert r.status_code == 401 and "sn_session" not in r.headers.get("set-cookie", "")
    capsys.readouterr()
    assert main(["users", "--db", url, "list"]) == 0
    assert "DISABLED" in next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("cli_worker"))

    assert main(["users", "--db", url, "enable", "cli_worker"]) == 0
    login(client_for(eng, None), "cli_worker")
    assert main(["users", "--db", url, "disable", "no_such_user"]) == 2


# ---- migrations ------------------------------------------------------------------------------------------
def _schema(engine) -> dict:
    insp = inspect(engine)
    return {t: sorted(i["name"] for i in insp.get_indexes(t)) for t in insp.get_table_names()}


def _version(engine) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(text("SELECT version_num FROM alembic_version")).scalars())


def _triggers(engine, kind: str) -> set[str]:
    q = ("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal" if kind == "postgresql"
         else "SELECT name FROM sqlite_master WHERE type = 'trigger'")
    with engine.connect() as c:
        return set(c.execute(text(q)).scalars())


def _head() -> str:
    """The newest migration's revision id (the schema `migrate` brings a database to)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(db.MIGRATIONS)).get_current_head()


def test_migrate_is_idempotent(review_db):
    eng = review_db.engine
    before, counts = _schema(eng), _db_counts(eng)
    db.migrate(eng)
    db.migrate(eng)
    assert _schema(eng) == before and _db_counts(eng) == counts
    assert _version(eng) == [_head()]
    assert {"audit_no_update"} <= _triggers(eng, review_db.kind)


def test_models_match_the_migrations(review_db):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with review_db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), m.metadata)
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(scratch_db):
    from alembic import command

    eng, kind = scratch_db.engine, scratch_db.kind
    tables = set(m.metadata.tables)
    assert tables <= set(_schema(eng))
    audit.record(eng, None, "-", "user_admin", "user", "x", "")
    cfg = db.alembic_config(eng)
    with eng.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert set(_schema(eng)) <= {"alembic_version"}
    assert _version(eng) == [] and _triggers(eng, kind) == set()
    if kind == "postgresql":
        with eng.connect() as c:
            assert c.scalar(text("SELECT count(*) FROM pg_proc WHERE proname = 'audit_append_only'")) == 0
    db.migrate(eng)  # alembic upgrade head
    assert tables <= set(_schema(eng)) and _version(eng) == [_head()]
    with eng.connect() as c:
        assert tuple(c.execute(select(m.audit_head)).one()) == (1, 0, "0" * 64)
    audit.record(eng, None, "-", "user_admin", "user", "y", "")
    assert audit.verify(eng).ok and audit.verify(eng).entries == 1
    with pytest.raises(DBAPIError, match="append-only"), eng.begin() as c:
        c.execute(text("DELETE FROM audit"))
