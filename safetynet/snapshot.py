"""Publishing monitoring and warning snapshots for downstream systems.

Data first, manifest last: each dataset is written to
`<dataset>/snapshot_date=D/part-00000.parquet` (pseudonymised) and
`identified/<dataset>/snapshot_date=D/part-00000.parquet` (with ID numbers, for consumers granted
it); then `_catalog/snapshots/D.json` records schema version, row counts, checksums, the input
watermarks of every feed and the policy version. Readers list snapshots by manifest, so a
snapshot without one — half written, or stopped by the quality gate — is invisible. Every byte
is a function of the inputs: a re-run writes identical files and manifest.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from safetynet.store import ObjectStore, parquet_bytes
from schemas import outputs

log = logging.getLogger(__name__)

MANIFESTS = "_catalog/snapshots"


class SnapshotNotFound(LookupError):
    """No published (manifested) snapshot for the date."""


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
        return pa.array([self.key(v) for v in arr.to_pylist()], pa.string())


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


def _path(dataset: str, snapshot: dt.date, identified: bool) -> str:
    return f"{'identified/' if identified else ''}{dataset}/snapshot_date={snapshot.isoformat()}/part-00000.parquet"


def publish(store: ObjectStore, snapshot: dt.date, tables: dict[str, pa.Table], ps: Pseudonymiser, *,
            policy_version: str, inputs: dict, quality: dict | None = None) -> dict:
    """Write the snapshot's datasets (both variants), then its manifest. Returns the manifest."""
    variants = {
        "monitoring/person": (pseudonymise_person(tables["monitoring/person"], ps), tables["monitoring/person"]),
        "monitoring/household": (tables["monitoring/household"], None),
        "warnings": (pseudonymise_warnings(tables["warnings"], ps), tables["warnings"]),
    }
    files = {}
    for name, (public, identified) in variants.items():
        for t, ident in ((public, False), (identified, True)):
            if t is None:
                continue
            path = _path(name, snapshot, ident)
            data = parquet_bytes(t)
            store.write_bytes(path, data)
            files[path] = {"rows": t.num_rows, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {
        "snapshot_date": snapshot.isoformat(), "schema_version": outputs.VERSION, "policy_version": policy_version,
        "datasets": {name: {"rows": v[0].num_rows, "path": _path(name, snapshot, False),
                            "identified_path": _path(name, snapshot, True) if v[1] is not None else None}
                     for name, v in variants.items()},
        "files": files, "inputs": inputs, "quality": quality or {},
        "pseudonym": "HMAC-SHA256(secret, id_no)[:32 hex]",
    }
    store.write_bytes(f"{MANIFESTS}/{snapshot.isoformat()}.json",
                      json.dumps(manifest, ensure_ascii=False, indent=1, sort_keys=True, default=str).encode())
    log.info("published snapshot %s: %s", snapshot, {k: v["rows"] for k, v in manifest["datasets"].items()},
             extra={"event": "publish", "snapshot_date": snapshot.isoformat()})
    return manifest


def snapshots(store: ObjectStore) -> list[dt.date]:
    """Published snapshot dates (those with a manifest), oldest first."""
    return sorted(dt.date.fromisoformat(e.path.rsplit("/", 1)[-1][:-5]) for e in store.list(f"{MANIFESTS}/", ".json"))


def manifest(store: ObjectStore, snapshot: dt.date) -> dict:
    try:
        return json.loads(store.read_bytes(f"{MANIFESTS}/{snapshot.isoformat()}.json"))
    except FileNotFoundError:
        raise SnapshotNotFound(f"no published snapshot for {snapshot} (no manifest in {MANIFESTS}/); "
                               f"published: {', '.join(d.isoformat() for d in snapshots(store)) or 'none'}") from None


def read(store: ObjectStore, dataset: str, snapshot: dt.date | None = None, *, identified: bool = False) -> pa.Table:
    """A published dataset of a snapshot (default: the latest), checked against its manifest."""
    if snapshot is None:
        have = snapshots(store)
        if not have:
            raise SnapshotNotFound("no published snapshot yet")
        snapshot = have[-1]
    m = manifest(store, snapshot)
    if dataset not in m["datasets"]:
        raise KeyError(f"snapshot {snapshot} has no dataset {dataset!r} (has: {', '.join(m['datasets'])})")
    path = m["datasets"][dataset]["identified_path" if identified else "path"]
    if path is None:
        raise KeyError(f"{dataset} has no identified variant (it holds no ID numbers)")
    data = store.read_bytes(path)
    if hashlib.sha256(data).hexdigest() != m["files"][path]["sha256"]:
        raise ValueError(f"{path} does not match its manifest checksum: rewritten after publishing?")
    return pq.read_table(pa.BufferReader(data))


def count_by(t: pa.Table, col: str) -> list[tuple[str, int]]:
    vc = pc.value_counts(t[col]).to_pylist()
    return sorted(((v["values"], v["counts"]) for v in vc), key=lambda x: (-x[1], x[0]))
