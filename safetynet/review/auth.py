"""Roles, scoping, accounts, sessions, CSRF and login throttling of the review app.

Scoping: a user sees exactly the rows whose `region_code` starts with their `region_prefix`
(6 digits: a county, 9: a street/town, 12: a community/village); every query of the app adds
that condition server-side (`in_scope`), whatever the request asks for.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, and_, delete, func, insert, select, update

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

_hasher = PasswordHasher()  # argon2id, library defaults (RFC 9106 low-memory profile)
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


def mask_id(id_no: str | None) -> str:
    """前6后4: `430103********1234` (an ID of other length keeps at most its first 3 characters)."""
    if not id_no:
        return ""
    if len(id_no) == 18:
        return id_no[:6] + "*" * 8 + id_no[-4:]
    return id_no[:3] + "*" * max(len(id_no) - 3, 0)


_ID_SHAPE = re.compile(r"[0-9]{17}[0-9Xx]|[0-9]{15}")


def looks_like_id(v: str | None) -> bool:
    """An 18-digit (or old 15-digit) ID number's shape: what must never reach a log unmasked."""
    return bool(v) and bool(_ID_SHAPE.fullmatch(v))


def mask_name(name: str | None) -> str:
    return "" if not name else name[0] + "*" * max(len(name) - 1, 1)


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
        return c.execute(insert(m.users).values(
            username=username, display_name=display_name or username, role=role, region_prefix=region_prefix,
            password_hash=_hasher.hash(password), active=True, created_at=now())).inserted_primary_key[0]


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
                         .values(password_hash=_hasher.hash(password))).rowcount:
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


def authenticate(engine: Engine, username: str, password: str, ip: str) -> User | None:
    """The user, or None for a wrong name/password/disabled account; `Throttled` after too many failures."""
    t = now()
    since = t - THROTTLE_WINDOW
    with engine.begin() as c:
        fails_user = c.scalar(select(func.count()).where(
            m.login_attempts.c.username == username, m.login_attempts.c.at >= since, ~m.login_attempts.c.ok))
        fails_ip = c.scalar(select(func.count()).where(
            m.login_attempts.c.ip == ip, m.login_attempts.c.at >= since, ~m.login_attempts.c.ok))
        if fails_user >= THROTTLE_MAX_FAILURES or fails_ip >= 4 * THROTTLE_MAX_FAILURES:
            raise Throttled
        row = c.execute(select(m.users).where(m.users.c.username == username)).first()
        ok = False
        if row is not None and row.active:
            try:
                ok = _hasher.verify(row.password_hash, password)
            except (VerificationError, InvalidHashError):
                ok = False
        else:
            _hasher.hash(password)  # the same work whether or not the account exists
        c.execute(insert(m.login_attempts).values(username=username[:64], ip=ip[:64], at=t, ok=ok))
        if ok and _hasher.check_needs_rehash(row.password_hash):
            c.execute(update(m.users).where(m.users.c.id == row.id).values(password_hash=_hasher.hash(password)))
        return _user(row) if ok else None


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session(engine: Engine, user: User) -> tuple[str, str]:
    """(session token for the cookie, CSRF token). Only the token's hash is stored."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    t = now()
    with engine.begin() as c:
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
    return bool(got) and hmac.compare_digest(expected, got)


def in_scope(user: User, column):
    """The server-side scope condition on a region-code column."""
    return column.like(user.region_prefix + "%") if user.region_prefix else and_(True)
