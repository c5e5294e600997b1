"""Incremental clean: add new `raw/` files to a feed's clean state without reading the old ones.

`safetynet.intake.clean.clean_feed` rebuilds a feed's clean state from all its raw files. When the
only change since the last clean is new raw files (Kafka batches, drops of new names), the result
of that rebuild can be computed from the new rows, the current clean file and a little side state
kept under `_catalog/clean_state/<dept>/<feed>/`, and this module does so; its output — the clean
file's bytes, the counts, the watermarks — is the full rebuild's (`tests/test_clean_incremental.py`
holds the two to byte equality).

Why it is the same. Let O be the rows of the old raw files and N those of the new ones, every N row
ingested strictly later than every O row (checked: `_ingested_at`). Then in `clean._flag_sql` over
O ∪ N:

* `typed`, `__ts`, `__ver` are per row; `invalid` is unchanged for O and computed for N;
* `versions` (the newest version of a drop name) is unchanged for O and computable from N alone as
  long as no new file is another version of a name O holds (else: full rebuild);
* `snap` (snapshot feeds: the newest snapshot's data date) is unchanged as long as N holds no drop file
  of a snapshot feed (else: full rebuild — a new snapshot replaces the state anyway); new event
  rows are compared with the recorded snapshot time;
* `__n_id` (the n-th delivery of an event id, in ingest order) is unchanged for O, and for a new
  row it is its rank among N's copies plus one if O holds the id; `__h1` (the content hash of the
  id's first delivery: a later row is a redelivery if it says the same, else it reuses the id) is
  O's if O holds the id, else N's first: the side state keeps O's event ids with that hash;
* the winner per key: an O row that lost keeps losing; the new winner is the best of O's winner
  (in the clean file if an upsert, in the side state's `deleted` table if a delete — its event
  time and `order_by` fields are all the comparison needs, as N rows win every remaining tie by
  their later `_ingested_at`) and N's candidates.

Everything else falls back to the full rebuild, with the reason logged: no side state or a damaged
one, a clean file or manifest not the one the state describes, a changed contract, normaliser SQL,
DuckDB or format version (`fingerprint`), held deliveries changed, raw files removed or rewritten
(size or mtime), a raw file name ingest does not write, a new version of a drop name, a new
snapshot drop, new rows not ingested after all old ones.

Side state (all rewritten by a full clean, extended by an incremental one):

* `state.json` — the fingerprint, the clean file's sha256 and counts, the raw files covered (path →
  size, mtime), the held files, the drop names, the latest `_ingested_at`, the snapshot in force,
  whether a NULL event id was seen, and the files below;
* `<generation>-ids.parquet` — segments of event ids, each with its first delivery's content hash
  (one per clean that added some; together every cleaned row's id, each once; merged into one past
  `MAX_SEGMENTS`);
* `<generation>-deleted.parquet` — per key whose latest version is a delete: the key, `__ts` and
  the `order_by` fields.

The data (clean file, then manifest) is written before the state, and the state names the clean
file's sha256: a crash between them leaves a state that no longer matches, so the next clean is full.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from safetynet.core import paths
from safetynet.core.store import Entry, ObjectStore, parquet_bytes
from schemas import normalise
from schemas.contract import Contract
from schemas.normalise import _q

log = logging.getLogger(__name__)

#: The side state's format; part of the fingerprint (a change makes the next clean full).
STATE_FORMAT = 2  # 2: event-id segments hold each id once, with its first delivery's content hash (`__h`)
#: Event-id segments kept before an incremental clean merges them into one.
MAX_SEGMENTS = 24
STATE = "state.json"



#: a raw row's time (`__ts`): its event time, else when it was ingested; a drop file's rows all have
#: the file's data date
TS = "coalesce(sn_datetime(_occurred_at), _ingested_at)"


def typed_ctes(c: Contract, source: str) -> str:
    """The CTEs `typed`, `t` (each row typed, with `__ts` and a drop row's version `__ver`) and
    `versions` (the newest ingested version of every drop-file name) over `source`."""
    typed = normalise.validate_sql(c, source, typed=True, record_date=True)
    fields = ", ".join(_q(n) for n in c.names)
    return f"""typed AS ({typed}),
    t AS (
        SELECT *, {TS} AS __ts,
               -- what a delivery of an event says (its fields and op, not its time): the same event id
               -- with another `__h` is another event, not a redelivery (a producer reusing ids)
               CASE WHEN _event_id IS NOT NULL THEN hash(_op, {fields}) END AS __h,
               -- a row of a tabular drop (event id file:<version>:<row>); JSON Lines envelope
               -- rows keep their own event ids and are treated as events, like Kafka's
               CASE WHEN _source = 'file' AND starts_with(_event_id, 'file:') THEN split_part(_event_id, ':', 2) END AS __ver
        FROM typed),
    versions AS (  -- the newest ingested version of every drop-file name
        SELECT _source_file, arg_max(__ver, _ingested_at) AS __latest_ver FROM t
        WHERE __ver IS NOT NULL GROUP BY _source_file)"""


#: Over the n-th delivery of an event id in ingest order (`__n_id`) and its first delivery's content
#: hash (`__h1`), in `clean._flag_sql` and `_add` alike: a redelivery repeats the first delivery's
#: fields and op (NULL ids, all one id, compare NULL with NULL); a later row of other content reuses
#: the id — another event, kept — unless left out for another reason first.
REDELIVERED = "(__n_id > 1 AND __h IS NOT DISTINCT FROM __h1)"
REUSED = "(__pre_why IS NULL AND _event_id IS NOT NULL AND __n_id > 1 AND __h IS DISTINCT FROM __h1)"


def reused_examples(con: duckdb.DuckDBPyConnection, table: str, n: int = 3) -> tuple[str, ...]:
    """Up to `n` event ids that rows of `table` reuse (its `__reused` column), smallest first: event
    ids name no person, so they may be logged."""
    return tuple(r[0] for r in con.execute(
        f"SELECT DISTINCT _event_id FROM {table} WHERE __reused ORDER BY 1 LIMIT {int(n)}").fetchall())


def fingerprint(c: Contract, flag_sql: str) -> str:
    """What the clean result depends on besides the data: the full clean's SQL (contract and
    normaliser), the normaliser's macros, the clean schema, DuckDB's and pyarrow's versions."""
    h = hashlib.sha256()
    for part in (str(STATE_FORMAT), flag_sql, *normalise.MACROS, str(c.arrow_schema()), str(c.raw_schema()),
                 str(c.version), c.mode, ",".join(c.key), ",".join(c.order_by), duckdb.__version__, pa.__version__):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class Side:
    """What a clean learned that the next incremental one needs (besides the clean file)."""

    ids: pa.Table | None  # new non-NULL event ids with their first delivery's content hash, to add as a segment
    deleted: pa.Table  # keys whose latest version is a delete: key, __ts, order_by fields
    max_ingested_us: int | None
    null_event_id: bool
    snap_file: str | None
    snap_ts_us: int | None
    segments: list[str] = field(default_factory=list)  # existing segments kept (incremental)
    generation: int = 0


@dataclass
class Attempt:
    """An incremental clean's result, or why it cannot be done (`reason`)."""

    reason: str = ""
    table: pa.Table | None = None
    counts: dict | None = None
    side: Side | None = None
    new_files: int = 0
    new_rows: int = 0
    data: bytes | None = None  # nothing new: the clean file's bytes as they are
    reused_examples: tuple[str, ...] = ()  # a few event ids the new rows reuse with other content


def side_sql(c: Contract) -> tuple[str, str]:
    """(summary, deleted) queries over `__flagged` (the full clean's flagged rows)."""
    summary = ("SELECT bool_or(_event_id IS NULL), epoch_us(max(_ingested_at)), "
               "arg_max(_source_file, (__ts, _source_file)) FILTER (__ver IS NOT NULL), "
               "epoch_us(max(__ts) FILTER (__ver IS NOT NULL)) FROM __flagged")
    return summary, f"SELECT {_head_cols(c)} FROM __flagged WHERE __why = 'deleted'"


def _head_cols(c: Contract) -> str:
    return ", ".join([*(_q(k) for k in c.key), "__ts", *(_q(f) for f in c.order_by if f not in c.key)])


def full_side(con: duckdb.DuckDBPyConnection, c: Contract) -> Side:
    """The side state after a full clean, from `__flagged`."""
    summary, deleted = side_sql(c)
    null_id, max_ing, snap_file, snap_ts = con.execute(summary).fetchall()[0]
    # every row's id (a set once read: `hit` takes DISTINCT), neither deduplicated nor sorted here: cheaper
    ids = con.sql("SELECT _event_id, __h FROM __flagged WHERE _event_id IS NOT NULL AND __n_id = 1").to_arrow_table()
    return Side(ids, con.sql(deleted).to_arrow_table(), max_ing, bool(null_id), snap_file, snap_ts)


# ---- the state on the store -----------------------------------------------------------------------
def _state_path(c: Contract) -> str:
    return paths.clean_state(c.prefix) + STATE


def load_state(store: ObjectStore, c: Contract) -> dict | None:
    try:
        st = json.loads(store.read_bytes(_state_path(c)))
    except FileNotFoundError:
        return None
    except ValueError:  # damaged
        return {}
    return st if isinstance(st, dict) else {}


def save_state(store: ObjectStore, c: Contract, fp: str, side: Side, sha256: str, counts: dict,
               files: list[Entry], held: list[str], file_names: list[str]) -> None:
    """Write the side files, then `state.json`, then remove side files no state names."""
    base = paths.clean_state(c.prefix)
    gen = side.generation + 1
    segments = list(side.segments)
    if side.ids is not None and side.ids.num_rows:
        seg = f"{base}{gen:010d}-ids.parquet"
        store.write_bytes(seg, parquet_bytes(side.ids))
        segments.append(seg)
    deleted = f"{base}{gen:010d}-deleted.parquet"
    store.write_bytes(deleted, parquet_bytes(side.deleted))
    st = {"format": STATE_FORMAT, "fingerprint": fp, "generation": gen, "feed_id": c.feed_id,
          "clean_sha256": sha256, "counts": counts,
          "files": {e.path: [e.size, e.mtime_ns] for e in files}, "held": held, "file_names": file_names,
          "max_ingested_us": side.max_ingested_us, "null_event_id": side.null_event_id,
          "snap_file": side.snap_file, "snap_ts_us": side.snap_ts_us,
          "segments": segments, "deleted": deleted}
    store.write_bytes(_state_path(c), json.dumps(st, ensure_ascii=False).encode())
    keep = {*segments, deleted, _state_path(c)}
    for e in store.list(base):
        if e.path not in keep:
            store.delete(e.path)


def drop_state(store: ObjectStore, c: Contract) -> None:
    """Forget the side state (the next clean is full)."""
    if store.exists(_state_path(c)):
        store.delete(_state_path(c))


# ---- the incremental clean ------------------------------------------------------------------------
def attempt(store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract, fp: str, included: list[Entry],
            held: list[str], kind_of: Callable[[str], tuple[str, str] | None], t_sql: Callable[[str], str]
            ) -> Attempt:
    """The incremental clean if it is provably the full one (else `Attempt(reason=…)`).
    `included`: the raw files the clean covers (listing minus held); `kind_of(path)`: ("file", name)
    or ("kafka", "") from a raw file's name, None if ingest does not write such names; `t_sql(source)`:
    `typed_ctes` over a relation."""
    st = load_state(store, c)
    if st is None:
        return Attempt("no incremental state yet")
    if st.get("format") != STATE_FORMAT or st.get("fingerprint") != fp:
        return Attempt("contract, normaliser SQL, DuckDB/pyarrow or state format changed" if st else
                       "incremental state damaged")
    try:
        manifest = json.loads(store.read_bytes(paths.clean_manifest(c.prefix)))
    except (FileNotFoundError, ValueError):
        return Attempt("clean manifest missing or damaged")
    if manifest.get("sha256") != st.get("clean_sha256") or manifest.get("counts") != st.get("counts") \
            or manifest.get("contract_version") != c.version:
        return Attempt("clean manifest is not the one the incremental state describes")
    if sorted(held) != st.get("held"):
        return Attempt("held deliveries changed")
    old: dict[str, list[int]] = st.get("files") or {}
    now = {e.path: e for e in included}
    for p, (size, mtime) in old.items():
        e = now.get(p)
        if e is None:
            return Attempt("raw files removed")
        if (e.size, e.mtime_ns) != (size, mtime):
            return Attempt("raw files rewritten")
    new = [e for e in included if e.path not in old]
    names = set(st.get("file_names") or [])
    for e in new:
        k = kind_of(e.path)
        if k is None:
            return Attempt("a raw file name ingest does not write")
        if k[0] == "file":
            if k[1] in names:
                return Attempt("a changed drop file (another version of a name already cleaned)")
            if c.mode == "snapshot":
                return Attempt("a new snapshot drop")
    try:
        data = store.read_bytes(paths.clean_file(c.prefix))
    except FileNotFoundError:
        return Attempt("clean file missing")
    if hashlib.sha256(data).hexdigest() != st["clean_sha256"]:
        return Attempt("clean file is not the one the manifest describes")
    try:
        deleted = store.read_parquet(st["deleted"])
        segments = list(st["segments"])
        for s in segments:
            if not store.exists(s):
                return Attempt("incremental state damaged (an event-id segment is missing)")
    except (FileNotFoundError, KeyError, pa.ArrowInvalid):
        return Attempt("incremental state damaged")
    side = Side(None, deleted, st.get("max_ingested_us"), bool(st.get("null_event_id")), st.get("snap_file"),
                st.get("snap_ts_us"), segments=segments, generation=int(st.get("generation") or 0))
    counts = dict(st["counts"])
    if not new:
        return Attempt(counts=counts, side=side, data=data)
    clean_tbl = pa.BufferReader(data)
    return _add(store, con, c, clean_tbl, side, counts, new, t_sql)


def _add(store: ObjectStore, con: duckdb.DuckDBPyConnection, c: Contract, clean_buf: pa.BufferReader, side: Side,
         counts: dict, new: list[Entry], t_sql: Callable[[str], str]) -> Attempt:
    import pyarrow.parquet as pq

    key = ", ".join(_q(k) for k in c.key)
    ob = [f for f in c.order_by if f not in c.key]
    obs = "".join(f", {_q(f)}" for f in ob)
    tiebreak = "".join(f", {_q(f)} DESC NULLS LAST" for f in c.order_by)
    cols = ", ".join(_q(n) for n in c.names)
    snap = c.mode == "snapshot" and side.snap_ts_us is not None
    snap_sql = (f"(__ver IS NOT NULL AND epoch_us(__ts) < {int(side.snap_ts_us or 0)}) "
                f"OR (__ver IS NULL AND epoch_us(__ts) <= {int(side.snap_ts_us or 0)})") if snap else "false"
    raw = ds.dataset([store.full(e.path) for e in new], schema=c.raw_schema(), format="parquet",
                     filesystem=store.fs)
    seg = (ds.dataset([store.full(s) for s in side.segments], format="parquet", filesystem=store.fs)
           if side.segments else pa.table({"_event_id": pa.array([], pa.string()), "__h": pa.array([], pa.uint64())}))
    clean_tbl = pq.read_table(clean_buf)
    con.register("__raw", raw)
    con.register("__ids", seg)
    con.register("__clean", clean_tbl)
    con.register("__deleted", side.deleted)
    try:
        con.execute(f"""CREATE OR REPLACE TEMP TABLE __new AS
        WITH {t_sql('__raw')},
        -- an id the old rows hold, with its first delivery's content hash (segments hold each id once)
        hit AS (SELECT DISTINCT _event_id, __h AS __h_old FROM __ids WHERE _event_id IN (SELECT _event_id FROM t)),
        f AS (
            SELECT t.*,
              row_number() OVER w
                + CASE WHEN h._event_id IS NOT NULL OR (t._event_id IS NULL AND {str(side.null_event_id).lower()})
                       THEN 1 ELSE 0 END AS __n_id,
              CASE WHEN h._event_id IS NOT NULL THEN h.__h_old ELSE first_value(t.__h) OVER w END AS __h1,
              CASE
                WHEN _rule IS NOT NULL THEN 'invalid'
                WHEN __ver IS NOT NULL AND __ver <> v.__latest_ver THEN 'file_version'
                WHEN {snap_sql} THEN 'older_snapshot'
              END AS __pre_why
            FROM t LEFT JOIN versions v USING (_source_file) LEFT JOIN hit h ON t._event_id = h._event_id
            WINDOW w AS (PARTITION BY t._event_id ORDER BY _ingested_at, _kafka_offset, _row_number))
        SELECT * EXCLUDE (__h1, __pre_why),
               CASE WHEN __pre_why IS NOT NULL THEN __pre_why WHEN {REDELIVERED} THEN 'redelivered' END AS __why0,
               {REUSED} AS __reused
        FROM f""")
        (n_new, min_ing, max_ing, null_id, invalid, redelivered, file_version, older, cand_new, reused) = con.execute(
            "SELECT count(*), epoch_us(min(_ingested_at)), epoch_us(max(_ingested_at)), bool_or(_event_id IS NULL), "
            "count(*) FILTER (__why0 = 'invalid'), count(*) FILTER (__why0 = 'redelivered'), "
            "count(*) FILTER (__why0 = 'file_version'), count(*) FILTER (__why0 = 'older_snapshot'), "
            "count(*) FILTER (__why0 IS NULL), count(*) FILTER (__reused) FROM __new").fetchall()[0]
        examples = reused_examples(con, "__new") if reused else ()
        if n_new and side.max_ingested_us is not None and min_ing <= side.max_ingested_us:
            return Attempt("new raw rows not ingested after every cleaned one")
        # the winner per key touched: the old winner (kept in the clean file, or deleted) or a new row
        con.execute(f"""CREATE OR REPLACE TEMP TABLE __win AS
        WITH nk AS (SELECT DISTINCT {key} FROM __new WHERE __why0 IS NULL),
        cand AS (
            SELECT *, true AS __is_new, NULL AS __old FROM __new WHERE __why0 IS NULL
            UNION ALL BY NAME
            SELECT {key}, _occurred_at AS __ts{obs}, false AS __is_new, 'kept' AS __old FROM __clean SEMI JOIN nk USING ({key})
            UNION ALL BY NAME
            SELECT {key}, __ts{obs}, false AS __is_new, 'deleted' AS __old FROM __deleted SEMI JOIN nk USING ({key})),
        r AS (
            SELECT *, row_number() OVER (PARTITION BY {key} ORDER BY __ts DESC{tiebreak}, __is_new DESC,
                                         _ingested_at DESC, _kafka_offset DESC NULLS LAST,
                                         _row_number DESC NULLS LAST) AS __rank
            FROM cand),
        w AS (SELECT * FROM r WHERE __rank = 1 AND __is_new),
        o AS (SELECT {key}, __old FROM cand WHERE NOT __is_new)
        SELECT w.* EXCLUDE (__old), o.__old FROM w LEFT JOIN o USING ({key})""")
        (wins, win_del, old_kept, old_del) = con.execute(
            "SELECT count(*), count(*) FILTER (_op = 'delete'), count(*) FILTER (__old = 'kept'), "
            "count(*) FILTER (__old = 'deleted') FROM __win").fetchall()[0]
        table = con.sql(f"""
            SELECT * FROM (
                SELECT {cols}, _event_id, _occurred_at FROM __clean ANTI JOIN __win USING ({key})
                UNION ALL
                SELECT {cols}, _event_id, __ts AS _occurred_at FROM __win WHERE _op IS DISTINCT FROM 'delete')
            ORDER BY {key}""").to_arrow_table()
        heads = _head_cols(c)
        deleted = con.sql(f"""
            SELECT {heads} FROM __deleted ANTI JOIN __win USING ({key})
            UNION ALL
            SELECT {heads} FROM __win WHERE _op = 'delete'""").to_arrow_table()
        # the new rows' ids (an id already in a segment may be written again: segments are a set together)
        ids = con.sql("SELECT _event_id, __h FROM __new WHERE _event_id IS NOT NULL AND __n_id = 1").to_arrow_table()
        segments = side.segments
        if ids.num_rows and len(segments) + 1 > MAX_SEGMENTS:  # merge every segment into one
            ids = con.sql("SELECT _event_id, __h FROM __ids UNION ALL "
                          "SELECT _event_id, __h FROM __new WHERE _event_id IS NOT NULL AND __n_id = 1").to_arrow_table()
            segments = []
    finally:
        for name in ("__raw", "__ids", "__clean", "__deleted"):
            con.unregister(name)
        con.execute("DROP TABLE IF EXISTS __new")
        con.execute("DROP TABLE IF EXISTS __win")
    counts = dict(counts)
    counts["raw_rows"] += n_new
    counts["invalid"] += invalid
    counts["redelivered"] += redelivered
    counts["superseded_file_versions"] += file_version
    counts["older_snapshots"] += older
    counts["superseded"] += (cand_new - wins) + old_kept + old_del
    counts["deleted"] += win_del - old_del
    counts["rows"] += (wins - win_del) - old_kept
    counts["reused_event_ids"] = counts.get("reused_event_ids", 0) + reused
    if counts["rows"] != table.num_rows:  # cannot happen; never write a state that does not add up
        return Attempt("incremental counts do not match the table (bug): full rebuild")
    latest = [x for x in (side.max_ingested_us, max_ing) if x is not None]
    new_side = Side(ids, deleted, max(latest) if latest else None, side.null_event_id or bool(null_id),
                    side.snap_file, side.snap_ts_us, segments=segments, generation=side.generation)
    return Attempt(table=table, counts=counts, side=new_side, new_files=len(new), new_rows=n_new,
                   reused_examples=examples)
