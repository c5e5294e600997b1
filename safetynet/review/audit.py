"""The audit log: append-only (database triggers refuse UPDATE/DELETE) and hash-chained.

Each entry's `hash` = SHA-256 of the previous entry's hash and the entry's canonical JSON, so an
entry changed, removed or inserted out of band breaks the chain at that point (`verify`).
Appends are serialised by locking the one-row `audit_head` in the transaction of the action recorded,
*before* it is read (`_lock_head`): so the head an entry chains to is always the last committed one, and
concurrent appends (twenty staff logging in at once) queue up instead of forking the chain.
Entries never hold an unmasked ID number or name.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, and_, func, insert, select, true, update

from safetynet.review import models as m
from safetynet.review.auth import User
from safetynet.review.db import now

ACTIONS_ZH = {
    "login": "登录", "login_failed": "登录失败", "logout": "退出", "view_list": "查看预警清单",
    "view_household": "查看家庭详情", "unmask": "查看完整身份信息", "export": "导出", "decision": "处置",
    "load_snapshot": "导入快照", "user_admin": "账户管理",
}


def _digest(prev: str, row: dict) -> str:
    body = json.dumps({k: row[k] for k in ("at", "username", "role", "ip", "action", "object_type", "object_id",
                                           "region_code", "detail")},
                      ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + "\n" + body).encode()).hexdigest()


def append(c: Connection, user: User | None, ip: str, action: str, object_type: str, object_id: str,
           region_code: str = "", **detail) -> None:
    """Append one entry inside the caller's transaction (so a decision and its entry commit together)."""
    head = _lock_head(c)
    at = now().isoformat(timespec="microseconds")
    row = {"at": at, "user_id": user.id if user else None,
           "username": user.username if user else "system", "role": user.role if user else "system",
           "ip": ip[:64], "action": action, "object_type": object_type, "object_id": str(object_id)[:64],
           "region_code": region_code or "", "detail": json.dumps(detail, ensure_ascii=False, sort_keys=True,
                                                                 separators=(",", ":"), default=str)}
    h = _digest(head.hash, row)
    pk = c.execute(insert(m.audit).values(**{**row, "at": dt.datetime.fromisoformat(at)}, prev_hash=head.hash,
                                          hash=h)).inserted_primary_key
    assert pk is not None  # a single-row INSERT always has one (SQLAlchemy types it Optional)
    new_id = pk[0]
    c.execute(update(m.audit_head).where(m.audit_head.c.id == 1).values(last_id=new_id, hash=h))


def _lock_head(c: Connection):
    """The chain's head, read under a lock held until the caller's transaction ends.

    PostgreSQL: `SELECT … FOR UPDATE` of the head row (a concurrent appender waits, then reads the head it
    committed). SQLite ignores FOR UPDATE, and the sqlite3 driver (its legacy transaction control) runs a
    SELECT outside any transaction until the first INSERT/UPDATE/DELETE: a head read first is a stale
    snapshot, whatever the caller's `engine.begin()` says. So there the head row is *written* first (a
    no-op UPDATE): that opens the transaction and takes SQLite's single write lock — waiting for the
    current writer, up to the busy timeout — so the head read next is the latest, and stays so until
    commit. (Were the transaction already open on a read snapshot, SQLite refuses the write if that
    snapshot is stale — SQLITE_BUSY — rather than letting the chain fork.)
    """
    if c.dialect.name != "postgresql":
        c.execute(update(m.audit_head).where(m.audit_head.c.id == 1).values(last_id=m.audit_head.c.last_id))
    return c.execute(select(m.audit_head).where(m.audit_head.c.id == 1).with_for_update()).one()


def record(engine: Engine, user: User | None, ip: str, action: str, object_type: str, object_id: str,
           region_code: str = "", **detail) -> None:
    with engine.begin() as c:
        append(c, user, ip, action, object_type, object_id, region_code, **detail)


@dataclass
class ChainCheck:
    ok: bool
    entries: int
    first_bad_id: int | None = None
    reason: str = ""


def verify(engine: Engine) -> ChainCheck:
    """Walk the chain in id order (appends hold the head lock, so ids follow the chain).

    One statement reads the entries and the head together (the head joined to every entry), so the
    walk sees one snapshot on both databases: an entry appended meanwhile is neither half-seen nor
    mistaken for an entry added behind the head's back.
    """
    prev, n, head = "0" * 64, 0, None
    q = (select(m.audit_head.c.hash.label("head_hash"), *m.audit.c)
         .select_from(m.audit_head.outerjoin(m.audit, true()))
         .where(m.audit_head.c.id == 1).order_by(m.audit.c.id))
    with engine.connect() as c:
        for r in c.execute(q).mappings():
            head = r["head_hash"]
            if r["id"] is None:  # no entry yet: the head alone
                continue
            row = dict(r)
            row["at"] = _iso(row["at"])
            if row["prev_hash"] != prev:
                return ChainCheck(False, n, r["id"], "与前一条记录的哈希不连续（记录被删除或插入）")
            if _digest(prev, row) != r["hash"]:
                return ChainCheck(False, n, r["id"], "记录内容与哈希不符（记录被修改）")
            prev, n = r["hash"], n + 1
    if head != prev:
        return ChainCheck(False, n, None, "链尾与最后一条记录不符（末尾记录被删除）")
    return ChainCheck(True, n)


def _iso(v) -> str:
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        return v.astimezone(dt.UTC).isoformat(timespec="microseconds")
    return str(v)


def search(engine: Engine, *, username: str = "", action: str = "", object_id: str = "", since=None,
           until=None, limit: int = 200, offset: int = 0) -> tuple[list[dict], int]:
    conds = []
    if username:
        conds.append(m.audit.c.username == username)
    if action:
        conds.append(m.audit.c.action == action)
    if object_id:
        conds.append(m.audit.c.object_id == object_id)
    if since:
        conds.append(m.audit.c.at >= since)
    if until:
        conds.append(m.audit.c.at < until)
    where = and_(True, *conds)
    with engine.connect() as c:
        total = c.execute(select(func.count()).select_from(m.audit).where(where)).scalar_one()
        rows = c.execute(select(m.audit).where(where).order_by(m.audit.c.id.desc()).limit(limit).offset(offset))
        return [dict(r) for r in rows.mappings()], total
