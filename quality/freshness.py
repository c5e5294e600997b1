"""Feed freshness: when did each department feed last deliver, against the cadence its contract expects.

A feed's *last arrival* is the newest `_ingested_at` of its accepted records in `raw/` (the
moment the hub made them durable), read from Parquet footer statistics — every file of a batch
carries one `_ingested_at`, so a footer answers without reading data. File modification times
only pick which footers to read: a raw file is written right after its `_ingested_at` is taken,
so `mtime >= _ingested_at` (within `CLOCK_SLACK`) and a check reads a handful of footers per
feed, however long the history. The ingest run manifests (`_catalog/ingest/`) are not used: one
is written per run even when nothing arrived, and they grow without bound.

A feed is **late** when its last arrival is older than its contract's `cadence_hours` (plus a
grace of `grace_fraction` of the cadence) at the reference time `as_of`, and **missing** when
nothing ever arrived by then; both are *stale*. Everything here is a function of the store's
contents and `as_of` — no wall clock — so a check (and a snapshot that records it) re-run for the
same `as_of` gives the same answer.

`check` writes `_catalog/freshness/<as_of date>.json` (the latest check of that date) and logs
one structured warning per stale feed (a data-quality warning: event `feed_stale`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import asdict, dataclass
from functools import cache
from zoneinfo import ZoneInfo

from quality.rules import RULES
from safetynet.build.monitoring import STEPS, sources
from safetynet.core import paths
from safetynet.core.store import Entry, ObjectStore
from safetynet.intake import health
from schemas.registry import contracts

log = logging.getLogger(__name__)

#: The district's civil time: a snapshot date is a calendar day there.
LOCAL_TZ = ZoneInfo("Asia/Shanghai")
#: Default grace before a feed counts as late, as a fraction of its cadence (daily: 6 h).
GRACE_FRACTION = 0.25
#: Tolerated difference between a file's mtime (store clock) and its `_ingested_at` (worker clock).
CLOCK_SLACK = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class FeedFreshness:
    feed_id: str
    title_zh: str
    cadence_hours: int
    status: str  # fresh | late | missing
    last_arrival: str | None  # newest accepted record's `_ingested_at` (UTC, ISO) at or before as_of
    age_hours: float | None  # as_of - last_arrival; negative when the data is newer than as_of
    late_after_hours: float  # cadence plus grace
    last_received: str | None  # newest record of any kind, quarantined ones included
    clean_rows: int | None  # rows in the feed's clean state (None: never cleaned)

    @property
    def stale(self) -> bool:
        return self.status != "fresh"


# ---- reference times ------------------------------------------------------------------------------
def parse_instant(value: str | dt.datetime) -> dt.datetime:
    """An aware UTC datetime from ISO text (`2026-11-01T18:00:00+00:00`, `...Z`) or a datetime."""
    t = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"a time without a timezone is ambiguous: {value!r} (give an offset, e.g. +08:00 or Z)")
    return t.astimezone(dt.UTC)


def snapshot_as_of(snapshot_date: dt.date, now: dt.datetime | None = None) -> dt.datetime:
    """The reference time at which a snapshot's inputs are judged: the end of its day (Asia/Shanghai).

    For a day still in progress it is `now` instead (an earlier cut-off would flag a feed as late
    before its delivery was due). A snapshot of a past day — the daily run, a backfill, a re-run —
    always gets the same reference time, so what it records about its inputs does not depend on
    when it ran.
    """
    end = dt.datetime.combine(snapshot_date + dt.timedelta(days=1), dt.time(), LOCAL_TZ).astimezone(dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return min(end, now)


# ---- arrivals -------------------------------------------------------------------------------------
def _ingested_at(store: ObjectStore, e: Entry) -> dt.datetime | None:
    """A raw/quarantine file's `_ingested_at`, from its footer (the whole column as a fallback)."""
    import pyarrow.parquet as pq

    full = store.full(e.path)
    md = pq.read_metadata(full, filesystem=store.fs)
    try:
        col = md.schema.to_arrow_schema().get_field_index("_ingested_at")
    except KeyError:
        col = -1
    if col < 0:
        return None
    best: dt.datetime | None = None
    for rg in range(md.num_row_groups):
        st = md.row_group(rg).column(col).statistics
        if st is None or not st.has_min_max:
            t = pq.read_table(full, columns=["_ingested_at"], filesystem=store.fs)["_ingested_at"]
            vals = [v for v in t.to_pylist() if v is not None]
            return max(vals).astimezone(dt.UTC) if vals else None
        v = st.max
        v = v if v.tzinfo else v.replace(tzinfo=dt.UTC)
        best = v if best is None or v > best else best
    return best.astimezone(dt.UTC) if best else None


def last_arrival(store: ObjectStore, prefix: str, until: dt.datetime | None = None) -> dt.datetime | None:
    """The newest `_ingested_at` among the Parquet files under `prefix` (at or before `until`)."""
    entries = sorted(store.list(prefix, ".parquet"), key=lambda e: (e.mtime_ns, e.path), reverse=True)
    best: dt.datetime | None = None
    for e in entries:
        mtime = dt.datetime.fromtimestamp(e.mtime_ns / 1e9, dt.UTC)
        if best is not None and mtime < best - CLOCK_SLACK:
            break  # written before the best arrival found (mtime >= _ingested_at): cannot beat it
        if until is not None and mtime > until + CLOCK_SLACK:
            continue  # written after `until`: its records arrived after it
        t = _ingested_at(store, e)
        if t is not None and (until is None or t <= until) and (best is None or t > best):
            best = t
    return best


def _clean_rows(store: ObjectStore, prefix: str) -> int | None:
    try:
        return int(json.loads(store.read_bytes(paths.clean_manifest(prefix)))["counts"]["rows"])
    except FileNotFoundError:
        return None


def feed_freshness(store: ObjectStore, contract, as_of: dt.datetime, grace_fraction: float = GRACE_FRACTION,
                   *, point_in_time: bool = True) -> FeedFreshness:
    """Freshness of one feed (a `schemas.contract.Contract`) at `as_of`.

    `point_in_time`: only what had arrived by `as_of` counts (a check of that moment). Otherwise
    every arrival counts — the data the clean state holds now; data newer than `as_of` has a
    negative age and is fresh (a backfilled snapshot built on later data).
    """
    as_of = parse_instant(as_of)
    until = as_of if point_in_time else None
    arrived = last_arrival(store, paths.raw(contract.prefix), until)
    received = last_arrival(store, paths.quarantine(contract.prefix), until)
    if arrived is not None and (received is None or arrived > received):
        received = arrived
    late_after = contract.cadence_hours * (1 + grace_fraction)
    age = None if arrived is None else round((as_of - arrived).total_seconds() / 3600, 3)
    status = "missing" if arrived is None else ("late" if age > late_after else "fresh")
    return FeedFreshness(
        feed_id=contract.feed_id, title_zh=contract.title_zh, cadence_hours=contract.cadence_hours, status=status,
        last_arrival=arrived.isoformat() if arrived else None, age_hours=age, late_after_hours=round(late_after, 3),
        last_received=received.isoformat() if received else None, clean_rows=_clean_rows(store, contract.prefix))


def freshness(store: ObjectStore, as_of: str | dt.datetime, grace_fraction: float = GRACE_FRACTION,
              feeds: list[str] | None = None, *, point_in_time: bool = True) -> dict[str, FeedFreshness]:
    """Freshness of every feed of the registry (or the given ones) at `as_of`, by feed id."""

    t = parse_instant(as_of)
    cs = contracts()
    return {fid: feed_freshness(store, cs[fid], t, grace_fraction, point_in_time=point_in_time)
            for fid in (feeds or list(cs))}


def stale_feeds(store: ObjectStore, as_of: str | dt.datetime, grace_fraction: float = GRACE_FRACTION) -> list[str]:
    """Feed ids whose current data (what `clean/` holds now) is late or missing at `as_of`, sorted.

    This is the question a snapshot asks of its inputs (`as_of` = `snapshot_as_of(date)`): a
    backfill of a past day on data that arrived later finds it fresh; a feed that never
    delivered, or whose newest data is older than its cadence allows, is stale.
    """
    return sorted(fid for fid, f in freshness(store, as_of, grace_fraction, point_in_time=False).items()
                  if f.stale)


# ---- the check (freshness DAG) --------------------------------------------------------------------
def check(store: ObjectStore, as_of: str | dt.datetime, grace_fraction: float = GRACE_FRACTION) -> dict:
    """Check every feed, write `_catalog/freshness/<as_of date>.json`, warn per stale feed; the report."""

    t = parse_instant(as_of)
    feeds = freshness(store, t, grace_fraction)
    healths = health.latest(store, list(contracts().values()))  # the latest delivery's verdict per feed
    stale = sorted(fid for fid, f in feeds.items() if f.stale)
    unhealthy = sorted(fid for fid, h in healths.items() if h.get("unhealthy"))
    report = {
        "as_of": t.isoformat(), "grace_fraction": grace_fraction, "stale": stale, "unhealthy": unhealthy,
        "feeds": {fid: {**asdict(f), "stale": f.stale,
                        "health": {k: healths[fid].get(k) for k in ("unhealthy", "rate", "problems", "drift", "run_id")}
                        if fid in healths else None}
                  for fid, f in feeds.items()},
    }
    path = paths.freshness_report(t.date())
    store.write_bytes(path, json.dumps(report, ensure_ascii=False, indent=1, sort_keys=True).encode())
    report["report"] = path
    for f in feeds.values():
        if f.status == "missing":
            log.warning("feed %s (%s) is stale: no data has arrived as of %s (expected every %dh)", f.feed_id,
                        f.title_zh, t.isoformat(), f.cadence_hours,
                        extra={"event": "feed_stale", "feed": f.feed_id, "status": f.status, "as_of": t.isoformat(),
                               "cadence_hours": f.cadence_hours, "last_arrival": None, "age_hours": None})
        elif f.status == "late":
            log.warning("feed %s (%s) is late: last data arrived %s, %.1fh before %s (expected every %dh, late after "
                        "%.1fh)", f.feed_id, f.title_zh, f.last_arrival, f.age_hours, t.isoformat(), f.cadence_hours,
                        f.late_after_hours,
                        extra={"event": "feed_stale", "feed": f.feed_id, "status": f.status, "as_of": t.isoformat(),
                               "cadence_hours": f.cadence_hours, "last_arrival": f.last_arrival,
                               "age_hours": f.age_hours})
    for fid in unhealthy:
        log.warning("feed %s is unhealthy (its last delivery is held; the previous clean state is in force): %s",
                    fid, "; ".join(healths[fid].get("problems", [])),
                    extra={"event": "feed_unhealthy", "feed": fid, "as_of": t.isoformat()})
    log.info("freshness as of %s: %d feeds, %d stale", t.isoformat(), len(feeds), len(stale),
             extra={"event": "freshness", "as_of": t.isoformat(), "feeds": len(feeds), "stale": stale})
    return report


def read_report(store: ObjectStore, day: dt.date) -> dict:
    """The latest freshness check written for a day."""
    return json.loads(store.read_bytes(paths.freshness_report(day)))


# ---- which rules read which feeds -----------------------------------------------------------------
_IDENT = re.compile(r"\b[a-z_][a-z0-9_]*\b")


@cache
def rule_inputs() -> dict[str, tuple[str, ...]]:
    """Per warning rule, the feeds its result depends on (through the monitoring build's steps).

    Derived from the SQL: a rule reads step tables and source tables; each step reads sources
    and earlier steps (`safetynet.build.monitoring.STEPS`, `sources()`). The closure over those names is
    the set of feeds whose staleness can change the rule's result.
    """

    source_feed = {name: fid for fid, name in sources().items()}
    deps: dict[str, set[str]] = {}
    for name, sql in STEPS:
        feeds: set[str] = set()
        for ident in set(_IDENT.findall(sql)):
            if ident in source_feed:
                feeds.add(source_feed[ident])
            elif ident in deps and ident != name:
                feeds |= deps[ident]
        deps[name] = feeds

    def closure(sql: str) -> tuple[str, ...]:
        out: set[str] = set()
        for ident in set(_IDENT.findall(sql)):
            if ident in source_feed:
                out.add(source_feed[ident])
            elif ident in deps:
                out |= deps[ident]
        return tuple(sorted(out))

    return {r.id: closure(r.sql) for r in RULES}


def stale_inputs_by_rule(stale: list[str]) -> dict[str, list[str]]:
    """Per rule id, the stale feeds among its inputs (empty list: computed on fresh inputs)."""
    s = set(stale)
    return {rid: [f for f in feeds if f in s] for rid, feeds in rule_inputs().items()}
