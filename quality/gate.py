"""The Great Expectations quality gate between `clean/` and publish: running it, and its exception.

`validate(...)` runs every suite of a snapshot (`quality.suites`: the feeds' health, each feed,
the cross-feed links, the outputs) on an ephemeral GX context and returns a
`quality.report.QualityReport`. A failed *critical* expectation (or any GX internal error, which
GX reports as an ordinary failure with `exception_info`) blocks publishing the snapshot:
`report.ok` is False and `report.raise_for_critical()` raises `QualityGateFailed`, the gate's one
exception, which the pipeline raises too (the CLI exits 3 on it).

Every count is exact, whatever the size: `quality.exact` computes each expectation in DuckDB over
every row of a target (`Target.sql`: the clean Parquet as read, the output tables), and GX validates
the suite on a pandas frame of at most `exact.SAMPLE_ROWS` rows (a fixed-seed sample) plus the
first failing rows; the exact counts go into GX's results (what the report and Data Docs show) and
GX's verdict on its frame must agree with the exact one, else the expectation fails as a GX error
(`_reconcile`). GX runs on pandas (pyarrow-backed `ArrowDtype` columns): its SQL data source
cannot validate DuckDB.

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
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quality import exact
from quality.exact import Metric
from quality.report import MAX_EXAMPLES, Failure, QualityReport, SuiteResult, scrub
from quality.suites import Target, cross_targets, feed_target, health_target, output_targets, suite_for
from safetynet.core import paths
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_path
from schemas import normalise
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


def _examples(t: Target, kw: dict, positions: list[int]) -> list[str]:
    """The failing rows at `positions` (the first ones, from `quality.exact`) as masked keys."""
    if not positions:
        return []
    frame = t.frame_of(np.asarray(positions, dtype=np.int64))
    out = []
    col = kw.get("column")
    shown = t.shows.get(col, col) if col else None
    for pos in range(min(len(frame), MAX_EXAMPLES)):
        row = frame.iloc[pos]
        if t.record is not None and "__feed" in frame.columns:
            feed = str(row["__feed"])
            text = t.record(feed, int(row["__row"]))
            src = str(row["__field"]) if "__field" in frame.columns else shown
            vcol = shown if shown in frame.columns else col
            if (vcol and vcol in frame.columns and shown is not None and shown not in t.keys
                    and src not in contracts()[feed].key):
                v = row[vcol]
                v = None if pd.isna(v) else (f"{v:g}" if isinstance(v, float) else v)
                text += f" {src}={mask_value(v, t.pii.get(shown, 'none'))}"
            out.append(scrub(text))
            continue
        parts = [f"{k}={mask_value(None if pd.isna(row[k]) else row[k], t.pii.get(k, 'none'))}"
                 for k in t.keys if k in frame.columns]
        if shown and shown not in t.keys and shown in frame.columns:
            v = row[shown]
            if t.pii.get(shown, "none") != "none" or not pd.api.types.is_scalar(v):
                parts.append(f"{shown}={mask_value(v, t.pii.get(shown, 'direct')) if pd.api.types.is_scalar(v) and not pd.isna(v) else '…'}")
            else:
                parts.append(f"{shown}={'null' if pd.isna(v) else v}")
        out.append(scrub(" ".join(parts)))
    return out


def _expectation_key(etype: str, kwargs: Mapping) -> str:
    """An expectation as a suite holds it (a result's copy also names the batch)."""
    return etype + json.dumps({k: v for k, v in kwargs.items() if k != "batch_id"}, sort_keys=True, default=str)


def _reconcile(r, m: Metric | Exception | None, whole: bool) -> str | None:
    """Put the exact metric `m` (every row) into GX's result `r` (the validated frame); an error
    message when they cannot both be right. The frame holds the first failing rows, so GX fails
    on it exactly when some row fails (and on every row, `whole`, counts the same)."""
    if m is None:
        return None
    if isinstance(m, Exception):
        return scrub(f"exact check failed: {type(m).__name__}: {m}")
    result = dict(r.result or {})
    if m.unexpected_count is not None:
        gx_count = result.get("unexpected_count")
        if bool(r.success) != m.success or (whole and gx_count is not None and gx_count != m.unexpected_count):
            return (f"exact check ({m.unexpected_count} of {m.element_count} rows unexpected) and GX on the validated "
                    f"rows ({gx_count}) disagree")
    result.update(m.result())
    r.result = result
    r.success = m.success
    return None


def _run_target(ctx, ds, t: Target, run_id, con: duckdb.DuckDBPyConnection,
                sample_rows: int) -> tuple[SuiteResult, Any, Any]:
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    t0 = time.perf_counter()
    suite = t.suite
    for name, table in t.refs.items():
        con.register(name, table)
    try:
        # every row, exactly, in DuckDB; GX validates a frame of the sample and the rows that fail
        exps = [(e.expectation_type, dict(e.configuration.kwargs)) for e in suite.expectations]
        metrics = exact.measure(con, t.sql, t.rows, exps, MAX_EXAMPLES, t.matches)
    finally:
        for name in t.refs:
            con.unregister(name)
    index = {_expectation_key(*e): i for i, e in enumerate(exps)}
    pos = exact.sample_positions(t.name, t.rows, sample_rows)
    evidence = [p for m in metrics.values() if isinstance(m, Metric) for p in m.examples + m.companions]
    if evidence:
        pos = np.union1d(pos, np.asarray(evidence, dtype=np.int64))
    frame = t.frame_of(pos)
    asset = ds.add_dataframe_asset(t.name)
    bd = asset.add_batch_definition_whole_dataframe("whole")
    # Batch.validate rather than a ValidationDefinition: the latter serialises every result into
    # the results store on each run (a third of the time); results are stored for Data Docs only
    res = bd.get_batch(batch_parameters={"dataframe": frame}).validate(suite, result_format=RESULT_FORMAT)
    res.meta["run_id"] = run_id
    res.meta["validation_time"] = run_id.run_time
    res.meta["rows"] = {"table": t.rows, "validated_by_gx": len(frame), "sample_seed": exact.SAMPLE_SEED}
    # the wall-clock batch load time would make every build's pages differ (Data Docs show it)
    (res.meta.get("batch_markers") or {}).pop("ge_load_time", None)
    failures = []
    order = {e.meta.get("check", "") + ":" + str(e.meta.get("field")) + ":" + e.expectation_type: i
             for i, e in enumerate(suite.expectations)}

    def rank(r) -> int:
        m = r.expectation_config.meta or {}
        return order.get(f"{m.get('check', '')}:{m.get('field')}:{r.expectation_config.type}", 10**6)

    res.results.sort(key=rank)
    for r in res.results:
        cfg = r.expectation_config
        meta = cfg.meta or {}
        kw = dict(cfg.kwargs)
        m = metrics.get(index.get(_expectation_key(cfg.type, kw), -1))
        err = _exception_message(r) or _reconcile(r, m, len(frame) == t.rows)
        if r.success and not err:
            continue
        result = r.result or {}
        examples = _examples(t, kw, m.examples) if isinstance(m, Metric) and not err else []
        observed = result.get("observed_value")
        expected_cols = kw.get("column_list") or kw.get("column_set") if meta.get("check") == "columns" else None
        if err:
            message = scrub(f"GX error: {err}")
            r.success = False
            r.exception_info = r.exception_info or {"raised_exception": True, "exception_message": message,
                                                    "exception_traceback": None}
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
    good = sum(bool(r.success) for r in res.results)
    res.success = good == len(res.results)
    res.statistics = {"evaluated_expectations": len(res.results), "successful_expectations": good,
                      "unsuccessful_expectations": len(res.results) - good,
                      "success_percent": 100.0 * good / len(res.results) if res.results else None}
    key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=t.name),
                                     run_id=run_id, batch_identifier=res.batch_id)
    sr = SuiteResult(t.name, t.kind, t.subject, t.rows, bool(res.success), dict(res.statistics),
                     time.perf_counter() - t0, failures)
    return sr, key, res


def _error_result(t: Target | None, name: str, kind: str, subject: str, e: BaseException, t0: float) -> SuiteResult:
    msg = scrub(f"{type(e).__name__}: {e}")[:500]
    return SuiteResult(name, kind, subject, t.rows if t else 0, False, {}, time.perf_counter() - t0,
                       [Failure(name, subject, None, "suite", "gx_error", True, None, None, [], f"GX error: {msg}")])


def _suite_sha(c: Contract) -> str:
    """A fingerprint of the feed's suite (its expectations and their settings): a changed suite runs again."""
    return hashlib.sha256(json.dumps(suite_for(c).to_json_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _recorded_feed_suite(store: ObjectStore, c: Contract, clean_sha256: str | None,
                         suite_sha256: str | None = None) -> SuiteResult | None:
    """The recorded result of the feed's suite on this very clean file and suite (`suite_sha256`,
    default `_suite_sha(c)`), or None."""
    if clean_sha256 is None:
        return None
    try:
        rec = json.loads(store.read_bytes(paths.quality_feed_record(c.prefix)))
    except FileNotFoundError:
        return None
    if (rec.get("clean_sha256") != clean_sha256 or rec.get("suite_sha256") != (suite_sha256 or _suite_sha(c))
            or len(rec["suites"]) != 1):
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


def _cross_columns(c: Contract) -> list[str]:
    """The columns of a feed the cross-feed suites read: IDs, members, money, case numbers, its key."""
    return [f.name for f in c.fields
            if f.name in c.key or f.name == "case_no" or f.kind in ("id_no", "members", "money")]


#: contract kinds of few distinct values: read dictionary-encoded (`_clean_table`)
_DICT_KINDS = frozenset({"enum", "urban_rural", "month", "region_code", "credit_code", "text_list"})


def _dictionary_columns(c: Contract, file_schema: pa.Schema, names: Iterable[str]) -> list[str]:
    """The Parquet columns of `names` to read dictionary-encoded: string (or list of string) fields of
    few distinct values (code kinds; free text without PII that is no key, e.g. an employer's name).
    Decoding those strings is most of reading a feed; a dictionary array is read several times
    faster, scanned by DuckDB as its values, and decoded only for the rows GX validates."""
    out = []
    kinds = {f.name: f for f in c.fields}
    for n in names:
        f = kinds.get(n)
        if f is None or n not in file_schema.names:
            continue
        if not (f.kind in _DICT_KINDS or (f.kind == "string" and f.pii == "none" and n not in c.key)):
            continue
        typ = file_schema.field(n).type
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            out.append(n)
        elif pa.types.is_list(typ) and (pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type)):
            out.append(f"{n}.list.{typ.value_field.name}")
    return out


def _decoded(typ: pa.DataType) -> pa.DataType:
    """`typ` with dictionaries (top-level or a list's values) replaced by their value type."""
    if pa.types.is_dictionary(typ):
        return typ.value_type
    if pa.types.is_list(typ) and pa.types.is_dictionary(typ.value_type):
        return pa.list_(typ.value_field.with_type(typ.value_type.value_type))
    return typ


def _clean_table(c: Contract, data: bytes, columns: list[str] | None = None) -> pa.Table:
    """A feed's clean Parquet as its contract types: every contract column (no lineage columns), or
    `columns`. Low-cardinality strings stay dictionary-encoded (`_dictionary_columns`) when their
    values have the contract's type; every other column is cast to it."""
    names = list(c.names) if columns is None else columns
    pf = pq.ParquetFile(pa.BufferReader(data))
    t = pq.read_table(pa.BufferReader(data), columns=names,
                      read_dictionary=_dictionary_columns(c, pf.schema_arrow, names) or None).select(names)
    cols, fields = [], []
    for n in names:
        want, col = c.arrow_schema().field(n), t[n]
        if col.type != want.type and not (col.type != _decoded(col.type) and _decoded(col.type).equals(want.type)):
            col = col.cast(want.type)
        cols.append(col)
        fields.append(want.with_type(col.type))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


#: how many of a store's feeds are read ahead of the one validated (`validate`; each one more in memory)
_READ_AHEAD = 1

#: a suite made later (`validate`: on the thread that runs GX)
_LATER = object()


def _feed_targets(c: Contract, tables: Mapping[str, pa.Table]) -> list[Target]:
    return [feed_target(c, tables[c.feed_id])]


def validate(store_or_tables: ObjectStore | Mapping[str, pa.Table], snapshot_date: dt.date | str, *,
             outputs: Mapping[str, pa.Table] | None = None, policy: Policy | None = None,
             county: str | None = None, feeds: Iterable[str] | None = None,
             health: Mapping[str, dict] | None = None, reuse: bool = False,
             con: duckdb.DuckDBPyConnection | None = None, sample_rows: int = exact.SAMPLE_ROWS) -> QualityReport:
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

    `con`: the DuckDB connection the exact metrics run on (a cursor of it: its memory limit and
    threads, none of its views; default a new one). `sample_rows`: how many rows of a larger
    target GX validates itself (`quality.exact`); every count and example is exact either way.
    """
    t_start = time.perf_counter()
    snap = dt.date.fromisoformat(snapshot_date) if isinstance(snapshot_date, str) else snapshot_date
    county = county or (policy.policy.region_code if policy is not None else None)
    wanted = list(feeds) if feeds is not None else list(contracts())
    tables: dict[str, pa.Table] = {}
    missing: list[str] = []
    clean_sha: dict[str, str] = {}
    store = store_or_tables if isinstance(store_or_tables, ObjectStore) else None
    if store is None:
        tables = {fid: t for fid, t in store_or_tables.items() if fid in wanted}  # type: ignore[union-attr]

    from great_expectations.core.run_identifier import RunIdentifier

    ctx = gx_context()
    ds = ctx.data_sources.add_pandas("safetynet")
    run_id = RunIdentifier(run_name=f"snapshot-{snap.isoformat()}",
                           run_time=dt.datetime(snap.year, snap.month, snap.day, tzinfo=dt.UTC))
    suites: list[SuiteResult] = []
    results: dict[str, tuple] = {}

    db = normalise.connect() if con is None else con.cursor()

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
                sr, key, res = _run_target(ctx, ds, t, run_id, db, sample_rows)
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

    def load(fid: str) -> tuple[str | None, SuiteResult | None, pa.Table, list[Target] | Exception | None]:
        """A feed from the store: (sha256 of its clean file or None if there is none, the recorded result
        to carry over, its table, its targets — or why they could not be made — when it is to run)."""
        assert store is not None
        c = contracts()[fid]
        if not store.exists(clean_path(c)):
            return None, None, pa.schema([c.arrow_schema().field(n) for n in c.names]).empty_table(), None
        data = store.read_bytes(clean_path(c))
        sha = hashlib.sha256(data).hexdigest()
        prior = _recorded_feed_suite(store, c, sha, suite_shas[fid]) if reuse else None
        table = _clean_table(c, data, _cross_columns(c) if prior is not None else None)
        del data
        if prior is not None:
            return sha, prior, table, None
        try:  # the suite (GX objects) is made on the calling thread, by `made`
            targets: list[Target] | Exception = [feed_target(c, table, suite=_LATER)]
        except Exception as e:  # reported by `run`, as when made there
            targets = e
        return sha, prior, table, targets

    def made(targets: list[Target] | Exception | None, c: Contract) -> list[Target]:
        if isinstance(targets, Exception):
            raise targets
        if targets is None:
            return _feed_targets(c, tables)
        for t in targets:
            t.suite = suite_for(c)
        return targets

    suite_shas = {fid: _suite_sha(contracts()[fid]) for fid in wanted} if reuse and store is not None else {}
    ahead: dict[int, Any] = {}

    # a store's feeds are read (and their targets made: the ID checks) one ahead, in a thread, while
    # the current feed is validated (GX is Python, on one core): at most two feeds in memory
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quality-read") as pool:
        try:
            if store is not None and wanted:
                ahead[0] = pool.submit(load, wanted[0])
            for i, fid in enumerate(wanted):
                c = contracts()[fid]
                prior, targets = None, None
                if store is not None:  # keep only what the cross-feed suites read
                    sha, prior, tables[fid], targets = ahead.pop(i).result()
                    for j in range(i + 1, min(i + 1 + _READ_AHEAD, len(wanted))):
                        if j not in ahead:
                            ahead[j] = pool.submit(load, wanted[j])
                    if sha is None:
                        missing.append(fid)
                    else:
                        clean_sha[fid] = sha
                if fid not in tables:
                    continue
                if prior is not None:
                    suites.append(prior)
                    continue
                before = len(suites)
                run(partial(made, targets, c), f"feed.{fid}", "feed", fid)
                targets = None
                if store is not None:
                    if fid in clean_sha:
                        _record_feed_suites(store, c, clean_sha[fid], snap, suites[before:])
                    tables[fid] = tables[fid].select([n for n in _cross_columns(c) if n in tables[fid].column_names])
            if health:
                run(lambda: [health_target(health)], "health", "health", "feeds")
            run(lambda: cross_targets(tables), "cross", "cross", "cross")
            if outputs:
                run(lambda: output_targets(outputs, snap, county), "output", "output", "outputs")
        finally:
            for f in ahead.values():
                f.cancel()
            db.close()
    report = QualityReport(snap, suites, time.perf_counter() - t_start,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), county, missing, ctx, results)
    log.info("quality gate %s: %s (%d critical, %d warnings) in %.1fs", snap, "ok" if report.ok else "BLOCKED",
             len(report.critical_failures), len(report.warnings), report.seconds,
             extra={"event": "quality_gate", "ok": report.ok})
    return report
