"""Per-feed mappings: a department's column names and code values → the contract's.

Contracts stay canonical and national; every county's departments export with their own headers
and code values. A mapping translates them, before validation, for file drops and Kafka alike.
It is data, in one TOML form used in two places:

* the feed's connector module holds the built-in (national) mapping (`MAPPING = '''…'''`, e.g.
  the GB/T 2261.1 sex codes `1`/`2`);
* a deployment adds its own, one file per feed: `<department>.<feed>.toml` in the directory
  `SAFETYNET_MAPPINGS` (default `./mappings`), which extends and overrides the built-in one::

      [headers]            # the department's column (or JSON key) → contract field
      "权属状态" = "status"
      "序号" = "-"          # a column that is no field (not mentioned again)
      [values.status]      # the department's value → the contract's value ("" = empty)
      "正常" = "现势"
      "注销" = "已注销"
      [health]
      max_quarantine_rate = 0.10   # this feed's threshold (default SAFETYNET_MAX_QUARANTINE_RATE)

A mapping naming an unknown field, or mapping to a value outside the contract, is refused when
loaded, with every problem listed at once (`MappingError`). The effective mapping's checksum
goes into the ingest run manifest and the `_mapping` lineage column of every `raw/` row.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from schemas.contract import IGNORED, Contract, Field, norm_header
from schemas.errors import ConfigError

#: What a value may be mapped to, per field kind, when the kind has a closed set.
_CLOSED = {"urban_rural": ("城镇", "农村"), "bool": ("true", "false", "是", "否", "1", "0", "Y", "N")}
_SECTIONS = {"headers", "values", "health"}


class MappingError(ConfigError):
    """One or more mapping files are wrong; `problems` lists every one. A `ConfigError`: exit 2, an
    Airflow task fails without retries."""

    def __init__(self, problems: list[str]):
        super().__init__("mapping problems:\n  - " + "\n  - ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Mapping:
    """The effective mapping of one feed (built-in, extended by the deployment's file)."""

    feed_id: str
    raw_headers: tuple[tuple[str, str], ...] = ()  # (department column or JSON key as written, field)
    values: dict[str, dict[str, str]] = field(default_factory=dict)  # field → {department value → contract value}
    max_quarantine_rate: float | None = None
    sources: tuple[str, ...] = ()  # "built-in", and the deployment file's path

    @property
    def headers(self) -> dict[str, str]:
        """Normalised column name (see `norm_header`) → field, for tabular files."""
        return {norm_header(h): f for h, f in self.raw_headers}

    @property
    def sha256(self) -> str:
        """Checksum of what the mapping does (not of the files' formatting)."""
        body = json.dumps({"headers": self.headers, "values": self.values}, ensure_ascii=False, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()

    @property
    def checksum(self) -> str:
        """The short form recorded on every `raw/` row (`_mapping`)."""
        return self.sha256[:16]

    @property
    def retake_key(self) -> str:
        """What a held drop is held under (`connectors.drop_folder.DropFolderSource.waiting`): the
        checksum, and the feed's own quarantine threshold when the file sets one — raising it
        takes the held drops in again, as a changed header or value mapping does. Without a
        threshold it is the checksum itself (the ledgers written before keep their meaning)."""
        if self.max_quarantine_rate is None:
            return self.checksum
        return hashlib.sha256(f"{self.sha256}|{self.max_quarantine_rate!r}".encode()).hexdigest()[:16]

    def keys_for(self, field_name: str) -> list[str]:
        """Department column names / JSON keys that map to `field_name` (as written, for JSON paths)."""
        return [h for h, f in self.raw_headers if f == field_name]



#: a whole-number field with at most this many allowed values (a grade 1–4, a level) is a closed set:
#: its departments' words for them (一级, 1级, 壹级) are codes to map
_SMALL_INT_RANGE = 20


def allowed_values(f: Field) -> tuple[str, ...] | None:
    """The contract values a field may be mapped to, when its kind has a closed set (else None)."""
    if f.kind == "int" and f.min is not None and f.max is not None and 0 <= f.max - f.min < _SMALL_INT_RANGE:
        return tuple(str(int(v)) for v in range(int(f.min), int(f.max) + 1))
    return f.values if f.kind == "enum" else _CLOSED.get(f.kind)


def names_code_value(f: Field, rule: str) -> bool:
    """Whether a rejected value of `f` under `rule` is a department code worth naming (in drift
    lines, profiles, suggested mappings): a value outside a closed set, of a field that does not
    identify a person by itself — a quasi-identifier's code too (gender 1/2, M/F, 未知: what a
    county must map), never a direct identifier's value."""
    return (rule in ("enum_value", "bool_format", "int_format", "out_of_range") and f.pii != "direct"
            and allowed_values(f) is not None)


def parse(c: Contract, text: str, source: str) -> tuple[dict, list[str]]:
    """A mapping text → (its parts, problems). Problems name the source, section and entry."""
    problems: list[str] = []
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return {}, [f"{source}: not valid TOML ({e})"]
    for k in raw:
        if k not in _SECTIONS:
            problems.append(f"{source}: unknown section [{k}] (known: {', '.join(sorted(_SECTIONS))})")
    headers: list[tuple[str, str]] = []
    for h, f in (raw.get("headers") or {}).items():
        if not isinstance(f, str) or (f not in c.names and f != IGNORED):
            problems.append(f"{source}: [headers] {h!r} → {f!r}: {c.feed_id} has no field {f!r} "
                            f"(fields: {', '.join(c.names)}; {IGNORED!r} for a column that is none)")
        else:
            headers.append((str(h), f))
    values: dict[str, dict[str, str]] = {}
    for fname, table in (raw.get("values") or {}).items():
        if fname not in c.names:
            problems.append(f"{source}: [values.{fname}]: {c.feed_id} has no field {fname!r}")
            continue
        if not isinstance(table, dict):
            problems.append(f"{source}: [values.{fname}] must be a table of \"department value\" = \"contract value\"")
            continue
        fld = c.field(fname)
        allowed = allowed_values(fld)
        for src, dst in table.items():
            if not isinstance(dst, str):
                problems.append(f"{source}: [values.{fname}] {src!r} → {dst!r}: the target must be text")
            elif dst and allowed is not None and dst not in allowed:
                problems.append(f"{source}: [values.{fname}] {src!r} → {dst!r}: not a value of the contract "
                                f"({' / '.join(allowed)})")
            else:
                values.setdefault(fname, {})[str(src).strip()] = dst
    health = raw.get("health") or {}
    rate = None
    for k, v in health.items():
        if k != "max_quarantine_rate":
            problems.append(f"{source}: [health] unknown key {k!r} (known: max_quarantine_rate)")
        elif not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
            problems.append(f"{source}: [health] max_quarantine_rate = {v!r}: a share between 0 and 1")
        else:
            rate = float(v)
    return {"headers": headers, "values": values, "max_quarantine_rate": rate}, problems


def _merge(c: Contract, parts: list[tuple[str, dict]]) -> Mapping:
    raw_headers: dict[str, str] = {}
    values: dict[str, dict[str, str]] = {}
    rate = None
    for _, p in parts:
        for h, f in p.get("headers", ()):
            raw_headers[h] = f
        for f, vm in p.get("values", {}).items():
            values.setdefault(f, {}).update(vm)
        if p.get("max_quarantine_rate") is not None:
            rate = p["max_quarantine_rate"]
    return Mapping(c.feed_id, tuple(sorted(raw_headers.items())),
                   {f: dict(sorted(v.items())) for f, v in sorted(values.items())}, rate, tuple(s for s, _ in parts))


def file_for(directory: Path, feed_id: str) -> Path:
    return Path(directory) / f"{feed_id}.toml"


def load(c: Contract, builtin: str, directory: Path | None) -> Mapping:
    """The effective mapping of one feed: its built-in text, extended by `<directory>/<feed>.toml`."""
    parts: list[tuple[str, dict]] = []
    problems: list[str] = []
    if builtin.strip():
        p, probs = parse(c, builtin, f"connectors/{c.department}/{c.feed}.py (built-in)")
        parts.append(("built-in", p))
        problems += probs
    if directory is not None and file_for(directory, c.feed_id).is_file():
        path = file_for(directory, c.feed_id)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            text, probs = "", [f"{path}: not UTF-8 text"]
            problems += probs
        p, probs = parse(c, text, str(path))
        parts.append((str(path), p))
        problems += probs
    if problems:
        raise MappingError(problems)
    return _merge(c, parts)


def stray_files(directory: Path | None, known: set[str]) -> list[str]:
    """Problems for files in the mappings directory that name no known feed."""
    if directory is None or not Path(directory).is_dir():
        return []
    return [f"{p}: no feed {p.stem!r} (files are named <department>.<feed>.toml; known feeds: {', '.join(sorted(known))})"
            for p in sorted(Path(directory).glob("*.toml")) if p.stem not in known]


def template(c: Contract, unmatched: list[str], missing: list[str], unknown: dict[str, dict[str, int]],
             current: Mapping | None = None) -> str:
    """A mapping file to fill in: every column no field matched (with the fields still missing),
    and every value the contract does not know, with its count. Targets left as written (`""`
    for a column, `"?"` for a value) are refused on load, so nothing half-filled slips through."""
    lines = [f"# Mapping of {c.feed_id} ({c.department_zh} {c.title_zh}) for this deployment — suggested by",
             "# `safetynet feeds profile`. Fill in every \"\" and \"?\" (or delete the line), then save it as",
             f"# <SAFETYNET_MAPPINGS>/{c.feed_id}.toml and check it with `safetynet check-config`.", "",
             "[headers]  # the department's column → contract field"]
    if missing:
        lines.append("# fields with no column yet: " + ", ".join(f"{m} ({c.field(m).label_zh})" for m in missing))
    q = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731 - TOML basic strings are JSON strings
    lines += [f"{q(h)} = {q(f)}" for h, f in (current.raw_headers if current else ())]
    if unmatched:
        lines.append(f"# a column that is no field of the feed (序号, 备注): {q(IGNORED)}, and it is not mentioned again")
    lines += [f"{q(h)} = \"\"" for h in unmatched]
    kept = current.values if current else {}
    for fname in sorted(set(unknown) | set(kept), key=c.names.index):
        fld = c.field(fname)
        allowed = allowed_values(fld) or ()
        lines += ["", f"[values.{fname}]  # {fld.label_zh}; contract values: {' / '.join(allowed)}"]
        lines += [f"{q(k)} = {q(v)}" for k, v in kept.get(fname, {}).items()]
        for v, n in sorted(unknown.get(fname, {}).items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"{json.dumps(v, ensure_ascii=False)} = \"?\"  # {n} records")
    rate = current.max_quarantine_rate if current else None
    lines += ["", "[health]", f"max_quarantine_rate = {rate}" if rate is not None else
              "# max_quarantine_rate = 0.05  # this feed's threshold (share of records quarantined)", ""]
    return "\n".join(lines)
