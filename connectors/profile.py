"""Profile a department's export against a feed's contract — ingests nothing.

How a county onboards a department: `safetynet feeds profile FILE… --feed ID` (or `--kafka` for
a sample of the topic) decodes the files exactly as ingest would (same formats, the feed's current
mapping, the contract's validation SQL) and reports which column matched each field, the values
the contract does not know (with counts), unparsable dates, amounts and other formats (with
masked examples), and a suggested mapping file to fill in (`connectors.mapping.template`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from connectors.formats import (
    FileFormatError,
    Table,
    absent_note,
    decode_json_values,
    is_blank,
    json_records_sql,
    json_spellings,
    looks_like_data,
    map_values_sql,
    read_tables,
    rows_to_records,
)
from connectors.mapping import Mapping, allowed_values, names_code_value, template
from schemas import envelope, idno, normalise
from schemas.contract import IGNORED, Contract, ignored

MAX_EXAMPLES = 3


def _example(value: str, pii: str) -> str:
    """An example value safe to print: masked by its field's `pii` class (`idno.mask_value`), at most 40 characters."""
    return idno.mask_value(value, pii)[:40]


@dataclass
class Profile:
    feed_id: str
    sources: list[str] = field(default_factory=list)
    records: int = 0
    columns: dict[str, str | None] = field(default_factory=dict)  # department column → field (None: unmatched)
    missing: list[str] = field(default_factory=list)  # required fields no column provides
    unknown_values: dict[str, Counter] = field(default_factory=dict)  # field → value → records
    bad_formats: dict[str, tuple[str, int, list[str]]] = field(default_factory=dict)  # field → (rule, n, examples)
    rules: Counter = field(default_factory=Counter)  # rule → records that would be quarantined
    file_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # how files were read: title rows, sheets skipped
    envelopes: int = 0  # JSON records that are event envelopes

    def suggested_mapping(self, c: Contract, current: Mapping | None = None) -> str:
        """The mapping file to fill in: `current` (the mapping in force) plus what is still unmapped."""
        unmatched = [h for h, f in self.columns.items() if f is None and h]
        return template(c, unmatched, self.missing, {f: dict(v) for f, v in self.unknown_values.items()}, current)


def _collect(c: Contract, p: Profile, con: duckdb.DuckDBPyConnection, source: str, mapping: Mapping) -> None:
    t = con.sql(normalise.validate_sql(c, f"({map_values_sql(c, source, mapping)})", pre_rule="_pre",
                                       typed=False, record_date=True, every_rule=True)).to_arrow_table()
    p.records += t.num_rows
    p.rules.update(r for r in t["_rule"].to_pylist() if r)
    for fld in c.fields:  # every field's own verdict, not only each record's first failure
        f = fld.name
        bad = t.filter(pc.is_valid(t[f"__r_{f}"])).select([f"__r_{f}", f]).to_pylist()
        for r in bad:
            rule, v = r[f"__r_{f}"], r[f]
            if names_code_value(fld, rule):
                p.unknown_values.setdefault(f, Counter())[str(v).strip()] += 1
            elif rule != "required_missing":
                prev = p.bad_formats.get(f, (rule, 0, []))
                ex = prev[2] + ([_example(v, fld.pii)] if v is not None and len(prev[2]) < MAX_EXAMPLES else [])
                p.bad_formats[f] = (rule, prev[1] + 1, ex)


def profile_files(c: Contract, mapping: Mapping, files: list[tuple[str, bytes]]) -> Profile:
    """Profile drop files (name, bytes) of one feed."""
    p = Profile(c.feed_id)
    con = normalise.connect()
    json_seen = False
    try:
        for name, data in files:
            p.sources.append(name)
            if is_blank(data):  # as ingest says it: an empty delivery, not a file missing its columns
                p.file_errors.append(f"{name}: an empty file ({len(data)} bytes): no header, no records")
                continue
            try:
                tables, fmt, notes = read_tables(name, data, c, mapping.headers)
            except FileFormatError as e:
                p.file_errors.append(f"{name}: {e.rule}: {e}")
                continue
            p.notes += [f"{name}: {n}" for n in notes]
            for t in tables:
                json_seen |= _profile_table(c, p, con, mapping, name, t, fmt)
    finally:
        con.close()
    if json_seen:  # JSON keys: a required field no key provides
        found = {f for f in p.columns.values() if f}
        p.missing = sorted(set(p.missing) | {f.name for f in c.fields if f.required and f.name not in found})
    return p


def _profile_table(c: Contract, p: Profile, con: duckdb.DuckDBPyConnection, mapping: Mapping, name: str, t: Table,
                   fmt: str) -> bool:
    """Profile one table of a file into `p`; whether it was JSON Lines."""
    header, rows = t.header, t.rows
    json_seen = False
    if fmt.startswith("jsonl"):
        lines = pa.table({"_row_number": pa.array(range(1, len(rows) + 1), pa.int64()),
                          "_value": pa.array([r[0] for r in rows], pa.string())})
        con.register("__lines", lines)
        spellings, others, present = json_spellings(con, "__lines", c, mapping.headers)  # as ingest reads them
        p.notes += [f"{name}: {n}" for n in absent_note(c, present, others, what="key")]
        recs = con.sql(json_records_sql(c, "__lines", envelope=None, mapping=mapping,
                                        spellings=spellings)).to_arrow_table()
        con.unregister("__lines")
        p.envelopes += recs.num_rows - recs["_event_id"].null_count
        json_seen = True
        for k in {k for r in rows[:200] for k in _keys(r[0] or "")}:  # (a JSON Lines row is its line)
            p.columns.setdefault(k, _field_of(c, mapping, k))
    else:
        mapped, missing = c.map_headers(header, mapping.headers)
        if looks_like_data(header, mapped):  # no header row: its cells are a person's data, never shown
            p.file_errors.append(f"{name}: file_header: the first row looks like data, not a header "
                                 f"({len(header)} cells, not shown): the export needs its header row")
        else:
            p.columns.update({h: IGNORED if m is None and ignored(h, mapping.headers) else m
                              for h, m in zip(header, mapped, strict=True)})  # an ignored column is mapped: not offered again
        p.missing = sorted(set(p.missing) | set(missing))
        recs = rows_to_records(c, header, rows, mapping, strict=False)
        recs = recs.append_column("_occurred_at", pa.nulls(recs.num_rows, pa.string()))
        recs = recs.append_column("_op", pa.array(["upsert"] * recs.num_rows, pa.string()))
    con.register("__rec", recs)
    _collect(c, p, con, "__rec", mapping)
    con.unregister("__rec")
    return json_seen


def profile_values(c: Contract, mapping: Mapping, values: list[bytes], source: str) -> Profile:
    """Profile Kafka message values (event envelopes) of one feed."""
    p = Profile(c.feed_id, [source])
    con = normalise.connect()
    try:
        meta = pa.table({"_kafka_offset": pa.array(range(len(values)), pa.int64())})
        recs = decode_json_values(con, c, values, meta, envelope=True, mapping=mapping)
        p.envelopes = recs.num_rows
        con.register("__rec", recs)
        _collect(c, p, con, "__rec", mapping)
        con.unregister("__rec")
    finally:
        con.close()
    return p


def _keys(line: str) -> list[str]:
    try:
        obj = json.loads(line)
    except ValueError:
        return []
    obj = envelope.unwrap(obj)
    return list(obj) if isinstance(obj, dict) else []


def _field_of(c: Contract, mapping: Mapping, key: str) -> str | None:
    if key in c.names:
        return key
    return next((f for h, f in mapping.raw_headers if h == key), None)


def render(c: Contract, p: Profile) -> list[str]:
    """The report as lines (rich markup-free text)."""
    out = [f"{c.feed_id} ({c.department_zh} {c.title_zh}): {p.records:,} records in {len(p.sources)} source(s)"
           + (f", {p.envelopes:,} of them event envelopes" if p.envelopes else "")]
    out += [f"  ✗ file {e}" for e in p.file_errors]
    out += [f"  ! {n}" for n in p.notes]
    if p.columns:
        out.append("  columns → fields:")
        for h, f in p.columns.items():
            out.append(f"    {h} → {f} ({c.field(f).label_zh})" if f else f"    {h} → ? (no field: ignored, or map it)")
    if p.missing:
        out.append("  ✗ required fields with no column: " + ", ".join(f"{m} ({c.field(m).label_zh})" for m in p.missing))
    for f, counts in p.unknown_values.items():
        fld = c.field(f)
        allowed = allowed_values(fld) or ()
        vals = ", ".join(f"{v} ×{n:,}" for v, n in counts.most_common(12))
        out.append(f"  ✗ {f} ({fld.label_zh}) values the contract does not know: {vals}  "
                   f"[contract: {' / '.join(allowed)}]")
    for f, (rule, n, ex) in p.bad_formats.items():
        out.append(f"  ✗ {f} ({c.field(f).label_zh}) {rule}: {n:,} records, e.g. {', '.join(ex) or '(empty)'}")
    total = sum(p.rules.values())
    out.append(f"  would quarantine {total:,} of {p.records:,} records"
               + (f" ({total / p.records:.1%}): " + ", ".join(f"{k}={v:,}" for k, v in p.rules.most_common())
                  if p.records and total else ""))
    return out
