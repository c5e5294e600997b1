"""Warning lists for people, the one exporter: `.csv` (UTF-8 with BOM, so Excel opens it) or `.xlsx`.

`safetynet warnings export` writes a published snapshot's list (`write`, rows in risk order); the review
app exports its filtered list through `render` with its own columns. Both: column labels from
`schemas.outputs` (`WARNING`, `WARNING_LIST`), every text cell that a spreadsheet would take for a
formula (= + - @ …) neutralised (`csv_safe`), ID numbers only masked (前6后4).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pyarrow as pa

from schemas import outputs
from schemas.idno import mask

#: column → its Chinese label
LABELS: dict[str, str] = {k: v[0] for k, v in {**outputs.WARNING, **outputs.WARNING_LIST}.items()}

#: a published snapshot's list (`safetynet warnings export`)
SNAPSHOT_COLUMNS = ("warning_id", "rule_id", "rule_title_zh", "severity", "household_no", "region_code",
                    "street_code", "subject_id_masked", "summary_zh", "household_score", "household_rank",
                    "top_signals", "policy_version", "snapshot_date")

#: column widths in Excel (others: 16)
_WIDTHS = {"summary_zh": 70, "top_signals": 40, "warning_id": 26, "subject_id_masked": 22}
FORMATS = ("csv", "xlsx")


def header(columns: Sequence[str], english: bool = False) -> list[str]:
    """The header row: each column's Chinese label, followed by the column's name if `english`."""
    return [f"{LABELS[c]} {c}" if english else LABELS[c] for c in columns]


def csv_safe(row: list) -> list:
    """Neutralise spreadsheet formulas in text cells (CSV injection): a cell starting with = + - @
    (or a tab / carriage return) gets a leading apostrophe, so Excel shows it as text."""
    return ["'" + v if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for v in row]


def _cell(v: object) -> object:
    return v.isoformat() if isinstance(v, dt.date) else v


def render(columns: Sequence[str], records: Iterable[Mapping], fmt: str, *, english: bool = False) -> bytes:
    """The list as a file's bytes: `columns` of each record (a mapping), under `header(columns, english)`,
    formulas neutralised; `fmt` is `csv` or `xlsx`."""
    if fmt not in FORMATS:
        raise ValueError(f"export to .csv or .xlsx, not .{fmt}")
    head = header(columns, english)
    data = (csv_safe([_cell(r.get(c)) for c in columns]) for r in records)
    if fmt == "csv":
        text = io.StringIO()
        wr = csv.writer(text, lineterminator="\r\n")
        wr.writerow(head)
        wr.writerows(data)
        return text.getvalue().encode("utf-8-sig")  # the BOM: Excel opens UTF-8 CSV with Chinese correctly
    from openpyxl import Workbook
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook(write_only=True)  # streamed: a county's whole list stays small in memory
    ws = wb.create_sheet("预警清单")
    ws.freeze_panes = "A2"
    for i, c in enumerate(columns, 1):
        ws.column_dimensions[get_column_letter(i)].width = _WIDTHS.get(c, 16)
    cells = []
    for h in head:
        cell = WriteOnlyCell(ws, value=h)
        cell.font = Font(bold=True)
        cells.append(cell)
    ws.append(cells)
    n = 0
    for row in data:
        ws.append(row)
        n += 1
    ws.auto_filter.ref = f"A1:{get_column_letter(len(columns))}{n + 1}"
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def snapshot_records(w: pa.Table) -> list[dict]:
    """A published snapshot's warnings (identified, or pseudonymised) as records of `SNAPSHOT_COLUMNS`, in
    risk order; the subject masked (前6后4), or in a pseudonymised list the start of its pseudonym."""
    out = []
    for r in w.sort_by([("household_rank", "ascending"), ("score", "descending"), ("rule_id", "ascending")]).to_pylist():
        subject = r.get("subject_id_no")
        r["subject_id_masked"] = (mask(subject) if subject else
                                  ("（假名）" + r["subject_key"][:8] if r.get("subject_key") else ""))
        r["top_signals"] = "；".join(r.get("top_signals") or [])
        out.append(r)
    return out


def write(w: pa.Table, path: Path) -> int:
    """Write a snapshot's warnings to `path` (.csv or .xlsx; headers in Chinese and English); returns the
    number of rows."""
    fmt = path.suffix.lower()[1:]
    if fmt not in FORMATS:
        raise ValueError(f"export to .csv or .xlsx, not {path.suffix or 'a file without suffix'}")
    records = snapshot_records(w)
    content = render(SNAPSHOT_COLUMNS, records, fmt, english=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return len(records)
