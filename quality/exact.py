"""Exact metrics of the gate's expectations, in DuckDB over every row (`quality.gate` runs them).

Great Expectations validates a frame of at most `SAMPLE_ROWS` rows per target (`sample_positions`:
a fixed-seed random sample, plus the rows that fail); what every row says — element, missing and
unexpected counts, the positions of the first `max_examples` failing rows — is computed here, in
SQL over the target's full relation (`quality.suites.Target.sql`: the clean Parquet files, or
Arrow tables, as DuckDB scans them (`quality.sources`), with the helper columns: ID validity and
formats computed vectorised in Arrow, cross-feed existence as a semi-join, range shadows as
casts). `unexpected_sql` is the one translation of a GX expectation into SQL, with GX's
semantics: a map expectation counts non-null values only (`not_null` counts the nulls), `unique`
counts every copy of a duplicated non-null value, a compound key counts nulls as values, a pair
comparison skips rows where both values are missing.

An expectation this module cannot translate (column set, types: the validated frame has the very
schema of the full table) keeps GX's own result; one whose columns the relation lacks is left to
GX, which reports the missing column as an error.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import duckdb
import numpy as np

#: rows of one target GX validates when the target is larger (plus the failing rows found here)
SAMPLE_ROWS = 5_000
#: the sample's seed (with a CRC-32 of the target's name: each target its own, reproducible sample)
SAMPLE_SEED = 20261101
#: a target read a block at a time and larger than this is sampled in the blocks drawn until they
#: hold this many rows (`sample_positions`)
SAMPLE_SPAN = 1 << 20
#: at most this many rows of the first duplicated keys go to GX with them (their other copies)
_COMPANIONS = 200


@dataclass
class Metric:
    """What every row of a target says about one expectation."""

    element_count: int
    missing_count: int | None = None
    unexpected_count: int | None = None
    observed_value: Any = None
    #: a table expectation's verdict (a map expectation: no unexpected row)
    ok: bool | None = None
    #: positions (`__pos`) of the first failing rows, in order; with their duplicates' other copies
    examples: list[int] = field(default_factory=list)
    companions: list[int] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.ok if self.ok is not None else not self.unexpected_count

    def result(self) -> dict:
        """GX's SUMMARY fields of a map expectation (or `observed_value` of a table one)."""
        if self.unexpected_count is None:
            return {"observed_value": self.observed_value}
        n, miss, bad = self.element_count, self.missing_count or 0, self.unexpected_count
        nonmissing = n - miss
        pct = 100.0 * bad / nonmissing if nonmissing else 0.0
        return {"element_count": n, "unexpected_count": bad, "unexpected_percent": pct, "missing_count": miss,
                "missing_percent": 100.0 * miss / n if n else None,
                "unexpected_percent_total": 100.0 * bad / n if n else 0.0, "unexpected_percent_nonmissing": pct}


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int | float):
        return repr(v)
    return "'" + str(v).replace("'", "''") + "'"


def columns_of(etype: str, kw: dict) -> list[str]:
    """The frame columns an expectation reads."""
    if "column_list" in kw and etype == "expect_compound_columns_to_be_unique":
        return list(kw["column_list"])
    if "column_A" in kw:
        return [kw["column_A"], kw["column_B"]]
    return [kw["column"]] if "column" in kw and etype.startswith("expect_column_values") else []


def unexpected_sql(etype: str, kw: dict) -> str | None:
    """The SQL condition of a row GX counts as unexpected (None: not a row-level expectation, or
    one of the uniqueness checks `measure` groups instead)."""
    col = ident(kw["column"]) if "column" in kw else None
    if etype == "expect_column_values_to_not_be_null":
        return f"{col} IS NULL"
    if etype == "expect_column_values_to_be_in_set":
        return f"{col} IS NOT NULL AND {col} NOT IN ({', '.join(literal(v) for v in kw['value_set'])})"
    if etype == "expect_column_values_to_be_between":
        out = [f"{col} < {literal(kw['min_value'])}" if kw.get("min_value") is not None else "",
               f"{col} > {literal(kw['max_value'])}" if kw.get("max_value") is not None else ""]
        return f"{col} IS NOT NULL AND ({' OR '.join(x for x in out if x) or 'FALSE'})"
    if etype == "expect_column_values_to_match_regex":  # GX (pandas) searches, as regexp_matches does
        return f"{col} IS NOT NULL AND NOT regexp_matches({col}, {literal(kw['regex'])})"
    if etype == "expect_column_pair_values_a_to_be_greater_than_b":
        a, b = ident(kw["column_A"]), ident(kw["column_B"])
        op = ">=" if kw.get("or_equal") else ">"
        return f"NOT ({a} IS NULL AND {b} IS NULL) AND NOT coalesce({a} {op} {b}, FALSE)"
    return None


def _key(etype: str, kw: dict) -> tuple[str, str] | None:
    """(key expression, filter) of a uniqueness expectation."""
    if etype == "expect_column_values_to_be_unique":
        return ident(kw["column"]), f"{ident(kw['column'])} IS NOT NULL"
    if etype == "expect_compound_columns_to_be_unique":
        return "row(" + ", ".join(ident(c) for c in kw["column_list"]) + ")", "TRUE"
    return None


def measure(con: duckdb.DuckDBPyConnection, rel: str, n: int, expectations: Sequence[tuple[str, dict]],
            max_examples: int, matches: Mapping[tuple[str, str], str] | None = None,
            nulls: Callable[[str], int | None] | None = None,
            unique: Collection[tuple[str, ...]] = (), plain: str | None = None) -> dict[int, Metric | Exception]:
    """Exact metrics of the expectations (index → Metric) over the relation `rel` (a SQL query with
    the frame's columns and `__pos`, `n` rows). Expectations on columns `rel` lacks are left out (GX reports
    them); one whose SQL fails gets the exception. `matches`: (column, regex) → a boolean column of
    `rel` computed vectorised (null where the value is): a regex expectation counts it instead of
    matching every row in SQL (null exactly where the value is: the value itself is not read).
    `nulls`: column → its exact null count when known without a scan (a Parquet file's statistics,
    an Arrow array's count), else None: a not-null expectation is then counted from it, and its
    examples looked for only if there are nulls. `unique`: keys (column tuples) known unique and
    never null (`quality.sources.Source.ascending`): their uniqueness expectations hold without
    grouping every row. `plain`: the same rows with only some of `rel`'s columns (no helper
    columns, whose joins a scan would pay): a uniqueness or not-null check on its columns scans it."""
    have = set(con.sql(f"SELECT * FROM ({rel}) LIMIT 0").columns)
    src = f"({rel})"
    lean = set(con.sql(f"SELECT * FROM ({plain}) LIMIT 0").columns) if plain is not None else set()

    def over(cols: Collection[str]) -> str:  # the cheapest relation holding `cols`
        return f"({plain})" if cols and set(cols) <= lean else src

    out: dict[int, Metric | Exception] = {}
    maps: dict[int, tuple[str, str | None]] = {}
    for i, (etype, kw) in enumerate(expectations):
        cols = columns_of(etype, kw)
        if etype == "expect_table_row_count_to_be_between":
            lo, hi = kw.get("min_value"), kw.get("max_value")
            out[i] = Metric(n, observed_value=n, ok=(lo is None or n >= lo) and (hi is None or n <= hi))
            continue
        if not cols or not set(cols) <= have:
            continue
        done = (matches or {}).get((str(kw["column"]), str(kw["regex"]))) if etype == _REGEX else None
        known = nulls(str(kw["column"])) if nulls is not None and etype == _NOT_NULL else None
        if done is not None and done in have:
            maps[i] = (f"NOT {ident(done)}", f"{ident(done)} IS NULL")
        elif known is not None:
            out[i] = counted = Metric(n, known, known)
            if known:
                counted.examples = _positions(con, f"SELECT __pos FROM {over(cols)} WHERE {unexpected_sql(etype, kw)}",
                                              max_examples)
        elif (pred := unexpected_sql(etype, kw)) is not None:
            maps[i] = (pred, f"{ident(kw['column'])} IS NULL" if "column" in kw else None)
        elif _key(etype, kw) is not None and tuple(cols) in unique:
            out[i] = Metric(n, 0, 0)
        elif (key := _key(etype, kw)) is not None:
            out[i] = _guard(partial(_unique, con, over(cols), n, key[0], key[1], max_examples))
    counts: dict[int, tuple] = {}
    if maps:
        try:
            row = _one(con, f"SELECT {', '.join(_counts(*pm) for pm in maps.values())} FROM {src}")
            counts = {i: row[2 * j:2 * j + 2] for j, i in enumerate(maps)}
        except duckdb.Error:  # one expectation's SQL fails: each alone, so only that one reports it
            for i, pm in maps.items():
                got = _guard(partial(_one, con, f"SELECT {_counts(*pm)} FROM {src}"))
                if isinstance(got, Exception):
                    out[i] = got
                else:
                    counts[i] = got
    for i, (bad, miss) in counts.items():
        metric = Metric(n, int(bad if expectations[i][0] == _NOT_NULL else miss), int(bad))
        if bad:
            metric.examples = _positions(con, f"SELECT __pos FROM {src} WHERE {maps[i][0]}", max_examples)
        out[i] = metric
    return out


_REGEX = "expect_column_values_to_match_regex"
_NOT_NULL = "expect_column_values_to_not_be_null"


def _counts(pred: str, missing: str | None) -> str:
    """The unexpected and the missing count of one expectation (SQL select items)."""
    # count_if rather than count(*) FILTER: the same count (but NULL over no rows), faster (the 34
    # counts over the 10 M-person output table: 2.9–3.6 s against 3.8–4.1 s)
    return f"coalesce(count_if({pred}), 0), " + (f"coalesce(count_if({missing}), 0)" if missing else "0")


def _guard(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except duckdb.Error as e:
        return e


def _one(con: duckdb.DuckDBPyConnection, query: str) -> tuple:
    return con.execute(query).fetchall()[0]


def _positions(con: duckdb.DuckDBPyConnection, query: str, limit: int) -> list[int]:
    return [int(r[0]) for r in con.execute(f"{query} ORDER BY __pos LIMIT {int(limit)}").fetchall()]


def _unique(con: duckdb.DuckDBPyConnection, src: str, n: int, key: str, where: str, max_examples: int) -> Metric:
    """Every copy of a duplicated key is unexpected (GX's count); nulls of a single key are missing.

    Two steps, both exact: the 64-bit hashes of the keys that occur more than once (grouping
    one integer is several times faster than grouping the columns), then the keys of only those
    rows grouped for real (a hash collision is no duplicate)."""
    cols = key.removeprefix("row(").removesuffix(")")
    twice = (f"SELECT h FROM (SELECT hash({cols}) AS h FROM {src} WHERE {where}) GROUP BY h HAVING count(*) > 1")
    rows = f"SELECT __pos, {key} AS k FROM {src} WHERE {where} AND hash({cols}) IN ({twice})"
    dups = f"SELECT k FROM ({rows}) GROUP BY k HAVING count(*) > 1"
    bad, miss = _one(con, f"SELECT (SELECT coalesce(sum(c), 0) FROM (SELECT count(*) AS c FROM ({rows}) GROUP BY k "
                          f"HAVING count(*) > 1)), (SELECT count(*) FILTER (WHERE NOT ({where})) FROM {src})")
    m = Metric(n, int(miss), int(bad))
    if bad:
        dup_rows = f"SELECT __pos, k FROM ({rows}) WHERE k IN ({dups})"
        m.examples = _positions(con, f"SELECT __pos FROM ({dup_rows})", max_examples)
        first = f"SELECT k FROM ({dup_rows}) WHERE __pos IN ({', '.join(map(str, m.examples))})"
        m.companions = _positions(con, f"SELECT __pos FROM ({dup_rows}) WHERE k IN ({first})", _COMPANIONS)
    return m


def sample_positions(name: str, rows: int, size: int, blocks: Sequence[int] | None = None) -> np.ndarray:
    """The sorted positions GX validates of a target with `rows` rows: all of them up to `size`,
    else a random sample without replacement, seeded by `SAMPLE_SEED` and the target name.

    Uniform over every row, unless the target is read a block at a time (`blocks`: the rows of each
    of a file's row groups) and holds more than `SAMPLE_SPAN` rows: then in two stages — blocks
    drawn at random until they hold `SAMPLE_SPAN` rows, then the rows uniformly among theirs — so
    that reading the sample decodes about `SAMPLE_SPAN` rows, not the whole file (5,000 rows
    spread uniformly over 51 M touch every row group)."""
    if rows <= size:
        return np.arange(rows, dtype=np.int64)
    rng = np.random.default_rng([SAMPLE_SEED, zlib.crc32(name.encode())])
    if not blocks or sum(blocks) != rows or rows <= SAMPLE_SPAN:
        return np.sort(rng.choice(rows, size=size, replace=False)).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(blocks)[:-1])).astype(np.int64)
    chosen, held = [], 0
    for b in rng.permutation(len(blocks)):
        if held >= max(SAMPLE_SPAN, size):
            break
        chosen.append(int(b))
        held += int(blocks[b])
    chosen.sort()
    at = rng.choice(held, size=size, replace=False)  # positions within the chosen blocks, end to end
    ends = np.cumsum([blocks[b] for b in chosen])
    i = np.searchsorted(ends, at, side="right")
    offset = at - np.concatenate(([0], ends[:-1]))[i]
    return np.sort(starts[np.asarray(chosen)[i]] + offset).astype(np.int64)
