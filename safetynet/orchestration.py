"""What the Airflow DAGs (`dags/`) call: one function per task, plus the Assets they share.

Each task function builds `Settings` from the environment (`SAFETYNET_*`) at the edge, calls the
same package functions as the CLI, and returns a small JSON-able dict for XCom (counts, paths,
feed ids — never a personal value). Nothing here runs at import time; heavy modules are imported
inside the functions, so a DAG file importing this module stays cheap to parse.

Assets (one naming scheme, grep the feed id to find it):

* `safetynet://clean/<department>/<feed>` — named by the feed id: a feed's `clean/` state changed;
  produced by the feed's ingest task, consumed by the monitoring DAG;
* `safetynet://kafka/department-topics` — activity on the department topics (an `AssetWatcher`
  with `safetynet.wakeup.KafkaWakeupTrigger`, debounced); it only wakes the ingest DAG, whose
  first task (`feeds_with_work`) picks the feeds with records or files waiting; their tasks
  read each topic up to its high watermark with the connector's own consumer group and commit
  after durable writes;
* `safetynet://catalog/snapshots` — a snapshot was published (`_catalog/snapshots/<date>.json`);
* `safetynet://catalog/freshness` — a freshness report was written.

Airflow specifics are imported lazily and only where a task needs them (skipping a no-op
ingest, failing a task without retries), so the functions also run without Airflow.

Errors are handled by their group (`schemas.errors`): a `ConfigError` (settings, policy, mapping,
an unknown feed) or a `DataError` (an unhealthy delivery, the quality gate) fails the task at once
with `AirflowFailException` — retrying the same configuration or data cannot help; anything else
(a `TransientError` such as `StoreError` or `LeaseBusy`, a lost broker, a bug) is re-raised as it
is and retried by Airflow with exponential backoff (`task_defaults`, the DAGs' `default_args`).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from schemas.errors import ConfigError, DataError  # no imports of its own: the module stays cheap

if TYPE_CHECKING:
    from airflow.sdk import Asset

    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore

log = logging.getLogger(__name__)

ASSET_SCHEME = "safetynet"
KAFKA_ACTIVITY_URI = f"{ASSET_SCHEME}://kafka/department-topics"
SNAPSHOT_URI = f"{ASSET_SCHEME}://catalog/snapshots"
FRESHNESS_URI = f"{ASSET_SCHEME}://catalog/freshness"
#: Airflow connection of the wake-up trigger's Kafka consumer (its own group id: `safetynet.wakeup`).
KAFKA_CONN_ID = "safetynet_kafka"


# ---- the feeds and their assets -----------------------------------------------------------------------
@dataclass(frozen=True)
class FeedSpec:
    """What a DAG needs to know about one feed (from the registry)."""

    feed_id: str
    department: str
    feed: str
    topic: str
    title_zh: str
    cadence_hours: int

    @property
    def asset_uri(self) -> str:
        return clean_asset_uri(self.department, self.feed)


def task_defaults(retries: int, first_retry: dt.timedelta, max_retry: dt.timedelta | None = None,
                  timeout: dt.timedelta | None = None) -> dict:
    """The DAGs' `default_args`: retries with exponential backoff (tasks are idempotent) and a timeout.

    Retries are for transient failures only: a task function turns a `ConfigError` or `DataError`
    into `AirflowFailException`, which Airflow does not retry (`no_retry` below)."""
    out: dict = {"retries": retries, "retry_delay": first_retry}
    if max_retry is not None:
        out.update(retry_exponential_backoff=True, max_retry_delay=max_retry)
    if timeout is not None:
        out["execution_timeout"] = timeout
    return out


def clean_asset_uri(department: str, feed: str) -> str:
    return f"{ASSET_SCHEME}://clean/{department}/{feed}"


def feed_specs() -> list[FeedSpec]:
    """Every feed of the registry (`schemas.registry.contracts()`), in its stable order."""
    from schemas.registry import contracts

    return [FeedSpec(c.feed_id, c.department, c.feed, c.topic, c.title_zh, c.cadence_hours)
            for c in contracts().values()]


def clean_assets() -> dict[str, Asset]:
    """feed id → the Airflow Asset of its `clean/` state (name = feed id)."""
    from airflow.sdk import Asset

    return {f.feed_id: Asset(name=f.feed_id, uri=f.asset_uri, group="clean",
                             extra={"department": f.department, "feed": f.feed, "title_zh": f.title_zh})
            for f in feed_specs()}


def kafka_activity_asset(watchers: list | None = None) -> Asset:
    from airflow.sdk import Asset

    return Asset(name="kafka.department_topics", uri=KAFKA_ACTIVITY_URI, group="kafka", watchers=watchers or [])


def snapshot_asset() -> Asset:
    from airflow.sdk import Asset

    return Asset(name="snapshot", uri=SNAPSHOT_URI, group="published")


def freshness_asset() -> Asset:
    from airflow.sdk import Asset

    return Asset(name="freshness", uri=FRESHNESS_URI, group="catalog")


def department_topics() -> list[str]:
    return [f.topic for f in feed_specs()]


# ---- task functions -----------------------------------------------------------------------------------
def _edge() -> tuple[Settings, ObjectStore]:
    from safetynet.core import logmask, settings
    from safetynet.core.store import ObjectStore

    logmask.install()  # in the task process, after Airflow set up its logging: masks ID-shaped text

    s = settings.load(progress=False)  # SettingsError (a ConfigError) naming every problem
    return s, ObjectStore.from_settings(s)


def _airflow_exception(name: str, fallback: type[Exception]) -> type[Exception]:
    """An Airflow task exception class by name, or `fallback` when Airflow is not installed."""
    try:
        from airflow.sdk import exceptions

        return getattr(exceptions, name)
    except (ImportError, AttributeError):
        return fallback


_F = TypeVar("_F", bound=Callable[..., Any])


def no_retry(fn: _F) -> _F:
    """A task function whose `ConfigError` and `DataError` fail the Airflow task at once: raised
    again as `AirflowFailException` (same message, the original chained), which Airflow does not
    retry. Every other exception — transient ones included — passes as it is, to the task's
    retries with backoff. Without Airflow the original error is raised."""
    @functools.wraps(fn)
    def task(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DataError) as e:
            fail = _airflow_exception("AirflowFailException", type(e))
            if isinstance(e, fail):
                raise
            raise fail(str(e)) from e

    return task  # type: ignore[return-value]


class NothingNew(Exception):
    """No change to a feed's clean state (outside Airflow; inside it is `AirflowSkipException`)."""


class FeedUnhealthy(DataError, RuntimeError):
    """A feed's delivery is unhealthy: a `DataError` (inside Airflow the task fails at once with
    `AirflowFailException`, without retries — a data problem, not a transient one)."""


@no_retry
def ingest_feed(feed_id: str, *, skip_unchanged: bool = False) -> dict:
    """Ingest one feed (Kafka up to the watermark seen at start, if configured, and waiting drops),
    then rebuild its `clean/` state if raw data changed. Returns the counts.

    Safe to retry after a kill at any point: offsets are committed and drops marked done only
    after their files are durable, and the clean state is rebuilt whenever it is older than the
    newest raw file — including the raw files of an attempt that died before cleaning.
    With `skip_unchanged` (the DAG), a run that changed nothing raises Airflow's skip exception,
    so no asset event is emitted and the monitoring DAG is not woken for nothing.
    """
    from safetynet.core import lease
    from schemas.registry import get

    s, store = _edge()
    try:
        c = get(feed_id)
    except KeyError as e:  # the registry's lookup error: here a configuration problem (the DAG's feed id)
        raise ConfigError(e.args[0]) from None
    t0 = time.perf_counter()
    # one writer per feed, ingest and clean alike; a retry after a kill takes the dead attempt's
    # lease over (at once on the same host, else after its expiry: the task waits that long)
    with lease.held(store, [feed_id], run_id=f"task {feed_id}", ttl_s=s.lease_ttl_s,
                    wait_s=max(s.lease_wait_s, 2 * s.lease_ttl_s)):
        return _ingest_feed(s, store, c, t0, skip_unchanged)


def _ingest_feed(s, store, c, t0: float, skip_unchanged: bool) -> dict:
    from safetynet.intake.clean import clean_all
    from safetynet.intake.ingest import ingest

    feed_id = c.feed_id
    report = ingest(s, store, [feed_id], kafka=bool(s.kafka_bootstrap), files=True)
    fc = report.feeds[feed_id]
    if not fc.reconciles:  # ingest raises first; kept as the task's own guard
        raise AssertionError(f"{feed_id}: counts do not reconcile: {fc.as_dict()}")
    if fc.health is not None and fc.health.unhealthy:  # held out of clean/ by ingest; nothing to clean
        raise FeedUnhealthy(
            f"{feed_id} unhealthy (delivery held, previous clean state in force; run {report.run_id}): "
            + " | ".join(fc.health.problems + fc.health.drift)
            + " — fix the mapping (safetynet feeds profile) or the delivery; no retry")
    behind = clean_is_behind(store, c)
    cleaned = clean_all(store, [c])[feed_id] if behind else None
    counts = {k: v for k, v in fc.as_dict().items() if k != "files"}
    out = {"feed_id": feed_id, "run_id": report.run_id, "manifest": report.manifest, **counts,
           "files_written": len(fc.files), "cleaned": cleaned is not None,
           "clean": asdict(cleaned) if cleaned else None,
           "clean_reconciles": cleaned.reconciles if cleaned else None,
           "seconds_total": round(time.perf_counter() - t0, 3)}
    log.info("ingest_feed %s: input=%d accepted=%d quarantined=%d cleaned=%s", feed_id, fc.input, fc.accepted,
             fc.quarantined_total, out["cleaned"], extra={"event": "ingest_feed_task", **out})
    if cleaned is not None and not cleaned.reconciles:
        raise AssertionError(f"{feed_id}: clean counts do not reconcile: {asdict(cleaned)}")
    if skip_unchanged and cleaned is None:
        raise _airflow_exception("AirflowSkipException", NothingNew)(
            f"{feed_id}: nothing new (input={fc.input}, all quarantined or none); clean state unchanged")
    return out


def clean_is_behind(store: ObjectStore, contract) -> bool:
    """Whether the feed's clean state misses raw data: no clean manifest yet, or a raw file at
    least as new as it (same store clock on both sides, so no skew)."""
    from safetynet.core import paths

    manifest = [e for e in store.list(paths.clean_manifests(contract.department), ".json")
                if e.path == paths.clean_manifest(contract.prefix)]
    if not manifest:
        return True
    raw = store.list(paths.raw(contract.prefix), ".parquet")
    return bool(raw) and max(e.mtime_ns for e in raw) >= manifest[0].mtime_ns


#: ingest runs of these types read every feed (the sweep); a wake-up (an asset-triggered run) reads
#: only the feeds `feeds_with_work` finds something for
SWEEP_RUN_TYPES = frozenset({"scheduled", "manual", "backfill"})


@no_retry
def feeds_with_work(run_type: str | None = None) -> list[str]:
    """The feeds an ingest run reads (their task ids; the DAG's branch skips the others without
    starting them, so they emit no asset event).

    A scheduled, manual or backfill run — the 10-minute sweep — reads every feed: the backstop for
    anything the quick look below cannot see (a drop held as unhealthy whose mapping changed, a
    file rewritten within its ledger's second). A wake-up reads only the feeds with work: records
    past the connector group's committed offsets (`connectors.kafka_topic.backlog`), files waiting
    in their drop folder (`DropFolderSource.unseen`), or a clean state behind `raw/` (an attempt
    that died before cleaning). When the look itself fails (the broker unreachable, the store
    slow), every feed is read: its tasks retry and say what is wrong.
    """
    from connectors.drop_folder import DropFolderSource
    from connectors.kafka_topic import backlog
    from schemas.registry import contracts

    cs = list(contracts().values())
    every = [c.feed_id for c in cs]
    if run_type in SWEEP_RUN_TYPES or run_type is None:
        log.info("ingest: %s run reads every feed (%d)", run_type or "unknown", len(every),
                 extra={"event": "feeds_with_work", "run_type": run_type, "feeds": every, "sweep": True})
        return every
    s, store = _edge()
    reasons: dict[str, list[str]] = {}
    try:
        if s.kafka_bootstrap:
            waiting = backlog(s, [c.topic for c in cs])
            for c in cs:
                if waiting.get(c.topic) is not False:
                    reasons.setdefault(c.feed_id, []).append(
                        "kafka records waiting" if waiting.get(c.topic) else "kafka watermark unknown")
        for c in cs:
            files = DropFolderSource(store, c).unseen()
            if files:
                reasons.setdefault(c.feed_id, []).append(f"{len(files)} drop file(s) waiting")
            if clean_is_behind(store, c):
                reasons.setdefault(c.feed_id, []).append("clean state behind raw/")
    except Exception as e:  # any failure to look means: read everything (the tasks retry)
        log.warning("ingest: could not tell which feeds have work (%s: %s); reading every feed", type(e).__name__, e,
                    extra={"event": "feeds_with_work", "run_type": run_type, "feeds": every, "error": str(e)})
        return every
    picked = [fid for fid in every if fid in reasons]
    log.info("ingest: %d of %d feeds have work: %s", len(picked), len(every),
             "; ".join(f"{fid} ({', '.join(reasons[fid])})" for fid in picked) or "none",
             extra={"event": "feeds_with_work", "run_type": run_type, "feeds": picked, "reasons": reasons})
    return picked


@no_retry
def run_monitoring(snapshot_date: str) -> dict:
    """Quality gate → monitoring build → warnings → publish (+ `hub.warnings.v1`) for one snapshot date,
    every county in this one process (`pipeline.build_snapshot`; the DAG runs the same per-county
    builds as mapped tasks: `monitoring_counties` → `build_county` → `publish_monitoring`).

    Idempotent: a re-run (or backfill) for the same date rewrites identical bytes and warning ids.
    Records which inputs were stale at the snapshot's reference time (`freshness.snapshot_as_of`:
    the end of the day in Asia/Shanghai, for a past day independent of when it runs). A failed
    critical expectation fails the task without retries (the data, not the attempt, is at fault).
    """
    from safetynet import pipeline

    s, store = _edge()
    day = dt.date.fromisoformat(snapshot_date)
    stale = _stale_warning(store, day)
    pols = pipeline.policies(store, day)  # PolicyError: a ConfigError, no retry
    res = pipeline.build_snapshot(s, store, day, pols if len(pols) > 1 else next(iter(pols.values())))
    return _monitoring_out(day, res, stale, sorted(pols))


def _stale_warning(store: ObjectStore, day: dt.date) -> list[str]:
    from quality import freshness

    as_of = freshness.snapshot_as_of(day)
    stale = freshness.stale_feeds(store, as_of)
    if stale:
        log.warning("snapshot %s is computed on stale inputs: %s", day, ", ".join(stale),
                    extra={"event": "stale_inputs", "snapshot_date": day.isoformat(), "stale_inputs": stale,
                           "as_of": as_of.isoformat()})
    return stale


def _monitoring_out(day: dt.date, res, stale: list[str], counties: list[str]) -> dict:
    """The monitoring task's XCom: counts, the version published, how the build ran (no personal value)."""
    from quality import freshness
    from safetynet.core import paths

    w = res.warnings
    by_rule: dict[str, int] = {}
    if w is not None:
        for r in w.column("rule_id").to_pylist():
            by_rule[r] = by_rule.get(r, 0) + 1
    affected = {rid: feeds for rid, feeds in freshness.stale_inputs_by_rule(stale).items() if feeds}
    out = {
        "snapshot_date": day.isoformat(), "policy_version": res.policy_version, "persons": res.persons,
        "households": res.households, "warnings": w.num_rows if w is not None else 0,
        "warnings_by_rule": dict(sorted(by_rule.items())),
        "manifest": paths.snapshot_version(day, res.manifest["version"]),
        "version": res.manifest.get("version"), "publish": res.manifest.get("status"),
        "quality_ok": None if res.quality is None else bool(res.quality.ok),
        "build_mode": res.build_mode, "households_reevaluated": res.households_reevaluated,
        "build_reason": res.build_reason,
        "kafka_published": res.kafka_published,
        "stale_as_of": freshness.snapshot_as_of(day).isoformat(), "stale_inputs": stale,
        "rules_on_stale_inputs": dict(sorted(affected.items())),
        "counties": counties,
    }
    log.info("monitoring %s: %d persons, %d households, %d warnings in %d county(ies); stale inputs: %s", day,
             res.persons, res.households, out["warnings"], len(counties), ", ".join(stale) or "none",
             extra={"event": "monitoring_task", **{k: v for k, v in out.items() if k != "rules_on_stale_inputs"}})
    return out


# ---- the monitoring DAG, one task per county ---------------------------------------------------------
@no_retry
def monitoring_counties(snapshot_date: str, run_key: str) -> list[str]:
    """The counties of the register (the DAG maps one `build_county` task over them), each with a
    valid policy file for the snapshot's year — checked here, before any build starts. Clears the
    staged parts earlier runs of the date left (the DAG runs one monitoring run at a time)."""
    from safetynet import pipeline

    _, store = _edge()
    day = dt.date.fromisoformat(snapshot_date)
    counties = sorted(pipeline.policies(store, day))  # PolicyError: a ConfigError, no retry
    dropped = pipeline.clear_staging(store, day, keep_run=run_key)
    log.info("monitoring %s: %d county(ies): %s", day, len(counties), ", ".join(counties),
             extra={"event": "monitoring_counties", "snapshot_date": snapshot_date, "counties": counties,
                    "stale_staged_files_removed": dropped})
    return counties


@no_retry
def build_county(snapshot_date: str, county: str, run_key: str, counties: list[str] | None = None) -> dict:
    """One county's monitoring build and warnings with its own policy file, staged in the store for
    `publish_monitoring` (`pipeline.build_county`, `pipeline.stage_part`). Idempotent: a retry
    rewrites the same part."""
    from safetynet import pipeline

    s, store = _edge()
    day = dt.date.fromisoformat(snapshot_date)
    t0 = time.perf_counter()
    pols = pipeline.policies(store, day)
    if counties is not None and sorted(counties) != sorted(pols):
        raise pipeline.PartsOutOfStep(f"the register's counties changed since the run started ({', '.join(counties)} "
                                      f"→ {', '.join(sorted(pols))}): the next run builds them")
    if county not in pols:
        raise ConfigError(f"county {county} is not in the register (its counties: {', '.join(sorted(pols))})")
    part = pipeline.build_county(s, store, day, county, pols[county], counties=sorted(pols))
    out = pipeline.stage_part(store, day, run_key, part)
    out["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("monitoring %s county %s: %d households, %d warnings (%s build) in %.1f s", day, county,
             part.household.num_rows, part.warnings.num_rows, part.mode, out["seconds"],
             extra={"event": "monitoring_county_task", **out})
    return out


@no_retry
def publish_monitoring(snapshot_date: str, parts: list[dict], run_key: str) -> dict:
    """When every county's part is in: the quality gate on the combined outputs, publish (the
    manifest), the snapshot notice and warnings to Kafka (`pipeline.publish_parts`); then the run's
    staged parts are deleted. Returns what `run_monitoring` returns (and the per-county parts)."""
    from safetynet import pipeline

    s, store = _edge()
    day = dt.date.fromisoformat(snapshot_date)
    stale = _stale_warning(store, day)
    parts = [parts[i] for i in range(len(parts))]  # Airflow's lazy XCom sequence: by index, no probe past the end
    loaded = [pipeline.load_part(store, p["part"]) for p in parts]
    counties = sorted(p.county for p in loaded)
    pols = pipeline.policies(store, day)
    if counties != sorted(pols):
        raise pipeline.PartsOutOfStep(f"parts of counties {', '.join(counties)}, but the register now holds "
                                      f"{', '.join(sorted(pols))}: nothing published; the next run builds them")
    res = pipeline.publish_parts(s, store, day, loaded,
                                 gate_policy=pols[counties[0]] if len(counties) == 1 else None)
    pipeline.clear_staging(store, day)
    out = _monitoring_out(day, res, stale, counties)
    out["parts"] = [{k: p[k] for k in ("county", "policy_version", "mode", "households", "rows", "seconds") if k in p}
                    for p in sorted(parts, key=lambda p: p["county"])]
    return out


@no_retry
def check_freshness(now: str) -> dict:
    """Freshness of every feed at `now` (ISO time with offset); writes `_catalog/freshness/<date>.json`.

    Late or missing feeds are data-quality warnings (structured log event `feed_stale`, listed
    in the report); the task itself succeeds — lateness is the departments' to fix, not a
    reason to retry.
    """
    from quality import freshness

    _, store = _edge()
    r = freshness.check(store, now)
    return {"as_of": r["as_of"], "report": r["report"], "stale": r["stale"],
            "feeds": {fid: {k: f[k] for k in ("status", "last_arrival", "age_hours", "cadence_hours")}
                      for fid, f in r["feeds"].items()}}
