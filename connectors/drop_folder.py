"""Transport: file drops in the store's landing area, `landing/<department>/<feed>/…`.

Lists waiting files, opens them, and keeps the ledger of processed drops under
`_catalog/drops/<department>/<feed>/` so a drop is never ingested twice. A file whose name was
seen before but whose content changed is detected (different SHA-256) and ingested again as a
new version; the clean step lets the newest version of a file name win.

What is not a delivery is left in place with a warning naming it: a file of an unknown type, a
`.txt` that is not delimited data with the feed's columns (a note, a README), and files in a
folder under `landing/` that is no feed's (`stray_folders`, with the closest feed folder).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from connectors.base import connectors
from connectors.formats import is_blank, looks_like_table
from safetynet.core import paths
from safetynet.core.store import ObjectStore
from schemas.contract import Contract

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".txt", ".tsv", ".xlsx", ".xlsm", ".jsonl", ".ndjson")
#: suffixes also used for things other than data (notes, READMEs): taken only when they look like the feed's data
UNSURE_SUFFIXES = (".txt",)
_STAMP = re.compile(r"(?<!\d)(20\d{2})[-_]?(0[1-9]|1[0-2])(?:[-_]?(0[1-9]|[12]\d|3[01]))?(?!\d)")


@dataclass
class Drop:
    path: str  # store-relative, landing/...
    name: str
    data: bytes
    sha256: str
    previous_sha256: str | None  # set when the same name was ingested before with other content

    @property
    def version(self) -> str:
        return self.sha256[:12]

    @property
    def stamp(self) -> str | None:
        """The data date a department put in the file name (`…_20261101.csv`, `…202610…`), ISO."""
        m = _STAMP.search(self.name)
        if not m:
            return None
        return f"{m.group(1)}-{m.group(2)}-{m.group(3) or '01'}"


def stamp_free(name: str) -> str:
    """A drop file's name without its data date (`城镇_20261101.csv` → `城镇_.csv`): which part of a
    split delivery it is, whatever its date."""
    return _STAMP.sub("", name)


class DropFolderSource:
    """Waiting drops of one feed, in name order (departments stamp names with dates)."""

    def __init__(self, store: ObjectStore, contract: Contract):
        self.store = store
        self.c = contract

    @property
    def landing(self) -> str:
        return paths.landing(self.c.prefix)

    def _ledger_path(self, name: str) -> str:
        return paths.drop_ledger(self.c.prefix, name)

    def waiting(self, mapping: str | None = None, headers: dict[str, str] | None = None) -> Iterator[Drop]:
        """Drops not yet taken in. A drop held as unhealthy (ledger `held`) is offered again
        once the feed's mapping (`Mapping.retake_key`: its checksum and its own quarantine
        threshold) differs from the one it was held under. `headers`: the
        mapping in force's department columns (a `.txt` naming them is data, not a note)."""
        for e in self.store.list(self.landing):
            name = e.path[len(self.landing):]
            if not name.lower().endswith(SUFFIXES):
                log.warning("drop: %s/%s is not a known file type (%s); left in place", self.c.feed_id, name,
                            ", ".join(SUFFIXES))
                continue
            data = self.store.read_bytes(e.path)
            if name.lower().endswith(UNSURE_SUFFIXES) and not is_blank(data) and not self._looks_like_data(data, headers):
                log.warning("drop: %s/%s is not delimited data with the feed's columns (a note?); left in place — "
                            "a data export with other column names: map them (`safetynet feeds profile`) and name "
                            "the file .csv", self.c.feed_id, name)
                continue
            sha = hashlib.sha256(data).hexdigest()
            ledger = self._ledger(name)
            seen = {v["sha256"] for v in ledger if not v.get("held") or v.get("mapping") == mapping}
            if sha in seen:
                continue
            if any(v["sha256"] == sha for v in ledger):
                log.warning("drop: %s/%s was held as unhealthy; the feed's mapping (or its quarantine threshold) "
                            "changed since, so it is taken in again", self.c.feed_id, name)
                yield Drop(e.path, name, data, sha, None)
                continue
            if is_blank(data):
                log.warning("drop: %s/%s is an empty file (%d bytes): no header, no records", self.c.feed_id, name,
                            len(data))
            prev = ledger[-1]["sha256"] if ledger else None
            if prev:
                log.warning("drop: %s/%s changed since it was ingested (sha256 %s… → %s…); ingesting the new "
                            "version, which supersedes the old one", self.c.feed_id, name, prev[:12], sha[:12])
            yield Drop(e.path, name, data, sha, prev)

    def unseen(self) -> list[str]:
        """Names of files that may be waiting, from the listing alone (no file is read but an unsure
        `.txt` without a ledger): a data file with no ledger, or whose size differs from the last
        version taken in, or changed after its ledger was written. A cheap look for a wake-up
        (`safetynet.orchestration.feeds_with_work`); `waiting()` is the exact one the ingest uses.
        A drop held as unhealthy is not listed (it is offered again when its mapping changes, which
        the scheduled sweep sees)."""
        files = [e for e in self.store.list(self.landing) if e.path.lower().endswith(SUFFIXES)]
        if not files:
            return []
        ledgers = {e.path: e for e in self.store.list(paths.drop_ledgers(self.c.prefix), ".json")}
        out = []
        for e in files:
            name = e.path[len(self.landing):]
            led = ledgers.get(self._ledger_path(name))
            if led is None:
                if name.lower().endswith(UNSURE_SUFFIXES) and not is_blank(data := self.store.read_bytes(e.path)) \
                        and not self._looks_like_data(data, None):
                    continue  # a note, left in place (as `waiting` does)
                out.append(name)
                continue
            last = (self._ledger(name) or [{}])[-1]
            if last.get("held"):
                continue
            if last.get("size") != e.size or e.mtime_ns > led.mtime_ns:
                out.append(name)
        return out

    def _looks_like_data(self, data: bytes, headers: dict[str, str] | None) -> bool:
        if headers is None:  # no mapping given: the connector's own

            fc = connectors().get(self.c.feed_id)
            headers = fc.load_mapping(None).headers if fc else None
        return looks_like_table(data, self.c, headers)

    def _ledger(self, name: str) -> list[dict]:
        try:
            return json.loads(self.store.read_bytes(self._ledger_path(name)))
        except FileNotFoundError:
            return []

    def mark_done(self, d: Drop, record: dict) -> None:
        """Record the drop as processed (after its raw/quarantine files are durable)."""
        ledger = self._ledger(d.name)
        ledger.append({"sha256": d.sha256, "size": len(d.data), **record})
        self.store.write_bytes(self._ledger_path(d.name), json.dumps(ledger, ensure_ascii=False, indent=1).encode())


def stray_folders(store: ObjectStore, contracts: list[Contract]) -> list[str]:
    """Files under `landing/` outside every feed's folder, one line per folder: how many files,
    and the feed folder its name is closest to (a typo'd `landing/housing/proprety/`). They are
    never read; the lines say so."""
    known = {c.prefix for c in contracts}
    stray: dict[str, int] = {}
    for e in store.list(paths.LANDING):
        parts = e.path.split("/")[1:-1]  # the folders between landing/ and the file
        folder = "/".join(parts[:2])
        if folder not in known:
            stray[folder] = stray.get(folder, 0) + 1
    lines = []
    for folder, n in sorted(stray.items()):
        close = difflib.get_close_matches(folder, sorted(known), n=1, cutoff=0.6) if folder else []
        where = paths.landing(folder) if folder else f"{paths.LANDING} itself"
        hint = f"did you mean {paths.landing(close[0])}?" if close else \
            f"feed folders are {paths.landing('<department>/<feed>')} " \
            "(`safetynet feeds` lists them)"
        lines.append(f"{where}: {n} file(s) in a folder that is no feed's — {hint}; left in place, not ingested")
    return lines
