"""Clean: `raw/` → `clean/<department>/<feed>/`, the typed, normalised current state per key.

Named SQL steps over every raw file of a feed (DuckDB reading the store through pyarrow):
`typed` types and normalises each record with the contract's SQL (the same SQL that admitted it
into `raw/`); `fresh` drops redelivered events (same `event_id` and content), superseded versions of
a changed drop file, and — for snapshot feeds — rows of older snapshots (a snapshot: every drop file
of its data date); `current` keeps the latest version per key (event time, then offset/row) and
applies deletes. Every row dropped is counted
by reason in the clean manifest (`_catalog/clean/<department>/<feed>.json`), written after the
data, so a reader can reconcile raw → clean.

When the only change since the last clean is new raw files, `clean_feed` adds just their rows to the
clean state (`safetynet.intake.clean_incremental`: same bytes, counts and watermarks as the full
rebuild, which it falls back to whenever that is not shown).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from connectors.drop_folder import stamp_free
from safetynet.core import paths
from safetynet.core.store import Entry, ObjectStore, parquet_bytes
from safetynet.intake import clean_incremental, health
from schemas import normalise
from schemas.contract import LOCAL_TZ, Contract
from schemas.normalise import _lit, _q

log = logging.getLogger(__name__)


@dataclass
class CleanCounts:
    feed_id: str
    raw_rows: int = 0
    invalid: int = 0  # raw rows that fail the contract (never expected: raw is validated on entry)
    redelivered: int = 0  # the same event again (same event id, same fields and op): the first delivery kept
    superseded_file_versions: int = 0
    older_snapshots: int = 0
    superseded: int = 0
    deleted: int = 0
    rows: int = 0
    # rows whose event id an earlier row of other content holds (a producer reusing ids): kept as events
    # of their own — not redeliveries — so they are in the counts above; a note, not part of the sum
    reused_event_ids: int = 0
    # how `clean_feed` got there — plain attributes, not fields: `asdict` (the manifest) leaves them out
    incremental = False  # True: new raw files added to the clean state; False: rebuilt from all raw files
    fallback = ""  # why not incremental (empty when it was)
    reused_examples = tuple[str, ...]()  # a few of the reused event ids this clean found (not personal)

    def reused_note(self, rows: int | None = None) -> str:
        """What the log and the ingest summary say of `rows` (default all) reused event ids."""
        return (f"{self.reused_event_ids if rows is None else rows:,} record(s) came under an event id an earlier "
                f"record of other content holds (e.g. {', '.join(self.reused_examples) or '-'}): kept as events of "
                "their own, not as redeliveries — the producer must give every event its own event_id (feeds.md)")

    @property
    def reconciles(self) -> bool:
        return self.raw_rows == (self.invalid + self.redelivered + self.superseded_file_versions
                                 + self.older_snapshots + self.superseded + self.deleted + self.rows)


def clean_path(c: Contract) -> str:
    return paths.clean_file(c.prefix)


def clean_feed(store: ObjectStore, c: Contract, con: duckdb.DuckDBPyConnection | None = None, *,
               incremental: bool = True) -> CleanCounts:
    """Write the feed's clean state from its raw files (idempotent: same raw → same bytes): the new
    raw files added to the current state when that is provably the full rebuild
    (`safetynet.intake.clean_incremental`), else (or with `incremental=False`) rebuilt from all."""
    own = con is None
    con = con or normalise.connect()
    try:
        held = health.held(store, c)  # unhealthy deliveries: the previous clean state stays in force
        included = [e for e in store.list(paths.raw(c.prefix), ".parquet") if e.path not in held]
        waiting = _waiting_parts(store, con, c, held, included)
        if waiting:  # left out as held files are (they are not in the state in force)
            held = {**held, **waiting}
            included = [e for e in included if e.path not in waiting]
        fp = clean_incremental.fingerprint(c, _flag_sql(c))
        att = (clean_incremental.attempt(store, con, c, fp, included, sorted(held), _kind_of,
                                         lambda src: clean_incremental.typed_ctes(c, src))
               if incremental else clean_incremental.Attempt("full rebuild asked for"))
        if att.reason:
            raw = (ds.dataset([store.full(e.path) for e in included], schema=c.raw_schema(), format="parquet",
                              filesystem=store.fs) if included else None)
            table, counts, side = _clean(con, c, raw, with_side=True)
            assert side is not None
            data = parquet_bytes(table.combine_chunks())
            counts.fallback = att.reason
        else:
            assert att.counts is not None and att.side is not None
            counts = CleanCounts(**att.counts)
            counts.incremental = True
            counts.reused_examples = att.reused_examples
            side = att.side
            if att.table is not None:
                data = parquet_bytes(att.table.cast(c.arrow_schema()).combine_chunks())
            else:  # nothing new: the clean file as it is
                assert att.data is not None
                data = att.data
        _warn_reused(store, c, counts)
        store.write_bytes(clean_path(c), data)
        watermarks = _watermarks(store, c, held, entries=included)
        sha = hashlib.sha256(data).hexdigest()
        manifest = {"feed_id": c.feed_id, "contract_version": c.version, "path": clean_path(c),
                    "written_at": dt.datetime.now(dt.UTC).isoformat(), "counts": asdict(counts),
                    "sha256": sha, "bytes": len(data),
                    "reconciles": counts.reconciles, "watermarks": watermarks,
                    "held_files": sorted(p for p in held if p not in waiting),
                    "waiting_files": {p: waiting[p]["why"] for p in sorted(waiting)}}
        store.write_bytes(paths.clean_manifest(c.prefix), json.dumps(manifest, ensure_ascii=False, indent=1).encode())
        try:
            clean_incremental.save_state(store, c, fp, side, sha, asdict(counts), included, sorted(held),
                                         watermarks["files"])
        except Exception as e:  # the clean state is written; only the next clean's shortcut is lost
            log.warning("clean %s: incremental state not saved (%s): the next clean rebuilds in full",
                        c.feed_id, type(e).__name__)
            clean_incremental.drop_state(store, c)
        if counts.incremental:
            log.info("clean %s: incremental, %d new raw file(s), %d new rows → rows=%d", c.feed_id, att.new_files,
                     att.new_rows, counts.rows, extra={"event": "clean_path", "path": "incremental",
                                                       "new_files": att.new_files, "new_rows": att.new_rows})
        else:
            log.info("clean %s: full rebuild from %d raw file(s): %s", c.feed_id, len(included), att.reason,
                     extra={"event": "clean_path", "path": "full", "reason": att.reason})
        log.info("clean %s: raw=%d → rows=%d (redelivered=%d superseded=%d deleted=%d)", c.feed_id, counts.raw_rows,
                 counts.rows, counts.redelivered, counts.superseded, counts.deleted,
                 extra={"event": "clean_feed", **asdict(counts)})
        return counts
    finally:
        if own:
            con.close()


def _waiting_parts(store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract, held: dict,
                   included: list[Entry]) -> dict[str, dict]:
    """A snapshot feed's drop files that wait for a held part of their snapshot: path → why.

    A county splits a snapshot into files of one data date (城镇 and 农村). With one of them held
    as unhealthy, the others alone were the newest snapshot, and every key of the held file's
    share — the previous snapshot's 农村 households — was dropped as `older_snapshots` until the
    held file was released. Now a data date with a held file (whose name has no version in the
    clean) is incomplete: while it is newer than every complete date, its other files wait, and
    the complete snapshot before it stays in force, as it does when a whole snapshot is held."""
    if c.mode != "snapshot" or not held:
        return {}
    drops = {e.path: f.name for e in included if (f := raw_file(e.path)) is not None and f.kind == "file"}
    missing = sorted(p for p in held if (f := raw_file(p)) is not None and f.kind == "file"
                     and f.name not in drops.values())
    if not missing:
        return {}
    held_dates = _file_dates(store, con, c, missing)
    dates = _file_dates(store, con, c, list(drops))
    complete = [d for d in dates.values() if d is not None and d not in held_dates.values()]
    newest = max(complete, default=None)
    waiting = sorted(p for p, d in dates.items() if d in held_dates.values() and (newest is None or d > newest))
    if not waiting:
        return {}
    day = max(dates[p] for p in waiting)
    held_names = [raw_file(p).name for p in missing if held_dates[p] == day]  # type: ignore[union-attr]
    names = sorted(drops[p] for p in waiting)
    before = f"the snapshot of {_day(newest)} stays in force" if newest else "no earlier snapshot is in force"
    log.warning("clean %s: the snapshot of %s is incomplete — %s held as unhealthy; its other file(s) (%s) wait and %s, "
                "until the held file is released (`feeds release %s`) or delivered again", c.feed_id,
                _day(day), ", ".join(held_names), ", ".join(names), before, c.feed_id,
                extra={"event": "snapshot_incomplete", "feed": c.feed_id, "held": held_names, "waiting": names})
    why = f"waits for the held part of its snapshot of {_day(day)}: {', '.join(held_names)}"
    return {p: {"why": why, "waiting": True} for p in waiting}


def _day(ts: dt.datetime) -> str:
    """A row time (`__ts`, UTC) as the data date a department wrote (Asia/Shanghai)."""
    return (ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)).astimezone(LOCAL_TZ).date().isoformat()


def _file_dates(store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract, files: list[str]) -> dict:
    """Each raw drop file's data date (its rows' `__ts`, `clean_incremental.TS`); None: no drop rows."""
    out = {}
    for p in files:
        con.register("__file_rows", ds.dataset([store.full(p)], schema=c.raw_schema(), format="parquet",
                                               filesystem=store.fs))
        try:
            out[p] = con.sql(f"SELECT max({clean_incremental.TS}) FROM __file_rows "
                             "WHERE starts_with(_event_id, 'file:')").fetchall()[0][0]
        finally:
            con.unregister("__file_rows")
    return out


def _warn_reused(store: ObjectStore, c: Contract, counts: CleanCounts) -> None:
    """A warning when this clean found rows reusing an event id with other content (more than the
    clean state in force counted): kept as events of their own, but the producer breaks the contract."""
    try:
        before = json.loads(store.read_bytes(paths.clean_manifest(c.prefix))).get("counts", {}).get("reused_event_ids", 0)
    except (FileNotFoundError, ValueError, AttributeError):
        before = 0
    new = counts.reused_event_ids - (before if isinstance(before, int) else 0)
    if new > 0:
        log.warning("clean %s: %s; counted as reused_event_ids in the clean manifest", c.feed_id,
                    counts.reused_note(new),
                    extra={"event": "reused_event_ids", "feed": c.feed_id, "rows": new,
                           "examples": list(counts.reused_examples)})


def _kind_of(path: str) -> tuple[str, str] | None:
    f = raw_file(path)
    return None if f is None else (f.kind, f.name)


def clean_table(con: duckdb.DuckDBPyConnection, c: Contract, raw: object | None
                ) -> tuple[pa.Table, CleanCounts]:
    """The feed's clean table from `raw` — any relation DuckDB scans with the feed's raw schema (a
    pyarrow dataset over `raw/` files, possibly filtered, or a table); None: no raw data. Writes
    nothing: `clean_feed` stores the result, `safetynet.publish.backtest` rebuilds a published snapshot's
    inputs with it."""
    table, counts, _ = _clean(con, c, raw, with_side=False)
    return table, counts


def _clean(con: duckdb.DuckDBPyConnection, c: Contract, raw: object | None, with_side: bool
           ) -> tuple[pa.Table, CleanCounts, clean_incremental.Side | None]:
    """`clean_table`, and (`with_side`) the incremental clean's side state of the result."""
    counts = CleanCounts(c.feed_id)
    if raw is None and not with_side:
        return c.arrow_schema().empty_table(), counts, None
    con.register("__raw", raw if raw is not None else c.raw_schema().empty_table())
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __flagged AS {_flag_sql(c)}")
    finally:
        con.unregister("__raw")
    try:
        agg = con.execute("SELECT count(*), count(*) FILTER (__why = 'invalid'), "
                          "count(*) FILTER (__why = 'redelivered'), count(*) FILTER (__why = 'file_version'), "
                          "count(*) FILTER (__why = 'older_snapshot'), count(*) FILTER (__why = 'superseded'), "
                          "count(*) FILTER (__why = 'deleted'), count(*) FILTER (__why IS NULL), "
                          "count(*) FILTER (__reused) FROM __flagged").fetchall()[0]
        (counts.raw_rows, counts.invalid, counts.redelivered, counts.superseded_file_versions,
         counts.older_snapshots, counts.superseded, counts.deleted, counts.rows, counts.reused_event_ids) = agg
        if counts.reused_event_ids:
            counts.reused_examples = clean_incremental.reused_examples(con, "__flagged")
        if c.mode == "snapshot":
            _snapshot_files(con, c)
            _snapshot_parts(con, c)
        cols = ", ".join(_q(n) for n in c.names)
        order = ", ".join(_q(k) for k in c.key)
        table = con.sql(f"SELECT {cols}, _event_id, __ts AS _occurred_at FROM __flagged WHERE __why IS NULL "
                        f"ORDER BY {order}").to_arrow_table()
        side = clean_incremental.full_side(con, c) if with_side else None
    finally:
        con.execute("DROP TABLE IF EXISTS __flagged")
    if counts.invalid:
        log.error("clean %s: %d raw rows fail the contract and were left out", c.feed_id, counts.invalid)
    if raw is None:
        return c.arrow_schema().empty_table(), counts, side
    return table.cast(c.arrow_schema()), counts, side


def _snapshot_files(con: duckdb.DuckDBPyConnection, c: Contract) -> None:
    """Say when the snapshot in force (`__flagged`) is several drop files of one data date, read
    together; a warning if a key is in more than one of them (one row kept: the later ingest, then
    the later row)."""
    key = ", ".join(_q(k) for k in c.key)
    files, shared = con.execute(f"""
        WITH s AS (SELECT {key}, _source_file FROM __flagged
                   WHERE __ver IS NOT NULL AND coalesce(__why, '') NOT IN ('older_snapshot', 'file_version', 'invalid'))
        SELECT (SELECT list(DISTINCT _source_file ORDER BY _source_file) FROM s),
               (SELECT count(*) FROM (SELECT {key} FROM s GROUP BY ALL HAVING count(DISTINCT _source_file) > 1))
        """).fetchall()[0]
    if not files or len(files) < 2:
        return
    names = [f.rsplit("/", 1)[-1] for f in files]
    log.info("clean %s: the snapshot in force is %d files of one data date, read together: %s", c.feed_id,
             len(names), ", ".join(names), extra={"event": "snapshot_files", "feed": c.feed_id, "files": names})
    if shared:
        log.warning("clean %s: %d key(s) are in more than one file of the snapshot (%s): one row kept for each "
                    "(the later ingest, then the later row), the others counted as superseded — if one file "
                    "corrects another, deliver it under the same name", c.feed_id, shared, ", ".join(names),
                    extra={"event": "snapshot_files_overlap", "feed": c.feed_id, "keys": shared, "files": names})


def _snapshot_parts(con: duckdb.DuckDBPyConnection, c: Contract) -> None:
    """Warn when the snapshot before the newest was split into files (城镇 and 农村) and the newest
    has no file of one of those parts: a county that exports its parts on different days
    (农村_20261102 after 城镇_20261101) makes the later date the snapshot alone, and every key of
    the missing part falls out of the state in force — counted as `older_snapshots`, said nowhere.
    A part is a file name without its date (`drop_folder.stamp_free`)."""
    key = ", ".join(_q(k) for k in c.key)
    live = "__ver IS NOT NULL AND coalesce(__why, '') NOT IN ('file_version', 'invalid')"
    by_date: dict[dt.datetime, list[str]] = {}
    for f, ts in con.execute(f"SELECT _source_file, max(__ts) FROM __flagged WHERE {live} GROUP BY 1 ORDER BY 1").fetchall():
        by_date.setdefault(ts, []).append(f)
    if len(by_date) < 2:
        return
    new, prev = sorted(by_date)[-1], sorted(by_date)[-2]
    parts = {stamp_free(f.rsplit("/", 1)[-1]) for f in by_date[new]}
    gone = [f for f in by_date[prev] if stamp_free(f.rsplit("/", 1)[-1]) not in parts]
    if len(by_date[prev]) < 2 or not gone:
        return
    listed = ", ".join(_lit(f) for f in gone)
    lost = con.execute(f"""SELECT count(*) FROM (
        SELECT {key} FROM __flagged WHERE {live} AND _source_file IN ({listed})
        EXCEPT SELECT {key} FROM __flagged WHERE {live} AND __ts = $new)""", {"new": new}).fetchall()[0][0]
    names = [f.rsplit("/", 1)[-1] for f in gone]
    log.warning("clean %s: the snapshot of %s (%s) has no part matching %s of the snapshot of %s, which was split into "
                "%d files: %d key(s) of it are not in the state in force — if that part is still to come, deliver it "
                "with the date %s (a file of another date is another snapshot)", c.feed_id, _day(new),
                ", ".join(f.rsplit("/", 1)[-1] for f in by_date[new]), ", ".join(names), _day(prev),
                len(by_date[prev]), lost, _day(new),
                extra={"event": "snapshot_part_missing", "feed": c.feed_id, "files": names, "keys": lost})


def _flag_sql(c: Contract) -> str:
    """Each raw row with `__why`: NULL if it is in the clean state, else why it is not."""
    key = ", ".join(_q(k) for k in c.key)
    tiebreak = "".join(f", {_q(f)} DESC NULLS LAST" for f in c.order_by)
    snapshot = c.mode == "snapshot"
    return f"""
    WITH {clean_incremental.typed_ctes(c, "__raw")},
    snap AS (  -- the newest snapshot: every drop file of the newest data date, read together (a county
               -- may split one snapshot into files: 城镇 and 农村, or one per street)
        SELECT max(__ts) AS __snap_ts FROM t WHERE __ver IS NOT NULL),
    f AS (
        SELECT t.*,
          -- the n-th delivery of this event id, and what its first delivery said (one window, one sort)
          row_number() OVER w AS __n_id, first_value(__h) OVER w AS __h1,
          CASE
            WHEN _rule IS NOT NULL THEN 'invalid'
            WHEN __ver IS NOT NULL AND __ver <> v.__latest_ver THEN 'file_version'
            WHEN {str(snapshot).lower()} AND s.__snap_ts IS NOT NULL AND (
                 (__ver IS NOT NULL AND __ts < s.__snap_ts)
                 OR (__ver IS NULL AND __ts <= s.__snap_ts)) THEN 'older_snapshot'
          END AS __pre_why
        FROM t LEFT JOIN versions v USING (_source_file) CROSS JOIN snap s
        WINDOW w AS (PARTITION BY _event_id ORDER BY _ingested_at, _kafka_offset, _row_number)),
    g AS (
        SELECT *, CASE WHEN __pre_why IS NOT NULL THEN __pre_why WHEN {clean_incremental.REDELIVERED} THEN 'redelivered'
                  END AS __why0,
               {clean_incremental.REUSED} AS __reused
        FROM f),
    r AS (
        SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY (__why0 IS NULL) DESC, __ts DESC{tiebreak},
                                     _ingested_at DESC, _kafka_offset DESC NULLS LAST, _row_number DESC NULLS LAST) AS __rank
        FROM g)
    SELECT * EXCLUDE (__why0, __pre_why, __h1, __rank),
      CASE WHEN __why0 IS NOT NULL THEN __why0
           WHEN __rank > 1 THEN 'superseded'
           WHEN _op = 'delete' THEN 'deleted' END AS __why
    FROM r
    """


@dataclass(frozen=True)
class RawFile:
    """What a `raw/` file's name says: a drop file (`file+<name>+<version>`) or a Kafka batch
    (`<topic>+<partition>+<first offset>+<last offset>`), as `safetynet.intake.ingest` names them."""

    path: str
    kind: str  # "file" | "kafka"
    name: str = ""  # drop file name ("/" written as "_")
    version: str = ""  # drop file version (its content's sha256[:12])
    partition: str = ""  # Kafka partition (as in the watermarks: a string)
    first: int = -1
    last: int = -1


def raw_file(path: str) -> RawFile | None:
    """Parse a `raw/` file's store path (None: not a name ingest writes)."""
    name = path.rsplit("/", 1)[-1].removesuffix(".parquet")
    if name.startswith("file+") and "+" in name[5:]:
        n, v = name[5:].rsplit("+", 1)
        return RawFile(path, "file", name=n, version=v)
    parts = name.rsplit("+", 3)
    if len(parts) == 4 and parts[1].isdigit() and parts[2].isdigit() and parts[3].isdigit():
        return RawFile(path, "kafka", partition=str(int(parts[1])), first=int(parts[2]), last=int(parts[3]))
    return None


def _watermarks(store: ObjectStore, c: Contract, held: dict | None = None, entries: list[Entry] | None = None
                ) -> dict:
    """What the clean state covers: per Kafka partition the last offset, and the drop files
    (names; `file_versions`: each name's ingested versions, so a later corrected delivery of the
    same name can be told from the one in force — see `safetynet.publish.backtest`)."""
    out: dict = {"kafka": {}, "files": []}
    versions: dict[str, set[str]] = {}
    for e in store.list(paths.raw(c.prefix), ".parquet") if entries is None else entries:
        if held and e.path in held:
            continue
        f = raw_file(e.path)
        if f is None:
            continue
        if f.kind == "file":
            versions.setdefault(f.name, set()).add(f.version)
        else:
            out["kafka"][f.partition] = max(out["kafka"].get(f.partition, -1), f.last)
    out["files"] = sorted(versions)
    out["file_versions"] = {n: sorted(v) for n, v in sorted(versions.items())}
    return out


def clean_all(store: ObjectStore, contracts: list[Contract]) -> dict[str, CleanCounts]:
    con = normalise.connect()
    try:
        return {c.feed_id: clean_feed(store, c, con) for c in contracts}
    finally:
        con.close()


def read_clean(store: ObjectStore, c: Contract) -> pa.Table:
    return store.read_parquet(clean_path(c))
