"""Issue #16 (3): the review app under load — what makes it fast must not make it wrong. On SQLite and PostgreSQL.

* Facet counts: `facet_counts` (kept by decisions and loads in their own transactions) equals a fresh GROUP BY
  over the warnings and cases after a series of decisions — one by one, racing in threads, refused ones — and
  after the next snapshot re-opens cases; the list's totals and facets (in memory, caught up from the decisions)
  equal the reference computed from the groups, for every role and many filter combinations, in this process
  and in a fresh one.
* Keyset pagination: following the cursors forward (and backward from the last page) returns every warning of
  the scope exactly once, in the list's order, also where runs of equal scores straddle page boundaries, with
  filters, through the API and the pages' links; a cursor never widens the scope; a forged one is refused (400).
* The migration applies on an existing database: down to 0004 and up again, the counts are rebuilt exactly and
  the list's page is cut on `ix_warnings_page` with no sort, a cursor seeking into it.
* Login: argon2id at or above OWASP's minimum (and old hashes re-hashed at it); throttling holds when attempts are
  hashed side by side; a burst of logins waits for the hash slots (one per core) without holding up others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from argon2 import PasswordHasher
from sqlalchemy import func, insert, select, text, update

from safetynet.review import auth, db, queries
from safetynet.review import models as m
from safetynet.review.auth import User
from safetynet.review.load import load_snapshot
from tests.review_support import (
    ACCOUNTS,
    FIRST,
    NEXT,
    PASSWORD,
    STREET_A,
    STREET_B,
    client_for,
    live_server,
    new_review_db,
)

pytestmark = pytest.mark.integration

FILTERS = [{}, {"status": "new"}, {"status": "visited"}, {"severity": "S1"}, {"category": "低保"}, {"category": "无"},
           {"street": STREET_A}, {"community": STREET_A + "001"}, {"street": STREET_A, "status": "new"},
           {"street": STREET_B, "severity": "S2", "category": "无"}, {"status": "dismissed", "severity": "S1"},
           {"rule": "medical_burden"}, {"rule": "medical_burden", "status": "new", "street": STREET_A},
           {"category": "不存在"}, {"street": "<script>"}, {"status": "closed", "category": "特困"}]


def _user(engine, username: str) -> User:
    with engine.connect() as c:
        r = c.execute(select(m.users).where(m.users.c.username == username)).one()
    return User(r.id, r.username, r.display_name, r.role, r.region_prefix)


def _fresh_counts(engine) -> dict[tuple, int]:
    """(snapshot, community, street, rule, title, severity, categories, status) → warnings: a GROUP BY now."""
    w, c = m.warnings.c, m.cases.c
    dims = (w.snapshot_date, w.region_code, w.street_code, w.rule_id, w.rule_title_zh, w.severity, w.categories,
            c.status)
    with engine.connect() as con:
        rows = con.execute(select(*dims, func.count()).select_from(m.warnings.join(m.cases, c.alert_key == w.alert_key))
                           .group_by(*dims)).all()
    return {tuple(r[:-1]): r[-1] for r in rows}


def _kept_counts(engine) -> dict[tuple, int]:
    fc = m.facet_counts.c
    with engine.connect() as con:
        rows = con.execute(select(fc.snapshot_date, fc.region_code, fc.street_code, fc.rule_id, fc.rule_title_zh,
                                  fc.severity, fc.categories, fc.status, fc.n).where(fc.n > 0)).all()
    return {tuple(r[:-1]): r[-1] for r in rows}


def _reference(engine, user: User, f: queries.Filters, day: dt.date) -> tuple[int, dict]:
    """The total and facets as the app computed them before they were kept: from a GROUP BY over the warnings."""
    with engine.connect() as con:
        groups = queries._groups(con, user, f, day)
    return sum(g[-1] for g in groups if queries._matches(g, f)), queries._facets(groups, f)


def _check_list_counts(engine, users: list[User], day: dt.date | None = None, facets=None) -> None:
    """For every user and filter: the list's total and facets equal the reference (and with a fresh process'
    counts, `facets`: another `FacetCounts`)."""
    for u in users:
        for spec in FILTERS:
            f = queries.Filters(**spec, snapshot=day)
            d = queries.list_warnings(engine, u, f)
            want_total, want_facets = _reference(engine, u, f, d["snapshot"])
            assert (d["total"], d["facets"]) == (want_total, want_facets), (u.username, spec)
            if facets is not None:
                with engine.connect() as con:
                    got = facets.counts(con, engine, u, d["snapshot"], f)
                assert got == (want_total, want_facets), (u.username, spec)


def _decisions(engine, actor: User, alert_key: str, chain: list[str]) -> list[str]:
    """Record `chain` on one case (what each answered: the new status, or the Conflict)."""
    out = []
    for action in chain:
        kw = {"assign": {"assignee_id": actor.id}, "dismiss": {"reason_code": "verified_no_risk", "note": "核实"},
              "assist": {"assistance": "temporary"}}.get(action, {})
        try:
            out.append(queries.decide(engine, actor, alert_key, action, **kw)["status"])
        except queries.Conflict as e:
            out.append(f"409 {e}")
    return out


@pytest.fixture(scope="module")
def staff(review_db):
    eng = review_db.engine
    return {name: _user(eng, name) for name in ACCOUNTS}


@pytest.fixture(scope="module")
def alerts(review_db) -> list[tuple[str, str]]:
    """(alert_key, region_code) of the first snapshot's warnings, in warning order."""
    with review_db.engine.connect() as c:
        return [tuple(r) for r in c.execute(select(m.warnings.c.alert_key, m.warnings.c.region_code)
                                            .where(m.warnings.c.snapshot_date == FIRST)
                                            .order_by(m.warnings.c.warning_id))]


# ---- facet counts -----------------------------------------------------------------------------------------
def test_facet_counts_stay_exact_under_decisions(review_db, staff, alerts):
    eng = review_db.engine
    users = [staff[n] for n in ("admin", "county", "street_a", "street_b", "community_a", "auditor")]
    assert _kept_counts(eng) == _fresh_counts(eng)
    _check_list_counts(eng, users)  # this process now holds the counts, to be caught up decision by decision
    admin = staff["admin"]
    chains = [["visit"], ["assign", "visit", "assist", "close"], ["dismiss"], ["visit", "dismiss", "close"],
              ["assign", "assign", "visit"], ["visit", "assist"], ["close"], ["visit", "visit"]]
    answers = []
    for i, (key, _) in enumerate(alerts[:24]):
        answers += _decisions(eng, admin, key, chains[i % len(chains)])
        if i % 6 == 5:
            assert _kept_counts(eng) == _fresh_counts(eng)
            _check_list_counts(eng, users[:3])
    assert any(a.startswith("409") for a in answers) and {"closed", "assisted", "dismissed"} <= set(answers)
    assert _kept_counts(eng) == _fresh_counts(eng)
    _check_list_counts(eng, users, facets=queries.FacetCounts())  # and as a process starting now sees them


def test_facet_counts_stay_exact_under_concurrent_decisions(review_db, staff, alerts):
    """Twelve threads deciding at once, on different cases of the same few groups (the same counts rows)."""
    eng = review_db.engine
    users = [staff["county"], staff["street_a"]]
    _check_list_counts(eng, users)
    mine = [k for k, region in alerts[24:] if region.startswith(STREET_A)][:12]
    assert len(mine) >= 6
    with ThreadPoolExecutor(len(mine)) as pool:
        done = list(pool.map(lambda k: _decisions(eng, staff["street_a"], k, ["visit", "assist", "close"]), mine))
    assert all(a[-1] == "closed" for a in done), done
    assert _kept_counts(eng) == _fresh_counts(eng)
    _check_list_counts(eng, users)


def test_facet_counts_follow_the_next_snapshot(review_db, published, tmp_path):
    """A load counts its date afresh and moves the counts of the cases it re-opens on the dates before."""
    import shutil

    import pyarrow as pa

    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.publish import snapshot
    from safetynet.publish.snapshot import Pseudonymiser, publish

    shutil.copytree(published.dir, tmp_path / "store")
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    rdb, close = new_review_db(review_db.kind, tmp_path)
    try:
        eng = rdb.engine
        load_snapshot(eng, store, FIRST)
        uid = auth.add_user(eng, "next_admin", PASSWORD, "admin", "", "下一期")
        admin = User(uid, "next_admin", "下一期", "admin", "")
        w = snapshot.read(store, "warnings", FIRST, identified=True)
        rows = sorted(w.to_pylist(), key=lambda r: r["warning_id"])
        reopen, stay, gone = rows[0], rows[1], rows[2]
        for r in (reopen, stay, gone):
            _decisions(eng, admin, r["alert_key"], ["dismiss"])
        _check_list_counts(eng, [admin])
        nxt = []
        for r in rows:
            if r is gone:
                continue
            r = dict(r, snapshot_date=NEXT)
            if r["alert_key"] == reopen["alert_key"]:  # a fact not seen before: re-opens
                r["facts"] = [*r["facts"], {**r["facts"][0], "record_key": "RECORD-NEXT-LOAD-1"}]
                r["warning_id"] = "f" * 24
            nxt.append(r)
        nxt.append(dict(rows[3], snapshot_date=NEXT, alert_key="e" * 24, warning_id="e" * 24))  # a new alert

        def on_next(t: pa.Table) -> pa.Table:
            i = t.schema.get_field_index("snapshot_date")
            if i < 0:
                return t
            return t.set_column(i, t.schema.field(i), pa.array([NEXT] * t.num_rows, t.schema.field(i).type))

        publish(store, NEXT, {"warnings": pa.Table.from_pylist(nxt, schema=w.schema),
                              "monitoring/person": on_next(snapshot.read(store, "monitoring/person", FIRST,
                                                                         identified=True)),
                              "monitoring/household": on_next(snapshot.read(store, "monitoring/household", FIRST))},
                Pseudonymiser(b"review-tests"), policy_version=snapshot.manifest(store, FIRST)["policy_version"],
                inputs={})
        res = load_snapshot(eng, store, NEXT)
        assert (res.loaded, res.reopened, res.new_cases) == (True, 1, 1)
        assert [_status(eng, r["alert_key"]) for r in (reopen, stay, gone)] == ["new", "dismissed", "dismissed"]
        assert _kept_counts(eng) == _fresh_counts(eng)
        assert {k[0] for k in _kept_counts(eng)} == {FIRST, NEXT}
        users = [admin, _user(eng, "next_admin")]
        _check_list_counts(eng, users[:1])  # the latest snapshot (the cached counts reloaded after the load)
        _check_list_counts(eng, users[:1], day=FIRST)  # and the one before, a re-opened case moved on it
        _decisions(eng, admin, reopen["alert_key"], ["visit"])
        assert _kept_counts(eng) == _fresh_counts(eng)  # a decision moves the case's warnings on both dates
        _check_list_counts(eng, users[:1], day=FIRST)
    finally:
        close()


def test_a_republish_of_the_loaded_date_replaces_only_the_households_that_changed(review_db, published, tmp_path):
    """A new version of the date already loaded: the households and members that differ (changed, added, gone)
    are written again, the others left alone — and the tables equal a full load of that version."""
    import shutil

    import pyarrow as pa
    import pyarrow.compute as pc

    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore
    from safetynet.publish import snapshot
    from safetynet.publish.snapshot import Pseudonymiser, publish
    from safetynet.review import load

    shutil.copytree(published.dir, tmp_path / "store")
    store = ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))
    person = snapshot.read(store, "monitoring/person", FIRST, identified=True)
    hh = snapshot.read(store, "monitoring/household", FIRST)
    keys = sorted(set(hh["household_no"].to_pylist()))
    changed, gone = keys[3], keys[5]
    i = person.schema.get_field_index("oop_12m")  # a member's medical spending changes
    first = person["household_no"].to_pylist().index(changed)
    oop = person["oop_12m"].to_pylist()
    oop[first] = (oop[first] or 0) + 12345
    person2 = person.set_column(i, person.schema.field(i), pa.array(oop, person.schema.field(i).type))
    person2 = person2.filter(pc.not_equal(person2["household_no"], gone))  # a household leaves the register
    hh2 = hh.filter(pc.not_equal(hh["household_no"], gone))
    w = snapshot.read(store, "warnings", FIRST, identified=True)
    w2 = w.filter(pc.not_equal(w["household_no"], gone))
    rdb, close = new_review_db(review_db.kind, tmp_path)
    (tmp_path / "full").mkdir()
    full, close_full = new_review_db(review_db.kind, tmp_path / "full")
    try:
        load_snapshot(rdb.engine, store, FIRST)
        v = publish(store, FIRST, {"warnings": w2, "monitoring/person": person2, "monitoring/household": hh2},
                    Pseudonymiser(b"review-tests"), policy_version=snapshot.manifest(store, FIRST)["policy_version"],
                    inputs={})["version"]
        assert load.changed_households(store, FIRST, v - 1, person2, hh2) == {changed, gone}
        replaced = []
        real = load._replace_households
        load._replace_households = lambda c, day, h, p, only=None: (replaced.append(only), real(c, day, h, p, only))
        try:
            assert load_snapshot(rdb.engine, store, FIRST).loaded
        finally:
            load._replace_households = real
        assert replaced == [{changed, gone}]
        load_snapshot(full.engine, store, FIRST)  # a fresh database: every household written

        def tables(eng) -> tuple:
            with eng.connect() as c:
                hs = sorted((r.household_no, str(r.snapshot_date), r.region_code, json.dumps(r.data, sort_keys=True))
                            for r in c.execute(select(m.households)))
                ms = sorted((r.household_no, r.seq, r.id_no, r.name, json.dumps(r.data, sort_keys=True))
                            for r in c.execute(select(m.members)))
            return hs, ms

        got, want = tables(rdb.engine), tables(full.engine)
        assert got == want and len(got[0]) == hh2.num_rows and len(got[1]) == person2.num_rows
        assert gone not in {h for h, *_ in got[0]}
    finally:
        close()
        close_full()


def _status(engine, alert_key: str) -> str:
    with engine.connect() as c:
        return c.scalar(select(m.cases.c.status).where(m.cases.c.alert_key == alert_key))


# ---- keyset pagination ------------------------------------------------------------------------------------
def _walk(engine, user: User, f: queries.Filters, limit: int) -> tuple[list[dict], list[int], list[int]]:
    """Every page forward by `next_cursor`: (rows, page numbers shown, page sizes)."""
    d = queries.list_warnings(engine, user, f, limit=limit)
    rows, labels, sizes = list(d["rows"]), [d["page"]], [len(d["rows"])]
    while d["next_cursor"]:
        d = queries.list_warnings(engine, user, dataclasses.replace(f, after=d["next_cursor"], page=d["page"] + 1),
                                  limit=limit)
        rows += d["rows"]
        labels.append(d["page"])
        sizes.append(len(d["rows"]))
    return rows, labels, sizes


def _walk_back(engine, user: User, f: queries.Filters, limit: int) -> tuple[list[dict], list[int], list[int]]:
    """Every page backward from the last (`before=end`) by `prev_cursor`, in list order."""
    d = queries.list_warnings(engine, user, dataclasses.replace(f, before=queries.END), limit=limit)
    pages, labels, sizes = [d["rows"]], [d["page"]], [len(d["rows"])]
    while d["prev_cursor"]:
        d = queries.list_warnings(engine, user, dataclasses.replace(f, before=d["prev_cursor"], page=d["page"] - 1),
                                  limit=limit)
        pages.insert(0, d["rows"])
        labels.insert(0, d["page"])
        sizes.insert(0, len(d["rows"]))
    return [r for p in pages for r in p], labels, sizes


def _check_pages(engine, user: User, f: queries.Filters, limit: int) -> list[dict]:
    everything = queries.list_warnings(engine, user, f, all_rows=True)["rows"]  # the list's order, unpaged
    want = [r["warning_id"] for r in everything]
    assert len(set(want)) == len(want)
    pages = -(-len(want) // limit)
    for rows, labels, sizes in (_walk(engine, user, f, limit), _walk_back(engine, user, f, limit)):
        assert [r["warning_id"] for r in rows] == want  # each exactly once, in order
        if want:
            assert labels == list(range(1, pages + 1))
            assert sizes == [limit] * (pages - 1) + [len(want) - (pages - 1) * limit]  # aligned both ways
    scores = [r["score"] for r in everything]
    assert scores == sorted(scores, reverse=True)
    return everything


@pytest.mark.parametrize("username,spec", [("county", {}), ("admin", {}), ("street_a", {}), ("community_a", {}),
                                           ("county", {"status": "new"}), ("county", {"severity": "S2"}),
                                           ("street_b", {"category": "无"}), ("county", {"rule": "medical_burden"})])
def test_keyset_pages_return_every_warning_once_in_order(review_db, staff, username, spec):
    eng, u = review_db.engine, staff[username]
    everything = _check_pages(eng, u, queries.Filters(**spec), limit=7)
    with eng.connect() as c:  # exactly the scope's warnings (filtered here in Python, not by the app's SQL)
        rows = c.execute(select(m.warnings.c.warning_id, m.warnings.c.region_code, m.warnings.c.severity,
                                m.warnings.c.rule_id, m.warnings.c.street_code, m.warnings.c.categories,
                                m.cases.c.status)
                         .join(m.cases, m.cases.c.alert_key == m.warnings.c.alert_key)
                         .where(m.warnings.c.snapshot_date == FIRST)).all()
    def kept(r) -> bool:
        if not r.region_code.startswith(u.region_prefix):
            return False
        for k, v in spec.items():
            if k == "category":
                if not (r.categories == ",," if v == "无" else f",{v}," in r.categories):
                    return False
            elif getattr(r, {"rule": "rule_id", "street": "street_code"}.get(k, k)) != v:
                return False
        return True

    keep = {r.warning_id for r in rows if kept(r)}
    assert {r["warning_id"] for r in everything} == keep and keep


def test_keyset_pages_with_ties_across_page_boundaries(review_db, tmp_path):
    """Warnings of three scores only: every page boundary falls inside a run of equal scores."""
    rdb, close = new_review_db(review_db.kind, tmp_path)
    try:
        eng = rdb.engine
        with review_db.engine.connect() as c:
            tmpl = dict(c.execute(select(m.warnings).where(m.warnings.c.snapshot_date == FIRST)
                                  .order_by(m.warnings.c.warning_id).limit(1)).mappings().one())
        now = dt.datetime.now(dt.UTC)
        warnings_, cases = [], []
        for i in range(83):  # household numbers repeat: ties on (score, household) too
            hh, key, wid = f"{STREET_A}001{i % 9:06d}", f"{i:024x}", f"{(i * 7919) % 1000:03d}{i:021x}"
            warnings_.append({**tmpl, "warning_id": wid, "alert_key": key, "household_no": hh,
                              "region_code": STREET_A + "001", "street_code": STREET_A,
                              "score": (30.0, 20.0, 6.0)[i % 3]})
            cases.append({"alert_key": key, "household_no": hh, "region_code": STREET_A + "001",
                          "street_code": STREET_A, "rule_id": tmpl["rule_id"], "status": "new", "first_snapshot": FIRST,
                          "last_snapshot": FIRST, "current_warning_id": wid, "updated_at": now})
        with eng.begin() as c:
            c.execute(insert(m.warnings), warnings_)
            c.execute(insert(m.cases), cases)
            c.execute(insert(m.snapshots).values(snapshot_date=FIRST, loaded_at=now, manifest_sha256="0" * 64,
                                                 warnings=83, households=9))
            queries.recount_facets(c, FIRST)  # as a load does
        uid = auth.add_user(eng, "ties", PASSWORD, "street_worker", STREET_A, "并列")
        u = User(uid, "ties", "并列", "street_worker", STREET_A)
        for limit in (5, 7, 10, 50):
            everything = _check_pages(eng, u, queries.Filters(), limit)
            scores = [r["score"] for r in everything]
            assert any(scores[i - 1] == scores[i] for i in range(limit, len(scores), limit))
        # the pages' links: 下一页 … to the end, then 末页 and 上一页 back to the first
        c = client_for(eng, "ties")
        seen, url, labels = [], "/", []
        while url:
            html = c.get(url).text
            labels.append(re.search(r"第 (\d+) / (\d+) 页", html).groups())
            seen += re.findall(r'href="/households/(\d+)"', html)
            nxt = re.search(r'<a href="(/\?[^"]*)"[^>]*id="next-page"', html)
            url = nxt.group(1).replace("&amp;", "&") if nxt else None
        assert len(seen) == 83 and labels == [(str(i), "2") for i in (1, 2)]
        html = c.get(re.search(r'<a href="(/\?[^"]*)"[^>]*id="last-page"',
                               c.get("/").text).group(1).replace("&amp;", "&")).text
        assert "第 2 / 2 页" in html and len(re.findall(r'href="/households/', html)) == 33
        prev = re.search(r'<a href="(/\?[^"]*)"[^>]*id="prev-page"', html).group(1).replace("&amp;", "&")
        html = c.get(prev).text
        assert "第 1 / 2 页" in html and 'id="prev-page"' not in html
        assert len(re.findall(r'href="/households/', html)) == 50
    finally:
        close()


def test_api_pages_by_cursor(review_db, staff):
    eng = review_db.engine
    c = client_for(eng, "county")
    everything = queries.list_warnings(eng, staff["county"], queries.Filters(), all_rows=True)["rows"]
    want = [r["warning_id"] for r in everything]
    got, params = [], {"limit": 11}
    while True:
        d = c.get("/api/v1/warnings", params=params).json()
        got += [r["warning_id"] for r in d["rows"]]
        if not d["next_cursor"]:
            break
        params = {"limit": 11, "after": d["next_cursor"], "page": d["page"] + 1}
    assert got == want and d["page"] == d["pages"] == -(-len(want) // 11)
    for bad in ("x", "e30", "WzEsMiwzXQ", "WyJOYU4iLCIxIiwiMiJd", "a" * 200):
        assert c.get("/api/v1/warnings", params={"after": bad}).status_code == 400
        assert c.get("/", params={"before": bad}).status_code == 400


def test_a_cursor_never_widens_the_scope(review_db, staff):
    """A cursor is only a place in the order: street B's worker given a street A row's cursor sees street B."""
    eng = review_db.engine
    a_rows = queries.list_warnings(eng, staff["street_a"], queries.Filters(), all_rows=True)["rows"]
    token = queries.encode_cursor((a_rows[0]["score"] + 1, a_rows[0]["household_no"], a_rows[0]["warning_id"]))
    for kw in ({"after": token}, {"before": token}, {"before": queries.END}):
        d = queries.list_warnings(eng, staff["street_b"], queries.Filters(**kw), limit=500)
        assert d["rows"] and all(r["street_code"] == STREET_B for r in d["rows"])


# ---- the migration on an existing database ----------------------------------------------------------------
def test_migration_applies_on_an_existing_database(review_db, published, tmp_path):
    from alembic import command

    rdb, close = new_review_db(review_db.kind, tmp_path)
    try:
        eng = rdb.engine
        load_snapshot(eng, published, FIRST)
        uid = auth.add_user(eng, "mig_admin", PASSWORD, "admin", "", "迁移")
        u = User(uid, "mig_admin", "迁移", "admin", "")
        with eng.connect() as c:
            keys = list(c.execute(select(m.cases.c.alert_key).order_by(m.cases.c.alert_key).limit(6)).scalars())
        for k in keys:
            _decisions(eng, u, k, ["visit", "dismiss"])
        cfg = db.alembic_config(eng)
        with eng.begin() as c:
            cfg.attributes["connection"] = c
            command.downgrade(cfg, "0004")  # the database as it was before: no counts, the ascending index
        with eng.connect() as c:
            assert "facet_counts" not in _tables(c)
            assert "DESC" not in _index_sql(c, "ix_warnings_page").upper()
        for k in keys[:3]:  # decided on the old schema (no counts to move)
            with eng.begin() as c:
                c.execute(update(m.cases).where(m.cases.c.alert_key == k).values(status="closed"))
        db.migrate(eng)
        queries.FACETS.clear()
        assert _kept_counts(eng) == _fresh_counts(eng)
        assert _kept_counts(eng)
        sql = _index_sql(eng.connect(), "ix_warnings_page").upper()
        assert re.search(r"SCORE DESC,\s*HOUSEHOLD_NO DESC,\s*WARNING_ID DESC", sql), sql
        _check_list_counts(eng, [u])
        _check_pages(eng, u, queries.Filters(), limit=9)
        _assert_page_cut_on_the_index(eng, u)
    finally:
        close()


def _tables(c) -> set[str]:
    from sqlalchemy import inspect

    return set(inspect(c).get_table_names())


def _index_sql(c, name: str) -> str:
    if c.dialect.name == "postgresql":
        return c.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}) or ""
    return c.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :n"), {"n": name}) or ""


def _assert_page_cut_on_the_index(engine, user: User) -> None:
    """The statement cutting a page — first page, and after a cursor — walks ix_warnings_page in order: no sort
    (PostgreSQL told to avoid sorts and sequential scans where it can: the index must make a sort unneeded)."""
    day = queries.latest_snapshot(engine)
    w = m.warnings.c
    for extra in ([], [queries._after((20.0, "4301", "0"))]):
        q = (select(w.snapshot_date, w.warning_id).where(*queries._conds(user, queries.Filters(), day), *extra)
             .order_by(*queries._order()).limit(50))
        with engine.connect() as c:
            sql = q.compile(c, compile_kwargs={"literal_binds": True})
            if c.dialect.name == "postgresql":
                c.execute(text("SET enable_seqscan = off"))
                c.execute(text("SET enable_sort = off"))
                plan = json.dumps(c.execute(text(f"EXPLAIN (FORMAT JSON) {sql}")).scalar())
                assert "ix_warnings_page" in plan and '"Sort"' not in plan, plan
                if extra:
                    assert "ROW(score, household_no, warning_id) <" in plan, plan
            else:
                plan = " / ".join(r[-1] for r in c.execute(text(f"EXPLAIN QUERY PLAN {sql}")))
                assert "ix_warnings_page" in plan and "TEMP B-TREE" not in plan, plan
                if extra:
                    assert "(score,household_no,warning_id)<" in plan.replace(" ", ""), plan


# ---- login ------------------------------------------------------------------------------------------------
# OWASP Password Storage Cheat Sheet: argon2id minimums, all equivalent — (memory KiB, passes), parallelism 1
OWASP_ARGON2ID = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))


def test_argon2_cost_at_or_above_owasp_minimum(review_db):
    h = auth._hasher
    assert (h.type.name, h.parallelism >= 1) == ("ID", True)
    assert any(h.memory_cost >= m_ and h.time_cost >= t_ for m_, t_ in OWASP_ARGON2ID), (h.memory_cost, h.time_cost)
    assert (h.memory_cost, h.time_cost, h.parallelism) == (
        auth.ARGON2_MEMORY_KIB, auth.ARGON2_TIME_COST, auth.ARGON2_PARALLELISM)  # the parameters in one place
    assert auth.hash_password(PASSWORD).startswith(
        f"$argon2id$v=19$m={auth.ARGON2_MEMORY_KIB},t={auth.ARGON2_TIME_COST},p={auth.ARGON2_PARALLELISM}$")
    eng = review_db.engine
    # as stored before: the library's default cost, and the previous setting (OWASP's m=19456 KiB, t=2)
    for name, before in (("old_hash", PasswordHasher()), ("old_cost", PasswordHasher(time_cost=2, memory_cost=19456))):
        auth.add_user(eng, name, PASSWORD, "street_worker", STREET_A, "旧哈希")
        old = before.hash(PASSWORD)
        with eng.begin() as c:
            c.execute(update(m.users).where(m.users.c.username == name).values(password_hash=old))
        assert auth.authenticate(eng, name, PASSWORD, "10.9.0.1") is not None
        with eng.connect() as c:
            stored = c.scalar(select(m.users.c.password_hash).where(m.users.c.username == name))
        assert stored != old and not h.check_needs_rehash(stored) and h.verify(stored, PASSWORD)


def test_login_refused_when_failures_pile_up_while_it_hashes(review_db):
    """The right password, hashed while enough wrong ones failed: refused (`Throttled`), and not recorded."""
    eng = review_db.engine
    auth.add_user(eng, "side_by_side", PASSWORD, "street_worker", STREET_A, "并发猜测")
    ip = "10.9.0.2"
    check = auth.login_check(eng, "side_by_side", ip)  # step 1 passed: no failures yet
    for i in range(auth.THROTTLE_MAX_FAILURES):  # meanwhile, wrong guesses hashed side by side
        assert auth.authenticate(eng, "side_by_side", f"wrong-guess-{i}", ip) is None
    ok, rehash = auth.login_verify(check, PASSWORD)
    assert ok
    with pytest.raises(auth.Throttled):
        auth.login_finish(eng, check, ok, rehash)
    with eng.connect() as c:
        tries = c.execute(select(m.login_attempts.c.ok).where(m.login_attempts.c.username == "side_by_side")).all()
    assert Counter(ok for (ok,) in tries) == Counter({False: auth.THROTTLE_MAX_FAILURES})


def test_login_throttled_under_a_burst_of_wrong_passwords(review_db):
    """Sixteen wrong passwords at once: however they interleave, the account is throttled afterwards — also for
    the right password — and no more than the burst itself was ever recorded."""
    eng = review_db.engine
    auth.add_user(eng, "burst_probe", PASSWORD, "street_worker", STREET_A, "突发猜测")
    gate = threading.Barrier(16)

    def guess(i: int) -> str:
        gate.wait()
        try:
            return "ok" if auth.authenticate(eng, "burst_probe", f"wrong-{i}", f"10.9.1.{i}") else "refused"
        except auth.Throttled:
            return "throttled"

    with ThreadPoolExecutor(16) as pool:
        answers = Counter(pool.map(guess, range(16)))
    assert answers["ok"] == 0 and answers["refused"] >= auth.THROTTLE_MAX_FAILURES
    with pytest.raises(auth.Throttled):
        auth.authenticate(eng, "burst_probe", PASSWORD, "10.9.1.99")


def test_login_burst_waits_for_hash_slots_without_holding_up_others(review_db, monkeypatch):
    """Logins hash at most `HASH_SLOTS` at a time; the others wait holding no thread, and the app keeps
    answering meanwhile (a page and the API, from a logged-in client)."""
    eng = review_db.engine
    names = [f"slot_{i}" for i in range(auth.HASH_SLOTS + 3)]
    for n in names:
        auth.add_user(eng, n, PASSWORD, "street_worker", STREET_A, n)
    lock, release = threading.Condition(), threading.Event()
    state = {"now": 0, "most": 0, "entered": 0}
    real = auth.login_verify

    def held_verify(check, password):
        with lock:
            state["now"] += 1
            state["entered"] += 1
            state["most"] = max(state["most"], state["now"])
            lock.notify_all()
        assert release.wait(30)
        try:
            return real(check, password)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(auth, "login_verify", held_verify)
    server = live_server(eng)
    try:
        reader = httpx.Client(base_url=server.url, timeout=30)
        release.set()  # one login before the burst, for the reader
        assert reader.post("/api/v1/login", json={"username": "county", "password": PASSWORD}).status_code == 200
        release.clear()
        with ThreadPoolExecutor(len(names)) as pool:
            futures = [pool.submit(httpx.post, f"{server.url}/api/v1/login",
                                   json={"username": n, "password": PASSWORD}, timeout=60) for n in names]
            with lock:
                assert lock.wait_for(lambda: state["now"] == auth.HASH_SLOTS, timeout=30)
            # every hash slot taken, the rest of the burst queued: the app still answers
            assert reader.get("/api/v1/warnings", params={"limit": 5}).status_code == 200
            assert reader.get("/").status_code == 200
            with lock:
                assert state["now"] == auth.HASH_SLOTS and state["entered"] == 1 + auth.HASH_SLOTS
            release.set()
            codes = [f.result().status_code for f in futures]
        assert codes == [200] * len(names) and state["most"] == auth.HASH_SLOTS
        reader.close()
    finally:
        release.set()
        server.stop()
