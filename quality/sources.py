"""The tables the quality gate validates, read by position: an Arrow table in memory, or a Parquet file
that DuckDB scans where it lies.

A `Source` is what a `quality.suites.Target` is made of. It gives the gate

* `relation`, SQL with every column and `__pos` (the row's position): what `quality.exact` counts
  over, every row, exactly — a Parquet file is scanned by DuckDB (`read_parquet`, its
  `file_row_number` as `__pos`), never loaded whole, so a 10-million-person city's feeds and outputs
  are checked within DuckDB's memory cap;
* `at(positions)`, the rows GX validates (a sample and the failing rows) and the examples shown:
  from a file, DuckDB reads only those rows (a filter on `file_row_number` skips the rest), as the
  types stored in the file;
* `column(name)`, one whole column (a cross-feed check's universe of ID numbers, for its frame);
* `with_helpers(...)`, the same rows with boolean helper columns computed in Arrow a block at a
  time (`Helped`: joined by position), and `ascending(key)`, whether the file holds its key in order.

`snapshot_file` gives the gate its own, unchanging copy of a store object: a hard link in the
gate's scratch folder inside a local store (a rewrite replaces the file, never the linked one), a
download from S3; `sweep` removes what a killed gate left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from quality.checks import Ascending, strictly_ascending, take_rows
from quality.exact import ident, literal
from safetynet.core.store import ObjectStore

#: rows of a file read at a time to compute helper columns (`Source.with_helpers`)
_BATCH = 1 << 20

#: helper columns: (the column they are computed from, the function of that column's values: one
#: boolean array per helper, a tuple if several)
Helper = tuple[str, Callable[[pa.Array | pa.ChunkedArray], Any]]


class Source:
    """One table, read by position (`ArrowSource`, `ParquetSource`)."""

    rows: int
    schema: pa.Schema  # the columns as stored
    relation: str  # SQL: every column and `__pos`

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Make `relation` valid on `con`."""

    def unregister(self, con: duckdb.DuckDBPyConnection) -> None:
        """Undo `register`."""

    def at(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """The rows at sorted `positions` (all columns, or `columns`), in order, as stored."""
        raise NotImplementedError

    @property
    def plain_relation(self) -> str:
        """SQL of the table's own columns and `__pos`, without helper columns (cheaper to scan)."""
        return self.relation

    @property
    def blocks(self) -> tuple[int, ...] | None:
        """The rows of each block the table is read in (a Parquet file's row groups, in order), when
        reading rows by position costs a block each; None when any row is as cheap (in memory)."""
        return None

    def batches(self, columns: Sequence[str], dictionary: Sequence[str] = ()) -> Iterator[pa.RecordBatch | pa.Table]:
        """`columns` of every row, in order, a block at a time (`dictionary`: read dictionary-encoded
        where the file has dictionaries, a code's few values decoded once, not per row)."""
        raise NotImplementedError

    def ascending(self, key: Sequence[str]) -> bool:
        """Whether `key` is strictly ascending and never null over the rows in order (then unique:
        `quality.checks.strictly_ascending`); one pass over the key columns."""
        return all(k in self.names for k in key) and strictly_ascending(self.batches(key), key)

    def with_helpers(self, helpers: Mapping[tuple[str, ...], Helper], ref: str, dictionary: Sequence[str] = (),
                     key: Sequence[str] = ()) -> Source:
        """This source with more boolean columns: (helper names) → (column, function of its values
        giving one array per name), computed a block at a time (`batches`; the columns `dictionary`
        names read dictionary-encoded) and registered as `ref`, joined to the rows by position.
        `key`: whether it is `ascending` is settled in the same pass (its columns read once)."""
        if not helpers:
            return self
        key = list(key) if all(k in self.names for k in key) else []
        order = Ascending(key) if key else None
        cols = list(dict.fromkeys([*(col for col, _ in helpers.values()), *key]))
        parts: dict[str, list] = {name: [] for names in helpers for name in names}
        for b in self.batches(cols, dictionary):
            for names, (col, fn) in helpers.items():
                got = fn(b.column(col))
                for name, arr in zip(names, got if isinstance(got, tuple) else (got,), strict=True):
                    parts[name].extend(_chunks(arr))
            if order is not None:
                order.add(b)
        table = pa.table({name: pa.chunked_array(ps, pa.bool_()) for name, ps in parts.items()})
        return Helped(self, table, ref, {tuple(key): order.ok} if order is not None else {})

    def column(self, name: str) -> pa.ChunkedArray:
        raise NotImplementedError

    def null_count(self, name: str) -> int | None:
        """The exact number of nulls in the column `name`, when known without reading its values."""
        return None

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    @property
    def helper_names(self) -> list[str]:
        """The helper columns `relation` has besides `names` (`with_helpers`)."""
        return []


class ArrowSource(Source):
    """A table in memory, registered in DuckDB with its positions."""

    def __init__(self, table: pa.Table, ref: str):
        self.table, self.ref = table, ref
        self.rows, self.schema, self.relation = table.num_rows, table.schema, ref

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        con.register(self.ref, self.table.append_column("__pos", pa.array(np.arange(self.rows, dtype=np.int64))))

    def unregister(self, con: duckdb.DuckDBPyConnection) -> None:
        con.unregister(self.ref)

    def at(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        t = self.table if columns is None else self.table.select(list(columns))
        return take_rows(t, np.asarray(positions, dtype=np.int64))

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table[name]

    def null_count(self, name: str) -> int | None:
        if name not in self.table.column_names or pa.types.is_dictionary(self.table[name].type):
            return None  # a dictionary's own nulls are not its array's
        return self.table[name].null_count

    def batches(self, columns: Sequence[str], dictionary: Sequence[str] = ()) -> Iterator[pa.Table]:
        yield self.table.select(list(columns))


class Reader:
    """DuckDB cursors for `ParquetSource.at`, one per thread (the gate reads rows for its frames on
    both preparing threads and for example keys on the GX thread: with one shared cursor they
    queued behind each other's reads)."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con, self.local, self.lock = con, threading.local(), threading.Lock()
        self.cursors: list[duckdb.DuckDBPyConnection] = []
        self.closed = False

    def table(self, query: str, params: dict) -> pa.Table:
        cursor = getattr(self.local, "cursor", None)
        if cursor is None:
            with self.lock:
                if self.closed:  # else a cursor made now would never be closed
                    raise RuntimeError("the gate's frame reader is closed")
                cursor = self.local.cursor = self.con.cursor()
                self.cursors.append(cursor)
        return cursor.sql(query, params=params).to_arrow_table()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for cursor in self.cursors:
                cursor.close()
            self.cursors.clear()


class ParquetSource(Source):
    """A local Parquet file, scanned by DuckDB wherever `relation` is used; `at` reads through `reader`."""

    def __init__(self, path: str | Path, reader: Reader):
        self.path, self.reader = str(path), reader
        self.meta = pq.ParquetFile(self.path).metadata  # the footer, read once
        self.rows = self.meta.num_rows
        self.schema = pq.read_schema(self.path)
        self._scan = f"read_parquet({literal(self.path)}, file_row_number = true)"
        self.relation = f"(SELECT * EXCLUDE (file_row_number), file_row_number AS __pos FROM {self._scan})"

    def at(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        cols = list(self.schema.names if columns is None else columns)
        schema = pa.schema([self.schema.field(c) for c in cols])
        pos = np.asarray(positions, dtype=np.int64)
        if not len(pos) or not cols:
            return schema.empty_table() if cols else pa.table({}).slice(0, 0)
        # the filter on file_row_number skips every row group (and page) without one of the rows
        got = self.reader.table(f"SELECT {', '.join(ident(c) for c in cols)} FROM {self._scan} "
                                "WHERE file_row_number IN (SELECT unnest($p)) ORDER BY file_row_number",
                                {"p": pos.tolist()})
        return got.cast(schema)  # DuckDB's types (e.g. timestamps in UTC) back to the file's

    def column(self, name: str) -> pa.ChunkedArray:
        return pq.read_table(self.path, columns=[name])[name]

    @property
    def blocks(self) -> tuple[int, ...] | None:
        return tuple(self.meta.row_group(g).num_rows for g in range(self.meta.num_row_groups))

    def null_count(self, name: str) -> int | None:
        """From the file's statistics: every row group's null count of the (flat) column, if each
        has one."""
        if name not in self.schema.names or pa.types.is_nested(self.schema.field(name).type):
            return None
        meta = self.meta
        if not _trusted_statistics(meta.created_by or ""):
            return None
        col = [meta.schema.column(i).path for i in range(meta.num_columns)].index(name)
        total = 0
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            if st is None or not st.has_null_count:
                return None
            total += st.null_count
        return total

    def batches(self, columns: Sequence[str], dictionary: Sequence[str] = ()) -> Iterator[pa.RecordBatch]:
        f = pq.ParquetFile(self.path, read_dictionary=[c for c in dictionary if _strings(self.schema.field(c).type)])
        yield from f.iter_batches(batch_size=_BATCH, columns=list(columns))


class Helped(Source):
    """A source with helper columns computed in Arrow (`Source.with_helpers`): the base's relation
    joined by position (DuckDB's POSITIONAL JOIN, row i to row i) to the helpers' table."""

    def __init__(self, base: Source, helpers: pa.Table, ref: str, ascending: Mapping[tuple[str, ...], bool]):
        if helpers.num_rows != base.rows:
            raise ValueError(f"{ref}: {helpers.num_rows} helper rows for {base.rows} rows")
        self.base, self.helpers, self.ref, self._ascending = base, helpers, ref, dict(ascending)
        self.rows, self.schema = base.rows, base.schema
        self.relation = f"(SELECT * FROM {base.relation} POSITIONAL JOIN {ref})"

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        self.base.register(con)
        con.register(self.ref, self.helpers)

    def unregister(self, con: duckdb.DuckDBPyConnection) -> None:
        con.unregister(self.ref)
        self.base.unregister(con)

    @property
    def helper_names(self) -> list[str]:
        return [*self.base.helper_names, *self.helpers.column_names]

    def at(self, positions: np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        return self.base.at(positions, columns)

    @property
    def blocks(self) -> tuple[int, ...] | None:
        return self.base.blocks

    @property
    def plain_relation(self) -> str:
        return self.base.plain_relation

    def ascending(self, key: Sequence[str]) -> bool:
        known = self._ascending.get(tuple(key))
        return known if known is not None else self.base.ascending(key)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.base.column(name)

    def null_count(self, name: str) -> int | None:
        return self.base.null_count(name)

    def batches(self, columns: Sequence[str], dictionary: Sequence[str] = ()) -> Iterator[pa.RecordBatch | pa.Table]:
        return self.base.batches(columns, dictionary)


@contextlib.contextmanager
def registered(con: duckdb.DuckDBPyConnection, tables: Mapping[str, pa.Table],
               sources: Sequence[Source]) -> Iterator[None]:
    """Arrow `tables` (name → table) and `sources` registered on `con` for the block, unregistered
    after it whatever happens (unregistering what was not registered is no error)."""
    try:
        for name, table in tables.items():
            con.register(name, table)
        for src in sources:
            src.register(con)
        yield
    finally:
        for name in tables:
            con.unregister(name)
        for src in sources:
            src.unregister(con)


def _trusted_statistics(created_by: str) -> bool:
    """Whether a Parquet writer's null counts are exact: Arrow's C++ writer from version 5 (earlier
    ones counted no nulls in dictionary columns, ARROW-12513) and DuckDB's; any other, unknown."""
    m = re.match(r"parquet-cpp-arrow version (\d+)\.", created_by)
    return (m is not None and int(m.group(1)) >= 5) or created_by.startswith("DuckDB")


def _strings(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _chunks(a: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return a.chunks if isinstance(a, pa.ChunkedArray) else [a]


#: errors of `os.link` where a copy is the way instead (another device, no hard links there)
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP})


def snapshot_file(store: ObjectStore, rel: str, into: str) -> tuple[str, str]:
    """(a local path of the object `rel` that no later write changes, its sha256): a hard link in
    `into` to a local store's file (a copy where links cannot be made), or a download from S3 —
    with the store's retries, again from the start if the object changed meanwhile (its size or
    time before and after differ). Each call gets a name of its own in `into`."""
    dest = tempfile.mkstemp(prefix=".tmp-", suffix="-" + rel.rsplit("/", 1)[-1], dir=into)
    os.close(dest[0])
    os.unlink(dest[1])
    path = dest[1]
    if isinstance(store.fs, pafs.LocalFileSystem):
        try:
            os.link(store.full(rel), path)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
            with open(store.full(rel), "rb") as src, open(path, "xb") as out:
                shutil.copyfileobj(src, out, 1 << 22)
        return path, _sha256(path)

    def download() -> str:
        before = store.fs.get_file_info(store.full(rel))
        h = hashlib.sha256()
        with store.fs.open_input_stream(store.full(rel)) as src, open(path, "wb") as out:
            while chunk := src.read(1 << 22):
                h.update(chunk)
                out.write(chunk)
        after = store.fs.get_file_info(store.full(rel))
        if (before.size, before.mtime_ns) != (after.size, after.mtime_ns):
            raise ConnectionError(f"{rel} changed while it was read")  # retried: read it again
        return h.hexdigest()

    return path, store._retry(download, f"read {rel}")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def sweep(root: str, prefix: str, older_than_s: float) -> None:
    """Remove the directories `prefix`* under `root` older than `older_than_s`: what a killed gate
    left (its links would keep old clean files on disk)."""
    now = time.time()
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for e in entries:
            if e.name.startswith(prefix) and e.is_dir() and now - e.stat().st_mtime > older_than_s:
                shutil.rmtree(e.path, ignore_errors=True)
