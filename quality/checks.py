"""Vectorised column checks for the quality gate: what Great Expectations has no expectation for.

The GB 11643 validity of ID numbers (format, birth date, check character — the check character
from `schemas.idno.check_chars`), family members' ID numbers, membership in another table's
column (cross-feed links), computed with pyarrow/numpy as boolean helper columns that the
expectations of `quality.suites` then check; and the frames GX validates: pyarrow-backed pandas
columns (near zero-copy) with float64 `__num_<column>` shadows for range checks.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas import idno
from schemas.contract import LOCAL_TZ

#: a normalised 18-character ID number (GX checks it as a regex too)
ID_RE = r"^[0-9]{17}[0-9X]$"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])
_CHECK_BYTES = np.frombuffer(idno.CHECK.encode("ascii"), np.uint8)
#: the check character's weights of the 17 digits (int16: every weighted sum is below 2**15, even
#: of wrapped non-digits: 255 × 100)
_WEIGHTS = np.asarray(idno.WEIGHTS, dtype=np.int16)
_BLOCK = 1 << 18


def plain(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous, dictionary-decoded array."""
    a = _one_chunk(a)
    return _one_chunk(a.dictionary_decode()) if pa.types.is_dictionary(a.type) else a


def id_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    """Vectorised GB 11643 validity of normalised 18-character ID numbers (null stays null).

    Same rules as `schemas.idno.normalise` on an already normalised number: 17 digits and a
    digit or `X`, a real birth date from 1900 to today (Asia/Shanghai; ingest refuses one after the
    record's date), and the check character (`idno.WEIGHTS`,
    `idno.CHECK`). Works on the bytes of the strings: about 0.1 s a million numbers; chunk by chunk
    (a column of over 2 GB of strings cannot be one array).
    """
    return id_checks(values)[1]


def id_checks(values: pa.ChunkedArray | pa.Array) -> tuple[pa.Array | pa.ChunkedArray, pa.Array | pa.ChunkedArray]:
    """(matches `ID_RE`, `id_ok`) of each value, in one pass (null stays null in both): the format
    alone is what the `id_format` expectation counts (exactly `ID_RE`: 18 bytes, 17 ASCII digits
    and a digit or `X`)."""
    if isinstance(values, pa.ChunkedArray) and values.num_chunks > 1:
        both = [id_checks(c) for c in values.chunks]
        return (pa.chunked_array([f for f, _ in both], pa.bool_()), pa.chunked_array([o for _, o in both], pa.bool_()))
    a = plain(values)
    if not pa.types.is_string(a.type):
        a = a.cast(pa.string())
    n = len(a)
    ok = np.zeros(n, dtype=bool)
    fmt = np.zeros(n, dtype=bool)
    offs = np.frombuffer(a.buffers()[1], np.int32, count=n + 1, offset=a.offset * 4) if n else np.zeros(1, np.int32)
    data = np.frombuffer(a.buffers()[2], np.uint8) if n and a.buffers()[2] is not None else np.zeros(0, np.uint8)
    for lo in range(0, n, _BLOCK):  # in blocks: the (rows × 17) temporaries stay small
        fmt[lo:lo + _BLOCK], ok[lo:lo + _BLOCK] = _id_block(data, offs[lo:lo + _BLOCK + 1])
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    mask = nulls if nulls.any() else None
    return pa.array(fmt, mask=mask), pa.array(ok, mask=mask)


#: 18 bytes as three integers: consecutive equal ID numbers found by three integer comparisons
_ROW18 = np.dtype({"names": ["a", "b", "c"], "formats": ["<u8", "<u8", "<u2"], "offsets": [0, 8, 16], "itemsize": 18})


def _id_block(data: np.ndarray, offs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(format, validity) of the strings between consecutive offsets `offs` into the bytes `data`.
    A block of 18-byte values checks each run of equal consecutive values once (a feed sorted by
    person — wages, pensions — holds a dozen rows per person in a row)."""
    ok = np.zeros(len(offs) - 1, dtype=bool)
    fmt_ok = np.zeros(len(offs) - 1, dtype=bool)
    pos = np.flatnonzero(np.diff(offs) == 18)
    if not len(pos):
        return fmt_ok, ok
    if len(pos) == len(ok):
        raw = data[offs[0]:offs[-1]]
        v = raw.view(_ROW18)
        first = np.ones(len(v), dtype=bool)
        first[1:] = (v["a"][1:] != v["a"][:-1]) | (v["b"][1:] != v["b"][:-1]) | (v["c"][1:] != v["c"][:-1])
        runs = np.flatnonzero(first)
        m = raw.reshape(len(ok), 18)
        if 2 * len(runs) < len(ok):
            f, o = _id_rows(m[runs])
            run_of = np.cumsum(first) - 1
            return f[run_of], o[run_of]
        return _id_rows(m)
    fmt_ok[pos], ok[pos] = _id_rows(data[offs[pos][:, None] + np.arange(18)])
    return fmt_ok, ok


def _id_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(format, validity) of each row of 18 bytes of `m`.

    Digit position by digit position (the rows transposed: each position one contiguous array), in
    integers on this thread: no matrix product, whose BLAS threads spin against the gate's DuckDB
    threads on a small machine (the 10 M-person gate spent 3.9 s there, against 0.9 s alone)."""
    t = np.ascontiguousarray(m.T)
    d = t[:17] - np.uint8(48)  # a non-digit wraps above 9
    last = t[17]
    fmt = (d.max(axis=0) <= 9) & ((last - np.uint8(48) <= 9) | (last == ord("X")))
    d = d.astype(np.int16)
    s = d[0] * _WEIGHTS[0]
    for i in range(1, 17):
        s += d[i] * _WEIGHTS[i]
    check_ok = _CHECK_BYTES[s % 11] == last
    # a row with a non-digit may overflow these: it fails the format anyway
    y = ((d[6] * 10 + d[7]) * 10 + d[8]) * 10 + d[9]
    mo, day = d[10] * 10 + d[11], d[12] * 10 + d[13]
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    dim = _DAYS_IN_MONTH[np.clip(mo, 0, 12)] + ((mo == 2) & leap)
    born = y.astype(np.int32) * 10000 + mo * 100 + day  # YYYYMMDD: a birth after today is no real one
    return fmt, (fmt & check_ok & (y >= 1900) & (born <= _today()) & (mo >= 1) & (mo <= 12) & (day >= 1)
                 & (day <= dim))


def _today() -> int:
    """Today in Asia/Shanghai as YYYYMMDD."""
    return int(dt.datetime.now(LOCAL_TZ).strftime("%Y%m%d"))


def regex_ok(values: pa.ChunkedArray | pa.Array, regex: str) -> pa.ChunkedArray:
    """Whether each value contains a match of `regex` (RE2, searched: DuckDB's `regexp_matches`;
    null stays null). A dictionary-encoded chunk is matched on its dictionary only, then indexed —
    or, when every dictionary value matches (a clean feed's codes), true wherever the chunk has a
    value, without indexing (51 M employment rows at 10 M persons: two code fields, 0.9 s of
    indexing saved)."""
    chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
    out = []
    for ch in chunks:
        if pa.types.is_dictionary(ch.type):
            matched = pc.match_substring_regex(ch.dictionary, pattern=regex)
            if matched.null_count == 0 and matched.false_count == 0:
                nulls = ch.is_null().to_numpy(zero_copy_only=False) if ch.null_count else None
                out.append(pa.array(np.ones(len(ch), dtype=bool), mask=nulls))
            else:
                out.append(matched.take(ch.indices))
        else:
            out.append(pc.match_substring_regex(ch, pattern=regex))
    return pa.chunked_array(out, pa.bool_())


def members_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per list of {id_no, relation} (or of ID numbers): non-empty and every member's ID number valid
    (null stays null)."""
    a = plain(values)
    n = len(a)
    ok = pc.fill_null(pc.greater(pc.list_value_length(a), 0), False).to_numpy(zero_copy_only=False).copy()
    flat = pc.list_flatten(a)
    if len(flat):
        ids = pc.struct_field(flat, "id_no") if pa.types.is_struct(flat.type) else flat
        member_ok = pc.fill_null(id_ok(ids), False).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(a).to_numpy(zero_copy_only=False)
        ok[parents[~member_ok]] = False
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    return pa.array(ok, mask=nulls if nulls.any() else None) if n else pa.array([], pa.bool_())


class Ascending:
    """Whether the rows given in order (`add`, a block at a time) have a key (one or more columns)
    strictly ascending and never null — then no key occurs twice. How the clean stage writes a feed
    (sorted by its key): one pass over the key columns settles uniqueness without grouping them.
    Strings compare as UTF-8 bytes (code points, as DuckDB sorts them); `ok` turns False for good
    at a row not above the one before, or a null key value."""

    def __init__(self, key: Sequence[str]):
        self.key, self.ok = list(key), True
        self._last: tuple | None = None

    def add(self, b: pa.RecordBatch | pa.Table) -> bool:
        n = b.num_rows
        if not self.ok or not n:
            return self.ok
        try:
            self.ok = self._ascending(b, n)
        except (pa.ArrowNotImplementedError, TypeError):  # keys Arrow or Python cannot order: unknown
            self.ok = False
        return self.ok

    def _ascending(self, b: pa.RecordBatch | pa.Table, n: int) -> bool:
        cols = [_one_chunk(b.column(k)) for k in self.key]
        if any(c.null_count for c in cols):
            return False
        first = tuple(c[0].as_py() for c in cols)
        if self._last is not None and not first > self._last:
            return False
        if n > 1:
            up = np.zeros(n - 1, dtype=bool)  # row i+1 is above row i
            same = np.ones(n - 1, dtype=bool)  # …equal on every key column so far
            for c in map(_ordered, cols):
                if isinstance(c, np.ndarray):
                    a, z = c[1:], c[:-1]
                    up |= same & (a > z)
                    same &= a == z
                else:
                    a, z = c.slice(1), c.slice(0, n - 1)
                    up |= same & pc.greater(a, z).to_numpy(zero_copy_only=False)
                    same &= pc.equal(a, z).to_numpy(zero_copy_only=False)
            if not up.all():
                return False
        self._last = tuple(c[n - 1].as_py() for c in cols)
        return True


def _one_chunk(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous array (large strings as strings), dictionary-encoded still if it was."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks() if a.num_chunks != 1 else a.chunk(0)
    return a.cast(pa.string()) if pa.types.is_large_string(a.type) else a


def _ordered(a: pa.Array) -> pa.Array | np.ndarray:
    """Values that order and compare as `a`'s do: a dictionary-encoded column (a code read as the
    file stores it) as the dense ranks of its dictionary's values (its few values sorted once,
    not every row decoded); any other as it is."""
    if not pa.types.is_dictionary(a.type):
        return a
    ranks = pc.rank(a.dictionary, sort_keys="ascending", tiebreaker="dense").to_numpy()
    return ranks[a.indices.to_numpy(zero_copy_only=False)]


def strictly_ascending(batches: Iterable[pa.RecordBatch | pa.Table], key: Sequence[str]) -> bool:
    """`Ascending` over `batches`, stopping at the first row out of order."""
    check = Ascending(key)
    return all(check.add(b) for b in batches)


def found_in(values: pa.Array, universe: pa.Array, distinct: bool = False) -> pa.Array:
    """values ∈ universe (null stays null); `distinct`: the universe is already distinct, without nulls."""
    values = plain(values)
    res = pc.is_in(values, value_set=universe if distinct else plain(universe).drop_null().unique())
    return pc.if_else(values.is_null(), pa.scalar(None, pa.bool_()), res)


def take_rows(table: pa.Table, positions: np.ndarray) -> pa.Table:
    """The rows at sorted `positions`, batch by batch: `Table.take` concatenates a chunked column's
    chunks first, which overflows a column of over 2 GB of strings (10 M persons' employment)."""
    out, lo = [], 0
    for b in table.to_batches():
        i = positions[np.searchsorted(positions, lo):np.searchsorted(positions, lo + b.num_rows)] - lo
        if len(i):
            out.append(b.take(pa.array(i, pa.int64())))
        lo += b.num_rows
    return pa.Table.from_batches(out, schema=table.schema) if out else table.schema.empty_table()


def to_frame(table: pa.Table) -> pd.DataFrame:
    """pyarrow-backed pandas columns (near zero-copy); `__num_*` shadows as numpy float64, the one
    dtype GX compares vectorised (on any other dtype `between` calls Python per value)."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        elif pa.types.is_list(col.type) and pa.types.is_dictionary(col.type.value_type):
            col = col.cast(pa.list_(col.type.value_field.with_type(col.type.value_type.value_type)))
        cols[name] = col
    df = pa.table(cols).to_pandas(types_mapper=pd.ArrowDtype)
    for name in df.columns:
        if name.startswith("__num_"):
            df[name] = df[name].to_numpy(dtype="float64", na_value=np.nan)
    return df


def num_col(f: str) -> str:
    """The float64 shadow column of `f` that range expectations check."""
    return f"__num_{f}"


def with_num(t: pa.Table, names: Iterable[str]) -> pa.Table:
    """`t` plus the float64 shadows (`num_col`) of the columns `names` that it has."""
    for n in names:
        if n in t.column_names and num_col(n) not in t.column_names:
            t = t.append_column(num_col(n), pc.cast(plain(t[n]), pa.float64()))
    return t
