"""The data-contract declaration: one `Contract` per feed is the single source of truth.

From one declaration come the pyarrow schema of `clean/`, the string schema of `raw/`, the
Chinese/English header mapping of file drops, the key, the PII class of every field, the
evolution mode, the expected cadence, and (in `schemas.normalise`) the SQL that validates and
normalises a record.  Nothing about a feed is written twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from zoneinfo import ZoneInfo

import pyarrow as pa

#: The departments' time zone: a datetime without an offset, a data date, "today"
TZ_NAME = "Asia/Shanghai"
LOCAL_TZ = ZoneInfo(TZ_NAME)

Kind = Literal[
    "string",  # free text, trimmed
    "id_no",  # PRC resident ID number (GB 11643), normalised to 18 chars
    "region_code",  # 12-digit statistical division code
    "credit_code",  # 18-char unified social credit code
    "date",  # YYYY-MM-DD (also YYYY/M/D, YYYYMMDD, YYYY年M月D日)
    "datetime",  # YYYY-MM-DD HH:MM:SS, Asia/Shanghai unless an offset is given
    "month",  # YYYY-MM
    "money",  # yuan, decimal(14,2); "1,234.50" and "1234.5元" accepted
    "decimal",  # non-money decimal (share, area)
    "int",
    "bool",  # true/false, 是/否, 1/0, Y/N
    "enum",  # one of `values`
    "urban_rural",  # 城镇/城市 → urban, 农村 → rural
    "text_list",  # "a,b;c、d" → list<string>
    "members",  # JSON array of {"id_no", "relation"}
]
Pii = Literal["direct", "quasi", "none"]
Mode = Literal["event", "snapshot", "delta"]
Evolution = Literal["additive", "frozen"]

MONEY = pa.decimal128(14, 2)
MEMBER = pa.struct([("id_no", pa.string()), ("relation", pa.string())])

_ARROW: dict[str, pa.DataType] = {
    "string": pa.string(),
    "id_no": pa.string(),
    "region_code": pa.string(),
    "credit_code": pa.string(),
    "date": pa.date32(),
    "datetime": pa.timestamp("ms", tz=TZ_NAME),  # ms: Parquet has no seconds unit
    "month": pa.string(),
    "money": MONEY,
    "decimal": pa.decimal128(12, 4),
    "int": pa.int32(),
    "bool": pa.bool_(),
    "enum": pa.string(),
    "urban_rural": pa.string(),
    "text_list": pa.list_(pa.string()),
    "members": pa.list_(MEMBER),
}

#: Lineage columns on every `raw/` row (underscore-prefixed so they never clash with a field).
LINEAGE = pa.schema(
    [
        ("_event_id", pa.string()),
        ("_op", pa.string()),
        ("_occurred_at", pa.string()),
        ("_source", pa.string()),  # "kafka" or "file"
        ("_kafka_topic", pa.string()),
        ("_kafka_partition", pa.int32()),
        ("_kafka_offset", pa.int64()),
        ("_source_file", pa.string()),
        ("_row_number", pa.int64()),
        ("_ingested_at", pa.timestamp("ms", tz="UTC")),
        ("_mapping", pa.string()),  # checksum of the feed mapping applied (`connectors.mapping`)
    ]
)

#: Columns every `quarantine/` file carries besides the lineage columns.
QUARANTINE = pa.schema(
    [
        ("_raw", pa.string()),  # the record exactly as received (JSON text or the CSV/XLSX row as JSON)
        ("_rule", pa.string()),  # the first rule the record broke (stable identifier)
        ("_field", pa.string()),  # the field that broke it, or "" for record-level rules
        ("_reason", pa.string()),  # one readable line; never contains an unmasked personal value
    ]
)


@dataclass(frozen=True)
class Field:
    """One field of a feed."""

    name: str
    kind: Kind
    label_zh: str
    required: bool = True
    pii: Pii = "none"
    values: tuple[str, ...] = ()  # for kind == "enum"
    min: float | None = None
    max: float | None = None
    doc: str = ""

    @property
    def arrow_type(self) -> pa.DataType:
        return _ARROW[self.kind]


@dataclass(frozen=True)
class Contract:
    """A versioned contract of one department feed."""

    department: str
    feed: str
    version: int
    title_zh: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    mode: Mode  # how file drops of this feed arrive: full snapshots or deltas; "event" = Kafka-first
    evolution: Evolution = "additive"  # additive: new optional fields may appear; frozen: reject unknown
    cadence_hours: int = 24  # how often data is expected (freshness)
    department_zh: str = ""
    order_by: tuple[str, ...] = field(default=())  # payload fields that order versions of one key

    # ---- identity ---------------------------------------------------------------------------
    @property
    def feed_id(self) -> str:
        """`department.feed`: the one id used for module, topic, prefixes, assets and tests."""
        return f"{self.department}.{self.feed}"

    @property
    def topic(self) -> str:
        return f"dept.{self.department}.{self.feed}.v{self.version}"

    @property
    def prefix(self) -> str:
        """The `<department>/<feed>` path segment used by every zone."""
        return f"{self.department}/{self.feed}"

    # ---- fields -----------------------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.feed_id}: no field {name!r}")

    @property
    def id_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.kind == "id_no")

    @property
    def pii_fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.pii == "direct")

    # ---- schemas ----------------------------------------------------------------------------
    def arrow_schema(self) -> pa.Schema:
        """Schema of `clean/`: typed, normalised fields (+ `_event_id`, `_occurred_at`)."""
        cols = [pa.field(f.name, f.arrow_type, nullable=not f.required or f.name not in self.key,
                         metadata={"label_zh": f.label_zh, "pii": f.pii}) for f in self.fields]
        cols += [pa.field("_event_id", pa.string()), pa.field("_occurred_at", pa.timestamp("ms", tz="UTC"))]
        return pa.schema(cols, metadata={"feed_id": self.feed_id, "contract_version": str(self.version)})

    def raw_schema(self) -> pa.Schema:
        """Schema of `raw/`: every field as received (text), then the lineage columns."""
        cols = [pa.field(f.name, pa.string()) for f in self.fields]
        return pa.schema(cols + list(LINEAGE), metadata={"feed_id": self.feed_id,
                                                          "contract_version": str(self.version)})

    def quarantine_schema(self) -> pa.Schema:
        return pa.schema(list(QUARANTINE) + list(LINEAGE), metadata={"feed_id": self.feed_id})

    # ---- headers ----------------------------------------------------------------------------
    def header_map(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """Every accepted header (English name, Chinese label, case/space-insensitive) → field;
        `extra` (a deployment's mapping, keys already normalised) adds to and overrides them. A
        column the mapping marks `IGNORED` names no field."""
        out: dict[str, str] = {}
        for f in self.fields:
            out[norm_header(f.name)] = f.name
            out[norm_header(f.label_zh)] = f.name
        return {**out, **{k: v for k, v in (extra or {}).items() if v != IGNORED}}

    def map_headers(self, headers: list[str], extra: dict[str, str] | None = None
                    ) -> tuple[list[str | None], list[str]]:
        """Map file headers to field names; returns (mapped-or-None per column, missing required).
        A field named by two columns takes the first; the second is left unmapped."""
        hm = self.header_map(extra)
        mapped: list[str | None] = []
        for h in headers:
            f = hm.get(norm_header(h))
            mapped.append(f if f not in mapped else None)
        missing = [f.name for f in self.fields if f.required and f.name not in mapped]
        return mapped, missing

    def describe(self) -> dict:
        """A JSON-able description (used by `safetynet feeds --json` and docs)."""
        return {
            "feed_id": self.feed_id, "title_zh": self.title_zh, "department_zh": self.department_zh,
            "version": self.version, "topic": self.topic, "key": list(self.key), "mode": self.mode,
            "evolution": self.evolution, "cadence_hours": self.cadence_hours,
            "fields": [{"name": f.name, "label_zh": f.label_zh, "kind": f.kind, "required": f.required,
                        "pii": f.pii, **({"values": list(f.values)} if f.values else {})}
                       for f in self.fields],
        }


#: A mapping's `[headers]` target for a column known to be no field of the feed (序号, 备注): not
#: said as a column the feed lacks a name for (`connectors.formats.absent_note`), allowed under
#: frozen evolution.
IGNORED = "-"


def ignored(header: str, headers: dict[str, str] | None) -> bool:
    """Whether a mapping (`headers`, normalised) marks the column `IGNORED`."""
    return bool(headers) and headers.get(norm_header(header)) == IGNORED  # type: ignore[union-attr]


def norm_header(h: str) -> str:
    """A header as compared: no white space anywhere, lower case, no BOM."""
    return "".join(str(h).split()).lower().lstrip("\ufeff")


def F(name: str, kind: Kind, label_zh: str, **kw) -> Field:
    """Shorthand used by the feed declarations."""
    if "values" in kw:
        kw["values"] = tuple(kw["values"])
    return Field(name, kind, label_zh, **kw)
