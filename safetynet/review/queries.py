"""What the review app reads and writes, always within the user's scope (shared by pages and API)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import logging
import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Integer, and_, delete, func, insert, literal, select, tuple_, update

from quality.rules import SEVERITY_ZH
from safetynet.intake.regions import region_names
from safetynet.review import audit
from safetynet.review import models as m
from safetynet.review.auth import ROLES, User, in_scope
from safetynet.review.db import now
from schemas import outputs
from schemas.idno import looks_like_id, mask, mask_value
from schemas.policy import labels_zh
from schemas.registry import contracts

if TYPE_CHECKING:
    from sqlalchemy import Table
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

log = logging.getLogger(__name__)

PAGE_SIZE = 50
STATUS_ZH = {"new": "待处置", "assigned": "已分派", "visited": "已走访核实", "assisted": "已救助帮扶",
             "dismissed": "已排除", "closed": "已办结"}
HANDLED = ("assisted", "dismissed", "closed")
KIND_ZH = {"forward": "风险预警", "reverse": "资格核查"}
CATEGORIES = ("低保", "特困", "低保边缘", "临时救助", "无")
DISMISS_REASONS = {"verified_no_risk": "核实无风险", "income_recovered": "收入已恢复", "already_assisted": "已纳入救助",
                   "data_error": "数据有误", "moved_out": "已迁出本辖区", "other": "其他"}
ASSISTANCE = {"dibao": "低保", "tekun": "特困供养", "dibao_edge": "低保边缘", "temporary": "临时救助",
              "medical": "医疗救助", "housing": "住房救助", "employment": "就业帮扶", "other": "其他帮扶"}
# action → (statuses it applies to, status it leads to)
TRANSITIONS = {
    "assign": (("new", "assigned", "visited"), "assigned"),
    "visit": (("new", "assigned"), "visited"),
    "assist": (("visited",), "assisted"),
    "dismiss": (("new", "assigned", "visited"), "dismissed"),
    "close": (("assisted", "dismissed"), "closed"),
}
ACTION_ZH = {"assign": "分派", "visit": "走访核实", "assist": "救助帮扶", "dismiss": "排除", "close": "办结",
             "reopen": "重新开启"}


@cache
def department_names() -> dict[str, str]:
    """department → its Chinese name, from the feed contracts (plus the hub's own derived datasets)."""

    return {c.department: c.department_zh for c in contracts().values()} | {"monitoring": "监测汇总"}


@cache
def feed_titles() -> dict[str, str]:

    return {fid: c.title_zh for fid, c in contracts().items()} | {"monitoring.household": "家庭汇总指标",
                                                                  "monitoring.person": "个人汇总指标"}


#: policy parameter → its Chinese label (declared with the parameter, `schemas.policy`)
THRESHOLD_ZH = labels_zh()


@cache
def field_labels() -> dict[tuple[str, str], str]:
    """(feed, field) → its Chinese label: the contracts' labels, and the monitoring datasets' columns."""

    out = {(fid, f.name): f.label_zh for fid, c in contracts().items() for f in c.fields}
    out |= {("monitoring.household", k): v[0] for k, v in outputs.HOUSEHOLD.items()}
    out |= {("monitoring.person", k): v[0] for k, v in outputs.PERSON.items()}
    return out


class NotFound(LookupError):
    """Absent *or* outside the user's scope: the two are indistinguishable to the caller."""


class Forbidden(PermissionError):
    pass


class Conflict(ValueError):
    pass


class BadRequest(ValueError):
    """A malformed request parameter (a page cursor that is not one this app issued): 400."""


BEIJING = dt.timezone(dt.timedelta(hours=8), "北京时间")


def beijing(t: dt.datetime) -> dt.datetime:
    """A stored timestamp in Beijing time (SQLite returns it naive, in UTC; PostgreSQL aware)."""
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).astimezone(BEIJING)


def latest_snapshot(engine: Engine) -> dt.date | None:
    with engine.connect() as c:
        return c.scalar(select(func.max(m.snapshots.c.snapshot_date)))


def snapshot_notes(engine: Engine, day: dt.date | None) -> list[dict]:
    """The snapshot's input notes (unhealthy or stale feeds), for the banner above the list."""
    if day is None:
        return []
    with engine.connect() as c:
        return c.scalar(select(m.snapshots.c.input_notes).where(m.snapshots.c.snapshot_date == day)) or []


@dataclass
class Filters:
    street: str = ""
    community: str = ""
    rule: str = ""
    severity: str = ""
    status: str = ""
    category: str = ""
    q: str = ""
    page: int = 1  # the page's number: shown; without a cursor, the page to cut by OFFSET
    after: str = ""  # keyset cursor (`encode_cursor`): the page after this row
    before: str = ""  # … the page before this row; `END`: the last page
    snapshot: dt.date | None = None
    extra: dict = field(default_factory=dict)

    def params(self, **override) -> dict:
        d = {"street": self.street, "community": self.community, "rule": self.rule, "severity": self.severity,
             "status": self.status, "category": self.category, "q": self.q, "after": self.after,
             "before": self.before, "page": self.page} | override
        return {k: v for k, v in d.items() if v not in ("", None, 1) or (k == "page" and v != 1)}

    def filter_params(self) -> dict:
        """The filters and search alone (the first page of this list; its export)."""
        return self.params(after="", before="", page=1)


def _conds(user: User, f: Filters, day: dt.date, skip: str = "") -> list:
    w, c = m.warnings.c, m.cases.c
    conds = [w.snapshot_date == day, in_scope(user, w.region_code)]
    if f.street and skip != "street":
        conds.append(w.street_code == f.street)
    if f.community and skip != "community":
        conds.append(w.region_code == f.community)
    if f.rule and skip != "rule":
        conds.append(w.rule_id == f.rule)
    if f.severity and skip != "severity":
        conds.append(w.severity == f.severity)
    if f.status and skip != "status":
        conds.append(c.status == f.status)
    if f.category and skip != "category":  # only the known categories: a value is never a LIKE pattern
        conds.append(_category_cond(f.category))
    q = f.q.strip()
    if q:
        if len(q) == 18 and ROLES[user.role].unmask:  # an ID number: the households it belongs to
            conds.append(w.household_no.in_(select(m.members.c.household_no).where(m.members.c.id_no == q.upper())))
        else:
            conds.append(w.household_no.startswith(q, autoescape=True))
    return conds


def _category_cond(cat: str):
    w = m.warnings.c
    if cat == "无":
        return w.categories == ",,"
    if cat not in CATEGORIES:
        return w.categories == "\x01"  # matches nothing
    return w.categories.like(f"%,{cat},%")


def _base(select_, conds):
    return select_.select_from(m.warnings.join(m.cases, m.cases.c.alert_key == m.warnings.c.alert_key)).where(*conds)


# ---- keyset pagination ----------------------------------------------------------------------------------
END = "end"  # `Filters.before`: the last page


def encode_cursor(key: tuple[float, str, str]) -> str:
    """A page cursor: the (score, household_no, warning_id) of a row — its place in the list's order — as a
    URL-safe token (not a secret: the list's scoping applies to every page whatever the cursor says)."""
    score, household_no, warning_id = key
    raw = json.dumps([float(score), str(household_no), str(warning_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[float, str, str]:
    """The row key of a cursor; `BadRequest` for anything `encode_cursor` did not make."""
    try:
        score, household_no, warning_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        ok = (isinstance(score, int | float) and not isinstance(score, bool) and math.isfinite(score)
              and isinstance(household_no, str) and isinstance(warning_id, str)
              and len(household_no) <= 32 and len(warning_id) <= 32)
    except (ValueError, TypeError, binascii.Error):
        ok = False
    if not ok:
        raise BadRequest("无效的翻页参数，请从清单第一页重新翻页")
    return float(score), household_no, warning_id


def _order(reverse: bool = False) -> tuple:
    """The list's order — risk score, then household and warning number (unique: a total order), all descending
    as `ix_warnings_page` holds them — or its reverse (pages before a cursor: the same index, backwards)."""
    w = m.warnings.c
    if reverse:
        return w.score.asc(), w.household_no.asc(), w.warning_id.asc()
    return w.score.desc(), w.household_no.desc(), w.warning_id.desc()


def _key():
    w = m.warnings.c
    return tuple_(w.score, w.household_no, w.warning_id)


def _after(key: tuple[float, str, str]):
    """Rows after `key` in the list's order: one row-value comparison, which the index seeks to — also inside a
    run of equal scores (thousands of warnings share a score)."""
    return _key() < tuple_(*(literal(v) for v in key))


def _before(key: tuple[float, str, str]):
    return _key() > tuple_(*(literal(v) for v in key))


_LIST_COLS = ("warning_id", "alert_key", "rule_id", "rule_title_zh", "severity", "kind", "household_no", "region_code",
              "street_code", "subject_id_no", "summary_zh", "score", "household_score", "household_rank",
              "categories", "policy_version", "rule_version", "stale_inputs")


def _list_cols() -> list:
    c = m.cases.c
    return [m.warnings.c[k] for k in _LIST_COLS] + [c.status, c.assignee_id, c.reopen_note]


def _cut(con: Connection, conds: list, f: Filters, *, reverse: bool, limit: int, offset: int = 0) -> list[dict]:
    """Up to `limit` rows in list order (`reverse`: backwards) — the page cut on `ix_warnings_page` alone (covering:
    order, scope and join keys) unless the status filter needs the cases, then the rows of the cut joined."""
    w, c = m.warnings.c, m.cases.c
    keys = select(w.snapshot_date.label("d"), w.warning_id.label("id"))
    keys = (_base(keys, conds) if f.status else keys.where(*conds)).order_by(*_order(reverse)).limit(limit)
    if offset:
        keys = keys.offset(offset)
    cut = keys.subquery()
    q = (select(*_list_cols()).select_from(
        m.warnings.join(cut, (w.snapshot_date == cut.c.d) & (w.warning_id == cut.c.id))
        .join(m.cases, c.alert_key == w.alert_key)).order_by(*_order(reverse)))
    return [dict(r) for r in con.execute(q).mappings()]


def _page(con: Connection, conds: list, f: Filters, limit: int, total: int, pages: int) -> tuple[list[dict], dict]:
    """One page of rows and where it is: (rows, {page, next_cursor, prev_cursor}).

    By cursor (`f.after`, `f.before`, `END`): a seek on the index to the cursor's row and `limit` rows on — the
    same work on any page. `f.page` is then only the number shown (carried by the pager's links, kept within
    what the cursor's side allows); without a cursor, `f.page` is cut by OFFSET (cheap near the top)."""
    page_no = min(max(1, f.page), pages)
    if f.before == END:  # the last page: as many rows as the pages before it leave, read backwards
        rows = _cut(con, conds, f, reverse=True, limit=total - (pages - 1) * limit)[::-1]
        has_prev, has_next, page_no = pages > 1, False, pages
    elif f.before:
        rows = _cut(con, conds + [_before(decode_cursor(f.before))], f, reverse=True, limit=limit + 1)[::-1]
        has_prev, has_next = len(rows) > limit, True
        rows = rows[-limit:]
        if not has_prev:  # at the top (rows may have moved meanwhile): the first page, in full
            rows = _cut(con, conds, f, reverse=False, limit=limit + 1)
            has_next, rows, page_no = len(rows) > limit, rows[:limit], 1
        else:
            page_no = min(max(2, page_no), max(2, pages - 1))
    else:
        extra = [_after(decode_cursor(f.after))] if f.after else []
        offset = 0 if f.after else (max(1, f.page) - 1) * limit
        rows = _cut(con, conds + extra, f, reverse=False, limit=limit + 1, offset=offset)
        has_prev, has_next = bool(f.after) or offset > 0, len(rows) > limit
        rows = rows[:limit]
        if f.after:
            page_no = pages if not has_next else min(max(2, page_no), max(2, pages - 1))
        else:
            page_no = max(1, f.page)
    key = lambda r: (r["score"], r["household_no"], r["warning_id"])  # noqa: E731
    return rows, {"page": page_no,
                  "next_cursor": encode_cursor(key(rows[-1])) if has_next and rows else None,
                  "prev_cursor": encode_cursor(key(rows[0])) if has_prev and rows else None}


def list_warnings(engine: Engine, user: User, f: Filters, *, limit: int = PAGE_SIZE, all_rows: bool = False) -> dict:
    """One page of the scoped, filtered list in risk order, its total and the facet counts.

    The page is cut by keyset (`_page`): a cursor names the row the page follows or precedes. The total and
    the facets (each filter's options with their counts under the *other* filters) come from the maintained
    facet counts (`FACETS`: in memory, brought up to date by the decisions since) — no statement counts the
    county's warnings; only a search (`f.q`: some households) counts its matches directly.
    """
    day = f.snapshot or latest_snapshot(engine)
    if day is None:
        return {"snapshot": None, "rows": [], "total": 0, "facets": {}, "pages": 0, "page": 1,
                "next_cursor": None, "prev_cursor": None}
    conds = _conds(user, f, day)
    with engine.connect() as con:
        if f.q.strip():
            groups = _cached_groups(con, engine, user, f, day)
            total = sum(g[-1] for g in groups if _matches(g, f))
            facets = {} if all_rows else _facets(groups, f)
        else:
            total, facets = FACETS.counts(con, engine, user, day, f, facets=not all_rows)
        pages = max(1, -(-total // limit))
        nav = {"page": 1, "next_cursor": None, "prev_cursor": None}
        if all_rows:
            rows = [dict(r) for r in con.execute(_base(select(*_list_cols()), conds).order_by(*_order())).mappings()]
        elif total:
            rows, nav = _page(con, conds, f, limit, total, pages)
        else:
            rows = []
    names = region_names()
    for r in rows:
        r["subject_id_masked"] = mask(r.pop("subject_id_no"))
        r["status_zh"] = STATUS_ZH[r["status"]]
        r["severity_zh"] = SEVERITY_ZH.get(r["severity"], r["severity"])
        r["street_name"] = names.get(r["street_code"], "")
        r["community_name"] = names.get(r["region_code"], "")
        r["categories"] = [x for x in r["categories"].split(",") if x]
    return {"snapshot": day, "rows": rows, "total": total, "facets": facets, "pages": pages, **nav}


# ---- facet counts --------------------------------------------------------------------------------------
# the filter dimensions, in the order of a group's first columns (`_groups`, `_Counts`)
_DIMS = ("street", "community", "rule", "severity", "status", "category")
# `facet_counts`' dimension columns (with snapshot_date and status, its key)
_FC_DIMS = ("region_code", "street_code", "rule_id", "rule_title_zh", "severity", "categories")


def _groups(con, user: User, f: Filters, day: dt.date) -> list[tuple]:
    """(street, community, rule, severity, status, categories, rule title, count) within scope and search,
    counted from the warnings — a search's matches; and the reference the maintained counts are tested against."""
    w, c = m.warnings.c, m.cases.c
    scope = _conds(user, Filters(q=f.q), day)
    dims = (w.street_code, w.region_code, w.rule_id, w.severity, c.status, w.categories, w.rule_title_zh)
    return [tuple(r) for r in con.execute(_base(select(*dims, func.count()), scope).group_by(*dims))]


_GROUPS_CACHE: OrderedDict = OrderedDict()
_GROUPS_LOCK = threading.Lock()
GROUPS_CACHE_SIZE = 512


def _cached_groups(con, engine: Engine, user: User, f: Filters, day: dt.date) -> list[tuple]:
    """`_groups` of a search, reused while the data it counts is unchanged: case statuses change only with a
    new `actions` row (a decision, or a re-open by the loader) and warnings only with a snapshot load
    (`snapshots.loaded_at`), so those two maxima — two index lookups — version it."""
    version = (con.scalar(select(func.max(m.actions.c.id))), con.scalar(select(func.max(m.snapshots.c.loaded_at))))
    key = (id(engine), str(engine.url), version, day, user.region_prefix, ROLES[user.role].unmask, f.q.strip())
    with _GROUPS_LOCK:
        hit = _GROUPS_CACHE.get(key)
        if hit is not None:
            _GROUPS_CACHE.move_to_end(key)
            return hit
    groups = _groups(con, user, f, day)
    with _GROUPS_LOCK:
        _GROUPS_CACHE[key] = groups
        while len(_GROUPS_CACHE) > GROUPS_CACHE_SIZE:
            _GROUPS_CACHE.popitem(last=False)
    return groups


def _dim_matches(g: tuple, dim: str, value: str) -> bool:
    if dim != "category":
        return g[_DIMS.index(dim)] == value
    if value == "无":
        return g[5] == ",,"
    return value in CATEGORIES and f",{value}," in g[5]


def _matches(g: tuple, f: Filters, skip: str = "") -> bool:
    return all(_dim_matches(g, d, getattr(f, d)) for d in _DIMS if d != skip and getattr(f, d))


def _facets(groups: list[tuple], f: Filters) -> dict:
    out: dict = {}
    for i, dim in enumerate(_DIMS[:5]):
        counts: dict[str, int] = {}
        for g in groups:
            if _matches(g, f, skip=dim):
                counts[g[i]] = counts.get(g[i], 0) + g[-1]
        out[dim] = sorted(counts.items())
    out["category"] = [(cat, sum(g[-1] for g in groups if _matches(g, f, skip="category")
                                 and _dim_matches(g, "category", cat))) for cat in CATEGORIES]
    out["rule_titles"] = {g[2]: g[6] for g in groups}
    return out


@cache
def _category_values(categories: str) -> tuple[str, ...]:
    """The category filter's values a group's `categories` matches (as `_category_cond` does)."""
    return tuple(cat for cat in CATEGORIES if (categories == ",," if cat == "无" else f",{cat}," in categories))


def _values(g: tuple) -> tuple[tuple[str, ...], ...]:
    """A group's value(s) per filter dimension, in `_DIMS` order."""
    return (g[0],), (g[1],), (g[2],), (g[3],), (g[4],), _category_values(g[5])


class _Counts:
    """The facet counts of one snapshot within one region prefix, as of `version`: the groups (street,
    community, rule, severity, status, categories, rule title) with their warnings, each dimension's totals,
    and per filter value the groups having it (as group numbers). A decision moves one count between two
    groups and two status totals."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # held by `FacetCounts.counts` while it brings these up to date and reads them
        self._reset()

    def _reset(self) -> None:
        self.version: tuple | None = None  # (last snapshot load, last action id applied)
        self.groups: list[tuple] = []  # group number → group
        self.number: dict[tuple, int] = {}  # group → its number
        self.n: list[int] = []  # group number → warnings (0: none now)
        self.by_value: dict[tuple[str, str], set[int]] = {}  # (dimension, value) → groups with warnings
        self.dim_totals: dict[str, dict[str, int]] = {d: {} for d in _DIMS}
        self.total = 0
        self.titles: dict[str, str] = {}

    def add(self, g: tuple, k: int) -> bool:
        """Add k (±1) to group g; False if that would make a count negative (the counts are not this data's)."""
        i = self.number.get(g)
        if i is None:
            if k < 0:
                return False
            i = self.number[g] = len(self.groups)
            self.groups.append(g)
            self.n.append(0)
            self.titles.setdefault(g[2], g[6])
        old = self.n[i]
        new = self.n[i] = old + k
        if new < 0:
            self.n[i] = old
            return False
        for d, vs in zip(_DIMS, _values(g), strict=True):
            totals = self.dim_totals[d]
            for v in vs:
                if old == 0:
                    self.by_value.setdefault((d, v), set()).add(i)
                elif new == 0:
                    self.by_value[(d, v)].discard(i)
                t = totals.get(v, 0) + k
                if t:
                    totals[v] = t
                else:
                    del totals[v]
        self.total += k
        return True

    def load(self, con: Connection, user: User, day: dt.date) -> None:
        """All counts within the scope from `facet_counts`, and their version — one statement, one snapshot
        of the database (a decision committing meanwhile is either in both or in neither)."""
        fc = m.facet_counts.c
        v = select(func.coalesce(select(func.max(m.actions.c.id)).scalar_subquery(), 0).label("va"),
                   select(func.max(m.snapshots.c.loaded_at)).scalar_subquery().label("vl")).subquery()
        q = (select(v.c.va, v.c.vl, fc.street_code, fc.region_code, fc.rule_id, fc.severity, fc.status,
                    fc.categories, fc.rule_title_zh, fc.n)
             .select_from(v.outerjoin(m.facet_counts, and_(fc.snapshot_date == day, fc.n > 0,
                                                             in_scope(user, fc.region_code)))))
        self._reset()
        groups, number, n = self.groups, self.number, self.n
        for r in con.execute(q).all():
            self.version = (r.vl, r.va)
            if r.n is not None:
                g = tuple(r)[2:9]
                number[g] = len(groups)
                groups.append(g)
                n.append(r.n)
        by_value = self.by_value
        for j, d in enumerate(_DIMS):
            totals = self.dim_totals[d]
            for i, g in enumerate(groups):
                for value in (_category_values(g[5]) if j == 5 else (g[j],)):
                    totals[value] = totals.get(value, 0) + n[i]
                    s_ = by_value.get((d, value))
                    if s_ is None:
                        s_ = by_value[(d, value)] = set()
                    s_.add(i)
        self.total = sum(n)
        for g in groups:
            self.titles.setdefault(g[2], g[6])

    def catch_up(self, con: Connection, user: User, day: dt.date) -> None:
        """Apply the decisions recorded since `version` (each moves its case's warnings of `day` from one
        status to another); reload after a snapshot load or on any disagreement. Decisions take their action
        ids in commit order (`decide` holds the audit chain's head from before its action's insert to its
        commit), so none is missed by reading `actions.id > last applied`."""
        if self.version is None:
            return self.load(con, user, day)
        loaded, last = self.version
        a, w = m.actions.c, m.warnings.c
        v = select(select(func.max(m.snapshots.c.loaded_at)).scalar_subquery().label("vl")).subquery()
        q = (select(v.c.vl, a.id, a.from_status, a.to_status, w.street_code, w.region_code, w.rule_id, w.severity,
                    w.categories, w.rule_title_zh)
             .select_from(v.outerjoin(m.actions, a.id > last)
                          .outerjoin(m.warnings, and_(w.alert_key == a.alert_key, w.snapshot_date == day)))
             .order_by(a.id))
        rows = con.execute(q).all()
        if not rows or rows[0].vl != loaded:
            return self.load(con, user, day)
        prefix = user.region_prefix
        for r in rows:
            if r.id is None:
                continue
            last = max(last, r.id)
            if r.region_code is None or not r.region_code.startswith(prefix) or r.from_status == r.to_status:
                continue
            dims = (r.street_code, r.region_code, r.rule_id, r.severity)
            rest = (r.categories, r.rule_title_zh)
            if not (self.add(dims + (r.from_status, *rest), -1) and self.add(dims + (r.to_status, *rest), 1)):
                log.warning("review: facet counts of %s disagree with the decisions; reloading them", day)
                return self.load(con, user, day)
        self.version = (loaded, last)

    def facets(self, f: Filters, with_facets: bool) -> tuple[int, dict]:
        """(total, facets) under the filters `f`, as `_facets` computes them from the groups.

        No filter: the dimension totals as they are. Filters: one pass over the groups failing at most one
        filter — those have the value of one of the two rarest filters — a group counting toward the total
        and every facet if it fails none, and toward the facet of the one filter it fails otherwise."""
        active = {d: getattr(f, d) for d in _DIMS if getattr(f, d)}
        if not active:
            total, counts = self.total, self.dim_totals
        else:
            sets = {d: self.by_value.get((d, v), set()) for d, v in active.items()}
            order = sorted(sets, key=lambda d: len(sets[d]))
            members = [sets[d] for d in order]
            candidates = members[0] if len(order) == 1 else members[0] | members[1]
            counts = {d: Counter() for d in _DIMS}
            total = 0
            for i in candidates:
                miss = -1
                for j, s_ in enumerate(members):
                    if i not in s_:
                        if miss >= 0:
                            break
                        miss = j
                else:
                    k, g = self.n[i], self.groups[i]
                    vals = _values(g)
                    if miss < 0:
                        total += k
                        for d, vs in zip(_DIMS, vals, strict=True):
                            for v in vs:
                                counts[d][v] += k
                    else:
                        d = order[miss]
                        for v in vals[_DIMS.index(d)]:
                            counts[d][v] += k
            if len(order) == 1:  # its own facet: no group fails another filter
                counts[order[0]] = self.dim_totals[order[0]]
        if not with_facets:
            return total, {}
        out: dict = {d: sorted(counts[d].items()) for d in _DIMS[:5]}
        out["category"] = [(cat, counts["category"].get(cat, 0)) for cat in CATEGORIES]
        out["rule_titles"] = dict(self.titles)
        return total, out


class FacetCounts:
    """The list's counts per (database, snapshot, region prefix), kept in this process and brought up to date
    on each use from the database: one statement reads the decisions since (usually none, or a few), a
    snapshot load makes it re-read `facet_counts` — never a count over the warnings. Small LRU."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._scopes: OrderedDict = OrderedDict()

    def counts(self, con: Connection, engine: Engine, user: User, day: dt.date, f: Filters, *,
               facets: bool = True) -> tuple[int, dict]:
        key = (id(engine), str(engine.url), day, user.region_prefix)
        with self._lock:
            entry = self._scopes.get(key)
            if entry is None:
                entry = self._scopes[key] = _Counts()
            self._scopes.move_to_end(key)
            while len(self._scopes) > self.size:
                self._scopes.popitem(last=False)
        with entry.lock:
            entry.catch_up(con, user, day)
            return entry.facets(f, facets)

    def clear(self) -> None:
        with self._lock:
            self._scopes.clear()


FACETS = FacetCounts()


def recount_facets(c: Connection, day: dt.date | None = None) -> None:
    """Count `facet_counts` afresh from the warnings and cases, for one snapshot date (a load does, for the
    date it loads) or for all of them."""
    fc, w = m.facet_counts, m.warnings.c
    dims = [w[d] for d in _FC_DIMS]
    q = select(w.snapshot_date, *dims, m.cases.c.status, func.count()).select_from(
        m.warnings.join(m.cases, m.cases.c.alert_key == w.alert_key))
    if day is not None:
        q = q.where(w.snapshot_date == day)
    c.execute(delete(fc).where(fc.c.snapshot_date == day) if day is not None else delete(fc))
    c.execute(insert(fc).from_select(["snapshot_date", *_FC_DIMS, "status", "n"],
                                     q.group_by(w.snapshot_date, *dims, m.cases.c.status)))


def move_facet_counts(c: Connection, alert_key: str, frm: str, to: str, *, skip_day: dt.date | None = None) -> None:
    """A case went from status `frm` to `to`: move each of its warnings (every snapshot date but `skip_day`) from
    its `frm` group to its `to` group in `facet_counts`, in the caller's transaction. The rows are updated in
    their key order, so two decisions moving counts between the same groups never wait on each other in a
    cycle. Counts that disagree (the data changed outside the app) are counted afresh for that date."""
    if frm == to:
        return
    fc, w = m.facet_counts, m.warnings.c
    keys = ("snapshot_date", *_FC_DIMS)
    moves = []  # (group key with status, ±1)
    for r in c.execute(select(*[w[k] for k in keys]).where(w.alert_key == alert_key)).all():
        if r.snapshot_date != skip_day:
            moves += [((*r, frm), -1), ((*r, to), 1)]
    upsert: Callable[[Table], PgInsert | SqliteInsert]  # both have on_conflict_do_update
    if c.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    recounted = set()
    for key, k in sorted(moves, key=lambda mv: tuple(str(x) for x in mv[0])):
        if key[0] in recounted:
            continue
        row = dict(zip((*keys, "status"), key, strict=True))
        if k < 0:
            if c.execute(update(fc).where(*[fc.c[col] == v for col, v in row.items()], fc.c.n > 0)
                         .values(n=fc.c.n - 1)).rowcount != 1:
                log.warning("review: facet counts of %s disagree with the cases; counting that date afresh", key[0])
                recount_facets(c, key[0])  # counts the case's new status already
                recounted.add(key[0])
            continue
        c.execute(upsert(fc).values(**row, n=1).on_conflict_do_update(
            index_elements=[col.name for col in fc.primary_key.columns], set_={"n": fc.c.n + 1}))


def household(engine: Engine, user: User, household_no: str, *, unmask: bool = False, ip: str = "-") -> dict:
    """The household page's data; NotFound outside the scope. Audited: every view, every unmask."""
    if unmask and not ROLES[user.role].unmask:
        raise Forbidden("此角色不能查看完整身份信息")
    h, w = m.households.c, m.warnings.c
    with engine.begin() as con:
        hh = con.execute(select(m.households).where(h.household_no == household_no,
                                                    in_scope(user, h.region_code))).mappings().first()
        if hh is None:
            raise NotFound(household_no)
        day = hh["snapshot_date"]
        members = [dict(r) for r in con.execute(select(m.members).where(m.members.c.household_no == household_no)
                                                .order_by(m.members.c.seq)).mappings()]
        warns = [dict(r) for r in con.execute(
            select(m.warnings, m.cases.c.status, m.cases.c.reopen_note, m.cases.c.assignee_id)
            .join(m.cases, m.cases.c.alert_key == w.alert_key)
            # by household only (its index), the snapshot picked here: with `snapshot_date = ?` too, SQLite
            # without statistics takes the list index and scans the whole snapshot
            .where(w.household_no == household_no).order_by(w.score.desc())).mappings()
            if r["snapshot_date"] == day]
        version = con.scalar(select(m.snapshots.c.version).where(m.snapshots.c.snapshot_date == day))
        keys = [x["alert_key"] for x in warns]
        acts = [dict(r) for r in con.execute(
            select(m.actions, m.users.c.display_name, m.users.c.username)
            .outerjoin(m.users, m.users.c.id == m.actions.c.user_id)
            .where(m.actions.c.alert_key.in_(keys)).order_by(m.actions.c.at)).mappings()] if keys else []
        audit.append(con, user, ip, "unmask" if unmask else "view_household", "household", household_no,
                     hh["region_code"], warnings=len(warns))
    names = region_names()
    titles = feed_titles()
    by_id = {mb["id_no"]: mb for mb in members}
    for mb in members:
        mb["id_shown"] = mb["id_no"] if unmask else mask(mb["id_no"])
        mb["name_shown"] = mb["name"] if unmask or not mb["name"] else mask_value(mb["name"], "direct")
        if not unmask:
            del mb["id_no"], mb["name"]
    timeline = []
    decided = {}  # the latest staff decision per case: the data (snapshot version, warning) it was made on
    for a in acts:
        if a["user_id"] is not None:
            decided[a["alert_key"]] = a
    for x in warns:
        last = decided.get(x["alert_key"])
        if last is not None and last["warning_id"] != x["warning_id"]:
            x["changed_since"] = (f"处置后数据已变化 data changed since：上次处置依据 {last['snapshot_date']} "
                                  f"{_version_zh(last['snapshot_version'])}，现为 {day} {_version_zh(version)}")
        x["severity_zh"] = SEVERITY_ZH.get(x["severity"], x["severity"])
        x["status_zh"] = STATUS_ZH[x["status"]]
        x["kind_zh"] = KIND_ZH.get(x["kind"], x["kind"])
        x["subject_shown"] = (x["subject_id_no"] if unmask else mask(x["subject_id_no"])) or ""
        if not unmask:
            x.pop("subject_id_no")
        groups: dict[str, list] = {}
        for fct in x["facts"]:
            dep = fct["feed"].split(".")[0]
            person = by_id.get(fct.get("id_no") or "")
            label = field_labels().get((fct["feed"], fct["field"]), fct["field"])
            key = fct["record_key"]
            if not unmask and looks_like_id(key):  # a record keyed by an ID number (masked like one)
                key = mask(key)
            row = {"feed": fct["feed"], "feed_zh": titles.get(fct["feed"], fct["feed"]), "record_key": key,
                   "field": label, "value": fct["value"], "date": fct.get("date"),
                   "person": (person["name_shown"] if person else ""),
                   "person_id": (fct.get("id_no") if unmask else mask(fct.get("id_no")))}
            groups.setdefault(department_names().get(dep, dep), []).append(row)
            if fct.get("date"):
                timeline.append({"date": str(fct["date"]), "sort": str(fct["date"]), "kind": "data",
                                 "text": f"{titles.get(fct['feed'], fct['feed'])}：{label} = {fct['value']}"
                                         f"（{x['rule_title_zh']}）"})
        x["fact_groups"] = groups
        x["thresholds_zh"] = [(THRESHOLD_ZH.get(k, k), v) for k, v in x["thresholds"].items()]
        x.pop("facts")
    users = _user_names(engine, {a["assignee_id"] for a in acts if a.get("assignee_id")})
    for a in acts:
        who = a["display_name"] or "系统（快照导入）"
        extra = ""
        if a["reason_code"]:
            extra += f"，原因：{DISMISS_REASONS.get(a['reason_code'], a['reason_code'])}"
        if a["assistance"]:
            extra += f"，救助：{ASSISTANCE.get(a['assistance'], a['assistance'])}"
        if a["assignee_id"]:
            extra += f"，分派给 {users.get(a['assignee_id'], '')}"
        at = beijing(a["at"])
        timeline.append({"date": at.strftime("%Y-%m-%d %H:%M"), "sort": at.isoformat(), "kind": "action",
                         "text": f"{who} {ACTION_ZH.get(a['action'], a['action'])}"
                                 f"（{STATUS_ZH.get(a['from_status'])} → {STATUS_ZH.get(a['to_status'])}）{extra}"
                                 + (f"：{a['note']}" if a["note"] else ""),
                         "snapshot": str(a["snapshot_date"]), "rule_version": a["rule_version"]})
    timeline.sort(key=lambda e: e["sort"], reverse=True)  # newest first; actions by their full timestamp
    return {"household": hh, "data": hh["data"], "members": members, "warnings": warns, "timeline": timeline,
            "snapshot_version": version, "snapshot_version_zh": _version_zh(version),
            "street_name": names.get(hh["street_code"], ""), "community_name": names.get(hh["region_code"], ""),
            "unmasked": unmask}


def _version_zh(version: int | None) -> str:
    return f"第{version}版" if version else "（版本前）" if version == 0 else "（版本未记录）"


def _user_names(engine: Engine, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    with engine.connect() as c:
        return dict(c.execute(select(m.users.c.id, m.users.c.display_name).where(m.users.c.id.in_(ids))).all())


def assignable_users(engine: Engine, user: User, region_code: str) -> list[dict]:
    """Active users who may work on a case of `region_code` and are within the actor's scope."""
    with engine.connect() as c:
        return _assignable(c, user, region_code)


def _assignable(c: Connection, user: User, region_code: str) -> list[dict]:
    rows = c.execute(select(m.users.c.id, m.users.c.display_name, m.users.c.role, m.users.c.region_prefix)
                     .where(m.users.c.active, m.users.c.role.in_(("street_worker", "community_assistant",
                                                                   "county_reviewer")),
                            literal(region_code).like(m.users.c.region_prefix + "%"),
                            m.users.c.region_prefix.like(user.region_prefix + "%"))
                     .order_by(m.users.c.display_name)).mappings().all()
    return [dict(r) for r in rows]


def decide(engine: Engine, user: User, alert_key: str, action: str, *, note: str = "", reason_code: str = "",
           assistance: str = "", assignee_id: int | None = None, ip: str = "-") -> dict:
    """Record one decision on a case (in scope, allowed for the role, valid from its status).

    Safe when several staff decide on the same case at once: the case's status changes by compare-and-set
    on the status (and the warning version) the decision was checked against, so of two racing decisions
    one applies and the other gets `Conflict` (409, "refresh") — never both, never an action whose
    `from_status` is not the status it replaced. The action row, the case update and the audit entry
    commit together, in one transaction — with the move of the case's warnings in the list's facet counts
    (`move_facet_counts`), so the counts stay exact.
    """
    if action not in TRANSITIONS:
        raise Conflict(f"未知操作 {action}")
    if action not in ROLES[user.role].decide:
        raise Forbidden(f"{ROLES[user.role].title_zh}不能执行「{ACTION_ZH[action]}」")
    note = (note or "").strip()[:2000]
    if action == "dismiss" and reason_code not in DISMISS_REASONS:
        raise Conflict("排除须选择原因")
    if action == "dismiss" and not note:
        raise Conflict("排除须填写说明")
    if action == "assist" and assistance not in ASSISTANCE:
        raise Conflict("须选择已启动的救助帮扶类型")
    frm, to = TRANSITIONS[action]
    cs = m.cases.c
    with engine.begin() as c:
        # PostgreSQL: the row lock makes this read current and holds off other deciders until commit. SQLite
        # ignores FOR UPDATE and (the sqlite3 driver's legacy transactions) reads this outside the
        # transaction: the compare-and-set below is what decides there
        case = c.execute(select(m.cases).where(cs.alert_key == alert_key, in_scope(user, cs.region_code))
                         .with_for_update()).mappings().first()
        if case is None:
            raise NotFound(alert_key)
        if case["status"] not in frm:
            raise Conflict(f"当前状态为「{STATUS_ZH[case['status']]}」，不能{ACTION_ZH[action]}（可能已被他人处理，请刷新）")
        if action == "assign":
            ok = {u["id"] for u in _assignable(c, user, case["region_code"])}
            if assignee_id not in ok:
                raise Conflict("只能分派给本辖区内的工作人员")
        t = now()
        values = {"status": to, "updated_at": t}
        if action == "assign":
            values["assignee_id"] = assignee_id
        if to in ("dismissed", "closed"):
            values["decided_warning_id"] = case["current_warning_id"]
        if action in ("assign", "visit"):
            values["reopen_note"] = case["reopen_note"]
        # the first write of the transaction (on SQLite it takes the database's write lock, waiting for the
        # current writer): applies only if the case is still as it was checked — same status, same warning
        done = c.execute(update(m.cases).where(cs.alert_key == alert_key, cs.status == case["status"],
                                               cs.current_warning_id == case["current_warning_id"])
                         .values(**values)).rowcount
        if done != 1:
            _lost_race(c, alert_key, case)
        move_facet_counts(c, alert_key, case["status"], to)
        wv = c.execute(select(m.warnings.c.snapshot_date, m.warnings.c.rule_version)
                       .where(m.warnings.c.warning_id == case["current_warning_id"])
                       .order_by(m.warnings.c.snapshot_date.desc())).first()
        assert wv is not None  # a case's current warning is always among the warnings
        seen = c.scalar(select(m.snapshots.c.version).where(m.snapshots.c.snapshot_date == wv.snapshot_date))
        # the chain's head before the action's insert, not only at the audit append: decisions take their action
        # ids in commit order, which the list's facet counts catch up by (`_Counts.catch_up`). SQLite: the
        # compare-and-set above already holds the database's write lock
        audit._lock_head(c)
        c.execute(insert(m.actions).values(
            alert_key=alert_key, action=action, from_status=case["status"], to_status=to, user_id=user.id, at=t,
            snapshot_date=wv.snapshot_date, snapshot_version=seen, warning_id=case["current_warning_id"],
            rule_version=wv.rule_version,
            reason_code=reason_code or None, assistance=assistance or None,
            assignee_id=assignee_id if action == "assign" else None, note=note or None))
        audit.append(c, user, ip, "decision", "case", alert_key, case["region_code"], decision=action,
                     from_status=case["status"], to_status=to, reason_code=reason_code or None,
                     assistance=assistance or None, snapshot=str(wv.snapshot_date), snapshot_version=seen,
                     rule_version=wv.rule_version,
                     household_no=case["household_no"])
    return {"alert_key": alert_key, "status": to, "status_zh": STATUS_ZH[to]}


def _lost_race(c: Connection, alert_key: str, seen) -> None:
    """The case changed between the check and the write (another decision, or a snapshot load): Conflict,
    saying what it is now (read inside the transaction, so current)."""
    now_ = c.execute(select(m.cases.c.status, m.cases.c.current_warning_id)
                     .where(m.cases.c.alert_key == alert_key)).first()
    if now_ is None:
        raise NotFound(alert_key)
    if now_.status != seen["status"]:
        raise Conflict(f"该预警已被他人处理（当前状态：{STATUS_ZH[now_.status]}），请刷新")
    raise Conflict(f"该预警的数据已更新（已导入新快照，当前状态：{STATUS_ZH[now_.status]}），请刷新后重新核实")


def stats(engine: Engine, user: User) -> dict:
    """Chart data: by street, by rule, by snapshot over time, handling progress per street."""
    w, c = m.warnings.c, m.cases.c
    day = latest_snapshot(engine)
    names = region_names()
    with engine.connect() as con:
        if day is None:
            return {"snapshot": None, "by_street": [], "by_community": [], "by_rule": [], "over_time": [],
                    "progress": [], "area_level": "street"}
        scope = [w.snapshot_date == day, in_scope(user, w.region_code)]
        by_street = con.execute(select(w.street_code, func.count()).where(*scope).group_by(w.street_code)
                                .order_by(func.count().desc())).all()
        by_community = con.execute(select(w.region_code, func.count()).where(*scope).group_by(w.region_code)
                                   .order_by(func.count().desc())).all()
        by_rule = con.execute(select(w.rule_title_zh, func.count()).where(*scope).group_by(w.rule_title_zh)
                              .order_by(func.count().desc())).all()
        over = con.execute(select(w.snapshot_date, w.severity, func.count()).where(in_scope(user, w.region_code))
                           .group_by(w.snapshot_date, w.severity).order_by(w.snapshot_date)).all()
        handled = func.sum(func.cast(c.status.in_(HANDLED), Integer))
        area = w.region_code if len(user.region_prefix) >= 9 else w.street_code
        prog = con.execute(_base(select(area, func.count(), handled), scope).group_by(area).order_by(area)).all()
    dates = sorted({str(d) for d, _, _ in over})
    series = {s: [0] * len(dates) for s in ("S1", "S2", "S3")}
    for d, s, n in over:
        series.setdefault(s, [0] * len(dates))[dates.index(str(d))] = n
    return {"snapshot": str(day),
            "by_street": [{"code": k, "name": names.get(k, k), "count": n} for k, n in by_street],
            "by_community": [{"code": k, "name": names.get(k, k), "count": n} for k, n in by_community],
            # what the area chart shows: a street-level user's own street in one bar says nothing
            "area_level": "community" if len(user.region_prefix) >= 9 else "street",
            "by_rule": [{"name": k, "count": n} for k, n in by_rule],
            "over_time": {"dates": dates, "series": {f"{k} {SEVERITY_ZH.get(k, k)}": v for k, v in series.items()}},
            "progress": [{"code": k, "name": names.get(k, k), "total": n, "handled": int(h or 0)} for k, n, h in prog]}

