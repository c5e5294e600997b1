"""Roles, scoping, accounts, sessions, CSRF and login throttling of the review app.

Scoping: a user sees exactly the rows whose `region_code` starts with their `region_prefix`
(6 digits: a county, 9: a street/town, 12: a community/village); every query of the app adds
that condition server-side (`in_scope`), whatever the request asks for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update

from safetynet.review import models as m
from safetynet.review.db import now


@dataclass(frozen=True)
class Role:
    id: str
    title_zh: str
    prefix_digits: tuple[int, ...]  # allowed lengths of its region prefix
    unmask: bool  # may reveal full ID numbers and names (each reveal audited)
    decide: frozenset[str]  # case actions it may record
    audit_log: bool  # may read the audit log
    manage_users: bool


ROLES: dict[str, Role] = {r.id: r for r in (
    Role("admin", "系统管理员", (0, 6, 9, 12), True,
         frozenset({"assign", "visit", "assist", "dismiss", "close"}), True, True),
    Role("county_reviewer", "区县审核人员", (6,), True,
         frozenset({"assign", "visit", "assist", "dismiss", "close"}), False, False),
    Role("street_worker", "街道（乡镇）工作人员", (9,), True,
         frozenset({"assign", "visit", "assist", "dismiss", "close"}), False, False),
    Role("community_assistant", "社区（村）协理员", (12,), False, frozenset({"visit"}), False, False),
    Role("auditor", "审计人员", (0, 6), False, frozenset(), True, False),
)}

# argon2id at OWASP's minimum (Password Storage Cheat Sheet), which lists five equivalent settings trading memory
# for passes — m=47104 KiB t=1, 19456/2, 12288/3, 9216/4, 7168/5, all p=1. The last does the least memory work
# (m×t) and is the cheapest here: CPU per hash on the 2-core EPYC ~15 ms (9216/4 ~16, 19456/2 ~20, 47104/1 ~50),
# and a burst of twenty logins queues behind twenty of them. The library's default (RFC 9106 low-memory: 64 MiB,
# t=3, p=4) costs ~8× the CPU. Stored hashes of any other cost (m, t or p) are re-hashed at the next successful
# login (`check_needs_rehash`). These three numbers are the only place the cost is set.
ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM = 7 * 1024, 5, 1
_hasher = PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# at most this many hashes at once (one per core): a burst of logins queues here, without a database
# connection, instead of taking every core (and 7 MiB each) from the requests already being served
HASH_SLOTS = _cores()
_hash_slots = threading.BoundedSemaphore(HASH_SLOTS)


def hash_password(password: str) -> str:
    with _hash_slots:
        return _hasher.hash(password)


def _verify(password_hash: str | None, password: str) -> bool:
    """Whether `password` is the one hashed (None: no such account — the same work, then False)."""
    with _hash_slots:
        if password_hash is None:
            _hasher.hash(password)
            return False
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


USERNAME = re.compile(r"^[A-Za-z0-9_.-]{3,64}$")
MIN_PASSWORD = 10
THROTTLE_WINDOW = dt.timedelta(minutes=15)
THROTTLE_MAX_FAILURES = 5  # per username, and ×4 per client address, within the window


@dataclass(frozen=True)
class User:
    id: int
    username: str
    display_name: str
    role: str
    region_prefix: str

    @property
    def r(self) -> Role:
        return ROLES[self.role]


class AccountError(ValueError):
    pass


# ---- accounts -----------------------------------------------------------------------------------
def add_user(engine: Engine, username: str, password: str, role: str, region_prefix: str,
             display_name: str | None = None) -> int:
    if not USERNAME.match(username):
        raise AccountError("用户名须为 3–64 位字母、数字或 _ . -")
    if role not in ROLES:
        raise AccountError(f"未知角色 {role!r}；可选：{', '.join(ROLES)}")
    if not re.fullmatch(r"[0-9]*", region_prefix) or len(region_prefix) not in ROLES[role].prefix_digits:
        digits = "/".join(str(d) for d in ROLES[role].prefix_digits)
        raise AccountError(f"角色 {ROLES[role].title_zh} 的区划代码前缀须为 {digits} 位数字")
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"密码至少 {MIN_PASSWORD} 位")
    with engine.begin() as c:
        if c.scalar(select(m.users.c.id).where(m.users.c.username == username)) is not None:
            raise AccountError(f"用户 {username} 已存在")
        pk = c.execute(insert(m.users).values(
            username=username, display_name=display_name or username, role=role, region_prefix=region_prefix,
            password_hash=hash_password(password), active=True, created_at=now())).inserted_primary_key
        assert pk is not None  # a single-row INSERT always has one (SQLAlchemy types it Optional)
        return pk[0]


def list_users(engine: Engine) -> list[dict]:
    with engine.connect() as c:
        rows = c.execute(select(m.users.c.id, m.users.c.username, m.users.c.display_name, m.users.c.role,
                                m.users.c.region_prefix, m.users.c.active, m.users.c.created_at)
                         .order_by(m.users.c.username)).mappings().all()
    return [dict(r) for r in rows]


def set_password(engine: Engine, username: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"密码至少 {MIN_PASSWORD} 位")
    with engine.begin() as c:
        if not c.execute(update(m.users).where(m.users.c.username == username)
                         .values(password_hash=hash_password(password))).rowcount:
            raise AccountError(f"没有用户 {username}")


def set_active(engine: Engine, username: str, active: bool) -> None:
    with engine.begin() as c:
        n = c.execute(update(m.users).where(m.users.c.username == username).values(active=active)).rowcount
        if not n:
            raise AccountError(f"没有用户 {username}")
        if not active:  # end their sessions now
            ids = select(m.users.c.id).where(m.users.c.username == username).scalar_subquery()
            c.execute(delete(m.sessions).where(m.sessions.c.user_id == ids))


def _user(row) -> User:
    return User(row.id, row.username, row.display_name, row.role, row.region_prefix)


# ---- login, throttling, sessions ------------------------------------------------------------------
class Throttled(Exception):
    pass


def _failures(c, username: str, ip: str, since: dt.datetime) -> tuple[int, int]:
    la = m.login_attempts.c
    return (c.scalar(select(func.count()).where(la.username == username, la.at >= since, ~la.ok)),
            c.scalar(select(func.count()).where(la.ip == ip, la.at >= since, ~la.ok)))


def _throttled(fails: tuple[int, int]) -> bool:
    return fails[0] >= THROTTLE_MAX_FAILURES or fails[1] >= 4 * THROTTLE_MAX_FAILURES


T = TypeVar("T")


@dataclass(frozen=True)
class LoginCheck:
    """What a login's first step found: the account (None: no such, or disabled) — not yet the password."""
    username: str
    ip: str
    user: User | None
    password_hash: str | None


def login_check(engine: Engine, username: str, ip: str) -> LoginCheck:
    """Step 1 of a login: `Throttled` after too many failures; else the account to check the password of."""
    with engine.connect() as c:
        if _throttled(_failures(c, username, ip, now() - THROTTLE_WINDOW)):
            raise Throttled
        row = c.execute(select(m.users).where(m.users.c.username == username)).first()
    if row is None or not row.active:
        return LoginCheck(username, ip, None, None)
    return LoginCheck(username, ip, _user(row), row.password_hash)


def login_verify(check: LoginCheck, password: str) -> tuple[bool, str | None]:
    """Step 2, CPU only (no database): (password right, its new hash if the stored one's cost is outdated)."""
    ok = _verify(check.password_hash, password)
    outdated = ok and check.password_hash is not None and _hasher.check_needs_rehash(check.password_hash)
    return ok, hash_password(password) if outdated else None


def login_finish(engine: Engine, check: LoginCheck, ok: bool, rehash: str | None = None,
                 then: Callable[[Connection, User | None], T] | None = None) -> tuple[User | None, T | None]:
    """Step 3: the attempt recorded; the user if the password was right — unless, while it was being hashed,
    enough other attempts failed to throttle the account or address (then `Throttled`, not recorded, as a
    throttled attempt in step 1 is not): attempts hashed side by side cannot add up to more guesses than
    the throttle allows. `then(connection, user or None)` runs in the same transaction (the app starts the
    session and writes the audit entry there: one commit per login)."""
    with engine.begin() as c:
        t = now()
        if ok and _throttled(_failures(c, check.username, check.ip, t - THROTTLE_WINDOW)):
            raise Throttled
        c.execute(insert(m.login_attempts).values(username=check.username[:64], ip=check.ip[:64], at=t, ok=ok))
        if rehash is not None and check.user is not None:  # a rehash comes only with a right password
            c.execute(update(m.users).where(m.users.c.id == check.user.id).values(password_hash=rehash))
        user = check.user if ok else None
        return user, (then(c, user) if then is not None else None)


def authenticate(engine: Engine, username: str, password: str, ip: str) -> User | None:
    """The user, or None for a wrong name/password/disabled account; `Throttled` after too many failures.

    The three steps in turn; the hash in the middle holds no database connection and waits for a hash slot.
    (The app runs them itself, waiting for the slot without a thread.)"""
    check = login_check(engine, username, ip)
    return login_finish(engine, check, *login_verify(check, password))[0]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(engine: Engine, user: User) -> tuple[str, str]:
    """(session token for the cookie, CSRF token). Only the token's hash is stored."""
    with engine.begin() as c:
        return start_session(c, user)


def start_session(c: Connection, user: User) -> tuple[str, str]:
    """`new_session` in the caller's transaction."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    t = now()
    c.execute(insert(m.sessions).values(token_hash=_token_hash(token), user_id=user.id, csrf=csrf,
                                        created_at=t, last_seen=t))
    return token, csrf


def session_user(engine: Engine, token: str | None, idle: dt.timedelta) -> tuple[User, str] | None:
    if not token:
        return None
    h = _token_hash(token)
    t = now()
    with engine.begin() as c:
        row = c.execute(select(m.users, m.sessions.c.csrf, m.sessions.c.last_seen)
                        .join(m.sessions, m.sessions.c.user_id == m.users.c.id)
                        .where(m.sessions.c.token_hash == h)).first()
        if row is None:
            return None
        last = row.last_seen if row.last_seen.tzinfo else row.last_seen.replace(tzinfo=dt.UTC)
        if not row.active or t - last > idle:
            c.execute(delete(m.sessions).where(m.sessions.c.token_hash == h))
            return None
        if t - last > dt.timedelta(minutes=1):
            c.execute(update(m.sessions).where(m.sessions.c.token_hash == h).values(last_seen=t))
        return _user(row), row.csrf


def end_session(engine: Engine, token: str | None) -> None:
    if token:
        with engine.begin() as c:
            c.execute(delete(m.sessions).where(m.sessions.c.token_hash == _token_hash(token)))


def csrf_ok(expected: str, got: str | None) -> bool:
    if not got:
        return False
    return hmac.compare_digest(expected, got)


def in_scope(user: User, column):
    """The server-side scope condition on a region-code column."""
    return column.like(user.region_prefix + "%") if user.region_prefix else and_(True)
