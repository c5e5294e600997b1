"""Load a published snapshot into the review database, and carry each case's lifecycle over.

Only published snapshots are read: the date's pointer `_catalog/snapshots/<date>.json` names its
current version and is switched last, so a version being written is invisible here; one load
reads one version throughout. Loading the same version twice changes nothing (its manifest
checksum is recorded); a newer version of a loaded date replaces that date's warnings. A load
counts its date's warnings into the list's facet counts (`facet_counts`) afresh, and moves the
counts of the cases it re-opens on the dates before, in its own transaction.

Lifecycle across snapshots, per `alert_key` (the same concern: rule + household + person):
a new key opens a case (`new`); a key already open keeps its status and moves to the new
warning; a *dismissed* or *closed* case stays so unless its facts changed materially since the
decision — then it re-opens (`new`) with the change written down (`reopen_note`). Material:
a fact record that was not there (a new claim, wage month, vehicle…), a higher severity, or a
magnitude at least `MATERIAL_GROWTH` times the one decided on.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Engine, bindparam, delete, insert, select, text, update

from safetynet.core import paths
from safetynet.core.store import ObjectStore
from safetynet.publish import snapshot
from safetynet.review import audit, queries
from safetynet.review import models as m
from safetynet.review.db import now
from schemas.registry import contracts

log = logging.getLogger(__name__)

MATERIAL_GROWTH = 1.2
SEVERITY_ORDER = {"S3": 1, "S2": 2, "S1": 3}
CLOSED = ("dismissed", "closed")
_MEMBER_FIELDS = ("gender", "age", "relation_to_head", "status", "status_date", "hukou_type", "alive",
                  "working_age", "wage_12m_avg", "wage_last3_avg", "wage_prev9_avg", "last_wage_month",
                  "employer_name", "pension_monthly", "unemployment_status", "unemployment_benefit",
                  "income_monthly", "claims_12m", "medical_total_12m", "oop_12m", "serious_illness",
                  "serious_illness_name", "serious_illness_date", "vehicles_active", "vehicle_types", "residences",
                  "properties_other", "disability_category", "disability_grade", "medical_scheme", "medical_status",
                  "programmes", "active_categories")


@dataclass
class LoadResult:
    snapshot_date: dt.date
    loaded: bool  # False: already loaded (same manifest)
    warnings: int = 0
    households: int = 0
    new_cases: int = 0
    reopened: int = 0
    kept_closed: int = 0


def _json(v):
    return json.loads(json.dumps(v, ensure_ascii=False, default=str))


def latest_published(store: ObjectStore) -> dt.date | None:
    days = snapshot.snapshots(store)
    return days[-1] if days else None


def material_change(old: dict, new: dict) -> str | None:
    """A Chinese note of what changed materially between two versions of a warning, or None."""
    if old["warning_id"] == new["warning_id"]:
        return None
    notes = []
    if SEVERITY_ORDER.get(new["severity"], 0) > SEVERITY_ORDER.get(old["severity"], 0):
        notes.append(f"严重程度 {old['severity']} → {new['severity']}")
    seen = {(f["feed"], f["record_key"]) for f in old["facts"]}
    added = [f for f in new["facts"] if (f["feed"], f["record_key"]) not in seen]
    if added:
        notes.append("新增事实：" + "；".join(f"{f['feed']} {f['record_key']}（{f['field']}={f['value']}"
                                              f"{'，' + str(f['date']) if f.get('date') else ''}）" for f in added[:5])
                     + (f" 等 {len(added)} 条" if len(added) > 5 else ""))
    if old["magnitude"] > 0 and new["magnitude"] >= MATERIAL_GROWTH * old["magnitude"]:
        notes.append(f"超出程度 {old['magnitude']:.2f} → {new['magnitude']:.2f}")
    return "；".join(notes) or None


def input_notes(manifest: dict) -> list[dict]:
    """What staff must know about the snapshot's inputs: feeds whose latest delivery was unhealthy
    (the list was computed on their previous data, accepted by the operator) and stale feeds."""

    known = contracts()
    out = []
    for fid, i in sorted((manifest.get("inputs") or {}).items()):
        title = known[fid].title_zh if fid in known else fid
        if i.get("unhealthy"):
            out.append({"feed_id": fid, "title_zh": title, "kind": "unhealthy", "problems": i["unhealthy"]})
        elif i.get("stale"):
            out.append({"feed_id": fid, "title_zh": title, "kind": "stale", "problems": []})
    return out


def load_snapshot(engine: Engine, store: ObjectStore, day: dt.date | None = None) -> LoadResult:
    day = day or latest_published(store)
    if day is None:
        raise FileNotFoundError(f"no published snapshot in the store (no {paths.SNAPSHOTS}*.json)")
    try:
        ptr = snapshot.pointer(store, day)
    except FileNotFoundError:
        raise FileNotFoundError(f"no published snapshot {day} in {store.url}") from None
    sha, version = ptr["manifest_sha256"], ptr["version"]
    with engine.connect() as c:
        if c.scalar(select(m.snapshots.c.manifest_sha256).where(m.snapshots.c.snapshot_date == day)) == sha:
            return LoadResult(day, False)
    manifest = snapshot.manifest(store, day, version)  # this one version throughout, whatever the pointer does now
    w = snapshot.read(store, "warnings", day, identified=True, version=version)
    persons = snapshot.read(store, "monitoring/person", day, identified=True, version=version)
    hh = snapshot.read(store, "monitoring/household", day, version=version)
    warned = hh.filter(pc.is_in(hh["household_no"], pa.array(pc.unique(w["household_no"]), pa.string())))
    cats = {r["household_no"]: "," + ",".join(r["active_categories"] or []) + ","
            for r in warned.select(["household_no", "active_categories"]).to_pylist()}
    rows = []
    for r in w.to_pylist():
        rows.append({
            "snapshot_date": day, "warning_id": r["warning_id"], "alert_key": r["alert_key"], "rule_id": r["rule_id"],
            "rule_version": r["rule_version"], "rule_title_zh": r["rule_title_zh"], "severity": r["severity"],
            "kind": r["kind"], "household_no": r["household_no"], "region_code": r["region_code"],
            "street_code": r["street_code"], "county_code": r["region_code"][:6], "subject_id_no": r["subject_id_no"],
            "categories": cats.get(r["household_no"], ",,"), "summary_zh": r["summary_zh"],
            "thresholds": json.loads(r["thresholds"] or "{}"), "facts": _json(r["facts"] or []),
            "magnitude": r["magnitude"], "score": r["score"], "household_score": r["household_score"],
            "household_rank": r["household_rank"], "policy_version": r["policy_version"],
            "stale_inputs": list(r["stale_inputs"] or [])})
    res = LoadResult(day, True, warnings=len(rows), households=hh.num_rows)
    with engine.connect() as c:
        latest = c.execute(select(m.snapshots.c.snapshot_date, m.snapshots.c.version)
                           .order_by(m.snapshots.c.snapshot_date.desc())).first()
    # the households and members: only those that differ from the version loaded before, when that is a version of
    # this same date (a re-publish during the day: the usual case after a department event); else all of them
    only = changed_households(store, day, latest.version, persons, hh) \
        if latest is not None and latest.snapshot_date == day else None
    t = now()
    with engine.begin() as c:
        latest_loaded = c.scalar(select(m.snapshots.c.snapshot_date).order_by(m.snapshots.c.snapshot_date.desc()))
        c.execute(delete(m.warnings).where(m.warnings.c.snapshot_date == day))
        for i in range(0, len(rows), 5000):
            c.execute(insert(m.warnings), rows[i:i + 5000])
        reopened: list[tuple[str, str]] = []
        if latest_loaded is None or day >= latest_loaded:
            now_loaded = c.execute(select(m.snapshots.c.snapshot_date, m.snapshots.c.version)
                                   .order_by(m.snapshots.c.snapshot_date.desc())).first()
            if latest is None or now_loaded is None or tuple(now_loaded) != tuple(latest):
                only = None  # another load came in between: the diff's base is not what is loaded
            _replace_households(c, day, hh, persons, only)
            reopened = _carry_cases(c, day, version, rows, res, t)
        # the list's facet counts: this date's counted afresh; other dates' moved for the cases re-opened (the
        # cases locked first, the counts next, the audit chain's head last: in the order decisions take them)
        for key, frm in reopened:
            queries.move_facet_counts(c, key, frm, "new", skip_day=day)
        queries.recount_facets(c, day)
        c.execute(delete(m.snapshots).where(m.snapshots.c.snapshot_date == day))
        c.execute(insert(m.snapshots).values(snapshot_date=day, version=version, loaded_at=t, manifest_sha256=sha,
                                             policy_version=manifest.get("policy_version"), warnings=len(rows),
                                             households=hh.num_rows, reopened=res.reopened,
                                             input_notes=input_notes(manifest)))
        audit.append(c, None, "-", "load_snapshot", "snapshot", day.isoformat(), "", version=version, warnings=len(rows),
                     new_cases=res.new_cases, reopened=res.reopened, manifest_sha256=sha)
    if only is None or len(only) > hh.num_rows // 10:  # fresh statistics for the planner after a bulk load
        with engine.begin() as c:
            c.execute(text("ANALYZE"))
    log.info("review: loaded snapshot %s: %d warnings, %d new cases, %d re-opened, %d stay closed; households %s", day,
             res.warnings, res.new_cases, res.reopened, res.kept_closed,
             "all replaced" if only is None else f"{len(only)} changed replaced")
    return res


def changed_households(store: ObjectStore, day: dt.date, loaded_version: int, persons: pa.Table,
                       hh: pa.Table) -> set[str] | None:
    """The households whose household row or any member row differs between the version of `day` loaded
    before (`loaded_version`) and this one — added, changed or gone; None when that version cannot be
    read or its tables have other columns (then every household is replaced)."""
    try:
        old_p = snapshot.read(store, "monitoring/person", day, identified=True, version=loaded_version)
        old_h = snapshot.read(store, "monitoring/household", day, version=loaded_version)
    except (FileNotFoundError, snapshot.SnapshotNotFound):
        return None
    if old_p.schema != persons.schema or old_h.schema != hh.schema:
        return None
    con = duckdb.connect()
    try:
        for name, t in (("new_p", persons), ("old_p", old_p), ("new_h", hh), ("old_h", old_h)):
            con.register(name, t)
        # rows paired by key, compared by a 64-bit hash of the whole row (~12x faster than EXCEPT ALL on a
        # million members): a differing hash is a changed row for sure; equal hashes of different rows would
        # need a collision (~1e-13 for a million rows). Keys present once only (added, gone) differ too.
        diff = con.sql("""
            WITH n AS (SELECT household_no, id_no, hash(*COLUMNS(*)) AS h FROM new_p),
                 o AS (SELECT household_no, id_no, hash(*COLUMNS(*)) AS h FROM old_p),
                 nh AS (SELECT household_no, hash(*COLUMNS(*)) AS h FROM new_h),
                 oh AS (SELECT household_no, hash(*COLUMNS(*)) AS h FROM old_h)
            SELECT coalesce(n.household_no, o.household_no) FROM n FULL JOIN o USING (household_no, id_no)
            WHERE n.h IS DISTINCT FROM o.h
            UNION
            SELECT coalesce(nh.household_no, oh.household_no) FROM nh FULL JOIN oh USING (household_no)
            WHERE nh.h IS DISTINCT FROM oh.h""").fetchall()
    finally:
        con.close()
    return {r[0] for r in diff}


def _replace_households(c, day: dt.date, hh: pa.Table, persons: pa.Table, only: set[str] | None = None) -> None:
    """The households' and members' rows of this snapshot: all of them, or (`only`) those of the households
    named — deleted and written again from the snapshot (a household gone from it is just deleted)."""
    if only is None:
        c.execute(delete(m.members))
        c.execute(delete(m.households))
    else:
        keys = sorted(only)
        for i in range(0, len(keys), 1000):
            c.execute(delete(m.members).where(m.members.c.household_no.in_(keys[i:i + 1000])))
            c.execute(delete(m.households).where(m.households.c.household_no.in_(keys[i:i + 1000])))
        pick = pa.array(keys, pa.string())
        hh = hh.filter(pc.is_in(hh["household_no"], pick))
        persons = persons.filter(pc.is_in(persons["household_no"], pick))
    hrows = [{"household_no": r["household_no"], "snapshot_date": day, "region_code": r["region_code"],
              "street_code": r["street_code"], "county_code": r["county_code"],
              "data": _json({k2: v for k2, v in r.items() if k2 != "snapshot_date"})} for r in hh.to_pylist()]
    for i in range(0, len(hrows), 5000):
        c.execute(insert(m.households), hrows[i:i + 5000])
    seq: dict[str, int] = {}
    mrows = []
    for p in persons.to_pylist():
        n = seq[p["household_no"]] = seq.get(p["household_no"], 0) + 1
        mrows.append({"household_no": p["household_no"], "seq": n, "id_no": p["id_no"], "name": p["name"] or "",
                      "data": _json({f: p.get(f) for f in _MEMBER_FIELDS})})
    for i in range(0, len(mrows), 5000):
        c.execute(insert(m.members), mrows[i:i + 5000])


def _carry_cases(c, day: dt.date, version: int, rows: list[dict], res: LoadResult,
                 t: dt.datetime) -> list[tuple[str, str]]:
    """Open, move and re-open the cases of the warnings loaded; the cases re-opened, with the status they left.

    The cases are read locked (PostgreSQL; SQLite's loader already holds the database's write lock): a decision
    racing the load waits for it, so a re-open never overwrites a decision it did not see."""
    existing = {r.alert_key: r for r in c.execute(select(m.cases).with_for_update())}
    decided_ids = {r.decided_warning_id for r in existing.values() if r.decided_warning_id}
    decided = {}
    if decided_ids:
        ids = list(decided_ids)
        for i in range(0, len(ids), 1000):
            for r in c.execute(select(m.warnings.c.warning_id, m.warnings.c.severity, m.warnings.c.facts,
                                      m.warnings.c.magnitude).where(m.warnings.c.warning_id.in_(ids[i:i + 1000]))):
                decided[r.warning_id] = r._asdict()
    new_cases, moved, reopened = [], [], []
    for w in rows:
        case = existing.get(w["alert_key"])
        if case is None:
            new_cases.append({"alert_key": w["alert_key"], "household_no": w["household_no"],
                              "region_code": w["region_code"], "street_code": w["street_code"], "rule_id": w["rule_id"],
                              "status": "new", "first_snapshot": day, "last_snapshot": day,
                              "current_warning_id": w["warning_id"], "updated_at": t})
            continue
        note = None
        if case.status in CLOSED:
            old = decided.get(case.decided_warning_id)
            note = material_change(old, w) if old else None
            if note:
                c.execute(update(m.cases).where(m.cases.c.alert_key == w["alert_key"]).values(
                    status="new", reopen_note=note, assignee_id=None, updated_at=t))
                c.execute(insert(m.actions).values(
                    alert_key=w["alert_key"], action="reopen", from_status=case.status, to_status="new", user_id=None,
                    at=t, snapshot_date=day, snapshot_version=version, warning_id=w["warning_id"],
                    rule_version=w["rule_version"], note=note))
                reopened.append((w["alert_key"], case.status))
                res.reopened += 1
            else:
                res.kept_closed += 1
        moved.append({"k": w["alert_key"], "last_snapshot": day, "current_warning_id": w["warning_id"],
                      "region_code": w["region_code"], "street_code": w["street_code"]})
    if moved:  # one executemany: the case now points at this snapshot's version of its warning
        stmt = update(m.cases).where(m.cases.c.alert_key == bindparam("k")).values(
            last_snapshot=bindparam("last_snapshot"), current_warning_id=bindparam("current_warning_id"),
            region_code=bindparam("region_code"), street_code=bindparam("street_code"))
        for i in range(0, len(moved), 5000):
            c.execute(stmt, moved[i:i + 5000])
    for i in range(0, len(new_cases), 5000):
        c.execute(insert(m.cases), new_cases[i:i + 5000])
    res.new_cases = len(new_cases)
    return reopened
