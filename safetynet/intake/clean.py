"""Clean: `raw/` → `clean/<department>/<feed>/`, the typed, normalised current state per key.

Named SQL steps over every raw file of a feed (DuckDB reading the store through pyarrow):
`typed` types and normalises each record with the contract's SQL (the same SQL that admitted it
into `raw/`); `fresh` drops redelivered events (same `event_id`), superseded versions of a
changed drop file, and — for snapshot feeds — rows of older snapshots; `current` keeps the latest
version per key (event time, then offset/row) and applies deletes. Every row dropped is counted
by reason in the clean manifest (`_catalog/clean/<department>/<feed>.json`), written after the
data, so a reader can reconcile raw → clean.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict, dataclass

import duckdb
import pyarrow as pa

from safetynet.core import paths
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.intake import health
from schemas import normalise
from schemas.contract import Contract
from schemas.normalise import _q

log = logging.getLogger(__name__)


@dataclass
class CleanCounts:
    feed_id: str
    raw_rows: int = 0
    invalid: int = 0  # raw rows that fail the contract (never expected: raw is validated on entry)
    redelivered: int = 0
    superseded_file_versions: int = 0
    older_snapshots: int = 0
    superseded: int = 0
    deleted: int = 0
    rows: int = 0

    @property
    def reconciles(self) -> bool:
        return self.raw_rows == (self.invalid + self.redelivered + self.superseded_file_versions
                                 + self.older_snapshots + self.superseded + self.deleted + self.rows)


def clean_path(c: Contract) -> str:
    return paths.clean_file(c.prefix)


def clean_feed(store: ObjectStore, c: Contract, con: duckdb.DuckDBPyConnection | None = None) -> CleanCounts:
    """Rebuild the feed's clean state from all of its raw files (idempotent: same raw → same bytes)."""
    own = con is None
    con = con or normalise.connect()
    try:
        held = health.held(store, c)  # unhealthy deliveries: the previous clean state stays in force
        raw = store.dataset(paths.raw(c.prefix), schema=c.raw_schema(), exclude=held)
        table, counts = clean_table(con, c, raw)
        data = parquet_bytes(table)
        store.write_bytes(clean_path(c), data)
        watermarks = _watermarks(store, c, held)
        manifest = {"feed_id": c.feed_id, "contract_version": c.version, "path": clean_path(c),
                    "written_at": dt.datetime.now(dt.UTC).isoformat(), "counts": asdict(counts),
                    "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                    "reconciles": counts.reconciles, "watermarks": watermarks, "held_files": sorted(held)}
        store.write_bytes(paths.clean_manifest(c.prefix), json.dumps(manifest, ensure_ascii=False, indent=1).encode())
        log.info("clean %s: raw=%d → rows=%d (redelivered=%d superseded=%d deleted=%d)", c.feed_id, counts.raw_rows,
                 counts.rows, counts.redelivered, counts.superseded, counts.deleted,
                 extra={"event": "clean_feed", **asdict(counts)})
        return counts
    finally:
        if own:
            con.close()


def clean_table(con: duckdb.DuckDBPyConnection, c: Contract, raw: object | None
                ) -> tuple[pa.Table, CleanCounts]:
    """The feed's clean table from `raw` — any relation DuckDB scans with the feed's raw schema (a
    pyarrow dataset over `raw/` files, possibly filtered, or a table); None: no raw data. Writes
    nothing: `clean_feed` stores the result, `safetynet.publish.backtest` rebuilds a published snapshot's
    inputs with it."""
    counts = CleanCounts(c.feed_id)
    if raw is None:
        return c.arrow_schema().empty_table(), counts
    con.register("__raw", raw)
    try:
        con.execute(f"CREATE OR REPLACE TEMP TABLE __flagged AS {_flag_sql(c)}")
    finally:
        con.unregister("__raw")
    try:
        agg = con.execute("SELECT count(*), count(*) FILTER (__why = 'invalid'), "
                          "count(*) FILTER (__why = 'redelivered'), count(*) FILTER (__why = 'file_version'), "
                          "count(*) FILTER (__why = 'older_snapshot'), count(*) FILTER (__why = 'superseded'), "
                          "count(*) FILTER (__why = 'deleted'), count(*) FILTER (__why IS NULL) FROM __flagged").fetchall()[0]
        (counts.raw_rows, counts.invalid, counts.redelivered, counts.superseded_file_versions,
         counts.older_snapshots, counts.superseded, counts.deleted, counts.rows) = agg
        cols = ", ".join(_q(n) for n in c.names)
        order = ", ".join(_q(k) for k in c.key)
        table = con.sql(f"SELECT {cols}, _event_id, __ts AS _occurred_at FROM __flagged WHERE __why IS NULL "
                        f"ORDER BY {order}").to_arrow_table()
    finally:
        con.execute("DROP TABLE IF EXISTS __flagged")
    if counts.invalid:
        log.error("clean %s: %d raw rows fail the contract and were left out", c.feed_id, counts.invalid)
    return table.cast(c.arrow_schema()), counts


def _flag_sql(c: Contract) -> str:
    """Each raw row with `__why`: NULL if it is in the clean state, else why it is not."""
    typed = normalise.validate_sql(c, "__raw", typed=True, record_date=True)
    key = ", ".join(_q(k) for k in c.key)
    tiebreak = "".join(f", {_q(f)} DESC NULLS LAST" for f in c.order_by)
    snapshot = c.mode == "snapshot"
    return f"""
    WITH typed AS ({typed}),
    t AS (
        SELECT *, coalesce(sn_datetime(_occurred_at), _ingested_at) AS __ts,
               -- a row of a tabular drop (event id file:<version>:<row>); JSON Lines envelope
               -- rows keep their own event ids and are treated as events, like Kafka's
               CASE WHEN _source = 'file' AND starts_with(_event_id, 'file:') THEN split_part(_event_id, ':', 2) END AS __ver
        FROM typed),
    versions AS (  -- the newest ingested version of every drop-file name
        SELECT _source_file, arg_max(__ver, _ingested_at) AS __latest_ver FROM t
        WHERE __ver IS NOT NULL GROUP BY _source_file),
    snap AS (  -- the newest snapshot drop (by its data date, then name)
        SELECT max(__ts) AS __snap_ts, arg_max(_source_file, (__ts, _source_file)) AS __snap_file
        FROM t WHERE __ver IS NOT NULL),
    f AS (
        SELECT t.*,
          row_number() OVER (PARTITION BY _event_id ORDER BY _ingested_at, _kafka_offset, _row_number) AS __n,
          CASE
            WHEN _rule IS NOT NULL THEN 'invalid'
            WHEN __ver IS NOT NULL AND __ver <> v.__latest_ver THEN 'file_version'
            WHEN {str(snapshot).lower()} AND s.__snap_file IS NOT NULL AND (
                 (__ver IS NOT NULL AND _source_file <> s.__snap_file)
                 OR (__ver IS NULL AND __ts <= s.__snap_ts)) THEN 'older_snapshot'
          END AS __pre_why
        FROM t LEFT JOIN versions v USING (_source_file) CROSS JOIN snap s),
    g AS (
        SELECT *, CASE WHEN __pre_why IS NOT NULL THEN __pre_why WHEN __n > 1 THEN 'redelivered' END AS __why0
        FROM f),
    r AS (
        SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY (__why0 IS NULL) DESC, __ts DESC{tiebreak},
                                     _ingested_at DESC, _kafka_offset DESC NULLS LAST, _row_number DESC NULLS LAST) AS __rank
        FROM g)
    SELECT * EXCLUDE (__why0, __pre_why, __n, __rank, __ver),
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


def _watermarks(store: ObjectStore, c: Contract, held: dict | None = None) -> dict:
    """What the clean state covers: per Kafka partition the last offset, and the drop files
    (names; `file_versions`: each name's ingested versions, so a later corrected delivery of the
    same name can be told from the one in force — see `safetynet.publish.backtest`)."""
    out: dict = {"kafka": {}, "files": []}
    versions: dict[str, set[str]] = {}
    for e in store.list(paths.raw(c.prefix), ".parquet"):
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
