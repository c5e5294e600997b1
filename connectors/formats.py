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

from connectors.mapping import Mapping
from safetynet.normalise import _lit, _q
from schemas.contract import Contract


class FileFormatError(ValueError):
    """A whole file cannot be read (encoding, missing required columns). `rule` names why.

    `records` holds the file's data records as text (a CSV or JSON Lines line, a sheet row as
    JSON) where they can still be told apart, so the file counts as that many quarantined
    records; None when not even that is possible (an unreadable workbook: one record).
    """

    def __init__(self, rule: str, message: str, records: list[str] | None = None):
        super().__init__(message)
        self.rule = rule
        self.records = records


def _lines(data: bytes) -> list[str]:
    """The non-blank lines of undecodable text, each decoded as far as it goes (for quarantine)."""
    sep = b"\n\x00" if data.startswith(codecs.BOM_UTF16_LE) else b"\n"
    return [ln.decode("utf-8", "replace").strip("\r\x00") for ln in data.split(sep) if ln.strip(b"\r\x00 \t")]


# ---- JSON (Kafka envelopes and JSON Lines) ---------------------------------------------------
def _json_key(base: str, key: str) -> str:
    return f'{base}."' + key.replace('"', '') + '"'


def json_records_sql(c: Contract, source: str, *, envelope: bool | None, mapping: Mapping | None = None) -> str:
    """SQL extracting contract fields as text from a `_value` JSON text column of `source`.

    `envelope=True` (Kafka): every value is an event envelope; fields come from `$.payload` and
    the envelope is checked (event_id, op, occurred_at, source/feed, schema_version).
    `envelope=None` (JSON Lines drops): per line, a flat record (fields at the top level) or an
    envelope (an export of the department's outbox: `payload` is an object and `event_id` is
    present), which is checked like an event on the topic and keeps its event id, op and time.
    A field is read from its own name and from every key the feed's mapping maps to it.
    """
    keys = {n: [n, *(mapping.keys_for(n) if mapping else [])] for n in c.names}
    head = ["$.event_id", "$.op", "$.occurred_at", "$.source", "$.feed", "$.schema_version"]
    paths = list(head)
    pos: dict[str, list[int]] = {}
    for n, ks in keys.items():
        for base in (("$.payload",) if envelope else ("$.payload", "$")):
            for k in ks:
                pos.setdefault(f"{base}|{n}", []).append(len(paths) + 1)
                paths.append(_json_key(base, k))
    allp = ", ".join(_lit(p) for p in paths)

    def fld(base: str, n: str) -> str:
        idx = pos[f"{base}|{n}"]
        return f"__x[{idx[0]}]" if len(idx) == 1 else "coalesce(" + ", ".join(f"__x[{i}]" for i in idx) + ")"

    env = "true" if envelope else "coalesce(__pt = 'OBJECT' AND __x[1] IS NOT NULL, false)"
    if envelope:
        cols = ", ".join(f"{fld('$.payload', n)} AS {_q(n)}" for n in c.names)
    else:
        cols = ", ".join(f"CASE WHEN __env THEN {fld('$.payload', n)} ELSE {fld('$', n)} END AS {_q(n)}"
                         for n in c.names)
    envelope_bad = (
        "__x[1] IS NULL OR coalesce(__x[2], '') NOT IN ('upsert', 'delete') "
        f"OR __pt IS DISTINCT FROM 'OBJECT' OR __x[4] IS DISTINCT FROM {_lit(c.department)} "
        f"OR __x[5] IS DISTINCT FROM {_lit(c.feed)} OR __ts IS NULL "
        f"OR TRY_CAST(coalesce(__x[6], '{c.version}') AS INTEGER) IS DISTINCT FROM {c.version}")
    pre = ("CASE WHEN NOT __ok THEN 'json_malformed' "
           + ("" if envelope else "WHEN __top IS DISTINCT FROM 'OBJECT' THEN 'json_malformed' ")
           + f"WHEN __env AND ({envelope_bad}) THEN 'envelope_invalid' ")
    meta = ("CASE WHEN __env THEN __x[1] END AS _event_id, CASE WHEN __env THEN coalesce(__x[2], 'upsert') "
            "ELSE 'upsert' END AS _op, CASE WHEN __env THEN __x[3] END AS _occurred_at")
    if c.evolution == "frozen":
        known = ", ".join(_lit(k) for ks in keys.values() for k in ks)
        body = ("json_keys(_value, '$.payload')" if envelope else
                "CASE WHEN __env THEN json_keys(_value, '$.payload') ELSE json_keys(_value) END")
        pre += f"WHEN len(list_filter({body}, lambda k: k NOT IN ({known}))) > 0 THEN 'unknown_field' "
    pre += "END"
    # the occurred_at check is a column of its own, not inside the CASE (DuckDB evaluates an
    # expensive expression in a CASE branch several times slower)
    return (
        f"WITH __j AS (SELECT *, coalesce(json_valid(_value), false) AS __ok FROM {source}), "
        f"__e AS (SELECT *, CASE WHEN __ok THEN json_extract_string(_value, [{allp}]) END AS __x, "
        "CASE WHEN __ok THEN json_type(_value, '$.payload') END AS __pt, "
        + ("NULL AS __top FROM __j), " if envelope else "CASE WHEN __ok THEN json_type(_value) END AS __top FROM __j), ")
        + f"__d AS (SELECT *, {env} AS __env, sn_datetime(__x[3]) AS __ts FROM __e) "
        f"SELECT * EXCLUDE (__ok, __x, __pt, __top, __env, __ts, _value), _value AS _raw, {meta}, {cols}, "
        f"{pre} AS _pre FROM __d"
    )


def map_values_sql(c: Contract, source: str, mapping: Mapping | None) -> str:
    """`source` with the mapping's `[values]` applied to the (trimmed) text of each mapped field;
    a value mapped to "" becomes empty (NULL). Other values pass unchanged to validation."""
    if mapping is None or not mapping.values:
        return f"SELECT * FROM {source}"
    repl = []
    for n, vm in mapping.values.items():
        whens = " ".join(f"WHEN {_lit(k)} THEN {'NULL' if v == '' else _lit(v)}" for k, v in vm.items())
        repl.append(f"CASE trim(CAST({_q(n)} AS VARCHAR), ' \t\r\n\u3000\u00a0') {whens} ELSE {_q(n)} END AS {_q(n)}")
    return f"SELECT * REPLACE ({', '.join(repl)}) FROM {source}"


def decode_json_values(con: duckdb.DuckDBPyConnection, c: Contract, values: list[bytes], meta: pa.Table,
                       *, envelope: bool | None, mapping: Mapping | None = None) -> pa.Table:
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
        return con.sql(json_records_sql(c, "__msg", envelope=envelope, mapping=mapping)).to_arrow_table()
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
    jsonl = lower.endswith((".jsonl", ".ndjson"))
    try:
        text, enc = decode_text(data)
    except FileFormatError as e:  # count what the file holds: its data lines (after the header)
        lines = _lines(data)
        e.records = lines if jsonl else lines[1:]
        raise
    if jsonl:
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


def _row_json(header: list[str], r: list[str | None]) -> str:
    return json.dumps(dict(zip(header, r, strict=False)), ensure_ascii=False)


def rows_to_records(c: Contract, header: list[str], rows: list[list[str | None]], mapping: Mapping | None = None,
                    *, strict: bool = True) -> pa.Table:
    """Map a tabular file's columns to contract fields → text records with `_raw`, `_pre`, `_row_number`.

    Columns are matched by English name, Chinese label or the feed mapping's `[headers]`.
    Raises `FileFormatError('file_header')` when a required column is missing, naming the
    headers found (`strict=False`: a missing column is left empty, for profiling). Unknown
    columns are ignored under the additive evolution mode; under frozen they reject the file.
    """
    mapped, missing = c.map_headers(header, mapping.headers if mapping else None)
    if missing and strict:
        labels = ", ".join(f"{m} ({c.field(m).label_zh})" for m in missing)
        found = ", ".join(h for h in header if h) or "none"
        raise FileFormatError("file_header", f"{c.feed_id}: the file lacks required column(s) {labels}; "
                              f"headers found: {found}", [_row_json(header, r) for r in rows])
    unknown = [h for h, m in zip(header, mapped, strict=True) if m is None and h]
    if unknown and c.evolution == "frozen" and strict:
        raise FileFormatError("file_header", f"{c.feed_id}: unknown column(s) under frozen evolution: {unknown}",
                              [_row_json(header, r) for r in rows])
    idx = {m: i for i, m in enumerate(mapped) if m is not None}
    width = len(header)
    cols: dict[str, list] = {n: [] for n in c.names}
    raws, pres = [], []
    for r in rows:
        for n in c.names:
            i = idx.get(n)
            cols[n].append(r[i] if i is not None and i < len(r) else None)
        raws.append(_row_json(header, r))
        pres.append("row_shape" if len(r) > width and any(v not in (None, "") for v in r[width:]) else None)
    t = pa.table({n: pa.array(v, pa.string()) for n, v in cols.items()})
    t = t.append_column("_raw", pa.array(raws, pa.string()))
    t = t.append_column("_pre", pa.array(pres, pa.string()))
    # spreadsheet row numbers: the header is row 1, so the first data row is row 2
    return t.append_column("_row_number", pa.array(range(2, len(rows) + 2), pa.int64()))
