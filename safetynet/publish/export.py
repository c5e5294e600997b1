"""Warning lists for people: `.csv` (UTF-8 with BOM, so Excel opens it) or `.xlsx`, Chinese headers.

ID numbers appear only masked (前6后4); rows in risk order.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pyarrow as pa

from schemas.idno import mask

#: (column in the export, Chinese header, English name)
COLUMNS = (
    ("warning_id", "预警编号", "warning_id"), ("rule_id", "规则编号", "rule_id"), ("rule_title_zh", "预警规则", "rule"),
    ("severity", "严重程度", "severity"), ("household_no", "户号", "household_no"),
    ("region_code", "行政区划代码", "region_code"), ("street_code", "街道代码", "street_code"),
    ("subject", "当事人身份号码（脱敏）", "person (masked)"), ("summary_zh", "预警说明", "summary_zh"),
    ("household_score", "家庭风险分", "risk_score"), ("household_rank", "风险排名", "risk_rank"),
    ("top_signals", "主要风险信号", "top_signals"), ("policy_version", "政策参数版本", "policy_version"),
    ("snapshot_date", "快照日期", "snapshot_date"),
)


def csv_safe(row: list) -> list:
    """Neutralise spreadsheet formulas in text cells (CSV injection): a cell starting with = + - @
    (or a tab / carriage return) gets a leading apostrophe, so Excel shows it as text."""
    return ["'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for v in row]


def rows(w: pa.Table) -> list[list]:
    out = []
    for r in w.sort_by([("household_rank", "ascending"), ("score", "descending"), ("rule_id", "ascending")]).to_pylist():
        subject = r.get("subject_id_no")
        r["subject"] = mask(subject) if subject else ("（假名）" + r["subject_key"][:8] if r.get("subject_key") else "")
        r["top_signals"] = "；".join(r.get("top_signals") or [])
        r["snapshot_date"] = r["snapshot_date"].isoformat()
        out.append([r[c] for c, _, _ in COLUMNS])
    return out


def write(w: pa.Table, path: Path) -> int:
    """Write the warnings to `path` (.csv or .xlsx); returns the number of rows."""
    data = [csv_safe(r) for r in rows(w)]  # both formats: a cell starting with = + - @ is text, not a formula
    header = [f"{zh} {en}" for _, zh, en in COLUMNS]
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        buf = io.StringIO()
        wr = csv.writer(buf, lineterminator="\r\n")
        wr.writerow(header)
        wr.writerows(data)
        path.write_bytes(buf.getvalue().encode("utf-8-sig"))
    elif suffix == ".xlsx":
        from openpyxl import Workbook
        from openpyxl.styles import Font
        from openpyxl.utils import get_column_letter

        wb = Workbook()
        ws = wb.active
        ws.title = "预警清单"
        ws.append(header)
        for cell in ws[1]:
            cell.font = Font(bold=True)
        for row in data:
            ws.append(row)
        widths = {"summary_zh": 70, "top_signals": 40, "warning_id": 26, "subject": 22}
        for i, (c, _, _) in enumerate(COLUMNS, 1):
            ws.column_dimensions[get_column_letter(i)].width = widths.get(c, 16)
        ws.freeze_panes = "A2"
        ws.auto_filter.ref = ws.dimensions
        wb.save(path)
    else:
        raise ValueError(f"export to .csv or .xlsx, not {path.suffix or 'a file without suffix'}")
    return len(data)
