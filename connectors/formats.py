"""Formats: turning bytes into text records — JSON envelopes (Kafka), CSV, XLSX, JSON Lines.

A format knows nothing about transports (where bytes come from) and only uses a contract to
map header names and pick fields; validation is `schemas.normalise`'s job. Every decoder
returns an Arrow table with one text column per contract field (NULL where absent) plus
`_raw` (the record as received) and `_pre` (a record-level rule, or NULL).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from connectors.mapping import Mapping
from schemas.contract import IGNORED, Contract, ignored, norm_header
from schemas.envelope import (
    EVENT_ID,
    FEED,
    HEADER,
    OCCURRED_AT,
    OP,
    OPS,
    PAYLOAD,
    SCHEMA_VERSION,
    SOURCE,
    UPSERT,
    json_path,
)
from schemas.idno import mask_text
from schemas.normalise import _WS, _lit, _q

#: Kinds whose values are free text. No contract field may hold a line break or another control
#: character (tab excepted): a text field carrying one is quarantined as `control_char`.
TEXT_KINDS = ("string", "text_list", "members")
#: a control character other than tab (C0, DEL, C1), in a value trimmed as validation trims it
CONTROL = "[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f]"


class FileFormatError(ValueError):
    """A whole file cannot be read (encoding, missing required columns). `rule` names why.

    `records` holds the file's data records as text (a CSV or JSON Lines line, a sheet row as
    JSON) where they can still be told apart, so the file counts as that many quarantined
    records; None when not even that is possible (an unreadable workbook: one record).
    """

    def __init__(self, rule: str, message: str, records: list[str] | None = None, first_row: int | None = None):
        super().__init__(mask_text(message))  # it becomes the records' reason
        self.rule = rule
        self.records = records
        self.first_row = first_row  # the row number of `records[0]`, where it is not the one after a header


def _lines(data: bytes) -> list[str]:
    """The non-blank lines of undecodable text, each decoded as far as it goes (for quarantine)."""
    sep = b"\n\x00" if data.startswith(codecs.BOM_UTF16_LE) else b"\n"
    return [ln.decode("utf-8", "replace").strip("\r\x00") for ln in data.split(sep) if ln.strip(b"\r\x00 \t")]


# ---- JSON (Kafka envelopes and JSON Lines) ---------------------------------------------------
def _json_key(base: str, key: str) -> str:
    return f'{base}."' + key.replace('"', '') + '"'


def json_records_sql(c: Contract, source: str, *, envelope: bool | None, mapping: Mapping | None = None,
                     spellings: dict[str, list[str]] | None = None) -> str:
    """SQL extracting contract fields as text from a `_value` JSON text column of `source`.

    `envelope=True` (Kafka): every value is an event envelope (`schemas.envelope`); fields come
    from its payload and the envelope is checked (event_id, op, occurred_at, source/feed,
    schema_version). `envelope=None` (JSON Lines drops): per line, a flat record (fields at the
    top level) or an envelope (an export of the department's outbox: `event_id` and `payload` are
    present, the payload an object or not), which is checked like an event on the
    topic and keeps its event id, op and time. A field is read from its own name and from every
    key the feed's mapping maps to it, and every key of `spellings` (field → the keys of a JSON Lines
    file that name it in another case or spacing, `json_spellings`). The envelope's SQL is generated
    from `schemas.envelope`.
    """
    # a JSON Lines drop may name a field by its Chinese label too, as a CSV header may (a topic's
    # payload uses the contract's names: feeds.md)
    labels = {} if envelope else {f.name: [f.label_zh] for f in c.fields if f.label_zh and f.label_zh != f.name}
    keys = {n: list(dict.fromkeys([n, *labels.get(n, []), *(mapping.keys_for(n) if mapping else []),
                                   *(spellings or {}).get(n, [])]))
            for n in c.names}
    # the envelope header is extracted first: x[field] is its element of the extracted list __x
    paths = [json_path(f) for f in HEADER]
    x = {f: f"__x[{i}]" for i, f in enumerate(HEADER, 1)}
    pl = json_path(PAYLOAD)
    pos: dict[str, list[int]] = {}
    for n, ks in keys.items():
        for base in ((pl,) if envelope else (pl, "$")):
            for k in ks:
                pos.setdefault(f"{base}|{n}", []).append(len(paths) + 1)
                paths.append(_json_key(base, k))
    allp = ", ".join(_lit(p) for p in paths)

    def fld(base: str, n: str) -> str:
        idx = pos[f"{base}|{n}"]
        return f"__x[{idx[0]}]" if len(idx) == 1 else "coalesce(" + ", ".join(f"__x[{i}]" for i in idx) + ")"

    # a JSON Lines line is an envelope when it has an event id and a payload (of any JSON type: a
    # payload that is null or a string is a broken envelope — a delete read as a flat upsert was lost)
    env = "true" if envelope else f"coalesce(__pt IS NOT NULL AND {x[EVENT_ID]} IS NOT NULL, false)"
    if envelope:
        cols = ", ".join(f"{fld(pl, n)} AS {_q(n)}" for n in c.names)
    else:
        cols = ", ".join(f"CASE WHEN __env THEN {fld(pl, n)} ELSE {fld('$', n)} END AS {_q(n)}"
                         for n in c.names)
    # an empty event id would make every such event a redelivery of one; a time in the future
    # would outrank every later correction of the record
    # the first envelope field at fault names the rule (`envelope_invalid:<field>`): the reason says which
    envelope_bad = (
        f"CASE WHEN coalesce(trim({x[EVENT_ID]}), '') = '' THEN {_lit(EVENT_ID)} "
        f"WHEN coalesce({x[OP]}, '') NOT IN ({', '.join(_lit(o) for o in OPS)}) THEN {_lit(OP)} "
        f"WHEN __pt IS DISTINCT FROM 'OBJECT' THEN {_lit(PAYLOAD)} "
        f"WHEN {x[SOURCE]} IS DISTINCT FROM {_lit(c.department)} THEN {_lit(SOURCE)} "
        f"WHEN {x[FEED]} IS DISTINCT FROM {_lit(c.feed)} THEN {_lit(FEED)} "
        f"WHEN __ts IS NULL OR __ts > now() + INTERVAL 1 DAY THEN {_lit(OCCURRED_AT)} "
        f"WHEN TRY_CAST(coalesce({x[SCHEMA_VERSION]}, '{c.version}') AS INTEGER) IS DISTINCT FROM {c.version} "
        f"THEN {_lit(SCHEMA_VERSION)} END")
    pre = ("CASE WHEN _value IS NULL THEN 'tombstone' WHEN NOT __ok THEN 'json_malformed' "
           + ("" if envelope else "WHEN __top IS DISTINCT FROM 'OBJECT' THEN 'json_malformed' ")
           + f"WHEN __env AND ({envelope_bad}) IS NOT NULL THEN 'envelope_invalid:' || ({envelope_bad}) ")
    meta = (f"CASE WHEN __env THEN {x[EVENT_ID]} END AS _event_id, "
            f"CASE WHEN __env THEN coalesce({x[OP]}, {_lit(UPSERT)}) ELSE {_lit(UPSERT)} END AS _op, "
            f"CASE WHEN __env THEN {x[OCCURRED_AT]} END AS _occurred_at")
    if c.evolution == "frozen":
        ignored_keys = [h for h, f in mapping.raw_headers if f == IGNORED] if mapping else []
        known = ", ".join(_lit(k) for k in [*(k for ks in keys.values() for k in ks), *ignored_keys])
        body = (f"json_keys(_value, {_lit(pl)})" if envelope else
                f"CASE WHEN __env THEN json_keys(_value, {_lit(pl)}) ELSE json_keys(_value) END")
        pre += f"WHEN len(list_filter({body}, lambda k: k NOT IN ({known}))) > 0 THEN 'unknown_field' "
    pre += "END"
    # the occurred_at check is a column of its own, not inside the CASE (DuckDB evaluates an
    # expensive expression in a CASE branch several times slower)
    sql = (
        # one parse for validity and extraction: TRY gives NULL exactly where the text is not JSON (or
        # NULL), and a list (of NULLs where keys are missing) for any JSON text
        f"WITH __j AS (SELECT *, TRY(json_extract_string(_value, [{allp}])) AS __x FROM {source}), "
        f"__e AS (SELECT *, __x IS NOT NULL AS __ok, "
        f"CASE WHEN __x IS NOT NULL THEN json_type(_value, {_lit(pl)}) END AS __pt, "
        + ("NULL AS __top FROM __j), " if envelope else "CASE WHEN __x IS NOT NULL THEN json_type(_value) END AS __top FROM __j), ")
        + f"__d AS (SELECT *, {env} AS __env, sn_datetime({x[OCCURRED_AT]}) AS __ts FROM __e) "
        f"SELECT * EXCLUDE (__ok, __x, __pt, __top, __env, __ts, _value), _value AS _raw, {meta}, {cols}, "
        f"{pre} AS _pre FROM __d"
    )
    # a field holds one value: an object or a list (other than the members and list kinds') is no
    # value of it; an ID number sent as a JSON number of 16+ digits has lost its last ones (a
    # float's precision: JavaScript's), whatever its check character says — its text follows a
    # colon unquoted (the same number quoted elsewhere, e.g. among a case's members, is no excuse)
    shape = [f"CASE WHEN left({_q(f.name)}, 1) IN ('{{', '[') AND json_valid({_q(f.name)}) "
             f"THEN {_lit('json_structure:' + f.name)} END" for f in c.fields if f.kind not in ("members", "text_list")]
    shape += [f"CASE WHEN length({_q(f.name)}) >= 16 AND (contains(_raw, ':' || {_q(f.name)}) "
              f"OR contains(_raw, ': ' || {_q(f.name)})) "
              f"THEN {_lit('number_precision:' + f.name)} END" for f in c.fields if f.kind == "id_no"]
    sql = f"SELECT * REPLACE (coalesce(_pre, {', '.join(shape)}) AS _pre) FROM ({sql})" if shape else sql
    text = [f.name for f in c.fields if f.kind in TEXT_KINDS]
    if not text:
        return sql
    ctrl = ", ".join(f"CASE WHEN regexp_matches(sn_trim({_q(n)}), {_lit(CONTROL)}) THEN {_lit('control_char:' + n)} END"
                     for n in text)
    # valid JSON holds a C0 control character in a string only escaped (raw, it is json_malformed),
    # so a record without a backslash or a DEL needs no per-field check: two substring tests spare
    # nearly every record a regular expression (a regex over the whole text would cost as much as
    # the decoding). A raw C1 character (U+0080–U+009F, legal in JSON) is not looked for here.
    return (f"SELECT * REPLACE (CASE WHEN _pre IS NULL AND (contains(_raw, '\\') OR contains(_raw, chr(127))) "
            f"THEN coalesce({ctrl}) ELSE _pre END AS _pre) FROM ({sql})")


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


def json_text(values: Sequence[bytes | None]) -> pa.Array:
    """Message values (bytes; None for a null value) as the text column `json_records_sql` reads (`_value`)."""
    arr = pa.array(values, pa.binary())
    try:
        text = arr.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # Not UTF-8 somewhere: decode one by one; an undecodable value keeps its text (replaced
        # characters) and fails JSON validation only if it is not JSON.
        text = pa.array([None if v is None else v.decode("utf-8", "replace") for v in values], pa.string())
    if pc.any(pc.starts_with(text, "\ufeff")).as_py():  # a byte-order mark, as a JSON Lines file may have
        text = pc.replace_substring_regex(text, "^\ufeff", "")
    return text


def decode_json_values(con: duckdb.DuckDBPyConnection, c: Contract, values: list[bytes], meta: pa.Table,
                       *, envelope: bool | None, mapping: Mapping | None = None) -> pa.Table:
    """Decode JSON values (bytes) with per-record metadata columns (same length) into text records."""
    src = meta.append_column("_value", json_text(values))
    con.register("__msg", src)
    try:
        return con.sql(json_records_sql(c, "__msg", envelope=envelope, mapping=mapping)).to_arrow_table()
    finally:
        con.unregister("__msg")


# ---- text files -------------------------------------------------------------------------------
#: characters no department's Chinese text holds, which GB18030 makes of another encoding's bytes
#: (Big5 read as GBK): the private-use area, kana, half-width katakana
_UNLIKELY = re.compile("[\ue000-\uf8ff\u3040-\u30ff\uff61-\uff9f]")


def decode_text(data: bytes) -> tuple[str, str]:
    """Detect the encoding (UTF-8 with/without BOM, UTF-16 with BOM, GBK/GB18030, Big5 where
    GB18030 yields only unlikely characters) → (text, encoding name)."""
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
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        raise FileFormatError("file_encoding", "the file is neither UTF-8 nor GBK/GB18030") from None
    if not _UNLIKELY.search(text):
        return text, "gb18030"
    # GB18030 decodes nearly any bytes: private-use characters or kana mean another encoding
    try:
        big5 = data.decode("big5")
    except UnicodeDecodeError:
        big5 = None
    if big5 is not None and not _UNLIKELY.search(big5):
        return big5, "big5"
    raise FileFormatError("file_encoding", "the file decodes as GBK/GB18030 only into unlikely characters "
                          "(private-use, kana): it is in another encoding — export it as UTF-8 or GBK")


class Row(list):
    """A data row's cells, with where it was in the file and what is wrong with its shape.

    `line`: the physical line (CSV) or sheet row (XLSX) it came from, 1-based, as an editor or
    spreadsheet shows it; `rule`: a record-level rule (`quote_unbalanced`, `row_shape`) when the
    line could not be read as one well-formed row; `text`: the physical line as received, kept
    as the record's `_raw` where its cells are not trustworthy; `lossy`: the columns of a sheet
    row whose cell is a number too long for a spreadsheet to hold exactly (`_lossy`).
    """

    __slots__ = ("line", "lossy", "rule", "text")

    def __init__(self, cells, line: int, rule: str | None = None, text: str | None = None,
                 lossy: tuple[int, ...] = ()):
        super().__init__(cells)
        self.line, self.rule, self.text, self.lossy = line, rule, text, lossy


def physical_lines(text: str) -> list[str]:
    """The lines of a text file without their ends: a line ends at LF or CRLF; a CR alone ends
    a line only in a file that has no LF at all (classic Mac), elsewhere it is a control character
    inside the line. A final line end does not start another line."""
    lines = text.split("\r") if "\n" not in text else text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


class _Cursor:
    """Feeds the CSV reader physical lines from `i` on; tells how many a record took and whether
    the reader asked past the last line in the middle of a record (a quote left open)."""

    __slots__ = ("cr", "i", "lines", "past_end")

    def __init__(self, lines: list[str], i: int):
        self.lines, self.i, self.past_end, self.cr = lines, i, False, ""

    def __iter__(self) -> _Cursor:
        return self

    def __next__(self) -> str:
        if self.i >= len(self.lines):
            self.past_end = True
            raise StopIteration
        ln = self.lines[self.i]
        self.i += 1
        self.cr = ""
        if "\r" in ln:  # a lone CR would stop the reader: carry it through as a character the line lacks
            self.cr = _stand_in(ln)
            return ln.replace("\r", self.cr)
        return ln


def _stand_in(ln: str) -> str:
    return next(ch for ch in map(chr, range(0xE000, 0xF900)) if ch not in ln)  # private use


def _cells(cells: list[str], cr: str) -> list[str]:
    return [c.replace(cr, "\r") for c in cells] if cr else cells


def csv_rows(lines: list[str], dialect: type[csv.Dialect] | csv.Dialect) -> Iterator[Row]:
    """Every non-blank physical line as one `Row`, numbered from 1.

    No contract field may span lines, so a quoted field the reader would continue onto the next
    line (or past the last) is the line's fault: that line becomes a `quote_unbalanced` row (its
    cells as far as they go) and reading starts again at the next line — an unbalanced quote
    never swallows the lines after it. Cost stays linear: a restart re-reads only the lines up
    to the quote that closed the span.
    """
    i, n = 0, len(lines)
    while i < n:
        cur = _Cursor(lines, i)
        rd = csv.reader(cur, dialect, strict=False)
        i = n  # unless a bad line makes reading start again after it
        while cur.i < n:
            start = cur.i
            try:
                cells = next(rd)
            except StopIteration:
                break
            except csv.Error:  # a field over the reader's size limit
                cells = None
            if cells is not None and cur.i - start == 1 and not cur.past_end:
                if any(c.strip() for c in cells):
                    yield Row(_cells(cells, cur.cr), start + 1)
                continue
            text = lines[start]
            spanned = cur.i - start > 1 or cur.past_end
            cr = _stand_in(text) if "\r" in text else ""
            try:
                part = next(csv.reader([text.replace("\r", cr) if cr else text], dialect, strict=False), [])
            except csv.Error:
                part = []
            yield Row(_cells(part, cr), start + 1, "quote_unbalanced" if spanned or _odd_quotes(text, dialect)
                      else "row_shape", text)
            i = start + 1
            break


def _odd_quotes(text: str, dialect: type[csv.Dialect] | csv.Dialect) -> bool:
    return text.count(getattr(dialect, "quotechar", None) or '"') % 2 == 1


def read_rows(name: str, data: bytes) -> tuple[list[str], Sequence[list[str | None]], str]:
    """(header, data rows, detected format) of a CSV, XLSX or JSON Lines file.

    Data rows are `Row`s: every non-blank physical line of a CSV or JSON Lines file after the
    header (every non-empty sheet row of a workbook) is one, so the input count is the count
    of data lines whatever they hold; a line that cannot be read as a row carries its rule.
    """
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
    lines = physical_lines(text)
    if jsonl:  # a line ends at LF only: U+2028 or a form feed inside a JSON string is no line end
        return [], [Row([ln], i + 1) for i, ln in enumerate(lines) if ln.strip()], f"jsonl/{enc}"
    sample = "\n".join(lines[:50])[:4096]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel
    rows = csv_rows(lines, dialect)
    header = next(rows, None)
    if header is None:
        return [], [], f"csv/{enc}"
    return [h.strip() for h in header], list(rows), f"csv/{enc}"


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


def _lossy(v: object) -> bool:
    """A number cell of 16 or more digits: a spreadsheet keeps 15 significant digits (an ID number
    typed as a number loses its last ones — 431302197003125004 is stored as …125000, or read back
    as …124992), so its value is not what was meant, whatever it reads as."""
    return isinstance(v, int | float) and not isinstance(v, bool) and abs(v) >= 1e15


# the last value element (a cell's `<v>`, an inline string's `<is>`) / row start tag in a buffer:
# a greedy prefix makes the search start from the end, at C speed
_LAST_VALUE = re.compile(rb"(?s:.*)<(?:[A-Za-z_][\w.-]*:)?(?:v|is)[\s>]")
_LAST_ROW = re.compile(rb"(?s:.*)<(?:[A-Za-z_][\w.-]*:)?row(?=[\s>/])([^>]*)>")
_ROW_TAG = re.compile(rb"<(?:[A-Za-z_][\w.-]*:)?(row|v|is)(?=[\s>/])([^>]*)>")
_ROW_R = re.compile(rb"""\sr\s*=\s*["']([0-9.]+)["']""")


_NS = rb"(?:[A-Za-z_][\w.-]*:)?"
#: a formula cell with no saved result: its `<f>` and no `<v>`, or an empty one (a file written by a
#: program that does not compute formulas: openpyxl, many exporters) — read as an empty cell
_FORMULA_EMPTY = re.compile(rb"<" + _NS + rb"c\b([^>]*)>\s*<" + _NS + rb"f\b[^>]*(?:/>|>[^<]*</" + _NS + rb"f>)\s*"
                            rb"(?:<" + _NS + rb"v\s*/>|<" + _NS + rb"v>\s*</" + _NS + rb"v>)?\s*</" + _NS + rb"c>")
_CELL_REF = re.compile(rb"""\sr\s*=\s*["']([A-Z]{1,3}[0-9]+)["']""")
_CELL_END = re.compile(rb"(?s:.*)</" + _NS + rb"c>")


#: a merged range (`<mergeCell ref="A3:A5"/>`, after the sheet's cells): its corners
_MERGE = re.compile(rb"<" + _NS + rb"""mergeCell\b[^>]*?\sref\s*=\s*["']([A-Z]{1,3})([0-9]+):([A-Z]{1,3})([0-9]+)["']""")


#: a row element hidden in the workbook (`<row r="5" hidden="1">`): its attributes
_HIDDEN_ROW = re.compile(rb"<" + _NS + rb"""row\b([^>]*\shidden\s*=\s*["'](?:1|true)["'][^>]*)>""")


@dataclass
class SheetMarks:
    """What a worksheet's XML says beside its cells' values (`sheet_marks`)."""

    formulas: list[str] = field(default_factory=list)  # formula cells without a saved value (`B5`)
    merges: list[tuple[int, int, int, int]] = field(default_factory=list)  # (first col, first row, last col, last row), 0-based cols
    hidden_rows: list[int] = field(default_factory=list)  # rows hidden in the workbook (a filter, "hide")


def column_index(letters: str) -> int:
    """`A` → 0, `Z` → 25, `AA` → 26."""
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - 64
    return n - 1


def column_letters(i: int) -> str:
    """0 → `A`, 26 → `AA` (`column_index`'s inverse)."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(65 + r) + out
    return out


def sheet_marks(open_sheet: Callable[[], io.BufferedIOBase], block: int = 1 << 22) -> SheetMarks:
    """A worksheet's formula cells that hold no saved value, and its merged ranges, in one
    streaming pass: a block without an `f` or a `mergeCell` element is skipped at memchr speed."""
    out = SheetMarks()
    tail = b""
    with open_sheet() as sheet:
        for chunk in _chunks(sheet, block):
            if b"mergeCell" in chunk:  # a chunk ends before a "<": no tag is cut
                out.merges += [(column_index(a.decode()), int(r1), column_index(b.decode()), int(r2))
                               for a, r1, b, r2 in _MERGE.findall(chunk)]
            if b"hidden" in chunk:
                for attrs in _HIDDEN_ROW.findall(chunk):
                    r = _ROW_R.search(attrs)
                    if r:  # (a row without `r` is not looked for: Excel and WPS write it)
                        out.hidden_rows.append(int(float(r.group(1))))
            buf = tail + chunk
            end = _CELL_END.match(buf)  # a cell may straddle two blocks: the text after the last cell waits
            done, tail = (buf[:end.end()], buf[end.end():]) if end else (b"", buf)
            if b"f>" not in done and b"f " not in done:
                continue
            for m in _FORMULA_EMPTY.finditer(done):
                r = _CELL_REF.search(m.group(1))
                out.formulas.append(r.group(1).decode() if r else "?")
    return out


def _chunks(sheet: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    """The XML in blocks that end just before a "<" (so no tag is cut: "<" never occurs inside one)."""
    tail = b""
    while block := sheet.read(size):
        buf = tail + block
        cut = buf.rfind(b"<")
        if cut <= 0:  # no tag starts in it yet: read on
            tail = buf
            continue
        yield buf[:cut]
        tail = buf[cut:]
    if tail:
        yield tail


def last_value_row(open_sheet: Callable[[], io.BufferedIOBase], block: int = 1 << 22) -> int:
    """The number of the last row of a worksheet's XML that holds a value (a cell `<v>` or an
    inline string `<is>`), 0 if none — in one streaming pass, without parsing the XML.

    A sheet can claim (and even spell out) a million rows of which three hold data; reading
    stops at this row. Rows are numbered as openpyxl numbers them: by `r`, else one more than
    the previous row. The fast pass reads the `r` of the row around each block's last value;
    a sheet whose rows lack `r` there is counted tag by tag instead.
    """
    last = 0
    prev_r: int | None = 0  # `r` of the last row started in an earlier block (None: without r)
    with open_sheet() as sheet:
        for buf in _chunks(sheet, block):
            # most blocks of a padded sheet hold no value: a value is a `<v>` or an inline string
            # (its cell has t="inlineStr"), so a block without a "v" or an "S" is skipped at memchr speed
            v = (b"v" in buf or b"S" in buf) and _LAST_VALUE.match(buf)
            if v:
                row = _LAST_ROW.match(buf, 0, v.end())
                r = _ROW_R.search(row.group(1)) if row else None
                if r:
                    last = int(float(r.group(1)))
                elif row or prev_r is None:  # a row without `r`, or no row here and none with `r` before
                    return _count_rows(open_sheet, block)
                else:
                    last = prev_r
            row = _LAST_ROW.match(buf)
            if row:
                r = _ROW_R.search(row.group(1))
                prev_r = int(float(r.group(1))) if r else None
    return last


def _count_rows(open_sheet: Callable[[], io.BufferedIOBase], block: int) -> int:
    row = last = 0
    with open_sheet() as sheet:
        for buf in _chunks(sheet, block):
            for m in _ROW_TAG.finditer(buf):
                if m.group(1) == b"row":
                    r = _ROW_R.search(m.group(2))
                    row = int(float(r.group(1))) if r else row + 1
                else:
                    last = row
    return last


def _read_xlsx(data: bytes) -> tuple[list[str], list[Row]]:
    """Header and data rows of the first sheet (`read_sheets`)."""
    sheets, _ = read_sheets(data)
    return (sheets[0].header, sheets[0].rows) if sheets else ([], [])


@dataclass
class Table:
    """One table of a file: a text file's, or one worksheet's (`sheet`: its name, `index`: its
    place in the workbook). `header` is its header row's cells, `rows` the data rows after it;
    `skipped`: the lines (rows) above the header that are not data — a title, a unit, a blank
    merged row (`locate_header`)."""

    header: list[str]
    rows: list[Row]
    sheet: str | None = None
    index: int = 0
    header_line: int = 1
    skipped: list[int] = field(default_factory=list)
    merges: list[tuple[int, int, int, int]] = field(default_factory=list)  # `SheetMarks.merges`, until `fill_merged`
    notes: list[str] = field(default_factory=list)  # for the operator (formula cells without a value, merges filled)
    hidden_rows: list[int] = field(default_factory=list)  # `SheetMarks.hidden_rows`


def read_sheets(data: bytes) -> tuple[list[Table], list[str]]:
    """(every visible worksheet that holds a value, in workbook order; the hidden sheets' names —
    not data to take in unseen). A sheet's first non-empty row is its header, the rest its data
    rows — streamed (openpyxl read-only) up to the sheet's last row that
    holds a value; empty rows before it are skipped, rows after it never read. A sheet's stated
    dimensions are ignored (they may claim a million rows or columns); a row has as many cells as
    the sheet gives it, and at least as many as the header."""
    import openpyxl

    try:
        wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises many types for a broken file
        raise FileFormatError("file_encoding", f"not a readable XLSX workbook ({type(e).__name__})") from None
    out: list[Table] = []
    hidden: list[str] = []
    try:
        for index, ws in enumerate(wb.worksheets):
            if ws.sheet_state != "visible":  # hidden: old data, deleted records, lookups — said, not read
                hidden.append(ws.title)
                continue
            try:
                # openpyxl's private zip archive and sheet path (not in its stubs): the sheet's XML, streamed
                last = last_value_row(partial(wb._archive.open, ws._worksheet_path))  # type: ignore[attr-defined]
            except (KeyError, OSError, zipfile.BadZipFile, EOFError, ValueError) as e:
                raise FileFormatError("file_encoding", f"not a readable XLSX workbook ({type(e).__name__})") from None
            if last == 0:
                continue
            marks = sheet_marks(partial(wb._archive.open, ws._worksheet_path))  # type: ignore[attr-defined]
            ws.reset_dimensions()
            header: list[str] | None = None
            header_line = 1
            rows: list[Row] = []
            # without dimensions, openpyxl yields every row from 1 on (an empty one for a gap): n is the row number
            for n, r in enumerate(ws.iter_rows(max_row=last, values_only=True), 1):
                if not any(v is not None and v != "" for v in r):
                    continue
                if header is None:
                    header, header_line = [str(h).strip() if h is not None else "" for h in r], n
                    continue
                cells = [_cell(v) for v in r]
                if len(cells) < len(header):
                    cells += [None] * (len(header) - len(cells))
                rows.append(Row(cells, n, lossy=tuple(i for i, v in enumerate(r) if _lossy(v))))
            notes = [] if not marks.formulas else [
                f"sheet {ws.title!r} {len(marks.formulas)} formula cell(s) without a saved value ("
                f"{_listed(marks.formulas)}) read as empty: the file was written by a program that does not compute "
                "formulas — open and save it in Excel or WPS, or export values, and deliver it again"]
            out.append(Table(header or [], rows, ws.title, index, header_line, merges=marks.merges, notes=notes,
                             hidden_rows=marks.hidden_rows))
    finally:
        wb.close()
    return out, hidden


#: how many rows after the first a header is looked for in (titles, units, blank merged rows above it)
HEADER_SEARCH_ROWS = 10


def _known(c: Contract, cells: Sequence[object], headers: dict[str, str] | None) -> tuple[int, bool]:
    """(how many cells are columns of the feed, whether they include every required one)."""
    mapped, missing = c.map_headers(["" if v is None else str(v).strip() for v in cells], headers)
    return sum(m is not None for m in mapped), not missing


def locate_header(c: Contract, t: Table, headers: dict[str, str] | None = None) -> Table:
    """`t` with its header where the feed's columns are: when its first row lacks a required
    column and one of the next `HEADER_SEARCH_ROWS` rows has them all, that row is the header and
    the rows above it are `skipped` (a report title, a unit line, a merged blank row — not data).
    Otherwise `t` as it is (a missing column is then reported against its first row)."""
    if _known(c, t.header, headers)[1]:
        return t
    for k, r in enumerate(t.rows[:HEADER_SEARCH_ROWS]):
        if getattr(r, "rule", None) is None and _known(c, r, headers)[1]:
            header = ["" if v is None else str(v).strip() for v in r]
            width = len(header)
            rows = [Row([*x, *([None] * (width - len(x)))], x.line, x.rule, x.text, x.lossy) if len(x) < width else x
                    for x in t.rows[k + 1:]] if t.sheet is not None else t.rows[k + 1:]
            return replace(t, header=header, rows=rows, header_line=r.line,
                           skipped=[t.header_line, *(x.line for x in t.rows[:k])])
    # a header of two rows (多级表头): a group title over its columns' names, the other names merged
    # down both rows — no single row holds every required column
    first = Row(t.header, t.header_line)
    cand = [first, *t.rows[:HEADER_SEARCH_ROWS]]
    for k in range(len(cand) - 1):
        upper, lower = cand[k], cand[k + 1]
        if getattr(upper, "rule", None) is not None or getattr(lower, "rule", None) is not None:
            continue
        header = _two_row_header(c, upper, lower, headers)
        if _known(c, header, headers)[1]:
            width = len(header)
            after = t.rows[k + 1:]  # the rows after `lower` (cand[k + 1] is t.rows[k])
            rows = [Row([*x, *([None] * (width - len(x)))], x.line, x.rule, x.text, x.lossy) if len(x) < width else x
                    for x in after] if t.sheet is not None else after
            where = f"sheet {t.sheet!r} " if t.sheet is not None else ""
            note = (f"{where}a header of two rows (row {upper.line} and {lower.line}) read as one: each column "
                    "named by its lower cell, or by the upper one where that names a field or the lower is empty")
            return replace(t, header=header, rows=rows, header_line=lower.line,
                           skipped=[t.header_line, *(x.line for x in t.rows[:k - 1])] if k else [],
                           notes=[*t.notes, note])
    return t


def without_repeated_headers(c: Contract, t: Table, headers: dict[str, str] | None = None) -> Table:
    """`t` without the rows that repeat its header (exports joined one after another, each with its
    header): not records, said. They were quarantined as records, a format error in every field.
    Only a header holding every required column counts (a header-less file's first row is data)."""
    cells = [norm_header(h) for h in t.header]
    j = next((i for i, h in enumerate(cells) if h), None)
    if j is None or not _known(c, t.header, headers)[1]:
        return t
    want = cells

    def repeats(r: Sequence[object]) -> bool:
        got = [norm_header("" if v is None else str(v)) for v in r[:len(want)]]
        return got + [""] * (len(want) - len(got)) == want and not any(v not in (None, "") for v in r[len(want):])

    core = str(t.header[j]).strip()  # a cheap first test: a row of 1 M is looked at once, at C speed
    again = [r.line for r in t.rows if j < len(r) and r[j] and core in r[j] and repeats(r)]
    if not again:
        return t
    where = f"sheet {t.sheet!r} " if t.sheet is not None else ""
    note = (f"{where}{len(again)} row(s) repeat the header (row {_listed([str(x) for x in again])}): exports joined "
            "one after another — not records, skipped")
    drop = set(again)
    return replace(t, rows=[r for r in t.rows if r.line not in drop], notes=[*t.notes, note])


def _two_row_header(c: Contract, upper: Sequence[object], lower: Sequence[object],
                    headers: dict[str, str] | None) -> list[str]:
    """One header of two rows: per column the first of (lower, upper, upper + lower) that names a
    field of the feed, else the lower cell, else the upper (a name merged down both rows)."""
    hm = c.header_map(headers)

    def cell(r: Sequence[object], j: int) -> str:
        return "" if j >= len(r) or r[j] is None else str(r[j]).strip()

    out = []
    for j in range(max(len(upper), len(lower))):
        u, lo = cell(upper, j), cell(lower, j)
        named = [x for x in (lo, u, u + lo) if x and norm_header(x) in hm]
        out.append(named[0] if named else lo or u)
    return out


def fill_merged(t: Table) -> Table:
    """`t` (a sheet, its header located) with each merged range of one column in its data rows
    filled down: a roster that merges a person's 身份证号 over their claims, or a household's 户号
    over its members, holds the value in the range's first cell only, and every other row of it
    lost the field (`required_missing`). A range over several columns is not filled (which column
    would the value belong to?): said, since its other cells read as empty. Ranges of the header
    and the rows above it are not data. The rows are changed in place; the notes say what was done."""
    if not t.merges:
        return t
    at = {r.line: r for r in t.rows}
    filled: list[str] = []
    across: list[str] = []
    for c0, r0, c1, r1 in t.merges:
        if r0 <= t.header_line:  # the header's own, or a title's
            continue
        ref = f"{column_letters(c0)}{r0}:{column_letters(c1)}{r1}"
        if c0 != c1:
            across.append(ref)
            continue
        top = at.get(r0)
        if top is None or c0 >= len(top) or top[c0] is None or top[c0] == "":
            continue
        value = top[c0]
        n = 0
        for line in range(r0 + 1, r1 + 1):
            row = at.get(line)
            if row is not None and c0 < len(row) and (row[c0] is None or row[c0] == ""):
                row[c0] = value
                if c0 in top.lossy:  # a number too long to be exact stays one in every row it fills
                    row.lossy = (*row.lossy, c0)
                n += 1
        if n:
            name = t.header[c0] if c0 < len(t.header) and t.header[c0] else f"column {column_letters(c0)}"
            filled.append(f"{ref} ({name})")
    where = f"sheet {t.sheet!r} " if t.sheet is not None else ""
    notes = ([f"{where}{len(filled)} merged range(s) filled down from their first cell ({_listed(filled)}): "
              "each row of a range took its value"] if filled else [])
    notes += ([f"{where}{len(across)} merged range(s) over several columns ({_listed(across)}) read in their "
               "first cell only: their other cells are empty"] if across else [])
    return replace(t, merges=[], notes=[*t.notes, *notes])


def _listed(items: Sequence[str], most: int = 5) -> str:
    return ", ".join(items[:most]) + (", …" if len(items) > most else "")


def read_tables(name: str, data: bytes, c: Contract, headers: dict[str, str] | None = None
                ) -> tuple[list[Table], str, list[str]]:
    """(the file's data tables, detected format, notes for the operator) — `read_rows` with the
    feed's header found (`locate_header`) and, in a workbook, every sheet read: the sheets with
    a column of the feed are data (one without all the required columns then fails the file,
    naming the sheet); the others (notes, a cover sheet) are skipped with a note naming them.
    A workbook none of whose sheets has a column of the feed is its first sheet, as a text file
    (its missing columns reported). JSON Lines: one table of lines."""
    if not name.lower().endswith((".xlsx", ".xlsm")):
        header, rows, fmt = read_rows(name, data)
        t = Table(header, rows)  # type: ignore[arg-type]
        if not fmt.startswith("jsonl") and header:
            t = without_repeated_headers(c, locate_header(c, t, headers), headers)
            return [t], fmt, _skipped_note(t) + _absent_note(c, t, headers)
        return [t], fmt, _skipped_note(t)
    read, hid = read_sheets(data)
    hidden = [f"hidden sheet {h!r} not read (hidden sheets are not data: unhide it to deliver it)" for h in hid]
    sheets = [without_repeated_headers(c, fill_merged(locate_header(c, s, headers)), headers) for s in read]
    if not sheets:
        return [Table([], [])], "xlsx", hidden
    data_sheets = [s for s in sheets if _known(c, s.header, headers)[0] > 0]
    if not data_sheets:
        others = [s.sheet or "" for s in sheets[1:]]
        notes = [f"sheet {sheets[0].sheet!r} read; no sheet has a column of the feed"
                 + (f" (the others: {', '.join(repr(o) for o in others)})" if others else "")]
        return [sheets[0]], "xlsx", hidden + notes
    notes = hidden + [f"sheet {s.sheet!r} skipped: no column of the feed ({len(s.rows) + 1} non-empty rows)"
             for s in sheets if s not in data_sheets]
    for s in data_sheets:
        notes += _skipped_note(s) + _absent_note(c, s, headers)
    return data_sheets, "xlsx", notes


def _absent_note(c: Contract, t: Table, headers: dict[str, str] | None) -> list[str]:
    """`absent_note` of a table's header."""
    mapped, _ = c.map_headers(t.header, headers)
    if looks_like_data(t.header, mapped):
        return []
    others = [h for h, m in zip(t.header, mapped, strict=True) if m is None and h and not ignored(h, headers)]
    return absent_note(c, {m for m in mapped if m}, others, f"sheet {t.sheet!r} " if t.sheet is not None else "")


def absent_note(c: Contract, present: set[str], others: Sequence[str], where: str = "", what: str = "column"
                ) -> list[str]:
    """Optional fields with no column (JSON key) while some column is no field of the feed: a
    county that names a column its own way (大病标识 for 大病/特殊慢病) had the field empty in every
    row, and the rules reading it blind, without a word (a required one fails the file; an
    optional one is simply absent)."""
    absent = [f for f in c.fields if not f.required and f.name not in present]
    if not absent or not others:
        return []
    return [f"{where}optional field(s) {', '.join(f'{f.name} ({f.label_zh})' for f in absent)} have no {what} and "
            f"are read as empty in every row; {what}(s) not of the feed: {_listed(others)} — if one of them is such "
            f"a field, name it in the feed's mapping [headers] (`safetynet feeds profile` writes one to fill in)"]


def json_spellings(con: duckdb.DuckDBPyConnection, source: str, c: Contract, headers: dict[str, str] | None
                   ) -> tuple[dict[str, list[str]], list[str], set[str]]:
    """The keys of JSON Lines records (`source`'s `_value`: flat records, or envelopes' payloads), as
    a CSV header is matched — case and white space aside, Chinese labels, the mapping's `[headers]`:
    (field → the keys naming it in another spelling than `json_records_sql` reads by itself, the
    keys that are no field, the fields some key names). A county's export writes `ID_NO` or
    `Claim Id`: a required field was missing in every record, an optional one empty, unsaid."""
    hm = c.header_map(headers)
    pl = json_path(PAYLOAD)
    rows = con.execute(f"""
        SELECT DISTINCT k, envelope FROM (
            SELECT unnest(json_keys(_value)) AS k, false AS envelope FROM {source}
            WHERE json_valid(_value) AND json_type(_value) = 'OBJECT' AND json_type(_value, {_lit(pl)}) IS NULL
            UNION ALL
            SELECT unnest(json_keys(_value, {_lit(pl)})), true FROM {source}
            WHERE json_valid(_value) AND json_type(_value, {_lit(pl)}) = 'OBJECT') ORDER BY k""").fetchall()
    spellings: dict[str, list[str]] = {}
    others: list[str] = []
    present: set[str] = set()
    envelope_keys = set(HEADER) | {PAYLOAD}
    for k, in_payload in rows:
        f = hm.get(norm_header(k))
        if f is None:
            if (in_payload or k not in envelope_keys) and not ignored(k, headers):
                others.append(k)
            continue
        present.add(f)
        if k != f and k != c.field(f).label_zh:  # a mapping's own spelling again is harmless: read once
            spellings.setdefault(f, []).append(k)
    return spellings, sorted(set(others)), present


def _skipped_note(t: Table) -> list[str]:
    where = f"sheet {t.sheet!r} " if t.sheet is not None else ""
    notes = list(t.notes)
    hidden = set(t.hidden_rows)
    shown = [str(r.line) for r in t.rows if r.line in hidden] if hidden else []
    if shown:  # the counts then differ from what the department sees in Excel: say why
        notes.append(f"{where}{len(shown)} data row(s) hidden in the workbook (row {_listed(shown)}) read all the "
                     "same: a filter or \"hide\" does not delete a row — delete it if it is no record")
    if not t.skipped:
        return notes
    return notes + [f"{where}header found on row {t.header_line}; the {len(t.skipped)} row(s) above it "
            f"(row {', '.join(map(str, t.skipped))}) are not data (a title or notes) and were skipped"]


def _row_json(header: list[str], r: list[str | None]) -> str:
    # a blank or repeated header cell gets its column number: its cells are kept, not merged into one key
    keys, seen = [], set()
    for i, h in enumerate(header, 1):
        k = h if h and h not in seen else f"{h or ''}(column {i})"
        seen.add(k)
        keys.append(k)
    d: dict[str, object] = dict(zip(keys, r, strict=False))
    if len(r) > len(header):  # cells beyond the header are kept too (a `row_shape` record is shown whole)
        d["_extra_cells"] = list(r[len(header):])
    return json.dumps(d, ensure_ascii=False)


#: a total or subtotal row's label (合计, 小计, 总计, 累计, 合 计：): a sum, not a record
_TOTAL = re.compile(r"[\s\u3000]*(?:合|总|小|累)[\s\u3000]*计[\s\u3000:：]*")


def rows_to_records(c: Contract, header: list[str], rows: Sequence[list[str | None]], mapping: Mapping | None = None,
                    *, strict: bool = True) -> pa.Table:
    """Map a tabular file's columns to contract fields → text records with `_raw`, `_pre`, `_row_number`.

    Columns are matched by English name, Chinese label or the feed mapping's `[headers]`.
    Raises `FileFormatError('file_header')` when a required column is missing, naming the
    headers found (`strict=False`: a missing column is left empty, for profiling). Unknown
    columns are ignored under the additive evolution mode; under frozen they reject the file.

    Record-level rules (`_pre`): a line the reader could not split (`quote_unbalanced`; its
    `_raw` is the line as received), a row with more non-empty cells than the header or fewer
    cells than its last named column (`row_shape`), a sheet's number cell too long to be exact
    in a field's column (`number_precision:<field>`), a total row (`total_row`: a cell 合计,
    小计, 总计 or 累计), a control character in a text field (`control_char:<field>`, naming the field).
    """
    if not header and not rows:  # an empty file (or sheet) holds no records: an empty delivery, not a bad header
        return pa.table({**{n: pa.array([], pa.string()) for n in c.names}, "_raw": pa.array([], pa.string()),
                         "_pre": pa.array([], pa.string()), "_row_number": pa.array([], pa.int64())})
    mapped, missing = c.map_headers(header, mapping.headers if mapping else None)
    if missing and strict:
        labels = ", ".join(f"{m} ({c.field(m).label_zh})" for m in missing)
        found = ", ".join(h for h in header if h) or "none"  # ID-shaped ones masked (FileFormatError)
        records = [_raw(header, r) for r in rows]
        first = None
        if looks_like_data(header, mapped):  # a name or an address is no header to print; the row is a record
            found = f"none — the first row looks like data, not a header ({len(header)} cells, not shown)"
            records, first = [json.dumps(header, ensure_ascii=False), *records], 1
        raise FileFormatError("file_header", f"{c.feed_id}: the file lacks required column(s) {labels}; "
                              f"headers found: {found}", records, first)
    unknown = [h for h, m in zip(header, mapped, strict=True)
               if m is None and h and not ignored(h, mapping.headers if mapping else None)]
    if unknown and c.evolution == "frozen" and strict:
        raise FileFormatError("file_header", f"{c.feed_id}: unknown column(s) under frozen evolution: {unknown}",
                              [_raw(header, r) for r in rows])
    idx = {m: i for i, m in enumerate(mapped) if m is not None}
    width = len(header)
    named = max((i + 1 for i, h in enumerate(header) if h), default=0)  # cells a row must reach
    cols: dict[str, list] = {n: [] for n in c.names}
    raws, pres, lines = [], [], []
    for k, r in enumerate(rows):
        for n in c.names:
            i = idx.get(n)
            cols[n].append(r[i] if i is not None and i < len(r) else None)
        rule = getattr(r, "rule", None)
        if rule is None and (len(r) < named or (len(r) > width and any(v not in (None, "") for v in r[width:]))):
            rule = "row_shape"
        if rule is None and (lossy := [mapped[i] for i in getattr(r, "lossy", ()) if i < width and mapped[i]]):
            rule = f"number_precision:{lossy[0]}"
        if rule is None and any(isinstance(v, str) and _TOTAL.fullmatch(v) for v in r):
            rule = "total_row"
        raws.append(_raw(header, r))
        pres.append(rule)
        lines.append(getattr(r, "line", None) or k + 2)  # no line known: the header is row 1
    t = pa.table({n: pa.array(v, pa.string()) for n, v in cols.items()})
    pre = pa.array(pres, pa.string())
    for f in c.fields:  # vectorised: the few rows with a control character are found by RE2
        if f.kind in TEXT_KINDS and f.name in idx:
            hit = pc.match_substring_regex(pc.utf8_trim(t[f.name], _WS), CONTROL)
            pre = pc.if_else(pc.and_kleene(pc.is_null(pre), pc.fill_null(hit, False)),
                             pa.scalar(f"control_char:{f.name}"), pre)
    t = t.append_column("_raw", pa.array(raws, pa.string()))
    t = t.append_column("_pre", pre)
    return t.append_column("_row_number", pa.array(lines, pa.int64()))


#: a cell no header holds: a run of 6 digits (an ID number, a phone number, an account) or a date
_DATA_CELL = re.compile(r"[0-9０-９]{6}|[0-9]{4}\s*[-/.年]\s*[0-9]{1,2}\s*[-/.月]")


def looks_like_data(header: Sequence[object], mapped: Sequence[str | None] | None = None) -> bool:
    """Whether a file's first row is a data row rather than a header: none of its cells is a
    column of the feed (`mapped`) and one holds what no header holds (`_DATA_CELL`). Its cells
    are then never printed — they are a person's name, ID number, address."""
    if mapped is not None and any(m is not None for m in mapped):
        return False
    return any(_DATA_CELL.search(str(v)) for v in header if v)


def is_blank(data: bytes) -> bool:
    """An empty file: no bytes, or only white space and byte-order marks (no header, no record)."""
    return not data.replace(codecs.BOM_UTF8, b"").strip(b" \t\r\n\x00\xff\xfe")


def looks_like_table(data: bytes, c: Contract, headers: dict[str, str] | None = None) -> bool:
    """Whether a text file of unsure purpose (`.txt`) is delimited data of the feed: its first
    non-blank line splits into two or more cells, at least one of them a column the feed knows
    (an English name, a Chinese label or a mapped header). A note or a README is not."""
    try:
        text, _ = decode_text(data[:65536])
    except (FileFormatError, UnicodeDecodeError):
        return False
    first = next((ln for ln in physical_lines(text) if ln.strip()), "")
    try:
        dialect = csv.Sniffer().sniff(first, delimiters=",\t;|")
    except csv.Error:
        return False
    cells = next(csv.reader([first], dialect), [])
    if len(cells) < 2:
        return False
    known = c.header_map(headers)
    return any(norm_header(h) in known for h in cells)


def _raw(header: list[str], r: list[str | None]) -> str:
    """A row as received: the physical line where the reader could not split it, else its cells by header."""
    text = getattr(r, "text", None)
    return text if text is not None else _row_json(header, r)
