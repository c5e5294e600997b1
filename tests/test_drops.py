"""File drops: encodings, formats, headers, the ledger, changed files, file-level faults."""

from __future__ import annotations

import datetime as dt
import io
import json

import openpyxl
import pytest

from safetynet.core import paths
from safetynet.intake import health
from safetynet.intake.clean import clean_feed, read_clean
from safetynet.intake.ingest import ingest
from schemas import idno
from schemas.registry import get

S17 = "43010319800101123"
ID = S17 + idno.check_char(S17)
CLAIM = get("medical_insurance.claim")
ZH = ["结算单号", "公民身份号码", "结算日期", "定点医疗机构", "是否住院", "疾病诊断编码", "医疗费用总额", "基金支付", "个人自付"]


def csv_bytes(rows: list[list[str]], header=ZH, enc="gbk", bom=False) -> bytes:
    text = "\r\n".join(",".join(f'"{c}"' if "," in c else c for c in r) for r in [header, *rows]) + "\r\n"
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode(enc)


def run(settings, store):
    return ingest(settings, store, [CLAIM.feed_id], kafka=False).feeds[CLAIM.feed_id]


@pytest.mark.parametrize("enc,bom", [("gbk", False), ("gb18030", False), ("utf-8", False), ("utf-8", True)])
def test_csv_in_each_encoding_is_decoded_without_mojibake(local_settings, local_store, enc, bom):
    rows = [["C1", ID.lower(), "2026年9月3日", "长沙市第一医院", "是", "I10", "1,234.50", "1000元", "234.5"]]
    local_store.write_bytes("landing/medical_insurance/claim/claim_20261001.csv", csv_bytes(rows, enc=enc, bom=bom))
    fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted) == (1, 1)
    clean_feed(local_store, CLAIM)
    [r] = read_clean(local_store, CLAIM).to_pylist()
    assert r["hospital_name"] == "长沙市第一医院" and r["id_no"] == ID and str(r["total_amount"]) == "1234.50"
    assert r["settle_date"] == dt.date(2026, 9, 3)


def test_xlsx_with_real_date_cells_and_english_headers(local_settings, local_store):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["claim_id", "id_no", "settle_date", "hospital_name", "inpatient", "diagnosis_code", "total_amount",
               "fund_paid", "out_of_pocket", "an_extra_column"])
    ws.append(["X1", ID, dt.datetime(2026, 9, 3), "医院", True, "J06.9", 100.5, 80, 20.5, "ignored"])
    ws.append(["X2", ID, "20260904", "医院", "否", "J06.9", "100", "80", "20", None])
    buf = io.BytesIO()
    wb.save(buf)
    local_store.write_bytes("landing/medical_insurance/claim/claims.xlsx", buf.getvalue())
    fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted, fc.quarantined_total) == (2, 2, 0)
    clean_feed(local_store, CLAIM)
    got = {r["claim_id"]: r for r in read_clean(local_store, CLAIM).to_pylist()}
    assert got["X1"]["settle_date"] == dt.date(2026, 9, 3) and str(got["X1"]["total_amount"]) == "100.50"
    assert got["X2"]["inpatient"] is False


def test_json_lines_drop_with_a_malformed_line(local_settings, local_store):
    lines = [json.dumps({"claim_id": "J1", "id_no": ID, "settle_date": "2026-09-01", "hospital_name": "h",
                         "inpatient": True, "diagnosis_code": "I10", "total_amount": 10, "fund_paid": 5,
                         "out_of_pocket": 5}, ensure_ascii=False), '{"claim_id": "J2", "id_no": ']
    local_store.write_bytes("landing/medical_insurance/claim/claim_20261001.jsonl", "\n".join(lines).encode())
    fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted, dict(fc.quarantined)) == (2, 1, {"json_malformed": 1})


def test_a_drop_is_never_ingested_twice_and_a_changed_file_supersedes(local_settings, local_store):
    path = "landing/medical_insurance/claim/claim_20261001.csv"
    v1 = [["C1", ID, "2026-09-01", "h", "是", "I10", "100", "80", "20"],
          ["C2", ID, "2026-09-01", "h", "是", "I10", "100", "80", "20"]]
    local_store.write_bytes(path, csv_bytes(v1))
    assert run(local_settings, local_store).input == 2
    assert run(local_settings, local_store).input == 0  # same file: nothing new
    v2 = [["C1", ID, "2026-09-01", "h", "是", "I10", "100", "70", "30"]]  # corrected re-export, C2 withdrawn
    local_store.write_bytes(path, csv_bytes(v2))
    assert run(local_settings, local_store).input == 1
    counts = clean_feed(local_store, CLAIM)
    rows = read_clean(local_store, CLAIM).to_pylist()
    assert [(r["claim_id"], str(r["out_of_pocket"])) for r in rows] == [("C1", "30.00")]
    assert counts.superseded_file_versions == 2 and counts.reconciles
    ledger = json.loads(local_store.read_bytes("_catalog/drops/medical_insurance/claim/claim_20261001.csv.json"))
    assert len(ledger) == 2 and ledger[0]["sha256"] != ledger[1]["sha256"]


def test_unseen_lists_new_and_changed_drops_without_reading_them(local_settings, local_store):
    """The quick look a wake-up takes (`DropFolderSource.unseen`): new or changed data files; not notes,
    not files taken in, not unknown file types."""
    import os

    from connectors.drop_folder import DropFolderSource

    src = DropFolderSource(local_store, CLAIM)
    assert src.unseen() == []
    path = "landing/medical_insurance/claim/claim_20261001.csv"
    rows = [["C1", ID, "2026-09-01", "h", "是", "I10", "100", "80", "20"]]
    local_store.write_bytes(path, csv_bytes(rows))
    local_store.write_bytes("landing/medical_insurance/claim/说明.txt", "本月数据说明：无".encode("gbk"))
    local_store.write_bytes("landing/medical_insurance/claim/readme.pdf", b"%PDF-1.4")
    assert src.unseen() == ["claim_20261001.csv"]
    assert run(local_settings, local_store).input == 1
    assert src.unseen() == []
    rows.append(["C2", ID, "2026-09-02", "h", "是", "I10", "100", "80", "20"])
    local_store.write_bytes(path, csv_bytes(rows))  # a re-export: another size
    assert src.unseen() == ["claim_20261001.csv"]
    assert run(local_settings, local_store).input == 2
    assert src.unseen() == []
    full = local_store.full(path)
    same_size = csv_bytes([r[:6] + ["101", "81", "20"] for r in rows])[:os.path.getsize(full)]
    local_store.write_bytes(path, same_size)  # rewritten after its ledger: newer than it
    ledger = local_store.full("_catalog/drops/medical_insurance/claim/claim_20261001.csv.json")
    os.utime(full, ns=(os.stat(ledger).st_mtime_ns + 10**9,) * 2)
    assert src.unseen() == ["claim_20261001.csv"]


def test_snapshot_feeds_keep_only_the_newest_snapshot(local_settings, local_store):
    prop = get("housing.property")
    hdr = ["不动产单元号", "权利人证件号码", "共有份额", "房屋用途", "建筑面积", "登记日期", "权属状态"]
    old = [["P1", ID, "1", "住宅", "80.5", "2010-01-01", "现势"], ["P2", ID, "1", "住宅", "60", "2015-01-01", "现势"]]
    new = [["P1", ID, "1", "住宅", "80.5", "2010-01-01", "现势"]]
    local_store.write_bytes("landing/housing/property/property_20261001.csv", csv_bytes(old, hdr))
    local_store.write_bytes("landing/housing/property/property_20261101.csv", csv_bytes(new, hdr))
    ingest(local_settings, local_store, [prop.feed_id], kafka=False)
    counts = clean_feed(local_store, prop)
    assert [r["property_id"] for r in read_clean(local_store, prop).to_pylist()] == ["P1"]
    assert counts.older_snapshots == 2 and counts.reconciles


def test_missing_required_column_quarantines_the_file_with_a_clear_reason(local_settings, local_store):
    local_store.write_bytes("landing/medical_insurance/claim/bad.csv", csv_bytes([["C1", ID]], header=ZH[:2]))
    fc = run(local_settings, local_store)
    assert dict(fc.quarantined) == {"file_header": 1} and fc.accepted == 0
    q = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    assert "结算日期" in q[0]["_reason"] and "bad.csv" in q[0]["_reason"]
    assert any(e.path.endswith("/files/bad.csv") for e in local_store.list("quarantine/"))


def test_undecodable_file_is_quarantined_whole(local_settings, local_store):
    local_store.write_bytes("landing/medical_insurance/claim/junk.csv", b"\xff\xfe\x00\xd8\x00garbage\x81\x30")
    fc = run(local_settings, local_store)
    assert fc.input == fc.quarantined_total == 1


def test_quarantine_keeps_raw_text_but_reasons_never_show_personal_values(local_settings, local_store):
    bad = ID[:17] + ("0" if ID[17] != "0" else "1")
    rows = [["C1", bad, "2026-09-01", "h", "是", "I10", "100", "80", "20"]]
    local_store.write_bytes("landing/medical_insurance/claim/claim_20261001.csv", csv_bytes(rows))
    fc = run(local_settings, local_store)
    assert dict(fc.quarantined) == {"id_no_checksum": 1}
    [q] = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    assert bad in q["_raw"]  # the record is kept as received, for the department to fix
    assert bad not in q["_reason"] and "row 2" in q["_reason"] and "id_no" in q["_reason"]


def _claim_row(claim_id: str, inpatient: str = "是") -> list[str]:
    return [claim_id, ID, "2026-09-03", "长沙市第一医院", inpatient, "I10", "100.00", "80.00", "20.00"]


def _run_workbook(settings, store, caplog, wb: openpyxl.Workbook, name: str):
    """`wb` dropped as a claims file and ingested, warnings captured."""
    buf = io.BytesIO()
    wb.save(buf)
    store.write_bytes(f"landing/medical_insurance/claim/{name}", buf.getvalue())
    with caplog.at_level("WARNING"):
        return run(settings, store)


def test_every_data_sheet_of_a_workbook_is_read_and_a_notes_sheet_is_said_to_be_skipped(local_settings, local_store,
                                                                                        caplog):
    """Another county's workbook: a notes sheet first, a month per sheet after it, a title row
    above one sheet's header. Only the first sheet used to be read: a notes sheet first lost the
    file as `file_header`, and a second month's claims were never seen (and counted nowhere)."""
    wb = openpyxl.Workbook()
    notes = wb.active
    notes.title = "填表说明"
    notes.append(["本表由区医保局按月报送，金额单位：元"])
    march = wb.create_sheet("2026年3月")
    march.append(["2026年3月医疗费用结算明细"])  # a title above the header
    march.append([])
    march.append(ZH)
    march.append(_claim_row("M1"))
    march.append(_claim_row("M2", inpatient="也许"))  # quarantined, naming its sheet
    april = wb.create_sheet("2026年4月")
    april.append(ZH[::-1])  # the same columns in another order
    april.append(_claim_row("A1")[::-1])
    april.append(_claim_row("A2")[::-1])
    fc = _run_workbook(local_settings, local_store, caplog, wb, "claims_q2.xlsx")
    assert (fc.input, fc.accepted, dict(fc.quarantined)) == (4, 3, {"bool_format": 1})
    said = caplog.text
    assert "sheet '填表说明' skipped" in said and "header found on row 3" in said
    [q] = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    assert "sheet '2026年3月' row 5" in q["_reason"]
    raw = local_store.dataset("raw/medical_insurance/claim/").to_table().to_pylist()
    ids = {r["claim_id"]: r["_event_id"] for r in raw}
    assert set(ids) == {"M1", "A1", "A2"} and len(set(ids.values())) == 3  # rows 2 of two sheets: two ids
    clean_feed(local_store, CLAIM)
    assert {r["claim_id"] for r in read_clean(local_store, CLAIM).to_pylist()} == {"M1", "A1", "A2"}


def test_formula_cells_without_a_saved_value_are_said(local_settings, local_store, caplog):
    """A workbook written by a program that does not compute formulas (openpyxl, many exporters)
    holds `=H2+I2` with no saved result: the amount was `required_missing` without a word about
    why. Now the drop's warning names the sheet and the cells, and how to deliver it again."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "结算"
    ws.append(ZH)
    ws.append(_claim_row("F1")[:6] + ["=H2+I2", "80.00", "20.00"])
    ws.append(_claim_row("F2"))
    fc = _run_workbook(local_settings, local_store, caplog, wb, "formulas.xlsx")
    assert (fc.input, fc.accepted, dict(fc.quarantined)) == (2, 1, {"required_missing": 1})
    assert "sheet '结算' 1 formula cell(s) without a saved value (G2) read as empty" in caplog.text


def test_a_header_of_two_rows_is_read_as_one(local_settings, local_store, caplog):
    """Another county's form (多级表头): the amounts under a group title 费用情况 in a second header
    row, the other names merged down both rows. No single row held every required column: the
    whole file was `file_header`."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "结算"
    ws.append(["2026年9月医疗费用结算"])
    ws.merge_cells("A1:I1")
    ws.append([*ZH[:6], "费用情况", None, None])
    ws.append([None] * 6 + ZH[6:])
    for col in "ABCDEF":
        ws.merge_cells(f"{col}2:{col}3")
    ws.merge_cells("G2:I2")
    ws.append(_claim_row("H1"))
    ws.append(_claim_row("H2"))
    fc = _run_workbook(local_settings, local_store, caplog, wb, "two_rows.xlsx")
    assert (fc.input, fc.accepted, fc.quarantined_total) == (2, 2, 0)
    assert "sheet '结算' a header of two rows (row 2 and 3) read as one" in caplog.text
    assert "the 1 row(s) above it (row 1) are not data" in caplog.text and "merged range" not in caplog.text
    clean_feed(local_store, CLAIM)
    got = {r["claim_id"]: r for r in read_clean(local_store, CLAIM).to_pylist()}
    assert set(got) == {"H1", "H2"} and str(got["H1"]["out_of_pocket"]) == "20.00"


def test_a_header_repeated_inside_the_file_is_not_a_record(local_settings, local_store, caplog):
    """Two months' exports joined one after another, each with its header: the second header was a
    record, quarantined with a format error in every field (and counted against the feed's health)."""
    local_store.write_bytes("landing/medical_insurance/claim/joined_20261001.csv",
                            csv_bytes([_claim_row("J1"), ZH, _claim_row("J2"), [f" {h} " for h in ZH]]))
    with caplog.at_level("WARNING"):
        fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted, fc.quarantined_total) == (2, 2, 0)
    assert "2 row(s) repeat the header (row 3, 5): exports joined one after another — not records, skipped" in caplog.text


def test_a_two_row_header_in_a_csv_file_too():
    from connectors.formats import Row, Table, locate_header

    t = Table([*ZH[:6], "费用情况（元）", "", ""], [Row([""] * 6 + ZH[6:], 2), Row(_claim_row("X"), 3)])
    out = locate_header(CLAIM, t)
    assert out.header == ZH and [list(r) for r in out.rows] == [_claim_row("X")] and out.skipped == []
    assert out.header_line == 2


def test_formula_and_merge_scan_finds_them_across_blocks_and_namespaces():
    from connectors.formats import sheet_marks

    xml = (b'<x:worksheet><x:sheetData><x:row r="1"><x:c r="A1"><x:f>1+1</x:f></x:c>'
           + b'<x:c r="B1"><x:f>2+2</x:f><x:v>4</x:v></x:c>' * 50
           + b'<x:c r="C1" t="n"><x:f t="shared" si="0"/><x:v></x:v></x:c></x:row>'
           + b'<x:row r="2" spans="1:3"><x:c r="A2"><x:v>1</x:v></x:c></x:row>'
           + b'<x:row r="3" spans="1:3" hidden="1" customHeight="1"><x:c r="A3"><x:v>1</x:v></x:c></x:row></x:sheetData>'
           + b'<x:mergeCells count="2"><x:mergeCell ref="B2:B40"/><x:mergeCell ref="AA7:AC7"/></x:mergeCells>'
           + b'</x:worksheet>')
    for block in (7, 64, 1 << 20):  # cells and merges cut across blocks
        marks = sheet_marks(lambda: io.BytesIO(xml), block)
        assert (marks.formulas, marks.merges) == (["A1", "C1"], [(1, 2, 1, 40), (26, 7, 28, 7)])
        assert marks.hidden_rows == [3]


def test_merged_cells_down_a_column_are_filled_and_said(local_settings, local_store, caplog):
    """Another county's settlement roster groups a person's claims and merges their 公民身份号码
    over them; its total row is merged over the first columns. Only a range's first cell holds
    the value: the person's other claims were `required_missing`, nothing said why."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "结算明细"
    ws.append(["2026年9月医疗费用结算明细"])  # a title merged over the header's width: not data
    ws.merge_cells("A1:I1")
    ws.append(ZH)
    for claim_id in ("G1", "G2", "G3"):
        ws.append(_claim_row(claim_id))
    for r in (4, 5):
        ws.cell(row=r, column=2).value = None
    ws.merge_cells("B3:B5")
    ws.append(_claim_row("G4"))
    ws.append(["合计", None, None, None, None, None, "400.00", "320.00", "80.00"])
    ws.merge_cells("A7:F7")
    fc = _run_workbook(local_settings, local_store, caplog, wb, "merged.xlsx")
    assert (fc.input, fc.accepted, dict(fc.quarantined)) == (5, 4, {"total_row": 1})
    said = caplog.text
    assert "sheet '结算明细' 1 merged range(s) filled down from their first cell (B3:B5 (公民身份号码))" in said
    assert "1 merged range(s) over several columns (A7:F7) read in their first cell only" in said
    assert "A1:I1" not in said
    clean_feed(local_store, CLAIM)
    got = {r["claim_id"]: r["id_no"] for r in read_clean(local_store, CLAIM).to_pylist()}
    assert got == dict.fromkeys(("G1", "G2", "G3", "G4"), ID)


def test_rows_hidden_in_the_workbook_are_read_and_said(local_settings, local_store, caplog):
    """A worker filters the sheet to the claims of one hospital and saves it: the other rows are
    hidden, not deleted. They are data all the same; the hub took more rows than the department saw
    in Excel, and nothing said why."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "结算"
    ws.append(ZH)
    for claim_id in ("V1", "V2", "V3"):
        ws.append(_claim_row(claim_id))
    ws.row_dimensions[3].hidden = True
    ws.row_dimensions[4].hidden = True
    fc = _run_workbook(local_settings, local_store, caplog, wb, "filtered.xlsx")
    assert (fc.input, fc.accepted) == (3, 3)
    assert "sheet '结算' 2 data row(s) hidden in the workbook (row 3, 4) read all the same" in caplog.text


def test_a_merged_number_too_long_to_be_exact_is_refused_in_every_row_it_fills():
    from connectors.formats import Row, Table, fill_merged

    t = Table(["结算单号", "公民身份号码"], [Row(["A", "431302197003125000"], 2, lossy=(1,)), Row(["B", None], 3),
                                           Row(["C", None], 5)], sheet="s", merges=[(1, 2, 1, 5), (0, 1, 0, 3)])
    out = fill_merged(t)
    assert [list(r) for r in out.rows] == [["A", "431302197003125000"], ["B", "431302197003125000"],
                                           ["C", "431302197003125000"]]
    assert [r.lossy for r in out.rows] == [(1,), (1,), (1,)] and out.merges == []
    assert out.notes == ["sheet 's' 1 merged range(s) filled down from their first cell (B2:B5 (公民身份号码)): "
                         "each row of a range took its value"]


def test_an_optional_field_under_a_name_of_the_countys_own_is_said(local_settings, local_store, caplog):
    """Another county calls 大病/特殊慢病 "大病标识": the column matched no field, and serious_illness
    was empty in every row — the serious-illness rule blind for the county — without a word."""
    local_store.write_bytes("landing/medical_insurance/claim/c_20261001.csv",
                            csv_bytes([[*_claim_row("S1"), "是", "1"]], header=[*ZH, "大病标识", "序号"]))
    with caplog.at_level("WARNING"):
        fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted) == (1, 1)
    assert ("optional field(s) diagnosis_name (疾病诊断名称), serious_illness (大病/特殊慢病) have no column and are "
            "read as empty in every row; column(s) not of the feed: 大病标识, 序号") in caplog.text
    caplog.clear()  # every field has its column: nothing to say
    local_store.write_bytes("landing/medical_insurance/claim/c_20261002.csv",
                            csv_bytes([[*_claim_row("S2"), "是", "I10 高血压", "2"]],
                                      header=[*ZH, "大病/特殊慢病", "疾病诊断名称", "序号"]))
    with caplog.at_level("WARNING"):
        run(local_settings, local_store)
    assert "optional field" not in caplog.text
    # the county's mapping: 大病标识 is serious_illness, 序号 no field ("-"); diagnosis_name it does not export
    local_settings.mappings.mkdir(parents=True, exist_ok=True)
    (local_settings.mappings / f"{CLAIM.feed_id}.toml").write_text('[headers]\n"大病标识" = "serious_illness"\n"序号" = "-"\n',
                                                                   encoding="utf-8")
    caplog.clear()
    local_store.write_bytes("landing/medical_insurance/claim/c_20261003.csv",
                            csv_bytes([[*_claim_row("S3"), "是", "3"]], header=[*ZH, "大病标识", "序号"]))
    with caplog.at_level("WARNING"):
        run(local_settings, local_store)
    assert "optional field" not in caplog.text
    raw = {r["claim_id"]: r for r in local_store.dataset("raw/medical_insurance/claim/").to_table().to_pylist()}
    assert raw["S3"]["serious_illness"] is not None and raw["S1"]["serious_illness"] is None


def test_title_lines_above_a_csv_header_are_skipped_not_taken_for_the_header(local_settings, local_store):
    title = ["长沙市医疗费用结算明细表（2026年9月）", *[""] * 8]
    local_store.write_bytes("landing/medical_insurance/claim/c.csv",
                            csv_bytes([["单位：元", *[""] * 8], ZH, _claim_row("T1")], header=title))
    fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted, fc.quarantined_total) == (1, 1, 0)


def test_a_file_without_its_header_row_is_quarantined_without_printing_the_person(local_settings, local_store, caplog):
    """A header-less export: its first row is a person's claim, and the `file_header` reason
    (and the log) once listed its cells as the "headers found" — the hospital, the ID number's
    neighbours, a name in the person feed."""
    row = ["C9", ID, "2026-09-03", "王小明诊所", "是", "I10", "100.00", "80.00", "20.00"]
    local_store.write_bytes("landing/medical_insurance/claim/noheader.csv", csv_bytes([row], header=row))
    with caplog.at_level("INFO"):
        fc = run(local_settings, local_store)
    assert dict(fc.quarantined) == {"file_header": 2}
    reasons = [q["_reason"] for q in local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()]
    assert all("looks like data, not a header" in r and "王小明" not in r for r in reasons)
    assert "王小明" not in caplog.text and ID not in caplog.text


def test_blank_and_repeated_header_cells_keep_their_cells_in_the_quarantined_record(local_settings, local_store):
    header = [*ZH, "", "", "备注", "备注"]
    row = [*_claim_row("B1", inpatient="也许"), "x", "y", "甲", "乙"]
    local_store.write_bytes("landing/medical_insurance/claim/b.csv", csv_bytes([row], header=header))
    run(local_settings, local_store)
    [q] = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    assert sorted(json.loads(q["_raw"]).values()) == sorted(row)


def test_profile_reads_every_sheet_past_the_title_and_never_lists_a_data_row_as_columns():
    """`feeds profile` decodes a drop as ingest does: the workbook's data sheets past their titles,
    notes on what was skipped — and a header-less file's first row (a person) is not listed as
    "columns" nor written into the suggested mapping."""
    from connectors.mapping import Mapping
    from connectors.profile import profile_files, render

    wb = openpyxl.Workbook()
    wb.active.title = "说明"
    wb.active.append(["金额单位：元"])
    data = wb.create_sheet("明细")
    data.append(["医疗费用结算明细"])
    data.append(ZH)
    data.append(_claim_row("P1"))
    buf = io.BytesIO()
    wb.save(buf)
    row = ["C9", ID, "2026-09-03", "王小明诊所", "是", "I10", "100.00", "80.00", "20.00"]
    m = Mapping(CLAIM.feed_id)
    p = profile_files(CLAIM, m, [("q.xlsx", buf.getvalue()), ("noheader.csv", csv_bytes([row], header=row)),
                                 ("empty.csv", b"")])
    text = "\n".join(render(CLAIM, p)) + p.suggested_mapping(CLAIM, m)
    assert p.columns["结算单号"] == "claim_id" and "sheet '说明' skipped" in text and "header found on row 2" in text
    assert "looks like data, not a header" in text and "王小明" not in text and ID not in text
    assert "empty.csv: an empty file (0 bytes)" in text


def test_profile_names_a_quasi_identifiers_unknown_codes_so_they_can_be_mapped():
    """Gender is a quasi-identifier with a closed set (男/女): a county's codes (1/2, 未知) were
    shown as "**" and left out of the suggested mapping, so nobody could see what to map."""
    from connectors.mapping import Mapping
    from connectors.profile import profile_files

    person = get("public_security.person")
    header = ["公民身份号码", "姓名", "性别", "出生日期", "户号", "与户主关系", "行政区划代码", "户口性质", "人员状态"]
    rows = [[ID, "测试", g, "1980-01-01", "4301030001", "户主", "430103001001", "城镇", "正常"] for g in ("1", "2", "未知")]
    m = Mapping(person.feed_id)
    p = profile_files(person, m, [("p.csv", csv_bytes(rows, header=header))])
    assert dict(p.unknown_values["gender"]) == {"1": 1, "2": 1, "未知": 1}
    assert "[values.gender]" in p.suggested_mapping(person, m) and "测试" not in p.suggested_mapping(person, m)


def test_excel_numbers_too_long_hidden_sheets_total_rows_and_big5_are_not_taken_as_data(local_settings, local_store,
                                                                                        caplog):
    """A second county's quirks: an ID number typed as an Excel number (its last digits lost — one
    in eleven still has a valid check character, and reached clean/ as another person), a hidden
    sheet of old or deleted records (read as current data), a 合计 row (accepted as a claim), a
    Big5 file (read as GB18030 into nonsense and accepted)."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(ZH)
    ws.append([*_claim_row("N1")[:1], int(ID[:17] + "0"), *_claim_row("N1")[2:]])  # a number of 18 digits
    ws.append(_claim_row("N2"))
    ws.append(["合计", None, None, None, None, None, "200.00", "160.00", "40.00"])
    old = wb.create_sheet("旧数据")
    old.append(ZH)
    old.append(_claim_row("OLD1"))
    old.sheet_state = "hidden"
    buf = io.BytesIO()
    wb.save(buf)
    local_store.write_bytes("landing/medical_insurance/claim/q.xlsx", buf.getvalue())
    big5 = ",".join(["claim_id", "id_no", "settle_date", "hospital_name", "inpatient", "diagnosis_code",
                     "total_amount", "fund_paid", "out_of_pocket"]) + "\r\n" + ",".join(
        ["B1", ID, "2026-09-03", "臺北榮民總醫院", "是", "I10", "100.00", "80.00", "20.00"]) + "\r\n"
    local_store.write_bytes("landing/medical_insurance/claim/b.csv", big5.encode("big5"))
    with caplog.at_level("WARNING"):
        fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted) == (4, 2)
    assert dict(fc.quarantined) == {"number_precision": 1, "total_row": 1}
    assert "hidden sheet '旧数据' not read" in caplog.text
    clean_feed(local_store, CLAIM)
    got = {r["claim_id"]: r for r in read_clean(local_store, CLAIM).to_pylist()}
    assert set(got) == {"N2", "B1"} and got["B1"]["hospital_name"] == "臺北榮民總醫院"
    q = {r["_rule"]: r["_reason"] for r in local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()}
    assert "field id_no" in q["number_precision"] and "row 2" in q["number_precision"]


def test_a_snapshot_split_into_files_of_one_date_is_read_as_one(local_settings, local_store, caplog):
    """A county splits its snapshot by category (城镇 / 农村): the feed's state was one file — the last
    by name — and the other's records were left out with only a count in the catalog (half of a
    低保 roster). Every file of the newest data date is now the snapshot; an older date's are not."""
    prop = get("housing.property")
    hdr = ["不动产单元号", "权利人证件号码", "共有份额", "房屋用途", "建筑面积", "登记日期", "权属状态"]
    local_store.write_bytes("landing/housing/property/全部_20261001.csv",
                            csv_bytes([["P0", ID, "1", "住宅", "70", "2009-01-01", "现势"]], hdr))
    local_store.write_bytes("landing/housing/property/城镇_20261101.csv",
                            csv_bytes([["P1", ID, "1", "住宅", "80.5", "2010-01-01", "现势"]], hdr))
    local_store.write_bytes("landing/housing/property/农村_20261101.csv",
                            csv_bytes([["P2", ID, "1", "住宅", "60", "2015-01-01", "现势"],
                                       ["P1", ID, "1", "住宅", "81", "2010-01-01", "现势"]], hdr))
    with caplog.at_level("INFO"):
        ingest(local_settings, local_store, [prop.feed_id], kafka=False)
        counts = clean_feed(local_store, prop)
    assert "2 files of the same data date (农村_20261101.csv, 城镇_20261101.csv)" in caplog.text
    got = {r["property_id"]: r for r in read_clean(local_store, prop).to_pylist()}
    assert set(got) == {"P1", "P2"}
    assert (counts.older_snapshots, counts.superseded, counts.rows) == (1, 1, 2) and counts.reconciles
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "snapshot" in r.getMessage()]
    assert len(warned) == 1 and "1 key(s) are in more than one file of the snapshot" in warned[0]
    assert "(农村_20261101.csv, 城镇_20261101.csv)" in warned[0]


def test_a_held_part_of_a_split_snapshot_keeps_the_previous_snapshot_in_force(local_settings, local_store, caplog):
    """The 农村 file of a split snapshot is held as unhealthy: the 城镇 file alone was the newest
    snapshot, and the previous snapshot's 农村 keys were dropped as older until the held file was
    released. Now the incomplete date's other files wait, and the whole previous snapshot stays."""
    prop = get("housing.property")
    hdr = ["不动产单元号", "权利人证件号码", "共有份额", "房屋用途", "建筑面积", "登记日期", "权属状态"]
    rows = {"城镇": [["P1", ID, "1", "住宅", "80.5", "2010-01-01", "现势"]],
            "农村": [["P2", ID, "1", "住宅", "60", "2015-01-01", "现势"]]}
    for part, r in rows.items():
        local_store.write_bytes(f"landing/housing/property/{part}_20261001.csv", csv_bytes(r, hdr))
    ingest(local_settings, local_store, [prop.feed_id], kafka=False)
    for part in rows:
        local_store.write_bytes(f"landing/housing/property/{part}_20261101.csv",
                                csv_bytes([[r[0] + "n", *r[1:]] for r in rows[part]], hdr))
    ingest(local_settings, local_store, [prop.feed_id], kafka=False)
    [rural] = [e.path for e in local_store.list(f"raw/{prop.prefix}/", ".parquet") if "农村_20261101" in e.path]
    health.set_held(local_store, prop, {rural: {"why": "test: unhealthy"}}, [])
    with caplog.at_level("WARNING"):
        counts = clean_feed(local_store, prop)
    assert {r["property_id"] for r in read_clean(local_store, prop).to_pylist()} == {"P1", "P2"}
    assert (counts.raw_rows, counts.older_snapshots, counts.rows) == (2, 0, 2) and counts.reconciles
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("the snapshot of 2026-11-01 is incomplete — 农村_20261101.csv held as unhealthy; its other file(s) "
               "(城镇_20261101.csv) wait and the snapshot of 2026-10-01 stays in force" in m for m in said)
    manifest = json.loads(local_store.read_bytes(paths.clean_manifest(prop.prefix)))
    assert manifest["held_files"] == [rural] and len(manifest["waiting_files"]) == 1
    health.release(local_store, prop)  # the operator accepts it: the new snapshot, both halves
    counts = clean_feed(local_store, prop)
    assert {r["property_id"] for r in read_clean(local_store, prop).to_pylist()} == {"P1n", "P2n"}
    assert (counts.older_snapshots, counts.rows) == (2, 2) and counts.reconciles


def test_a_part_of_a_split_snapshot_exported_on_another_day_is_warned_about(local_settings, local_store, caplog):
    """A county exports its 城镇 and 农村 files on different days: the later date was the snapshot
    alone, and the other part's keys fell out of the state in force, counted as older snapshots,
    said nowhere. A warning names the missing part and how many keys left with it."""
    prop = get("housing.property")
    hdr = ["不动产单元号", "权利人证件号码", "共有份额", "房屋用途", "建筑面积", "登记日期", "权属状态"]

    def drop(name: str, *ids: str) -> None:
        local_store.write_bytes(f"landing/housing/property/{name}",
                                csv_bytes([[i, ID, "1", "住宅", "60", "2015-01-01", "现势"] for i in ids], hdr))

    def warned() -> list[str]:
        with caplog.at_level("WARNING"):
            caplog.clear()
            ingest(local_settings, local_store, [prop.feed_id], kafka=False)
            clean_feed(local_store, prop)
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "snapshot" in r.getMessage()]

    drop("城镇_20261001.csv", "P1", "P4")
    drop("农村_20261001.csv", "P2")
    assert warned() == []
    drop("农村_20261102.csv", "P2", "P3")  # 城镇 comes a day later
    [said] = warned()
    assert ("the snapshot of 2026-11-02 (农村_20261102.csv) has no part matching 城镇_20261001.csv of the snapshot "
            "of 2026-10-01, which was split into 2 files: 2 key(s) of it are not in the state in force") in said
    assert {r["property_id"] for r in read_clean(local_store, prop).to_pylist()} == {"P2", "P3"}
    drop("城镇_20261102.csv", "P1")  # the part delivered with the same date: whole again, nothing said
    assert warned() == []
    assert {r["property_id"] for r in read_clean(local_store, prop).to_pylist()} == {"P1", "P2", "P3"}


def test_json_lines_envelopes_and_values_a_third_county_sends(local_settings, local_store):
    """JSON exports as other systems write them: an empty event id (every such event was taken for
    a redelivery of one, and all but one silently left out), an event dated 2099 (it outranked every
    later correction), UTC as `Z` (refused), an object where a field holds one value (kept as its
    JSON text), an ID number as a JSON number (its last digits a float's), Chinese keys (refused)."""
    def env(eid, claim_id, when="2026-09-03T08:00:00+08:00", **payload):
        body = {"claim_id": claim_id, "id_no": ID, "settle_date": "2026-09-03", "hospital_name": "长沙市第一医院",
                "inpatient": "是", "diagnosis_code": "I10", "total_amount": "100.00", "fund_paid": "80.00",
                "out_of_pocket": "20.00", **payload}
        return json.dumps({"event_id": eid, "source": "medical_insurance", "feed": "claim", "op": "upsert",
                           "occurred_at": when, "schema_version": 1, "payload": body}, ensure_ascii=False)

    lines = [env("", "E1"), env("  ", "E2"), env("f1", "F1", when="2099-01-01T00:00:00+08:00"),
             env("z1", "Z1", when="2026-09-03T00:00:00.000Z"), env("o1", "O1", hospital_name={"name": "医院"}),
             env("n1", "N1").replace(f'"id_no": "{ID}"', f'"id_no": {int(ID[:17] + "0")}'),
             json.dumps({"结算单号": "K1", "公民身份号码": ID, "结算日期": "2026-09-03", "定点医疗机构": "医院",
                         "是否住院": "否", "疾病诊断编码": "I10", "医疗费用总额": "10.00", "基金支付": "8.00",
                         "个人自付": "2.00"}, ensure_ascii=False)]
    local_store.write_bytes("landing/medical_insurance/claim/events.jsonl", ("\n".join(lines) + "\n").encode())
    fc = run(local_settings, local_store)
    assert dict(fc.quarantined) == {"envelope_invalid": 3, "json_structure": 1, "number_precision": 1}
    raw = local_store.dataset("raw/medical_insurance/claim/").to_table().to_pylist()
    assert {r["claim_id"] for r in raw} == {"Z1", "K1"}  # (held: 5 of 7 quarantined make the feed unhealthy)
    q = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    env_fields = sorted(r["_field"] for r in q if r["_rule"] == "envelope_invalid")
    assert env_fields == ["event_id", "event_id", "occurred_at"]  # the reason says which envelope field
    assert any("envelope field occurred_at — envelope_invalid" in r["_reason"] for r in q)


def test_json_lines_keys_are_matched_as_csv_headers_are(local_settings, local_store, caplog):
    """A county's JSON export writes `Claim_ID`, `ID_NO`, `total_amount ` (a space) (a CSV header is matched
    whatever its case and spacing; a JSON key was not): every record was `required_missing`. An
    optional field under a key of the county's own was empty in every record, unsaid."""
    flat = {"Claim_ID": "U1", "ID_NO": ID, "SETTLE_DATE": "2026-09-03", "HOSPITAL_NAME": "长沙市第一医院",
            "Inpatient": "是", "diagnosis_CODE": "I10", "total_amount ": "100.00", "Fund_Paid": "80.00",
            "out_of_pocket": "20.00", "大病标识": "是"}
    payload = {**flat, "Claim_ID": "U2"}
    envelope = {"event_id": "u2", "source": "medical_insurance", "feed": "claim", "op": "upsert",
                "occurred_at": "2026-09-03T08:00:00+08:00", "schema_version": 1, "payload": payload}
    lines = [json.dumps(x, ensure_ascii=False) for x in (flat, envelope)]
    local_store.write_bytes("landing/medical_insurance/claim/upper_20261001.jsonl", ("\n".join(lines) + "\n").encode())
    with caplog.at_level("WARNING"):
        fc = run(local_settings, local_store)
    assert (fc.input, fc.accepted, dict(fc.quarantined)) == (2, 2, {})
    raw = {r["claim_id"]: r for r in local_store.dataset("raw/medical_insurance/claim/").to_table().to_pylist()}
    assert set(raw) == {"U1", "U2"} and {r["id_no"] for r in raw.values()} == {ID}
    assert raw["U2"]["_event_id"] == "u2"  # the envelope line is still an event
    assert ("optional field(s) diagnosis_name (疾病诊断名称), serious_illness (大病/特殊慢病) have no key and are read "
            "as empty in every row; key(s) not of the feed: 大病标识") in caplog.text


def test_a_kafka_value_with_a_byte_order_mark_is_json():
    from connectors.formats import json_text

    assert json_text([b'\xef\xbb\xbf{"a": 1}', b'{"b": 2}', None]).to_pylist() == ['{"a": 1}', '{"b": 2}', None]


def test_profile_offers_a_small_whole_number_fields_words_for_mapping():
    """A disability grade is 1–4: a county writing 1级, 壹级 or 三 saw them as examples, but the
    suggested mapping had no line for them (only enum and yes/no fields got one)."""
    from connectors.mapping import Mapping, allowed_values
    from connectors.profile import profile_files

    dis = get("disabled_persons_federation.disability")
    assert allowed_values(dis.field("grade")) == ("1", "2", "3", "4")
    rows = [[ID, "肢体", g, "2020-01-01"] for g in ("1级", "壹级", "2", "9")]
    m = Mapping(dis.feed_id)
    p = profile_files(dis, m, [("d.csv", csv_bytes(rows, header=["公民身份号码", "残疾类别", "残疾等级", "发证日期"]))])
    assert dict(p.unknown_values["grade"]) == {"1级": 1, "壹级": 1, "9": 1}
    suggested = p.suggested_mapping(dis, m)
    assert "[values.grade]" in suggested and '"1级" = "?"' in suggested


def test_a_column_a_mapping_ignores_is_not_offered_again_and_allowed_under_frozen(tmp_path):
    """`"序号" = "-"`: a column known to be no field. The suggested mapping offered it again (a
    duplicate key, invalid TOML once filled in), and a frozen feed refused the file for it."""
    import dataclasses
    import tomllib

    from connectors.formats import FileFormatError, rows_to_records
    from connectors.mapping import load
    from connectors.profile import profile_files

    (tmp_path / f"{CLAIM.feed_id}.toml").write_text('[headers]\n"序号" = "-"\n', encoding="utf-8")
    m = load(CLAIM, "", tmp_path)
    assert m.headers == {"序号": "-"}
    p = profile_files(CLAIM, m, [("c.csv", csv_bytes([[*_claim_row("P1"), "1", "x"]], header=[*ZH, "序号", "备注"]))])
    suggested = p.suggested_mapping(CLAIM, m)
    assert tomllib.loads(suggested.replace('= ""', '= "-"'))["headers"] == {"序号": "-", "备注": "-"}
    assert "optional field(s) diagnosis_name (疾病诊断名称), serious_illness (大病/特殊慢病)" in " ".join(p.notes)
    assert "not of the feed: 备注 —" in " ".join(p.notes)  # 序号 is known to be none
    frozen = dataclasses.replace(CLAIM, evolution="frozen")
    rows_to_records(frozen, [*ZH, "序号"], [[*_claim_row("P1"), "1"]], m)  # no error: the column is ignored
    with pytest.raises(FileFormatError, match="备注"):
        rows_to_records(frozen, [*ZH, "备注"], [[*_claim_row("P1"), "x"]], m)


def test_a_json_lines_envelope_with_a_broken_payload_is_an_invalid_envelope_not_a_flat_record(local_settings,
                                                                                                local_store):
    """An outbox line with an event id and `"payload": null` (a delete) was read as a flat upsert of
    the fields beside it (the delete lost); a payload given as a JSON string was `required_missing`."""
    base = {"source": "medical_insurance", "feed": "claim", "occurred_at": "2026-09-03T08:00:00+08:00",
            "schema_version": 1, "claim_id": "D1", "id_no": ID, "settle_date": "2026-09-03", "hospital_name": "医院",
            "inpatient": "是", "diagnosis_code": "I10", "total_amount": "1.00", "fund_paid": "1.00",
            "out_of_pocket": "0.00"}
    lines = [json.dumps({**base, "event_id": "d1", "op": "delete", "payload": None}, ensure_ascii=False),
             json.dumps({**base, "event_id": "s1", "op": "upsert", "payload": json.dumps({"claim_id": "D1"})},
                        ensure_ascii=False)]
    local_store.write_bytes("landing/medical_insurance/claim/broken.jsonl", ("\n".join(lines) + "\n").encode())
    fc = run(local_settings, local_store)
    assert dict(fc.quarantined) == {"envelope_invalid": 2} and fc.accepted == 0
    q = local_store.dataset("quarantine/medical_insurance/claim/").to_table().to_pylist()
    assert sorted(r["_field"] for r in q) == ["payload", "payload"]
