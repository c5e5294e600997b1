"""Vectorised column checks for the quality gate: what Great Expectations has no expectation for.

The GB 11643 validity of ID numbers (format, birth date, check character — the check character
from `schemas.idno.check_chars`), family members' ID numbers, membership in another table's
column (cross-feed links), computed with pyarrow/numpy as boolean helper columns that the
expectations of `quality.suites` then check; and the frames GX validates: pyarrow-backed pandas
columns (near zero-copy) with float64 `__num_<column>` shadows for range checks.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from schemas import idno

#: a normalised 18-character ID number (GX checks it as a regex too)
ID_RE = r"^[0-9]{17}[0-9X]$"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def plain(a: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One contiguous, dictionary-decoded array."""
    if isinstance(a, pa.ChunkedArray):
        a = a.combine_chunks() if a.num_chunks != 1 else a.chunk(0)
    if pa.types.is_dictionary(a.type):
        a = a.dictionary_decode()
    if pa.types.is_large_string(a.type):
        a = a.cast(pa.string())
    return a


def id_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Vectorised GB 11643 validity of normalised 18-character ID numbers (null stays null).

    Same rules as `schemas.idno.normalise` on an already normalised number: 17 digits and a
    digit or `X`, a real birth date in 1900–2099, and the check character.
    """
    a = plain(values)
    if not pa.types.is_string(a.type):
        a = a.cast(pa.string())
    n = len(a)
    fmt = pc.match_substring_regex(a, ID_RE).fill_null(False).to_numpy(zero_copy_only=False)
    ok = np.zeros(n, dtype=bool)
    pos = np.flatnonzero(fmt)
    if len(pos):
        good = a.filter(pa.array(fmt))
        offs = np.frombuffer(good.buffers()[1], np.int32, count=len(good) + 1, offset=good.offset * 4)
        m = np.frombuffer(good.buffers()[2], np.uint8)[offs[0]:offs[-1]].reshape(len(good), 18)
        first17 = m[:, :17] - np.uint8(48)
        check_ok = idno.check_chars(first17) == m[:, 17].copy().view("S1").astype("U1")
        digits = first17.astype(np.int64)
        y = digits[:, 6:10] @ np.array([1000, 100, 10, 1])
        mo = digits[:, 10:12] @ np.array([10, 1])
        d = digits[:, 12:14] @ np.array([10, 1])
        leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
        dim = _DAYS_IN_MONTH[np.clip(mo, 0, 12)] + ((mo == 2) & leap)
        date_ok = (y >= 1900) & (y <= 2099) & (mo >= 1) & (mo <= 12) & (d >= 1) & (d <= dim)
        ok[pos] = check_ok & date_ok
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    return pa.array(ok, mask=nulls if nulls.any() else None)


def members_ok(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per list of {id_no, relation}: non-empty and every member's ID number valid (null stays null)."""
    a = plain(values)
    n = len(a)
    ok = pc.fill_null(pc.greater(pc.list_value_length(a), 0), False).to_numpy(zero_copy_only=False).copy()
    flat = pc.list_flatten(a)
    if len(flat):
        member_ok = pc.fill_null(id_ok(pc.struct_field(flat, "id_no")), False).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(a).to_numpy(zero_copy_only=False)
        ok[parents[~member_ok]] = False
    nulls = a.is_null().to_numpy(zero_copy_only=False)
    return pa.array(ok, mask=nulls if nulls.any() else None) if n else pa.array([], pa.bool_())


def found_in(values: pa.Array, universe: pa.Array) -> pa.Array:
    """values ∈ universe (null stays null)."""
    values = plain(values)
    res = pc.is_in(values, value_set=plain(universe).drop_null().unique())
    return pc.if_else(values.is_null(), pa.scalar(None, pa.bool_()), res)


def to_frame(table: pa.Table) -> pd.DataFrame:
    """pyarrow-backed pandas columns (near zero-copy); `__num_*` shadows as numpy float64, the one
    dtype GX compares vectorised (on any other dtype `between` calls Python per value)."""
    cols = {}
    for name in table.column_names:
        col = table[name]
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
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
