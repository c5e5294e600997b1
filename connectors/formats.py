"""Formats: turning bytes into text records — JSON envelopes (Kafka), CSV, XLSX, JSON Lines.

A format knows nothing about transports (where bytes come from) and only uses a contract to
map header names and pick fields; validation is `safetynet.normalise`'s job. Every decoder
returns an Arrow table with one text column per contract field (NULL where absent) plus
`_raw` (the record as received) and `_pre` (a record-level rule, or NULL).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json

import duckdb
import pyarrow as pa

from safetynet.normalise import _lit, _q
from schemas.contract import Contract


class FileFormatError(ValueError):
    """A whole file cannot be read (encoding, missing required columns). `rule` names why."""

    def __init__(self, rule: str, message: str):
        super().__init__(message)
        self.rule = rule


# ---- JSON (Kafka envelopes and JSON Lines) ---------------------------------------------------
def json_records_sql(c: Contract, source: str, *, envelope: bool) -> str:
    """SQL extracting contract fields as text from a `_value` JSON text column of `source`.

    With `envelope`, fields come from `$.payload` and the envelope is checked (event_id, op,
    occurred_at, source/feed); without, from the top level (JSON Lines drops).
    """
    base = "$.payload" if envelope else "$"
    paths = [f"{base}.{n}" for n in c.names]
    head = ["$.event_id", "$.op", "$.occurred_at", "$.source", "$.feed", "$.schema_version"] if envelope else []
    allp = ", ".join(_lit(p) for p in head + paths)
    off = len(head)
    cols = ", ".join(f"__x[{off + i + 1}] AS {_q(n)}" for i, n in enumerate(c.names))
    if envelope:
        pre = (
            "CASE WHEN NOT __ok THEN 'json_malformed' "
            "WHEN __x[1] IS NULL OR coalesce(__x[2], '') NOT IN ('upsert', 'delete') "
            f"OR __pt IS DISTINCT FROM 'OBJECT' OR __x[4] IS DISTINCT FROM {_lit(c.department)} "
            f"OR __x[5] IS DISTINCT FROM {_lit(c.feed)} OR __ts IS NULL "
            f"OR TRY_CAST(coalesce(__x[6], '{c.version}') AS INTEGER) IS DISTINCT FROM {c.version} "
            "THEN 'envelope_invalid' "
        )
        meta = "__x[1] AS _event_id, coalesce(__x[2], 'upsert') AS _op, __x[3] AS _occurred_at"
    else:
        pre = f"CASE WHEN NOT __ok THEN 'json_malformed' WHEN __pt IS DISTINCT FROM 'OBJECT' THEN 'json_malformed' "
        meta = "NULL::VARCHAR AS _event_id, 'upsert' AS _op, NULL::VARCHAR AS _occurred_at"
    if c.evolution == "frozen":
        known = ", ".join(_lit(n) for n in c.names)
        pre += (f"WHEN len(list_filter(json_keys(_value, '{base}'), lambda k: k NOT IN ({known}))) > 0 "
                "THEN 'unknown_field' ")
    pre += "END"
    # the occurred_at check is a column of its own, not inside the CASE (DuckDB evaluates an
    # expensive expression in a CASE branch several times slower)
    ts = "sn_datetime(__x[3])" if envelope else "NULL"
    return (
        f"WITH __j AS (SELECT *, coalesce(json_valid(_value), false) AS __ok FROM {source}), "
        f"__e AS (SELECT *, CASE WHEN __ok THEN json_extract_string(_value, [{allp}]) END AS __x, "
        f"CASE WHEN __ok THEN json_type(_value, '{base}') END AS __pt FROM __j), "
        f"__d AS (SELECT *, {ts} AS __ts FROM __e) "
        f"SELECT * EXCLUDE (__ok, __x, __pt, __ts, _value), _value AS _raw, {meta}, {cols}, {pre} AS _pre FROM __d"
    )


def decode_json_values(con: duckdb.DuckDBPyConnection, c: Contract, values: list[bytes], meta: pa.Table,
                       *, envelope: bool) -> pa.Table:
    """Decode JSON values (bytes) with per-record metadata columns (same length) into text records."""
    arr = pa.array(values, pa.binary())
    try:
        text = arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Not UTF-8 somewhere: decode one by one; an undecodable value keeps its text (replaced
        # characters) and fails JSON validation only if it is not JSON.
        text = pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.string())
    src = meta.append_column("_value", text)
    con.register("__msg", src)
    try:
        return con.sql(json_records_sql(c, "__msg", envelope=envelope)).to_arrow_table()
    finally:
        con.unregister("__msg")


# ---- text files -------------------------------------------------------------------------------
def decode_text(data: bytes) -> tuple[str, str]:
    """Detect the encoding (UTF-8 with/without BOM, GBK/GB18030) → (text, encoding name)."""
    if data.startswith(codecs.BOM_UTF8):
        return data[3:].decode("utf-8"), "utf-8-sig"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            raise FileFormatError("file_encoding", "the file starts like UTF-16 but does not decode") from None
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError:
        raise FileFormatError("file_encoding", "the file is neither UTF-8 nor GBK/GB18030") from None


def read_rows(name: str, data: bytes) -> tuple[list[str], list[list[str | None]], str]:
    """(header, data rows, detected format) of a CSV, XLSX or JSON Lines file."""
    lower = name.lower()
    if lower.endswith((".xlsx", ".xlsm")):
        return (*_read_xlsx(data), "xlsx")
    text, enc = decode_text(data)
    if lower.endswith((".jsonl", ".ndjson")):
        return [], [[line] for line in text.splitlines() if line.strip()], f"jsonl/{enc}"
    sample = text[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel
    rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        return [], [], f"csv/{enc}"
    return [h.strip() for h in rows[0]], [list(r) for r in rows[1:]], f"csv/{enc}"


def _cell(v: object) -> str | None:
    if v is None:
        return None
    if isinstance(v, dt.datetime):
        return v.date().isoformat() if v.time() == dt.time(0) else v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def _read_xlsx(data: bytes) -> tuple[list[str], list[list[str | None]]]:
    import openpyxl

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many types for a broken file
        raise FileFormatError("file_encoding", f"not a readable XLSX workbook ({type(e).__name__})") from None
    try:
        ws = wb.worksheets[0]
        rows = [[_cell(v) for v in r] for r in ws.iter_rows(values_only=True)]
    finally:
        wb.close()
    rows = [r for r in rows if any(v not in (None, "") for v in r)]
    if not rows:
        return [], []
    header = [str(h).strip() if h is not None else "" for h in rows[0]]
    return header, rows[1:]


def rows_to_records(c: Contract, header: list[str], rows: list[list[str | None]]) -> pa.Table:
    """Map a tabular file's columns to contract fields → text records with `_raw`, `_pre`, `_row_number`.

    Raises `FileFormatError('file_header')` when a required column is missing. Unknown columns
    are ignored under the additive evolution mode; under frozen they reject the file.
    """
    mapped, missing = c.map_headers(header)
    if missing:
        labels = ", ".join(f"{m} ({c.field(m).label_zh})" for m in missing)
        raise FileFormatError("file_header", f"{c.feed_id}: the file lacks required column(s) {labels}")
    unknown = [h for h, m in zip(header, mapped, strict=True) if m is None and h]
    if unknown and c.evolution == "frozen":
        raise FileFormatError("file_header", f"{c.feed_id}: unknown column(s) under frozen evolution: {unknown}")
    idx = {m: i for i, m in enumerate(mapped) if m is not None}
    width = len(header)
    cols: dict[str, list] = {n: [] for n in c.names}
    raws, pres = [], []
    for r in rows:
        for n in c.names:
            i = idx.get(n)
            cols[n].append(r[i] if i is not None and i < len(r) else None)
        raws.append(json.dumps(dict(zip(header, r, strict=False)), ensure_ascii=False))
        pres.append("row_shape" if len(r) > width and any(v not in (None, "") for v in r[width:]) else None)
    t = pa.table({n: pa.array(v, pa.string()) for n, v in cols.items()})
    t = t.append_column("_raw", pa.array(raws, pa.string()))
    t = t.append_column("_pre", pa.array(pres, pa.string()))
    # spreadsheet row numbers: the header is row 1, so the first data row is row 2
    return t.append_column("_row_number", pa.array(range(2, len(rows) + 2), pa.int64()))
