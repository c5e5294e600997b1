"""The Great Expectations quality gate between `clean/` and publish: running it, and its exception.

`validate(...)` runs every suite of a snapshot (`quality.suites`: the feeds' health, each feed,
the cross-feed links, the outputs) on an ephemeral GX context and returns a
`quality.report.QualityReport`. A failed *critical* expectation (or any GX internal error, which
GX reports as an ordinary failure with `exception_info`) blocks publishing the snapshot:
`report.ok` is False and `report.raise_for_critical()` raises `QualityGateFailed`, the gate's one
exception, which the pipeline raises too (the CLI exits 3 on it).

GX runs on pandas (pyarrow-backed `ArrowDtype` columns, so conversion is near zero-copy): GX's
SQL data source cannot validate DuckDB.

PII: validation runs with `exclude_unexpected_values` and `partial_unexpected_count = 0`, so GX
itself never copies a data value into a result. The gate computes up to `MAX_EXAMPLES` example
keys per failed expectation itself, masking ID numbers 前6后4 (`schemas.idno.mask_value`) and
never showing a name; those masked examples are what the report and the Data Docs
(`quality.datadocs`) show.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quality.report import MAX_EXAMPLES, Failure, QualityReport, SuiteResult, scrub
from quality.suites import Target, cross_targets, feed_target, health_target, output_targets, suite_for
from safetynet.core import paths
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_path
from schemas.errors import DataError
from schemas.idno import mask_value
from schemas.registry import contracts

if TYPE_CHECKING:
    from quality.policy import Policy
    from schemas.contract import Contract

log = logging.getLogger(__name__)

#: GX never returns data values: counts only (examples are computed here, masked).
RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0, "exclude_unexpected_values": True,
                 "include_unexpected_rows": False, "return_unexpected_index_query": False}


class QualityGateFailed(DataError, RuntimeError):
    """A critical expectation failed (or a feed is unhealthy): the snapshot is not published. A
    `DataError`: the CLI exits 3, an Airflow task fails at once without retries.

    `headline` is one line; the report (`report.summary()`) is shown by whoever catches it, once
    (the CLI prints it, an Airflow task fails with `str(e)`, which holds both)."""

    def __init__(self, headline: str, report: object):
        summary = report.summary() if report is not None and hasattr(report, "summary") else ""
        super().__init__(headline + (f"\n{summary}" if summary else ""))
        self.headline = headline
        self.report = report


# ==== running =====================================================================================

def gx_context():
    """An ephemeral GX context, quiet and without batch fingerprints (also what Data Docs build on)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # GX fingerprints every in-memory batch under 1 GB with an md5 of `hash_pandas_object` (a
    # marker in the result meta) — two thirds of the run time on pyarrow-backed frames. Off.
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def _exception_message(res) -> str | None:
    info = res.exception_info or {}
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "exception")
    msgs = [str(v.get("exception_message") or "exception") for v in info.values()
            if isinstance(v, dict) and v.get("raised_exception")]
    return "; ".join(dict.fromkeys(msgs)) if msgs else None


def _unexpected_mask(df: pd.DataFrame, etype: str, kw: dict) -> np.ndarray | None:
    """Rows failing one expectation, computed again in pandas to pick (masked) examples."""
    def nb(s: pd.Series) -> np.ndarray:
        return s.fillna(False).to_numpy(dtype=bool) if s.dtype != bool else s.to_numpy()

    col = kw.get("column")
    if etype == "expect_column_values_to_not_be_null":
        return df[col].isna().to_numpy()
    if etype == "expect_column_values_to_be_in_set":
        s = df[col]
        return nb(s.notna() & ~s.isin(kw["value_set"]))
    if etype == "expect_column_values_to_be_between":
        s = df[col]
        bad = pd.Series(False, index=df.index)
        if kw.get("min_value") is not None:
            bad |= (s < kw["min_value"]).fillna(False)
        if kw.get("max_value") is not None:
            bad |= (s > kw["max_value"]).fillna(False)
        return nb(bad)
    if etype == "expect_column_values_to_match_regex":
        s = df[col]
        return nb(s.notna() & ~s.astype("string").str.contains(kw["regex"], regex=True))
    if etype == "expect_column_values_to_be_unique":
        s = df[col]
        return nb(s.notna() & s.duplicated(keep=False))
    if etype == "expect_compound_columns_to_be_unique":
        return df.duplicated(subset=kw["column_list"], keep=False).to_numpy()
    if etype == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = df[kw["column_A"]], df[kw["column_B"]]
        ok = (a >= b) if kw.get("or_equal") else (a > b)
        return nb(a.notna() & b.notna() & ~ok.fillna(False))
    return None


def _examples(t: Target, etype: str, kw: dict, field_name: str | None) -> list[str]:
    try:
        bad = _unexpected_mask(t.frame, etype, kw)
    except Exception:  # examples are best effort; the failure itself is reported
        return []
    if bad is None:
        return []
    out = []
    col = kw.get("column")
    shown = t.shows.get(col, col) if col else None
    for pos in np.flatnonzero(bad)[:MAX_EXAMPLES]:
        row = t.frame.iloc[int(pos)]
        if t.record is not None and "__feed" in t.frame.columns:
            feed = str(row["__feed"])
            text = t.record(feed, int(row["__row"]))
            src = str(row["__field"]) if "__field" in t.frame.columns else shown
            vcol = shown if shown in t.frame.columns else col
            if (vcol and vcol in t.frame.columns and shown is not None and shown not in t.keys
                    and src not in contracts()[feed].key):
                v = row[vcol]
                v = None if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else v)
                text += f" {src}={mask_value(v, t.pii.get(shown, 'none'))}"
            out.append(scrub(text))
            continue
        parts = [f"{k}={mask_value(None if pd.isna(row[k]) else row[k], t.pii.get(k, 'none'))}"
                 for k in t.keys if k in t.frame.columns]
        if shown and shown not in t.keys and shown in t.frame.columns:
            v = row[shown]
            if t.pii.get(shown, "none") != "none" or not pd.api.types.is_scalar(v):
                parts.append(f"{shown}={mask_value(v, t.pii.get(shown, 'direct')) if pd.api.types.is_scalar(v) and not pd.isna(v) else '…'}")
            else:
                parts.append(f"{shown}={'null' if pd.isna(v) else v}")
        out.append(scrub(" ".join(parts)))
    return out


def _run_target(ctx, ds, t: Target, run_id) -> tuple[SuiteResult, Any, Any]:
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    t0 = time.perf_counter()
    suite = t.suite
    asset = ds.add_dataframe_asset(t.name)
    bd = asset.add_batch_definition_whole_dataframe("whole")
    # Batch.validate rather than a ValidationDefinition: the latter serialises every result into
    # the results store on each run (a third of the time); results are stored for Data Docs only
    res = bd.get_batch(batch_parameters={"dataframe": t.frame}).validate(suite, result_format=RESULT_FORMAT)
    res.meta["run_id"] = run_id
    res.meta["validation_time"] = run_id.run_time
    # the wall-clock batch load time would make every build's pages differ (Data Docs show it)
    (res.meta.get("batch_markers") or {}).pop("ge_load_time", None)
    failures = []
    order = {e.meta.get("check", "") + ":" + str(e.meta.get("field")) + ":" + e.expectation_type: i
             for i, e in enumerate(suite.expectations)}

    def pos(r) -> int:
        m = r.expectation_config.meta or {}
        return order.get(f"{m.get('check', '')}:{m.get('field')}:{r.expectation_config.type}", 10**6)

    res.results.sort(key=pos)
    for r in res.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        err = _exception_message(r)
        if r.success and not err:
            continue
        kw = dict(cfg.kwargs)
        result = r.result or {}
        examples = [] if err else _examples(t, cfg.type, kw, meta.get("field"))
        observed = result.get("observed_value")
        expected_cols = kw.get("column_list") or kw.get("column_set") if meta.get("check") == "columns" else None
        if err:
            message = scrub(f"GX error: {err}")
        elif expected_cols is not None and isinstance(observed, list):
            miss = [x for x in expected_cols if x not in observed]
            extra = [x for x in observed if x not in expected_cols]
            message = (f"missing 缺少: {', '.join(miss) or '-'}; unexpected 多出: {', '.join(extra) or '-'}"
                       + ("" if miss or extra else "; order 顺序不同"))
        else:
            message = scrub(json.dumps(observed, ensure_ascii=False, default=str))[:300] if observed is not None else ""
        failures.append(Failure(suite=t.name, feed=meta.get("feed", t.subject), field=meta.get("field"),
                                expectation=cfg.type, check=meta.get("check", "gx_error" if err else cfg.type),
                                critical=bool(meta.get("critical", True)) or err is not None,
                                unexpected_count=result.get("unexpected_count"),
                                element_count=result.get("element_count"), examples=examples, message=message))
        # what Data Docs will show: the masked examples instead of any value, scrubbed errors
        if examples:
            result["partial_unexpected_list"] = examples
            r.result = result
        if r.exception_info:
            r.exception_info = json.loads(scrub(json.dumps(r.exception_info, default=str)))
    key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=t.name),
                                     run_id=run_id, batch_identifier=res.batch_id)
    stats = dict(res.statistics or {})
    sr = SuiteResult(t.name, t.kind, t.subject, len(t.frame), bool(res.success), stats,
                     time.perf_counter() - t0, failures)
    return sr, key, res


def _error_result(t: Target | None, name: str, kind: str, subject: str, e: BaseException, t0: float) -> SuiteResult:
    msg = scrub(f"{type(e).__name__}: {e}")[:500]
    return SuiteResult(name, kind, subject, len(t.frame) if t else 0, False, {}, time.perf_counter() - t0,
                       [Failure(name, subject, None, "suite", "gx_error", True, None, None, [], f"GX error: {msg}")])


def _suite_sha(c: Contract) -> str:
    """A fingerprint of the feed's suite (its expectations and their settings): a changed suite runs again."""
    return hashlib.sha256(json.dumps(suite_for(c).to_json_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _recorded_feed_suite(store: ObjectStore, c: Contract, clean_sha256: str | None) -> SuiteResult | None:
    """The recorded result of the feed's suite on this very clean file and suite, or None."""
    if clean_sha256 is None:
        return None
    try:
        rec = json.loads(store.read_bytes(paths.quality_feed_record(c.prefix)))
    except FileNotFoundError:
        return None
    if rec.get("clean_sha256") != clean_sha256 or rec.get("suite_sha256") != _suite_sha(c) or len(rec["suites"]) != 1:
        return None
    sr = SuiteResult.from_dict(rec["suites"][0])
    if sr.failures and any(f.message.startswith("GX error") for f in sr.failures):
        return None  # an internal error is not a result: run again
    sr.carried_from = {k: rec[k] for k in ("snapshot_date", "validated_at", "clean_sha256")}
    sr.seconds = 0.0
    return sr


def _record_feed_suites(store: ObjectStore, c: Contract, clean_sha256: str, snap: dt.date,
                        ran: list[SuiteResult]) -> None:
    if len(ran) != 1 or ran[0].carried_from is not None:
        return
    rec = {"feed_id": c.feed_id, "clean_sha256": clean_sha256, "suite_sha256": _suite_sha(c),
           "snapshot_date": snap.isoformat(), "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "suites": [ran[0].as_dict()]}
    store.write_bytes(paths.quality_feed_record(c.prefix), json.dumps(rec, ensure_ascii=False, indent=1).encode())


def _feed_targets(c: Contract, tables: Mapping[str, pa.Table]) -> list[Target]:
    return [feed_target(c, tables[c.feed_id])]


def validate(store_or_tables: ObjectStore | Mapping[str, pa.Table], snapshot_date: dt.date | str, *,
             outputs: Mapping[str, pa.Table] | None = None, policy: Policy | None = None,
             county: str | None = None, feeds: Iterable[str] | None = None,
             health: Mapping[str, dict] | None = None, reuse: bool = False) -> QualityReport:
    """Run every suite for a snapshot: feeds, cross-feed checks and (if given) the outputs.

    `store_or_tables`: an `ObjectStore` (each feed's `clean/` table is read; a missing one is
    validated as empty and listed in `report.missing`) or a dict feed id → pyarrow Table (what the
    pipeline already loaded; absent feeds are skipped). `outputs`: name → Table for
    `monitoring.person`, `monitoring.household`, `warnings` (aliases `person`, `household`).
    `policy` (or `county`, 6 digits) fixes the county the output region codes must belong to.
    `health`: feed id → {"ok", "accepted", "problems"} (the feeds' recorded health, see
    `safetynet.intake.health`); an unhealthy feed the operator did not accept fails critically.

    `reuse` (a store only): a feed suite runs only for the feeds that changed. Each feed suite's
    result is recorded with the sha256 of the clean file it ran on and of the suite itself
    (`_catalog/quality/feeds/<dept>/<feed>.json`); a feed whose clean file and suite are both
    byte-identical to a recorded run gets that result again (`carried_from` names the run) — a feed
    suite reads nothing but its own table, so the result could not differ. The health, cross-feed
    and output suites always run.
    """
    t_start = time.perf_counter()
    snap = dt.date.fromisoformat(snapshot_date) if isinstance(snapshot_date, str) else snapshot_date
    county = county or (policy.policy.region_code if policy is not None else None)
    wanted = list(feeds) if feeds is not None else list(contracts())
    tables: dict[str, pa.Table] = {}
    missing: list[str] = []
    clean_sha: dict[str, str] = {}
    if isinstance(store_or_tables, ObjectStore):
        for fid in wanted:
            c = contracts()[fid]
            if store_or_tables.exists(clean_path(c)):
                data = store_or_tables.read_bytes(clean_path(c))
                clean_sha[fid] = hashlib.sha256(data).hexdigest()
                t = pq.read_table(pa.BufferReader(data)).select(list(c.names))  # no lineage columns
                tables[fid] = t.cast(pa.schema([c.arrow_schema().field(n) for n in c.names]))
            else:
                tables[fid] = pa.schema([c.arrow_schema().field(n) for n in c.names]).empty_table()
                missing.append(fid)
    else:
        tables = {fid: t for fid, t in store_or_tables.items() if fid in wanted}

    from great_expectations.core.run_identifier import RunIdentifier

    ctx = gx_context()
    ds = ctx.data_sources.add_pandas("safetynet")
    run_id = RunIdentifier(run_name=f"snapshot-{snap.isoformat()}",
                           run_time=dt.datetime(snap.year, snap.month, snap.day, tzinfo=dt.UTC))
    suites: list[SuiteResult] = []
    results: dict[str, tuple] = {}

    def run(make: Callable[[], list[Target]], name: str, kind: str, subject: str) -> None:
        t0 = time.perf_counter()
        try:
            targets = make()
        except Exception as e:  # preparing the frames failed: a critical, reported failure
            log.error("quality: preparing %s failed: %s", name, scrub(f"{type(e).__name__}: {e}"))
            suites.append(_error_result(None, name, kind, subject, e, t0))
            return
        for t in targets:
            t1 = time.perf_counter()
            try:
                sr, key, res = _run_target(ctx, ds, t, run_id)
                results[t.name] = (key, res, t.suite)
            except Exception as e:  # reported as a critical failure of the suite
                log.error("quality: suite %s failed to run: %s", t.name, scrub(f"{type(e).__name__}: {e}"))
                sr = _error_result(t, t.name, t.kind, t.subject, e, t1)
            suites.append(sr)
            log.info("quality %s: %s (%d rows, %d failed, %d critical) in %.2fs", sr.name,
                     "ok" if sr.success else "FAILED", sr.rows, len(sr.failures),
                     sum(f.critical for f in sr.failures), sr.seconds,
                     extra={"event": "quality_suite", "suite": sr.name, "success": sr.success,
                            "critical_ok": sr.critical_ok})

    store = store_or_tables if isinstance(store_or_tables, ObjectStore) else None
    for fid in wanted:
        if fid in tables:
            c = contracts()[fid]
            before = len(suites)
            prior = _recorded_feed_suite(store, c, clean_sha.get(fid)) if reuse and store is not None else None
            if prior is not None:
                suites.append(prior)
                continue
            run(partial(_feed_targets, c, tables), f"feed.{fid}", "feed", fid)
            if store is not None and fid in clean_sha:
                _record_feed_suites(store, c, clean_sha[fid], snap, suites[before:])
    if health:
        run(lambda: [health_target(health)], "health", "health", "feeds")
    run(lambda: cross_targets(tables), "cross", "cross", "cross")
    if outputs:
        run(lambda: output_targets(outputs, snap, county), "output", "output", "outputs")
    report = QualityReport(snap, suites, time.perf_counter() - t_start,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), county, missing, ctx, results)
    log.info("quality gate %s: %s (%d critical, %d warnings) in %.1fs", snap, "ok" if report.ok else "BLOCKED",
             len(report.critical_failures), len(report.warnings), report.seconds,
             extra={"event": "quality_gate", "ok": report.ok})
    return report
