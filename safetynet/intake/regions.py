"""Names of regions by statistical division code (统计用区划代码), from two sources and nothing else:

* the **national reference**, province → prefecture → county, shipped as
  `schemas/reference/regions_national.csv` (edition and source in `regions_national.json`,
  refreshed by `infra/update-regions.sh`);
* the **county lists** imported into the store — a county's streets/towns (乡镇街道) and
  communities/villages (居委会/村委会) as the county publishes them (`safetynet regions import
  FILE`, `import_list`), kept under `_catalog/regions/`.

Codes are the hub's: a province is 2 digits (`43`), a prefecture 4 (`4301`), a county 6
(`430103`), a street 9 (`430103001`), a community or village 12 (`430103001001`) — the published
12-digit forms (`430103001000`, `430000000000`) are normalised to these; the 6-digit forms of
provinces and prefectures (`430000`, `430100`) name them too.

Everything that shows a region's name (the CLI's warning summary and backtest, the review app)
asks `region_names()`: the names of the store bound with `use_store` — the CLI binds the store it
opens, `safetynet serve` the store it loads snapshots from. A code no source names shows as its
nearest named ancestor and the code (`天心区 430103099`), never as a bare code.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
import logging
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from connectors.formats import FileFormatError, decode_text
from safetynet.core import paths
from safetynet.core.store import StoreError
from schemas.errors import ChecksumMismatch, ConfigError

log = logging.getLogger(__name__)

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "schemas" / "reference"
NATIONAL_CSV = REFERENCE_DIR / "regions_national.csv"
NATIONAL_META = REFERENCE_DIR / "regions_national.json"
#: How often the review app looks for a list imported while it runs (one listing of `paths.REGIONS`).
REFRESH_S = 30.0
#: A county list is a few thousand lines; anything much bigger is not one.
MAX_LIST_BYTES = 20 << 20

LEVEL_OF_LENGTH = {2: "province", 4: "prefecture", 6: "county", 9: "street", 12: "community"}
LEVEL_ZH = {"province": "省级", "prefecture": "地级", "county": "县级", "street": "乡级（乡镇街道）",
            "community": "村级（居委会/村委会）"}
#: National entries that stand for no place (市辖区, 县, 省直辖县级行政区划): skipped when a code
#: falls back to its nearest named ancestor (`湖北省 429099`, not `省直辖县级行政区划 429099`).
_PLACEHOLDER = re.compile(r"^(市辖区|县|.*直辖县级行政区划)$")

# Header names a published list may carry (otherwise: code first, name last — see `_columns`).
_CODE_HEADERS = {"code", "统计用区划代码", "区划代码", "行政区划代码", "代码", "编码", "区划编码"}
_NAME_HEADERS = {"name", "名称", "单位名称", "区划名称", "行政区划名称"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


# ---- the national reference ---------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    code: str  # the hub's form: 2, 4, 6, 9 or 12 digits
    name: str
    level: str  # province, prefecture, county, street, community


@cache
def national() -> dict[str, Region]:
    """The national reference by the hub's codes (`43`, `4301`, `430103`)."""
    out: dict[str, Region] = {}
    with NATIONAL_CSV.open(encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            code = r["code"]
            short = {"province": code[:2], "prefecture": code[:4], "county": code}[r["level"]]
            out[short] = Region(short, r["name"], r["level"])
    return out


@cache
def national_edition() -> dict[str, Any]:
    """The reference's provenance: edition, source package, row counts (`regions_national.json`)."""
    return json.loads(NATIONAL_META.read_text(encoding="utf-8"))


def county_name(county: str) -> str:
    """`湖南省长沙市天心区` for 430103 — from the national reference ('' if it has no such county)."""
    ref = national()
    if county not in ref:
        return ""
    parts = [ref[c].name for c in (county[:2], county[:4]) if c in ref and not _PLACEHOLDER.match(ref[c].name)]
    return "".join(dict.fromkeys([*parts, ref[county].name]))  # 东莞市 is prefecture and county


# ---- the names in force --------------------------------------------------------------------------
class RegionNames(dict):
    """code → name, national reference and imported lists together.

    `get(code, default)` and `names[code]` of a code no source names give its nearest named
    ancestor and the code (`天心区 430103099`); only a code without any named ancestor gets the
    default (or KeyError). `code in names` is exact.
    """

    def __init__(self, names: Mapping[str, str] | None = None, aliases: Iterable[str] = (),
                 imported: Mapping[str, dict] | None = None):
        super().__init__(names or {})
        self.aliases = frozenset(aliases)  # 430000, 430100: other keys of a province or prefecture
        self.imported = dict(imported or {})  # county → manifest of its list in force

    def get(self, code, default=None):
        if dict.__contains__(self, code):
            return dict.__getitem__(self, code)
        found = self.fallback(code)
        return default if found is None else found

    def __missing__(self, code):
        found = self.fallback(code)
        if found is None:
            raise KeyError(code)
        return found

    def ancestor(self, code: str) -> str | None:
        """The nearest ancestor of `code` that has a name (a real place, not 市辖区), or None."""
        if not isinstance(code, str) or not code.isdigit() or len(code) not in LEVEL_OF_LENGTH:
            return None
        for n in (9, 6, 4, 2):
            a = code[:n]
            if n < len(code) and dict.__contains__(self, a) and not _PLACEHOLDER.match(dict.__getitem__(self, a)):
                return a
        return None

    def fallback(self, code: str) -> str | None:
        a = self.ancestor(code)
        return None if a is None else f"{dict.__getitem__(self, a)} {code}"

    def children(self, code: str) -> list[str]:
        """The named codes one level below `code`, in code order."""
        step = {2: 4, 4: 6, 6: 9, 9: 12}.get(len(code))
        if step is None:
            return []
        return sorted(k for k in self if len(k) == step and k.startswith(code) and k not in self.aliases)


_lock = threading.RLock()
_bound: dict[str, Any] = {"store": None, "names": None, "token": None, "checked": 0.0}


def use_store(store) -> None:
    """Name regions from the lists imported in `store` from now on (None: the national reference
    only). Called at the edge: by the CLI for the store it opens, by `safetynet serve` for the
    store it loads snapshots from. Binding the same store again keeps what is loaded."""
    with _lock:
        old = _bound["store"]
        same = old is not None and store is not None and old.url == store.url
        _bound["store"] = store
        if not same:
            _bound.update(names=None, token=None, checked=0.0)


def _invalidate() -> None:
    with _lock:
        _bound.update(names=None, token=None, checked=0.0)


def _token(store) -> tuple:
    """What changes when a list is imported: the manifests' names, sizes and times. One listing,
    without the store's retries: a page is not held up by a store outage (the names stay as they are)."""
    from pyarrow import fs as pafs

    sel = pafs.FileSelector(store.full(paths.REGIONS), recursive=False, allow_not_found=True)
    return tuple(sorted((i.path, i.size, i.mtime_ns) for i in store.fs.get_file_info(sel)
                        if i.type == pafs.FileType.File and i.path.endswith(".json")))


def region_names() -> RegionNames:
    """code → name: the national reference and every county list imported in the store in use
    (`use_store`). Looked up again at most every REFRESH_S seconds, so a list imported while the
    review app runs shows without a restart. Unknown codes: see `RegionNames.get`."""
    with _lock:
        names, store, now = _bound["names"], _bound["store"], time.monotonic()
        if names is not None and (store is None or now - _bound["checked"] < REFRESH_S):
            return names
        token = None
        if store is not None:
            try:
                token = _token(store)
            except Exception as e:  # a store outage must not break a page: keep the names we have
                log.warning("regions: cannot list %s in %s (%s); names as before", paths.REGIONS, store.url, e)
                if names is not None:
                    _bound["checked"] = now
                    return names
                token = ("unlisted",)  # the national names now; the lists at the next look
        if names is None or token != _bound["token"]:
            names = _build(None if token == ("unlisted",) else store)
        _bound.update(names=names, token=token, checked=now)
        return names


def _build(store) -> RegionNames:
    ref = national()
    names = {code: r.name for code, r in ref.items()}
    aliases = set()
    for code, r in ref.items():
        if r.level in ("province", "prefecture"):
            long = code.ljust(6, "0")
            if long not in ref:
                names[long] = r.name
                aliases.add(long)
    imported = {}
    for county, manifest in (imported_lists(store, strict=False) if store is not None else {}).items():
        try:
            rows = read_list(store, manifest)
        except Exception as e:  # named by code until it is imported again; every other list still counts
            log.warning("regions: the list of %s (%s) cannot be read (%s); its streets show by code",
                        county, manifest.get("file"), e)
            continue
        names.update(rows)
        imported[county] = manifest
    return RegionNames(names, aliases, imported)


# ---- reading a published list ---------------------------------------------------------------------
class RegionListError(ConfigError):
    """A county list that cannot be imported; the message names every problem and its lines. A
    `ConfigError` (so a `ValueError`): exit 2."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{source}: not imported — {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
                         + "; ".join(problems))


@dataclass
class CountyList:
    """A county's list as read and checked: the hub's codes (9 and 12 digits, the county's own 6)."""

    county: str
    names: dict[str, str]  # code → name, in code order
    encoding: str
    lines: int  # data lines read

    @property
    def streets(self) -> int:
        return sum(len(c) == 9 for c in self.names)

    @property
    def communities(self) -> int:
        return sum(len(c) == 12 for c in self.names)

    def csv_bytes(self) -> bytes:
        """The normalised list as stored: UTF-8, `code,name,level`, in code order."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(("code", "name", "level"))
        for code, name in self.names.items():
            w.writerow((code, name, LEVEL_OF_LENGTH[len(code)]))
        return buf.getvalue().encode("utf-8")


def _lines_text(lines: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, lines[:limit])) + (f" … ({len(lines) - limit} more)" if len(lines) > limit else "")
    return f"line {shown}" if len(lines) == 1 else f"lines {shown}"


def _columns(cells: list[str]) -> tuple[int | None, int | None]:
    """(code column, name column) named by a header row; None where it names neither."""
    low = [c.strip().lower() for c in cells]
    code = next((i for i, c in enumerate(low) if c in _CODE_HEADERS), None)
    name = next((i for i, c in enumerate(low) if c in _NAME_HEADERS), None)
    return code, name


def normalise_code(code: str) -> str | None:
    """The hub's form of a published code — 430103001000 → 430103001, 430103000000 → 430103,
    430103001001 as it is — or None if it is no county, street or community code."""
    if not code.isdigit():
        return None
    if len(code) == 12:
        if code[6:] == "000000":
            return code[:6]
        return code[:9] if code[9:] == "000" else code
    return code if len(code) in (6, 9) else None


def parse_list(data: bytes, source: str = "the file") -> CountyList:
    """A county's published street and community list, checked — every problem at once.

    CSV (comma or tab) of `code,name` — or `code,城乡分类代码,name` as the bureau's village pages
    have it — UTF-8 with or without BOM, or GBK/GB18030; a header row is optional. Codes as
    published (12 digits, `430103001000` a street, `430103001001` a community) or in the hub's
    form (9 digits for a street); the county's own line may be there. Checked: codes are digits
    of a right length, all in one county of the national reference, every community's street is
    in the list, names are there, and no code has two names. Problems name their lines, never a
    cell's content (a wrong file may hold personal data).
    """

    if len(data) > MAX_LIST_BYTES:
        raise RegionListError(source, [f"{len(data):,} bytes is too big for a county list"])
    try:
        text, encoding = decode_text(data)
    except FileFormatError as e:
        raise RegionListError(source, [str(e)]) from None
    first = next((ln for ln in text.splitlines() if ln.strip()), "")
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    problems: dict[str, list[int]] = defaultdict(list)
    seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
    header: tuple[int | None, int | None] | None = None
    width = 0  # the header's cells: a row of another width is read by position
    rows = 0
    try:
        for cells in reader:
            line = reader.line_num
            cells = [c.strip() for c in cells]
            if not any(cells):
                continue
            if header is None:  # the first row: a header if its first cell is a word (no digit at all)
                if cells[0] and not re.search(r"\d", cells[0]):
                    header, width = _columns(cells), len(cells)
                    continue
                header = (None, None)
            rows += 1
            named = len(cells) == width
            ci = header[0] if named and header[0] is not None else 0
            ni = header[1] if named and header[1] is not None else \
                2 if len(cells) >= 3 and re.fullmatch(r"\d{3}", cells[1]) else 1  # 城乡分类代码 between
            raw = cells[ci] if ci < len(cells) else ""
            name = cells[ni] if ni < len(cells) else ""
            if not raw.isdigit():
                problems["the code is not all digits" if raw else "no code"].append(line)
                continue
            code = normalise_code(raw)
            if code is None:
                problems[f"a code of {len(raw)} digits (a street has 9 or 12: 430103001 or 430103001000; a "
                         "community or village 12: 430103001001)"].append(line)
                continue
            if len(code) >= 9 and code[6:9] == "000":
                problems["a code with street number 000 (digits 7–9): no street is numbered so"].append(line)
                continue
            if not name:
                problems["no name"].append(line)
                continue
            if _CONTROL.search(name):
                problems["a name with a control character"].append(line)
                continue
            seen[code].append((name, line))
    except csv.Error as e:
        problems[f"not readable as CSV ({e})"].append(reader.line_num)
    found: list[tuple[list[int], str]] = [(lines, what) for what, lines in problems.items()]
    counties = Counter(code[:6] for code in seen for _ in seen[code])
    county = min(counties, key=lambda c: (-counties[c], c)) if counties else ""
    other = sorted(ln for code, v in seen.items() if code[:6] != county for _, ln in v)
    if other:
        found.append((other, f"a code of another county than {county} (a list holds one county)"))
    for code, v in seen.items():
        if len({n for n, _ in v}) > 1:
            found.append(([ln for _, ln in v], f"{code} has different names"))
    mine = {code for code in seen if code[:6] == county}
    orphans = sorted(v[0][1] for code, v in seen.items() if len(code) == 12 and code in mine and code[:9] not in mine)
    if orphans:
        found.append((orphans, "a community or village whose street (its first 9 digits) is not in the list"))
    out = [f"{_lines_text(lines)}: {what}" for lines, what in sorted(found, key=lambda f: f[0][0])]
    if not rows:
        out.append("no region in the file: expected lines of code,name (a county's streets and communities)")
    if county and county not in national():
        ed = national_edition().get("edition", "")
        out.append(f"county {county} is not in the national reference ({ed}): check the codes, or refresh the "
                   "reference (infra/update-regions.sh)")
    if county and not any(len(c) == 9 for c in mine):
        out.append("no street or town in the list (codes 430103001 or 430103001000)")
    if out:
        raise RegionListError(source, out)
    names = {code: seen[code][0][0] for code in sorted(seen)}
    return CountyList(county, names, encoding, rows)


def to_published_csv(names: Mapping[str, str]) -> bytes:
    """A list in the bureau's form (12-digit codes, `code,name`, UTF-8): what a county publishes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("统计用区划代码", "名称"))
    for code, name in sorted(names.items()):
        w.writerow((code.ljust(12, "0"), name))
    return buf.getvalue().encode("utf-8")


# ---- the lists in the store ------------------------------------------------------------------------
@dataclass
class Imported:
    manifest: dict
    changed: bool  # False: the same file was already the list in force
    replaced: dict | None = field(default=None)  # the manifest it replaced


def manifest_path(county: str) -> str:
    return paths.region_manifest(county)


def imported_lists(store, strict: bool = True) -> dict[str, dict]:
    """county → manifest of the list in force, for every county imported in the store. A manifest
    that cannot be read raises — or, not `strict`, is left out with a warning."""
    out = {}
    for e in store.list(paths.REGIONS, ".json"):
        if e.path.count("/") != paths.REGIONS.count("/"):  # a manifest, not a list file of a county folder
            continue
        try:
            m = json.loads(store.read_bytes(e.path))
            out[m["county"]] = m
        except (ValueError, KeyError, TypeError) as err:
            if strict:

                raise StoreError(f"{e.path} in {store.url} is not a region list manifest ({err}): import the "
                                 "county's list again") from None
            log.warning("regions: %s is not a region list manifest (%s); left out", e.path, err)
    return dict(sorted(out.items()))


def read_list(store, manifest: dict) -> dict[str, str]:
    """code → name of an imported list (its stored file, checked against the manifest's sha256)."""
    data = store.read_bytes(manifest["file"])
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise ChecksumMismatch(f"{manifest['file']} does not match the sha256 in {manifest_path(manifest['county'])}")
    return {r["code"]: r["name"] for r in csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))}


def import_list(store, data: bytes, source: str, *, by: str = "", now: dt.datetime | None = None) -> Imported:
    """Check a county's published list (`parse_list`) and make it the county's list in force.

    The normalised list is written first, under a name of its checksum (every version stays),
    then the manifest `_catalog/regions/<county>.json` — one atomic write that switches readers
    to the new list: source file name, its sha256 and size, encoding, who and when, row counts,
    and the versions it replaced. The same source file again changes nothing.
    """
    parsed = parse_list(data, source)
    src_sha = hashlib.sha256(data).hexdigest()
    path = manifest_path(parsed.county)
    old = json.loads(store.read_bytes(path)) if store.exists(path) else None
    if old is not None and old["source"]["sha256"] == src_sha:
        return Imported(old, changed=False)
    body = parsed.csv_bytes()
    sha = hashlib.sha256(body).hexdigest()
    rel = paths.region_list(parsed.county, sha[:16])
    if not store.exists(rel):
        store.write_bytes(rel, body)
    when = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    history = ([{k: old[k] for k in ("file", "sha256", "source", "imported_at", "rows")}] + old.get("history", [])
               if old else [])
    manifest = {
        "county": parsed.county, "county_name": county_name(parsed.county), "file": rel, "sha256": sha,
        "rows": {"streets": parsed.streets, "communities": parsed.communities},
        "source": {"file": Path(source).name, "sha256": src_sha, "bytes": len(data), "encoding": parsed.encoding,
                   "lines": parsed.lines},
        "imported_at": when, "imported_by": by,
        "reference": national_edition().get("edition", ""),
        "history": history,
    }
    store.write_bytes(path, json.dumps(manifest, ensure_ascii=False, indent=1).encode("utf-8"))
    _invalidate()
    return Imported(manifest, changed=True, replaced=old)
