"""The Great Expectations quality gate between `clean/` and publish: running it, and its exception.

`validate(...)` runs every suite of a snapshot (`quality.suites`: the feeds' health, each feed,
the cross-feed links, the outputs) on an ephemeral GX context and returns a
`quality.report.QualityReport`. A failed *critical* expectation (or any GX internal error, which
GX reports as an ordinary failure with `exception_info`) blocks publishing the snapshot:
`report.ok` is False and `report.raise_for_critical()` raises `QualityGateFailed`, the gate's one
exception, which the pipeline raises too (the CLI exits 3 on it).

Every count is exact, whatever the size: `quality.exact` computes each expectation in DuckDB over
every row of a target (`Target.sql` over its `quality.sources`: a store's clean Parquet files and
written outputs scanned where they lie, never loaded whole; tables given in memory), and GX
validates the suite on a pandas frame of at most `exact.SAMPLE_ROWS` rows (a fixed-seed sample)
plus the first failing rows, read by position; the exact counts go into GX's results (what the
report and Data Docs show) and GX's verdict on its frame must agree with the exact one, else the
expectation fails as a GX error (`_reconcile`). GX runs on pandas (pyarrow-backed `ArrowDtype`
columns): its SQL data source cannot validate DuckDB. Three stages share the work, each taking the
suites in one order (the cross-feed links and the outputs first: the longest to prepare): making the
targets (helper columns in Arrow), preparing them (the exact SQL, the frames; two threads), GX (as
each is prepared); the report lists them in its own order (feeds, health, cross-feed, outputs).

PII: validation runs with `exclude_unexpected_values` and `partial_unexpected_count = 0`, so GX
itself never copies a data value into a result. The gate computes up to `MAX_EXAMPLES` example
keys per failed expectation itself, masking ID numbers 前6后4 (`schemas.idno.mask_value`) and
never showing a name; those masked examples are what the report and the Data Docs
(`quality.datadocs`) show.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from quality import exact
from quality.exact import Metric
from quality.report import MAX_EXAMPLES, Failure, QualityReport, SuiteResult, scrub
from quality.sources import ParquetSource, Reader, Source, registered, snapshot_file, sweep
from quality.suites import (
    Shared,
    Target,
    cross_targets,
    feed_target,
    health_target,
    output_targets,
    source_of,
    suite_for,
)
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

#: GX never returns data values: counts only (examples are computed here, masked). BASIC: with no
#: partial list its result holds the same fields as SUMMARY's, and GX does not compute the failing
#: rows' index list, which filters the whole validated frame once per row-level expectation (every
#: column: half of GX's time on a 1 M-person district)
RESULT_FORMAT = {"result_format": "BASIC", "partial_unexpected_count": 0, "exclude_unexpected_values": True,
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


def _examples(t: Target, kw: dict, positions: list[int], frame: pd.DataFrame, at: np.ndarray) -> list[str]:
    """The failing rows at `positions` (the first ones, from `quality.exact`) as masked keys, from
    the validated `frame` (the rows at the sorted positions `at`, the failing ones among them)."""
    if not positions:
        return []
    frame = frame.iloc[np.searchsorted(at, np.asarray(positions[:MAX_EXAMPLES], dtype=np.int64))]
    out = []
    col = kw.get("column")
    shown = t.shows.get(col, col) if col else None
    records: dict[tuple[str, int], str] = {}
    if t.record is not None and "__feed" in frame.columns:  # each feed's records read at once
        rows = pd.DataFrame({"feed": frame["__feed"].astype(str).to_numpy(), "row": frame["__row"].astype("int64").to_numpy()})
        for feed, g in rows.groupby("feed", sort=True):
            records.update(zip(((feed, r) for r in g["row"].tolist()), t.record(feed, g["row"].tolist()), strict=True))
    for pos in range(len(frame)):
        row = frame.iloc[pos]
        if records:
            feed = str(row["__feed"])
            text = records[(feed, int(row["__row"]))]
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


#: aggregate checks whose result is the exact count over every row itself (`quality.exact`): row
#: counts, null and range rates, key uniqueness. They are reported through GX — its own result type,
#: in its suite result, rendered by its Data Docs — without GX computing them again on the frame;
#: GX validates the row-level expectations (value sets, formats, ID validity, existence flags) and
#: the schema checks on the frame.
EXACT_ONLY = frozenset({"expect_table_row_count_to_be_between", "expect_column_values_to_not_be_null",
                        "expect_column_values_to_be_between", "expect_column_values_to_be_unique",
                        "expect_compound_columns_to_be_unique"})


#: expectations on the frame's schema, not its rows: its columns, their order and their dtypes. The
#: validated frame has the very schema of the whole target (`Target.frame_of` takes rows of the same
#: Arrow table), so GX's verdict on it is exact; `_schema_results` asks the expectation itself for
#: it (its `_validate` on the two table metrics a pandas batch would give it) without GX's
#: per-expectation validation graph — more than half of the feeds' expectations are type checks.
SCHEMA_ONLY = frozenset({"expect_column_values_to_be_of_type", "expect_column_type_to_be",
                         "expect_table_columns_to_match_ordered_list", "expect_table_columns_to_match_set"})


def _schema_results(exps: Iterable[tuple[int, Any]], frame: pd.DataFrame) -> dict[int, Any]:
    """GX's results (index → result) of the schema expectations among `exps` (index, expectation)
    on `frame`. Left to GX on the frame: one on a column the frame lacks (GX reports the error), on a
    numpy `object` column (where `expect_column_values_to_be_of_type` looks at every value), with a
    row condition, or one whose `_validate` raises; every one on a frame with two columns of one name.
    (The generated suites use no suite parameters, which `_validate` would not substitute.)"""
    if not frame.columns.is_unique:
        return {}
    metrics = {"table.columns": list(frame.columns),
               "table.column_types": [{"name": n, "type": d} for n, d in frame.dtypes.items()]}
    out = {}
    for i, e in exps:
        if e.expectation_type not in SCHEMA_ONLY or getattr(e, "row_condition", None):
            continue
        col = getattr(e, "column", None)
        if col is not None and (col not in frame.columns or frame.dtypes[col].type is np.object_):
            continue
        try:
            out[i] = e._build_evr(e._validate(metrics=metrics, runtime_configuration={"result_format": RESULT_FORMAT},
                                              execution_engine=_pandas_engine()))
        except Exception:  # GX validates it on the frame and reports what it raises
            continue
    return out


@cache
def _pandas_engine():
    from great_expectations.execution_engine import PandasExecutionEngine

    return PandasExecutionEngine()


def _exact_result(cfg, m: Metric):
    """GX's result of the expectation `cfg` with the exact metric `m` as its outcome."""
    from great_expectations.core.expectation_validation_result import ExpectationValidationResult

    return ExpectationValidationResult(success=m.success, expectation_config=cfg, result=m.result(),
                                       exception_info={"raised_exception": False, "exception_traceback": None,
                                                       "exception_message": None})


@dataclass
class _Prepared:
    """A target's exact metrics and the frame GX is to validate (`_prepare`)."""

    exps: list[tuple[str, dict]]
    metrics: dict[int, Metric | Exception]
    positions: np.ndarray  # of the frame's rows
    frame: pd.DataFrame
    seconds: float


def _prepare(t: Target, con: duckdb.DuckDBPyConnection, sample_rows: int) -> _Prepared:
    """Every row, exactly, in DuckDB; then the frame of the sample and the rows that fail. No GX:
    this runs on the gate's second thread while GX validates the target before."""
    t0 = time.perf_counter()
    # a shared relation first: computing it registers (and then unregisters) its own relations
    refs = {name: table.table(con) if isinstance(table, Shared) else table for name, table in t.refs.items()}
    with registered(con, refs, t.sources):
        exps = [(e.expectation_type, dict(e.configuration.kwargs)) for e in t.suite.expectations]
        metrics = exact.measure(con, t.sql, t.rows, exps, MAX_EXAMPLES, t.matches, t.nulls, t.unique, t.plain)
    pos = exact.sample_positions(t.name, t.rows, sample_rows, t.blocks)
    evidence = [p for m in metrics.values() if isinstance(m, Metric) for p in m.examples + m.companions]
    if evidence:
        pos = np.union1d(pos, np.asarray(evidence, dtype=np.int64))
    return _Prepared(exps, metrics, pos, t.frame_of(pos), time.perf_counter() - t0)


def _run_target(ctx, ds, t: Target, run_id, prep: _Prepared) -> tuple[SuiteResult, Any, Any]:
    """GX validates the prepared frame; the exact metrics go into its results."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    t0 = time.perf_counter()
    suite, exps, metrics, frame = t.suite, prep.exps, prep.metrics, prep.frame
    index = {_expectation_key(*e): i for i, e in enumerate(exps)}
    asset = ds.add_dataframe_asset(t.name)
    bd = asset.add_batch_definition_whole_dataframe("whole")
    # Batch.validate rather than a ValidationDefinition: the latter serialises every result into
    # the results store on each run (a third of the time); results are stored for Data Docs only
    exact_only = {i: m for i, (etype, _) in enumerate(exps)
                  if etype in EXACT_ONLY and isinstance(m := metrics.get(i), Metric)}
    schema = _schema_results(((i, e) for i, e in enumerate(suite.expectations) if i not in exact_only), frame)
    on_frame = suite if not exact_only and not schema else type(suite)(
        name=suite.name, meta=suite.meta,
        expectations=[e for i, e in enumerate(suite.expectations) if i not in exact_only and i not in schema])
    res = bd.get_batch(batch_parameters={"dataframe": frame}).validate(on_frame, result_format=RESULT_FORMAT)
    res.results.extend(_exact_result(suite.expectations[i].configuration, m) for i, m in sorted(exact_only.items()))
    res.results.extend(r for _, r in sorted(schema.items()))
    res.meta["run_id"] = run_id
    res.meta["validation_time"] = run_id.run_time
    res.meta["rows"] = {"table": t.rows, "validated_by_gx": len(frame), "sample_seed": exact.SAMPLE_SEED,
                        "exact_only_expectations": len(exact_only),
                        "schema_only_expectations": len(schema)}
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
        examples = _examples(t, kw, m.examples, frame, prep.positions) if isinstance(m, Metric) and not err else []
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
                     prep.seconds + time.perf_counter() - t0, failures)
    return sr, key, res


def _error_result(t: Target | None, name: str, kind: str, subject: str, e: BaseException, t0: float) -> SuiteResult:
    msg = scrub(f"{type(e).__name__}: {e}")[:500]
    return SuiteResult(name, kind, subject, t.rows if t else 0, False, {}, time.perf_counter() - t0,
                       [Failure(name, subject, None, "suite", "gx_error", True, None, None, [], f"GX error: {msg}")])


def _suite_sha(c: Contract) -> str:
    """A fingerprint of the feed's suite (its expectations and their settings): a changed suite runs again."""
    return hashlib.sha256(json.dumps(suite_for(c).to_json_dict(), sort_keys=True, default=str).encode()).hexdigest()


def _recorded_feed_suite(store: ObjectStore, c: Contract, clean_sha256: str | None,
                         suite_sha256: str) -> SuiteResult | None:
    """The recorded result of the feed's suite on this very clean file (`clean_sha256`) and suite
    (`suite_sha256`, `_suite_sha(c)`), or None."""
    if clean_sha256 is None:
        return None
    try:
        rec = json.loads(store.read_bytes(paths.quality_feed_record(c.prefix)))
    except FileNotFoundError:
        return None
    if (rec.get("clean_sha256") != clean_sha256 or rec.get("suite_sha256") != suite_sha256
            or len(rec["suites"]) != 1):
        return None
    sr = SuiteResult.from_dict(rec["suites"][0])
    if sr.failures and any(f.message.startswith("GX error") for f in sr.failures):
        return None  # an internal error is not a result: run again
    sr.carried_from = {k: rec[k] for k in ("snapshot_date", "validated_at", "clean_sha256")}
    sr.seconds = 0.0
    return sr


def _record_feed_suites(store: ObjectStore, c: Contract, clean_sha256: str, suite_sha256: str, snap: dt.date,
                        ran: list[SuiteResult]) -> None:
    if len(ran) != 1 or ran[0].carried_from is not None:
        return
    rec = {"feed_id": c.feed_id, "clean_sha256": clean_sha256, "suite_sha256": suite_sha256,
           "snapshot_date": snap.isoformat(), "validated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
           "suites": [ran[0].as_dict()]}
    store.write_bytes(paths.quality_feed_record(c.prefix), json.dumps(rec, ensure_ascii=False, indent=1).encode())


def _feed_targets(c: Contract, source: Source, clean: bool) -> list[Target]:
    return [feed_target(c, source, cast=clean)]


def _output_sources(outputs: Mapping[str, pa.Table | str | Path], reader: Reader) -> dict[str, Source]:
    return {name: source_of(f"output.{name}", t) if isinstance(t, pa.Table) else ParquetSource(t, reader)
            for name, t in outputs.items()}


#: targets prepared at once (each on its own cursor): the exact SQL uses every core only in part
#: of a target's work (its frame, its examples, the small feeds' queries)
PREPARERS = 2

#: targets made at once: the feeds' helper columns (Arrow, mostly one core each) were the 10 M gate's
#: last second-core-idle stretch with one maker (4-5 s after the preparers were done)
MAKERS = 2

#: the gate's scratch folders (`_scratch`), and how long one is kept when its gate did not remove it
_SCRATCH = ".tmp-quality-"
_SCRATCH_KEPT_S = 6 * 3600


def _scratch(store: ObjectStore | None) -> tempfile.TemporaryDirectory:
    """Where the clean files validated are linked (a local store: inside it, so a hard link can be made;
    a `.tmp-` name, which no listing shows) or downloaded to (S3)."""
    local = store.root if store is not None and isinstance(store.fs, pafs.LocalFileSystem) else None
    if local is not None:
        sweep(local, _SCRATCH, _SCRATCH_KEPT_S)  # what a killed gate left
    return tempfile.TemporaryDirectory(prefix=_SCRATCH, dir=local)



def validate(store_or_tables: ObjectStore | Mapping[str, pa.Table], snapshot_date: dt.date | str, *,
             outputs: Mapping[str, pa.Table | str | Path] | None = None, policy: Policy | None = None,
             county: str | None = None, feeds: Iterable[str] | None = None,
             health: Mapping[str, dict] | None = None, reuse: bool = False,
             con: duckdb.DuckDBPyConnection | None = None, sample_rows: int = exact.SAMPLE_ROWS) -> QualityReport:
    """Run every suite for a snapshot: feeds, cross-feed checks and (if given) the outputs.

    `store_or_tables`: an `ObjectStore` (each feed's `clean/` file is validated where it lies — a
    local store's through a hard link that no rewrite changes, an S3 store's downloaded first —
    scanned by DuckDB and never loaded whole; a missing one is validated as empty and listed in
    `report.missing`) or a dict feed id → pyarrow Table (what the pipeline already loaded; absent
    feeds are skipped). `outputs`: name → Table, or the path of a local Parquet file (scanned where
    it lies: the caller keeps it unchanged for the gate's run), for `monitoring.person`, `monitoring.household`, `warnings` (aliases `person`,
    `household`). `policy` (or `county`, 6 digits) fixes the county the output region codes must
    belong to. `health`: feed id → {"ok", "accepted", "problems"} (the feeds' recorded health, see
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
    sources: dict[str, Source] = {}
    missing: list[str] = []
    clean_sha: dict[str, str] = {}
    store = store_or_tables if isinstance(store_or_tables, ObjectStore) else None
    if store is None:
        sources = {fid: source_of(f"feed.{fid}", t) for fid, t in store_or_tables.items()  # type: ignore[union-attr]
                   if fid in wanted}

    from great_expectations.core.run_identifier import RunIdentifier

    ctx = gx_context()
    ds = ctx.data_sources.add_pandas("safetynet")
    run_id = RunIdentifier(run_name=f"snapshot-{snap.isoformat()}",
                           run_time=dt.datetime(snap.year, snap.month, snap.day, tzinfo=dt.UTC))
    suites: list[SuiteResult] = []
    # opened below, where they are closed whatever happens; the steps use them
    db: duckdb.DuckDBPyConnection
    reader: Reader
    scratch: str
    results: dict[str, tuple] = {}


    #: a step's targets (made, with their helper columns), or a result without GX: carried over,
    #: or the targets could not be made
    Made = SuiteResult | list[Target] | None
    #: a step's outcome: its targets, each prepared (`_prepare`) or why it could not be
    Prepared = SuiteResult | list[tuple[Target, _Prepared | Exception]] | None

    def make(targets: Callable[[], list[Target]], name: str, kind: str, subject: str) -> Made:
        t0 = time.perf_counter()
        try:
            return targets()
        except Exception as e:  # making the targets failed: a critical, reported failure
            log.error("quality: preparing %s failed: %s", name, scrub(f"{type(e).__name__}: {e}"))
            return _error_result(None, name, kind, subject, e, t0)

    local, cursors = threading.local(), []

    def cursor() -> duckdb.DuckDBPyConnection:
        """The preparing thread's own cursor of `db` (a target's relations are registered on it)."""
        if getattr(local, "cursor", None) is None:
            local.cursor = db.cursor()
            cursors.append(local.cursor)
        return local.cursor

    def prepare(made: Future) -> Prepared:
        got = made.result()
        if got is None or isinstance(got, SuiteResult):
            return got
        out: list[tuple[Target, _Prepared | Exception]] = []
        for t in got:
            try:
                out.append((t, _prepare(t, cursor(), sample_rows)))
            except Exception as e:  # reported as a critical failure of the suite
                out.append((t, e))
        return out

    def finish(got: Prepared) -> None:
        if got is None:
            return
        if isinstance(got, SuiteResult):
            suites.append(got)
            return
        for t, prep in got:
            t1 = time.perf_counter()
            try:
                if isinstance(prep, Exception):
                    raise prep
                sr, key, res = _run_target(ctx, ds, t, run_id, prep)
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

    carried: dict[str, SuiteResult] = {}

    def locate(fid: str) -> None:
        """A feed's source: from a store, its clean file linked (or downloaded) and hashed, and its
        recorded result carried over when the file and the suite are unchanged (`reuse`)."""
        c = contracts()[fid]
        if store is None:
            return
        if not store.exists(clean_path(c)):
            missing.append(fid)
            sources[fid] = source_of(f"feed.{fid}", c.arrow_schema().empty_table())
            return
        path, clean_sha[fid] = snapshot_file(store, clean_path(c), scratch)
        # here, not when the result is recorded: the GX thread is the busiest on a small district
        suite_shas[fid] = _suite_sha(c)
        sources[fid] = ParquetSource(path, reader)
        if reuse and (prior := _recorded_feed_suite(store, c, clean_sha[fid], suite_shas[fid])) is not None:
            carried[fid] = prior

    def locate_all() -> None:
        for fid in wanted:
            locate(fid)

    located: list[Future] = []  # `locate_all`: the first task of the makers

    def feed(fid: str) -> Made:
        """A feed's step, once every feed is located."""
        located[0].result()
        if fid in carried:
            return carried[fid]
        if fid not in sources:
            return None
        return make(partial(_feed_targets, contracts()[fid], sources[fid], store is not None), f"feed.{fid}",
                    "feed", fid)

    def cross() -> Made:
        """The cross-feed step, once every feed is located (it reads every feed's source)."""
        located[0].result()
        return make(lambda: cross_targets(sources), "cross", "cross", "cross")

    suite_shas: dict[str, str] = {}
    # the steps in the report's order: each feed, the health, the cross-feed links, the outputs...
    steps: list[tuple[str | None, Callable[[], Made]]] = [(fid, partial(feed, fid)) for fid in wanted]
    if health:
        steps.append((None, partial(make, lambda: [health_target(health)], "health", "health", "feeds")))
    steps.append((None, cross))
    if outputs:
        steps.append((None, partial(make, lambda: output_targets(_output_sources(outputs, reader), snap, county),
                                    "output", "output", "outputs")))
    # ... run in another: the outputs and the cross-feed links first, the two longest to prepare
    # (at 10 M persons about 6 s each alone), so the preparers start on them while the makers compute
    # the feeds' helper columns (10 s at 10 M) instead of waiting for them. (Every feed is located
    # before: linking and hashing, under a second at 10 M.)
    first = [*([len(steps) - 1] if outputs else []), len(wanted) + bool(health)]
    run = [*first, *(i for i in range(len(steps)) if i not in first)]

    # three stages on their own threads, the first two taking the steps in `run` order: making the
    # targets (files linked, helper columns: Arrow, `MAKERS` threads), preparing them (every exact
    # count in DuckDB, the frames; `PREPARERS` threads), GX validating the frames (Python, one core)
    # as each step is prepared, so that each stage works while the others do. What runs ahead is small, and kept to the end: helper
    # columns of booleans, frames of at most 5,000 rows and the failing ones.
    ran: dict[int, list[SuiteResult]] = {}
    futures: list[Future] = []
    with contextlib.ExitStack() as held:  # closed in reverse: threads, the scratch folder, cursors
        db = normalise.connect() if con is None else con.cursor()
        held.callback(db.close)
        held.callback(lambda: [c.close() for c in cursors])
        reader = Reader(db)
        held.callback(reader.close)
        scratch = held.enter_context(_scratch(store))
        makers = held.enter_context(ThreadPoolExecutor(max_workers=MAKERS, thread_name_prefix="quality-make"))
        preparers = held.enter_context(ThreadPoolExecutor(max_workers=PREPARERS, thread_name_prefix="quality-prepare"))
        try:
            located.append(makers.submit(locate_all))
            futures.append(located[0])
            prepared: dict[int, Future] = {}
            for i in run:
                futures.append(made := makers.submit(steps[i][1]))
                futures.append(preparers.submit(prepare, made))
                prepared[i] = futures[-1]
            step_of = {f: i for i, f in prepared.items()}
            for done in as_completed(step_of):  # GX takes each step as soon as it is prepared
                i = step_of[done]
                got = done.result()
                before = len(suites)
                finish(got)
                ran[i] = suites[before:]
                fid = steps[i][0]
                if store is not None and fid in clean_sha:
                    _record_feed_suites(store, contracts()[fid], clean_sha[fid], suite_shas[fid], snap, ran[i])
        finally:
            for f in futures:  # on an error: what has not started never will; what runs ends first
                f.cancel()
            for f in futures:
                if not f.cancelled():
                    with contextlib.suppress(Exception):
                        f.result()
    suites = [sr for i in range(len(steps)) for sr in ran.get(i, [])]  # the report's order
    results = {sr.name: results[sr.name] for sr in suites if sr.name in results}
    report = QualityReport(snap, suites, time.perf_counter() - t_start,
                           dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), county, missing, ctx, results)
    log.info("quality gate %s: %s (%d critical, %d warnings) in %.1fs", snap, "ok" if report.ok else "BLOCKED",
             len(report.critical_failures), len(report.warnings), report.seconds,
             extra={"event": "quality_gate", "ok": report.ok})
    return report
