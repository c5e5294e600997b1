"""Publishing monitoring and warning snapshots for downstream systems, as immutable versions.

Layout (Hive style: the partition columns `snapshot_date` and `version` live only in the path)::

    <dataset>/snapshot_date=D/version=N/part-00000.parquet             pseudonymised
    identified/<dataset>/snapshot_date=D/version=N/part-00000.parquet  with ID numbers
    _catalog/snapshots/D/vN.json     the manifest of version N of D (immutable)
    _catalog/snapshots/D/vN.claim    who claimed version N (created exclusively)
    _catalog/snapshots/D.json        the pointer: which version of D is current

Publishing D: if the new data, inputs and policy are those of D's current version, nothing is
written (same bytes, same version). Otherwise the publisher claims the next free version
number by creating `vN.claim` exclusively (a hard link locally; a conditional PUT,
`If-None-Match: *`, on S3/MinIO): two concurrent publishers never share a version, so their
files never interleave. It writes the data under `version=N`, then the version's manifest
(row counts, checksums, input watermarks, policy version, quality result), and switches the
pointer last with a single whole-object write (atomic locally by rename, on S3 by the PUT). The
pointer always names D's highest version with a manifest: of two concurrent publishers the later
version wins and the other is told it was superseded. A reader that follows the pointer reads
one immutable manifest and the files it lists — never a mix of versions, and never a
half-written one (a version without a manifest does not exist). Older versions stay readable
(`version=`) until `prune` removes them; a version a review decision references is kept.
Every byte is a function of the inputs: a re-run writes identical files and manifests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from safetynet.core import paths
from safetynet.core.store import ObjectStore, parquet_bytes
from schemas import outputs
from schemas.errors import ChecksumMismatch, ConfigError

log = logging.getLogger(__name__)


class SnapshotNotFound(ConfigError, LookupError):
    """No published (manifested) snapshot for the date (or version) asked for — a request to correct,
    handled as a `ConfigError` (exit 2, the published dates listed; not retried), and a `LookupError`."""


@dataclass(frozen=True)
class Pseudonymiser:
    """Keyed pseudonym of an ID number: HMAC-SHA256 under the hub's secret, hex, 32 characters.

    The same number always maps to the same key (joins across datasets and snapshots work);
    without the secret it cannot be reversed or recomputed from a guessed number.
    """

    secret: bytes

    def key(self, id_no: str | None) -> str | None:
        if id_no is None:
            return None
        return hmac.new(self.secret, id_no.encode(), hashlib.sha256).hexdigest()[:32]

    def column(self, arr: pa.ChunkedArray | pa.Array) -> pa.Array:
        """`key` of every value — the same HMAC, computed from the two padded-key states copied per
        value (RFC 2104), about twice as fast as `hmac.new` per value on a million-person table."""
        k = self.secret if len(self.secret) <= 64 else hashlib.sha256(self.secret).digest()
        k = k.ljust(64, b"\0")
        inner, outer = hashlib.sha256(bytes(b ^ 0x36 for b in k)), hashlib.sha256(bytes(b ^ 0x5C for b in k))
        out: list[str | None] = []
        for v in arr.to_pylist():
            if v is None:
                out.append(None)
                continue
            i = inner.copy()
            i.update(v.encode())
            o = outer.copy()
            o.update(i.digest())
            out.append(o.hexdigest()[:32])
        return pa.array(out, pa.string())


def pseudonymise_person(t: pa.Table, ps: Pseudonymiser) -> pa.Table:
    out = t.drop_columns([c for c in ("name", "birth_date") if c in t.column_names])
    i = out.schema.get_field_index("id_no")
    return out.set_column(i, "person_key", ps.column(out["id_no"]))


def pseudonymise_warnings(t: pa.Table, ps: Pseudonymiser) -> pa.Table:
    i = t.schema.get_field_index("subject_id_no")
    out = t.set_column(i, "subject_key", ps.column(t["subject_id_no"]))
    facts = []
    for row in t["facts"].to_pylist():
        # a record key that is the person's ID number (feeds keyed by id_no) is pseudonymised too
        facts.append([{**f, "id_no": ps.key(f["id_no"]),
                       "record_key": ps.key(f["record_key"]) if f["record_key"] and f["record_key"] == f["id_no"]
                       else f["record_key"]} for f in row or []])
    j = out.schema.get_field_index("facts")
    return out.set_column(j, "facts", pa.array(facts, t.schema.field("facts").type))


PARTITIONING = pa.schema([("snapshot_date", pa.date32()), ("version", pa.int32())])  # in the path only


def _path(dataset: str, snapshot: dt.date, version: int, identified: bool) -> str:
    return paths.published_file(dataset, snapshot, version, identified)


def _pointer_path(snapshot: dt.date) -> str:
    return paths.snapshot_pointer(snapshot)


def _version_path(snapshot: dt.date, version: int, ext: str = "json") -> str:
    return paths.snapshot_version(snapshot, version, ext)


def _without_partitions(t: pa.Table) -> pa.Table:
    return t.drop_columns([c for c in PARTITIONING.names if c in t.column_names])


def _content_sha256(checksums: dict[str, str], policy_version: str, inputs: dict) -> str:
    """What makes a version: its data (checksum per dataset), inputs and policy."""
    h = hashlib.sha256()
    for dataset, sha in sorted(checksums.items()):
        h.update(f"{dataset}\x1f{sha}\n".encode())
    h.update(json.dumps({"policy_version": policy_version, "inputs": inputs}, sort_keys=True, default=str,
                        ensure_ascii=False).encode())
    return h.hexdigest()


def encode(tables: dict[str, pa.Table], ps: Pseudonymiser) -> dict[tuple[str, bool], tuple[bytes, dict]]:
    """The published files of a snapshot's tables: (dataset, identified) → (Parquet bytes, {rows,
    bytes, sha256}); the public variant pseudonymised, the identified one as built (`monitoring/
    household` holds no ID numbers: one variant)."""
    variants = {
        "monitoring/person": (pseudonymise_person(tables["monitoring/person"], ps), tables["monitoring/person"]),
        "monitoring/household": (tables["monitoring/household"], None),
        "warnings": (pseudonymise_warnings(tables["warnings"], ps), tables["warnings"]),
    }
    todo = [(name, ident, t) for name, (public, identified) in variants.items()
            for t, ident in ((public, False), (identified, True)) if t is not None]

    def one(t: pa.Table) -> tuple[bytes, dict]:  # Parquet encoding and hashing release the GIL
        data = parquet_bytes(_without_partitions(t))
        return data, {"rows": t.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
        done = list(pool.map(one, [t for _, _, t in todo]))
    return {(name, ident): blob for (name, ident, _), blob in zip(todo, done, strict=True)}


def path_of(dataset: str, snapshot: dt.date, version: int, identified: bool) -> str:
    """Where a version's dataset file lives."""
    return _path(dataset, snapshot, version, identified)


def publish(store: ObjectStore, snapshot: dt.date, tables: dict[str, pa.Table], ps: Pseudonymiser, *,
            policy_version: str, inputs: dict, quality: dict | None = None, publisher: str = "") -> dict:
    """Publish the snapshot's datasets (both variants) as a new version of `snapshot`, unless they
    equal its current version. Returns the manifest in force for this publish, with `status`:
    "published" (this version is current), "unchanged" (identical to the current version; nothing
    written) or "superseded" (written, but a concurrent publish made a higher version current)."""
    blobs = encode(tables, ps)  # encoded and hashed once, written if new
    content = _content_sha256({paths.published_dataset(name, ident): entry["sha256"]
                               for (name, ident), (_, entry) in blobs.items()}, policy_version, inputs)
    current = _current_manifest(store, snapshot)
    if current is not None and current.get("content_sha256") == content:
        log.info("snapshot %s: identical to its current version %s: nothing published", snapshot, current["version"],
                 extra={"event": "publish_unchanged", "snapshot_date": snapshot.isoformat()})
        return {**current, "status": "unchanged"}
    version = _claim(store, snapshot, publisher)
    files = {}
    for (name, ident), (data, entry) in blobs.items():
        path = _path(name, snapshot, version, ident)
        store.write_bytes(path, data)
        files[path] = entry
    datasets = {name: {"rows": blobs[name, False][1]["rows"], "path": _path(name, snapshot, version, False),
                       "identified_path": _path(name, snapshot, version, True) if (name, True) in blobs else None}
                for name in dict.fromkeys(n for n, _ in blobs)}
    manifest = {
        "snapshot_date": snapshot.isoformat(), "version": version, "schema_version": outputs.VERSION,
        "policy_version": policy_version, "content_sha256": content,
        "partitioning": {f.name: str(f.type) for f in PARTITIONING},
        "datasets": datasets,
        "files": files, "inputs": inputs, "quality": quality or {},
        "pseudonym": "HMAC-SHA256(secret, id_no)[:32 hex]",
    }
    if not store.create(_version_path(snapshot, version), _dumps(manifest)):
        raise RuntimeError(f"snapshot {snapshot} v{version}: its manifest exists already although this publisher "
                           "claimed the version: the store was changed by hand?")
    now = _switch_pointer(store, snapshot)
    status = "published" if now == version else "superseded"
    if status == "superseded":
        log.warning("snapshot %s: v%d was written, but v%d (published concurrently) is the current version",
                    snapshot, version, now, extra={"event": "publish_superseded", "snapshot_date": snapshot.isoformat()})
    log.info("published snapshot %s v%d: %s", snapshot, version, {k: v["rows"] for k, v in datasets.items()},
             extra={"event": "publish", "snapshot_date": snapshot.isoformat(), "version": version})
    return {**manifest, "status": status}


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, indent=1, sort_keys=True, default=str).encode()


def _claim(store: ObjectStore, snapshot: dt.date, publisher: str) -> int:
    """The next free version number of `snapshot`, claimed exclusively (bounded: 1000 tries)."""
    taken = [v for v, _ in _version_files(store, snapshot)]
    n = max([0, *taken]) + 1
    for _ in range(1000):
        if store.create(_version_path(snapshot, n, "claim"),
                        json.dumps({"publisher": publisher or f"pid {os.getpid()}"}).encode()):
            return n
        n += 1
    raise RuntimeError(f"snapshot {snapshot}: could not claim a version number (1000 taken)")


def _version_files(store: ObjectStore, snapshot: dt.date) -> list[tuple[int, str]]:
    """(version, kind) of every claim and manifest of the date."""
    out = []
    for e in store.list(paths.snapshot_versions(snapshot)):
        name = e.path.rsplit("/", 1)[-1]
        stem, _, ext = name.partition(".")
        if stem.startswith("v") and stem[1:].isdigit() and ext in ("json", "claim"):
            out.append((int(stem[1:]), ext))
    return out


def versions(store: ObjectStore, snapshot: dt.date) -> list[int]:
    """The published versions of a date (those with a manifest), oldest first."""
    return sorted(v for v, kind in _version_files(store, snapshot) if kind == "json")


def _switch_pointer(store: ObjectStore, snapshot: dt.date) -> int:
    """Point D at its highest version with a manifest; re-check after writing, so that of two
    concurrent publishers the last to write leaves the highest version (bounded loop)."""
    for _ in range(20):
        top = versions(store, snapshot)[-1]
        data = store.read_bytes(_version_path(snapshot, top))
        store.write_bytes(_pointer_path(snapshot), _dumps({
            "snapshot_date": snapshot.isoformat(), "version": top, "manifest": _version_path(snapshot, top),
            "manifest_sha256": hashlib.sha256(data).hexdigest()}))
        if versions(store, snapshot)[-1] == top and pointer(store, snapshot)["version"] == top:
            return top
    raise RuntimeError(f"snapshot {snapshot}: the pointer did not settle (publishers racing?)")


def pointer(store: ObjectStore, snapshot: dt.date) -> dict:
    """D's pointer: {snapshot_date, version, manifest (path), manifest_sha256}. FileNotFoundError if none."""
    raw = store.read_bytes(_pointer_path(snapshot))
    p = json.loads(raw)
    if "datasets" in p:  # a store published before versions: the pointer path held the manifest itself
        return {"snapshot_date": snapshot.isoformat(), "version": 0, "manifest": _pointer_path(snapshot),
                "manifest_sha256": hashlib.sha256(raw).hexdigest(), "legacy": True}
    return p


def _current_manifest(store: ObjectStore, snapshot: dt.date) -> dict | None:
    try:
        return manifest(store, snapshot)
    except SnapshotNotFound:
        return None


def snapshots(store: ObjectStore) -> list[dt.date]:
    """Published snapshot dates (those with a pointer), oldest first."""
    out = []
    for e in store.list(paths.SNAPSHOTS, ".json"):
        rest = e.path[len(paths.SNAPSHOTS):]
        if "/" not in rest:
            try:
                out.append(dt.date.fromisoformat(rest[:-5]))
            except ValueError:
                continue
    return sorted(out)


def manifest(store: ObjectStore, snapshot: dt.date, version: int | None = None) -> dict:
    """The manifest of a version of `snapshot` (default: the current one, by the pointer, checked
    against the checksum the pointer records)."""
    if version is None:
        try:
            p = pointer(store, snapshot)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no published snapshot for {snapshot} in {store.url} (no pointer "
                                   f"{_pointer_path(snapshot)}); published: "
                                   f"{', '.join(d.isoformat() for d in snapshots(store)) or 'none'}") from None
        data = store.read_bytes(p["manifest"])
        if hashlib.sha256(data).hexdigest() != p["manifest_sha256"]:
            raise ChecksumMismatch(f"{p['manifest']} does not match the checksum its pointer records")
    else:
        path = _pointer_path(snapshot) if version == 0 else _version_path(snapshot, version)
        try:
            data = store.read_bytes(path)
        except FileNotFoundError:
            raise SnapshotNotFound(f"snapshot {snapshot} has no version {version}; versions: "
                                   f"{', '.join(f'v{v}' for v in versions(store, snapshot)) or 'none'}") from None
    m = json.loads(data)
    m.setdefault("version", 0)
    return m


def read(store: ObjectStore, dataset: str, snapshot: dt.date | None = None, *, identified: bool = False,
         version: int | None = None) -> pa.Table:
    """A published dataset of a snapshot (default: the latest date, its current version), checked
    against its manifest; `snapshot_date` is put back as the first column (it lives in the path)."""
    if snapshot is None:
        have = snapshots(store)
        if not have:
            raise SnapshotNotFound(f"no published snapshot yet in {store.url} (no pointer in {paths.SNAPSHOTS})")
        snapshot = have[-1]
    m = manifest(store, snapshot, version)
    if dataset not in m["datasets"]:
        raise KeyError(f"snapshot {snapshot} has no dataset {dataset!r} (has: {', '.join(m['datasets'])})")
    path = m["datasets"][dataset]["identified_path" if identified else "path"]
    if path is None:
        raise KeyError(f"{dataset} has no identified variant (it holds no ID numbers)")
    data = store.read_bytes(path)
    if hashlib.sha256(data).hexdigest() != m["files"][path]["sha256"]:
        raise ChecksumMismatch(f"{path} does not match its manifest checksum: rewritten after publishing?")
    t = pq.read_table(pa.BufferReader(data))
    if "snapshot_date" not in t.column_names:
        t = t.add_column(0, pa.field("snapshot_date", pa.date32()), pa.array([snapshot] * t.num_rows, pa.date32()))
    return t


@dataclass(frozen=True)
class PruneResult:
    kept: dict[str, list[int]]
    removed: dict[str, list[int]]
    files_removed: int


def prune(store: ObjectStore, keep: int, referenced: AbstractSet[tuple[dt.date, int]] = frozenset(), *,
          dry_run: bool = False) -> PruneResult:
    """Keep per date its `keep` newest versions, its current one and every version in `referenced`
    (decisions recorded against it); delete the others' files, manifests and claims (data first,
    manifest last, so an interrupted prune leaves a version without data only if it also has no
    manifest). Claims without a manifest older than the newest manifest (a crashed publish) go too."""
    if keep < 1:
        raise ConfigError("--keep must be at least 1 (the current version is always kept)")
    kept: dict[str, list[int]] = {}
    removed: dict[str, list[int]] = {}
    n_files = 0
    for day in snapshots(store):
        vs = versions(store, day)
        if not vs:
            continue
        current = pointer(store, day)["version"]
        keep_set = set(vs[-keep:]) | {current} | {v for d, v in referenced if d == day}
        drop = [v for v in vs if v not in keep_set]
        kept[day.isoformat()] = sorted(keep_set & set(vs))
        removed[day.isoformat()] = drop
        orphan_claims = [v for v, kind in _version_files(store, day)
                         if kind == "claim" and v not in vs and v < max(vs)]
        if dry_run:
            continue
        for v in drop:
            m = manifest(store, day, v)
            for path in m["files"]:
                store.delete(path)
                n_files += 1
            store.delete(_version_path(day, v))
            store.delete(_version_path(day, v, "claim"))
        for v in orphan_claims:  # a publish that crashed before its manifest: whatever data it wrote
            for name in outputs.DATASETS:
                for ident in (False, True):
                    for e in store.list(_path(name, day, v, ident).rsplit("/", 1)[0] + "/"):
                        store.delete(e.path)
                        n_files += 1
            store.delete(_version_path(day, v, "claim"))
    return PruneResult(kept, removed, n_files)


def count_by(t: pa.Table, col: str) -> list[tuple[str, int]]:
    vc = pc.value_counts(t[col]).to_pylist()
    return sorted(((v["values"], v["counts"]) for v in vc), key=lambda x: (-x[1], x[0]))
