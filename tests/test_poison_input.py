"""Poison input (issue #13 point 4): each bad line of a drop is quarantined with its own reason
and every good line around it still reaches `raw/`; input = physical data lines = accepted +
quarantined. A padded workbook (a million empty rows) is read up to its last value only."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from xml.sax.saxutils import escape

import openpyxl
import pyarrow as pa
import pytest

from connectors.formats import column_letters, csv_rows, last_value_row, physical_lines, read_rows
from safetynet.intake.ingest import ingest
from schemas import idno
from schemas.normalise import QUARANTINE_RULES
from schemas.registry import get

CLAIM = get("medical_insurance.claim")
ZH = ["结算单号", "公民身份号码", "结算日期", "定点医疗机构", "是否住院", "疾病诊断编码", "医疗费用总额", "基金支付", "个人自付"]
S17 = "43010319800101123"
ID = S17 + idno.check_char(S17)
LANDING = "landing/medical_insurance/claim/"


def good(claim_id: str, hospital: str = "长沙市第一医院") -> list[str]:
    return [claim_id, ID, "2026-09-01", hospital, "是", "I10", "100", "80", "20"]


def csv_text(lines: list[str]) -> bytes:
    """A drop whose physical lines are exactly `lines` (header first), CRLF-ended, GBK."""
    return ("\r\n".join([",".join(ZH), *lines]) + "\r\n").encode("gbk")


def line(cells: list[str]) -> str:
    return ",".join(cells)


def run(settings, store):
    return ingest(settings, store, [CLAIM.feed_id], kafka=False).feeds[CLAIM.feed_id]


def raw_ids(store) -> list[str]:
    t = store.dataset("raw/medical_insurance/claim/").to_table()
    return sorted(t["claim_id"].to_pylist())


def quarantine(store) -> list[dict]:
    try:
        t = store.dataset("quarantine/medical_insurance/claim/").to_table()
    except (FileNotFoundError, pa.ArrowInvalid):
        return []
    return sorted(t.to_pylist(), key=lambda r: r["_row_number"])


def assert_reconciles(fc, data_lines: int) -> None:
    assert fc.input == data_lines == fc.accepted + fc.quarantined_total


def assert_masked(q: dict) -> None:
    assert ID not in q["_reason"] and "长沙市第一医院" not in q["_reason"]
    assert q["_rule"] in QUARANTINE_RULES


# ---- CSV: unbalanced quotes ----------------------------------------------------------------------
def test_an_unbalanced_quote_quarantines_its_line_and_the_reader_resynchronises(local_settings, local_store):
    lines = [
        line(good("C1")),
        line(["C2", ID, "2026-09-01", '"长沙市第一医院', "是", "I10", "100", "80", "20"]),  # opens a quote, never closes
        line(good("C3")),
        line(good("C4", '湘雅"附属医院')),  # a quote inside a field is a character; it closed C2's span before
        *(line(good(f"C{i}")) for i in range(5, 9)),
    ]
    local_store.write_bytes(LANDING + "claim_20261001.csv", csv_text(lines))
    fc = run(local_settings, local_store)
    assert_reconciles(fc, len(lines))
    assert dict(fc.quarantined) == {"quote_unbalanced": 1}
    assert raw_ids(local_store) == sorted(["C1", "C3", "C4", "C5", "C6", "C7", "C8"])
    [q] = quarantine(local_store)
    assert (q["_rule"], q["_field"], q["_row_number"]) == ("quote_unbalanced", "", 3)
    assert q["_raw"] == lines[1]  # the physical line as received
    assert "row 3" in q["_reason"] and "claim_20261001.csv" in q["_reason"]
    assert_masked(q)


def test_an_unbalanced_quote_on_the_last_line_and_a_multi_line_cell(local_settings, local_store):
    lines = [
        line(good("C1")),
        line(good("C2"))[:-len("80,20")] + '"80\r\n20"',  # a cell spanning two lines: no field may
        line(good("C3")),
        line(["C4", ID, "2026-09-01", "医院", "是", "I10", '"100', "80", "20"]),  # unclosed up to the end
    ]
    text = "\r\n".join(lines)
    physical = text.split("\r\n")
    assert len(physical) == 5
    local_store.write_bytes(LANDING + "claim_20261001.csv", (",".join(ZH) + "\r\n" + text).encode("gbk"))
    fc = run(local_settings, local_store)
    assert_reconciles(fc, len(physical))
    assert raw_ids(local_store) == ["C1", "C3"]
    assert [(q["_row_number"], q["_rule"]) for q in quarantine(local_store)] == [
        (3, "quote_unbalanced"), (4, "row_shape"), (6, "quote_unbalanced")]


def test_csv_rows_restart_after_each_bad_line():
    text = 'h1,h2,h3\na,"b,c\nd,e,f\ng,"h""i",j\n\n,,\nk,"l\nm",n\nlast,"x'
    got = [(r.line, r.rule, list(r)) for r in csv_rows(physical_lines(text), csv.excel)]
    assert got == [
        (1, None, ["h1", "h2", "h3"]),
        (2, "quote_unbalanced", ["a", "b,c"]),
        (3, None, ["d", "e", "f"]),
        (4, None, ["g", 'h"i', "j"]),  # a doubled quote inside a quoted field is fine
        (7, "quote_unbalanced", ["k", "l"]),
        (8, None, ['m"', "n"]),  # read on its own (short: row_shape when mapped)
        (9, "quote_unbalanced", ["last", "x"]),
    ]


def test_physical_lines():
    assert physical_lines("a\r\nb\nc\r\n") == ["a", "b", "c"]
    assert physical_lines("a\rb\rc") == ["a", "b", "c"]  # CR-only (classic Mac) file
    assert physical_lines("a\rx\r\nb\n") == ["a\rx", "b"]  # elsewhere a CR alone is inside its line
    assert physical_lines("a\u2028b\x0cc\n") == ["a\u2028b\x0cc"]


# ---- CSV: row shape --------------------------------------------------------------------------------
def test_rows_with_fewer_cells_than_the_header_are_row_shape(local_settings, local_store):
    lines = [
        line(good("C1")),
        line(good("C2")[:7]),  # two cells short: fund_paid, out_of_pocket missing
        line(good("C3")[:8]),  # one short
        line(good("C4") + ["备注"]),  # one too many, non-empty
        line(good("C5") + [""]),  # a trailing empty cell is not a shape fault
        line(good("C6")),
    ]
    local_store.write_bytes(LANDING + "claim_20261001.csv", csv_text(lines))
    fc = run(local_settings, local_store)
    assert_reconciles(fc, len(lines))
    assert dict(fc.quarantined) == {"row_shape": 3}
    assert raw_ids(local_store) == ["C1", "C5", "C6"]
    q = quarantine(local_store)
    assert [r["_row_number"] for r in q] == [3, 4, 5]
    assert json.loads(q[2]["_raw"])["_extra_cells"] == ["备注"]  # the extra cell is kept in _raw
    for r in q:
        assert_masked(r)


def test_an_unnamed_trailing_header_column_needs_no_cell(local_settings, local_store):
    text = ",".join([*ZH, ""]) + "\r\n" + line(good("C1")) + "\r\n"
    local_store.write_bytes(LANDING + "claim_20261001.csv", text.encode("gbk"))
    fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted) == (1, 1)


# ---- control characters --------------------------------------------------------------------------
def test_control_characters_in_text_fields_quarantine_the_record_naming_the_field(local_settings, local_store):
    lines = [
        line(good("C1")),
        line(good("C2", "长沙\x0b第一医院")),  # vertical tab
        line(good("C3", "长沙\x00医院")),
        line(good("C4", "长沙\r医院")),  # a CR alone inside a CRLF file: not a line end
        line(good("C5", "长沙\t医院")),  # a tab is allowed
        line(good("C6", "长沙\x85医院")),  # C1 control (NEL)
        line(good("C7")),
    ]
    local_store.write_bytes(LANDING + "claim_20261001.csv", ("\r\n".join([",".join(ZH), *lines]) + "\r\n").encode())
    fc = run(local_settings, local_store)
    assert_reconciles(fc, len(lines))
    assert dict(fc.quarantined) == {"control_char": 4}
    assert raw_ids(local_store) == ["C1", "C5", "C7"]
    q = quarantine(local_store)
    assert [(r["_row_number"], r["_rule"], r["_field"]) for r in q] == [
        (n, "control_char", "hospital_name") for n in (3, 4, 5, 7)]
    assert "field hospital_name (定点医疗机构) — control_char" in q[0]["_reason"] and "row 3" in q[0]["_reason"]
    assert json.loads(q[2]["_raw"])["定点医疗机构"] == "长沙\r医院"  # kept as received
    for r in q:
        assert_masked(r)


def test_control_characters_in_json_lines_and_xlsx(local_settings, local_store):
    def rec(claim_id: str, hospital: str) -> str:
        return json.dumps({"claim_id": claim_id, "id_no": ID, "settle_date": "2026-09-01", "hospital_name": hospital,
                           "inpatient": True, "diagnosis_code": "I10", "total_amount": 10, "fund_paid": 5,
                           "out_of_pocket": 5}, ensure_ascii=False)

    # escaped control characters are valid JSON; U+2028 inside a string is no line end
    jl = [rec("J1", "医院"), rec("J2", "医\u0001院"), rec("J3", "医\n院"), rec("J4", "医\u2028院"), rec("J5", "医\x7f院")]
    local_store.write_bytes(LANDING + "claim_20261001.jsonl", "\n".join(jl).encode())
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(ZH)
    ws.append(good("X1"))
    ws.append(good("X2", "长沙\n第一医院"))  # Alt+Enter in a cell
    ws.append(good("X3", "长沙第一医院\n"))  # at the edge: trimmed like white space
    buf = io.BytesIO()
    wb.save(buf)
    local_store.write_bytes(LANDING + "claim_20261002.xlsx", buf.getvalue())
    fc = run(local_settings, local_store)
    assert_reconciles(fc, len(jl) + 3)
    assert dict(fc.quarantined) == {"control_char": 4}
    assert raw_ids(local_store) == ["J1", "J4", "X1", "X3"]
    assert {(r["_source_file"].rsplit("/", 1)[1], r["_row_number"], r["_field"]) for r in quarantine(local_store)} == {
        ("claim_20261001.jsonl", 2, "hospital_name"), ("claim_20261001.jsonl", 3, "hospital_name"),
        ("claim_20261001.jsonl", 5, "hospital_name"), ("claim_20261002.xlsx", 3, "hospital_name")}


# ---- XLSX: a million empty rows ------------------------------------------------------------------
_PARTS = {
    "[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/xl/workbook.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>'
    '<Override PartName="/xl/worksheets/sheet1.xml" '
    'ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/></Types>',
    "_rels/.rels": '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="xl/workbook.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument"/></Relationships>',
    "xl/workbook.xml": '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
    'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
    '<sheets><sheet name="Sheet1" sheetId="1" r:id="rId1"/></sheets></workbook>',
    "xl/_rels/workbook.xml.rels": '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Target="worksheets/sheet1.xml" '
    'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet"/></Relationships>',
}


def padded_xlsx(rows: dict[int, list[str]], total: int, width: int, dimension: str | None = None) -> bytes:
    """A workbook written as Excel writes a formatted sheet: every row up to `total` spelled out
    with empty styled cells, `rows` (row number → values) holding the only data. The sheet XML
    is streamed straight into the zip."""
    cols = [column_letters(j) for j in range(width)]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, xml in _PARTS.items():
            z.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n' + xml)
        with z.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:
            f.write(('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                     '<worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                     f'<dimension ref="{dimension or f"A1:{cols[-1]}{total}"}"/><sheetData>').encode())
            empty = "".join(f'<c r="{c}{{n}}" s="0"/>' for c in cols)
            block: list[str] = []
            for n in range(1, total + 1):
                if n in rows:
                    cells = "".join(f'<c r="{column_letters(j)}{n}" t="inlineStr"><is><t>{escape(v)}</t></is></c>'
                                    for j, v in enumerate(rows[n]))
                    block.append(f'<row r="{n}" spans="1:{width}">{cells}</row>')
                else:
                    block.append(f'<row r="{n}" spans="1:{width}">{empty.replace("{n}", str(n))}</row>')
                if len(block) == 50_000:
                    f.write("".join(block).encode())
                    block = []
            f.write(("".join(block) + "</sheetData></worksheet>").encode())
    return buf.getvalue()


@pytest.mark.slow
def test_a_sheet_of_a_million_empty_rows_yields_its_three_rows(local_settings, local_store):
    data = padded_xlsx({1: ZH, 2: good("X1"), 3: good("X2"), 4: good("X3")}, 1_048_576, len(ZH))
    local_store.write_bytes(LANDING + "claims.xlsx", data)
    fc = run(local_settings, local_store)
    assert_reconciles(fc, 3)
    assert raw_ids(local_store) == ["X1", "X2", "X3"]
    t = local_store.dataset("raw/medical_insurance/claim/").to_table()
    assert sorted(t["_row_number"].to_pylist()) == [2, 3, 4]


def test_rows_after_a_gap_and_past_the_stated_dimension_are_read():
    rows = {1: ZH, 2: good("X1"), 5_000: good("X2"), 5_001: good("X3")}
    data = padded_xlsx(rows, 10_000, len(ZH), dimension="A1:I2")  # a stale dimension claiming two rows
    header, got, fmt = read_rows("claims.xlsx", data)
    assert fmt == "xlsx" and header == ZH
    assert [(r.line, r[0]) for r in got] == [(2, "X1"), (5_000, "X2"), (5_001, "X3")]


@pytest.mark.parametrize("xml,last", [
    (b'<sheetData><row r="1"><c><v>1</v></c></row><row r="7"><c r="A7" t="inlineStr"><is><t>x</t></is></c></row>'
     b'<row r="9"><c r="A9" s="1"/></row></sheetData>', 7),
    # a prefixed namespace and rows without `r`: counted as openpyxl counts them
    (b'<x:sheetData><x:row><x:c><x:v>1</x:v></x:c></x:row><x:row/><x:row><x:c t="s"><x:v>0</x:v></x:c></x:row>'
     b'<x:row><x:c/></x:row></x:sheetData>', 3),
    (b'<sheetData><row r="2"><c r="B2" s="3"/></row></sheetData><rowBreaks count="1"><brk id="5"/></rowBreaks>', 0),
])
def test_last_value_row(xml: bytes, last: int):
    assert last_value_row(lambda: io.BytesIO(xml)) == last


@pytest.mark.parametrize("block", [7, 64, 1000, 1 << 22])
def test_last_value_row_across_blocks(block: int):
    rows = [b'<row r="%d"><c r="A%d"><v>%d</v></c></row>' % (n, n, n) for n in range(1, 20_001)]
    xml = b"<sheetData>" + b"".join(rows) + b'<row r="20001"><c r="A20001" s="1"/></row></sheetData>'
    assert last_value_row(lambda: io.BytesIO(xml), block) == 20_000
    no_r = xml.replace(b'<row r="', b'<row x="')  # rows without `r` are counted
    assert last_value_row(lambda: io.BytesIO(no_r), block) == 20_000


# ---- reasons -------------------------------------------------------------------------------------
def test_reasons_mask_id_shaped_file_names_and_headers(local_settings, local_store):
    local_store.write_bytes(LANDING + f"claims_{ID}.csv", csv_text([line(good("C1", "长沙\x0b医院"))]))
    # a file without a header row: its first row is data — counted as a record, its cells never listed
    # as "headers found" (they once were, only the ID masked: a name or an address in clear)
    local_store.write_bytes(LANDING + "noheader.csv", "\r\n".join(line(good(f"C{i}")) for i in (1, 2)).encode("gbk"))
    fc = run(local_settings, local_store)
    assert fc.quarantined == {"control_char": 1, "file_header": 2}
    q = quarantine(local_store)
    for r in q:
        assert ID not in r["_reason"] and (r["_rule"] != "file_header" or idno.mask(ID) not in r["_reason"])
    assert idno.mask(ID) in next(r["_reason"] for r in q if r["_rule"] == "control_char")  # the file name, masked
    assert sorted(r["_row_number"] for r in q if r["_rule"] == "file_header") == [1, 2]
    assert all("looks like data, not a header" in r["_reason"] for r in q if r["_rule"] == "file_header")
