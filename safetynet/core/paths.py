"""Where everything lives in the object store: every store path the hub reads or writes, declared once.

All paths are store-relative (`ObjectStore` joins them to its root or bucket) and use `/`. A
feed's `prefix` is its `<department>/<feed>` segment (`schemas.contract.Contract.prefix`); every
zone keeps a feed under it. Every constant naming a folder, and every function documented as a
*listing prefix*, ends in `/` and can be given to `ObjectStore.list` as it is; the other
functions return one object's path. Nothing here touches the store: this
module only names things.

Zones (the data)::

    landing/<dept>/<feed>/<name>                                 departments' drops (in)
    raw/<dept>/<feed>/ingest_date=D/<batch>.parquet              accepted records, as delivered
    quarantine/<dept>/<feed>/ingest_date=D/<batch>.parquet       rejected records, with the reason
    quarantine/<dept>/<feed>/ingest_date=D/files/<name>          an unreadable drop, kept whole
    quarantine/<dept>/<feed>/damaged/<zone>/...                  a damaged file set aside by repair
    clean/<dept>/<feed>/part-00000.parquet                       the feed's typed current state
    [identified/]<dataset>/snapshot_date=D/version=N/part-00000.parquet   published snapshots
    docs/quality/...                                             the quality gate's Data Docs

The catalog (`_catalog/`, bookkeeping: manifests, ledgers, leases)::

    _catalog/ingest/<run_id>.json                 ingest run records
    _catalog/repairs/<repair_id>.json             `store verify --repair` records
    _catalog/clean/<dept>/<feed>.json             clean manifests
    _catalog/clean_state/<dept>/<feed>/...        what an incremental clean needs (state.json, event ids, deletes)
    _catalog/health/<dept>/<feed>.json            a feed's latest health
    _catalog/held/<dept>/<feed>.json              raw files held out of clean/
    _catalog/drops/<dept>/<feed>/<name>.json      the drop ledger
    _catalog/kafka/<group>/<topic>/<partition>.json   Kafka read intents
    _catalog/leases/<name>/<generation>.json      leases
    _catalog/snapshots/D.json, D/vN.json, D/vN.claim  snapshot pointers, manifests, claims
    _catalog/regions/<county>.json, <county>/<sha>.csv  region name lists in force
    _catalog/freshness/D.json                     freshness reports
    _catalog/incremental/state.json               what the last monitoring build published, and its inputs' digests
    _catalog/incremental/digests/<dept>/<feed>/<name>.parquet   a clean feed's digest (incremental build)
    _catalog/demo.json                            marks a store the demo created
"""

from __future__ import annotations

import datetime as dt

# ---- zones --------------------------------------------------------------------------------------
#: Departments' file drops, `landing/<dept>/<feed>/<name>`. Written by the departments (in the
#: demo `safetynet.demo.departments`); read by `connectors.drop_folder`, never changed by the hub.
LANDING = "landing/"
#: Accepted records as delivered (strings + lineage columns). Written by `safetynet.intake.ingest`.
RAW = "raw/"
#: Rejected records with their reasons, unreadable files, damaged files set aside. Written by
#: `safetynet.intake.ingest` and `safetynet.verify` (repair).
QUARANTINE = "quarantine/"
#: The typed current state per feed. Written by `safetynet.intake.clean`.
CLEAN = "clean/"
#: The identified (with ID numbers) copy of each published dataset. Written by `safetynet.publish.snapshot`.
IDENTIFIED = "identified/"
#: The quality gate's Data Docs (HTML pages, reports). Written by `quality.datadocs`.
DOCS_QUALITY = "docs/quality/"
#: The catalog root: bookkeeping, never data.
CATALOG = "_catalog/"


def landing(prefix: str) -> str:
    """A feed's drop folder (listing prefix): `landing/<dept>/<feed>/`."""
    return f"{LANDING}{prefix}/"


def landing_file(rel: str) -> str:
    """A dropped file, `rel` relative to `landing/` (`<dept>/<feed>/<name>`)."""
    return f"{LANDING}{rel}"


def raw(prefix: str) -> str:
    """A feed's raw files (listing prefix): `raw/<dept>/<feed>/`."""
    return f"{RAW}{prefix}/"


def quarantine(prefix: str) -> str:
    """A feed's quarantine (listing prefix): `quarantine/<dept>/<feed>/`."""
    return f"{QUARANTINE}{prefix}/"


#: The Hive-style partition keys in zone paths (values only in the path, never in the files).
INGEST_DATE = "ingest_date"
SNAPSHOT_DATE = "snapshot_date"
VERSION = "version"


def _partition(path: str, key: str) -> str | None:
    """The value of partition `key` in a path (`…/key=value/…`), None without one."""
    for part in path.split("/"):
        if part.startswith(key + "="):
            return part[len(key) + 1:]
    return None


def _batch(prefix: str, ingest_date: str, name: str) -> str:
    """A batch's path inside a zone: `<dept>/<feed>/ingest_date=D/<name>.parquet`."""
    return f"{prefix}/{INGEST_DATE}={ingest_date}/{name}.parquet"


def raw_batch(prefix: str, ingest_date: str, name: str) -> str:
    """A batch's accepted records: `raw/<dept>/<feed>/ingest_date=D/<name>.parquet` (ingest)."""
    return RAW + _batch(prefix, ingest_date, name)


def quarantine_batch(prefix: str, ingest_date: str, name: str) -> str:
    """A batch's rejected records: `quarantine/<dept>/<feed>/ingest_date=D/<name>.parquet` (ingest)."""
    return QUARANTINE + _batch(prefix, ingest_date, name)


def quarantine_file(prefix: str, ingest_date: str, filename: str) -> str:
    """An unreadable drop kept whole: `quarantine/<dept>/<feed>/ingest_date=D/files/<filename>` (ingest)."""
    return f"{QUARANTINE}{prefix}/{INGEST_DATE}={ingest_date}/files/{filename}"


#: The folder (under a feed's quarantine) where repair moves files it cannot mend.
DAMAGED = "damaged"


def damaged(path: str) -> str:
    """Where `store verify --repair` moves a damaged zone file it cannot mend:
    `<zone>/<dept>/<feed>/<rest>` → `quarantine/<dept>/<feed>/damaged/<zone>/<rest>`."""
    zone, dept, feed, *rest = path.split("/")
    return f"{QUARANTINE}{dept}/{feed}/{DAMAGED}/{zone}/{'/'.join(rest)}"


def is_damaged(path: str) -> bool:
    """Whether a zone file is one repair set aside (`damaged`): no run record lists it."""
    return f"/{DAMAGED}/" in path


def clean_file(prefix: str) -> str:
    """A feed's clean state: `clean/<dept>/<feed>/part-00000.parquet` (written by clean)."""
    return f"{CLEAN}{prefix}/part-00000.parquet"


def published_file(dataset: str, snapshot: dt.date, version: int, identified: bool) -> str:
    """A published dataset of a snapshot version (written by `safetynet.publish.snapshot`):
    `<dataset>/snapshot_date=D/version=N/part-00000.parquet`, pseudonymised, or with ID numbers
    under `identified/`."""
    return (f"{published_dataset(dataset, identified)}/{SNAPSHOT_DATE}={snapshot.isoformat()}/"
            f"{VERSION}={version}/part-00000.parquet")


def published_dataset(dataset: str, identified: bool) -> str:
    """A published dataset's root (no trailing `/`): `<dataset>` or `identified/<dataset>`."""
    return f"{IDENTIFIED if identified else ''}{dataset}"


def ingest_date_of(path: str) -> str:
    """The ingest date (YYYY-MM-DD) of a `raw/` or `quarantine/` batch path."""
    date = _partition(path, INGEST_DATE)
    if date is None:
        raise ValueError(f"{path}: not a batch path (no {INGEST_DATE}=)")
    return date


def snapshot_of(path: str) -> tuple[str, int]:
    """(snapshot date YYYY-MM-DD, version) of a published file's path; version 0 for a file
    published before versions were kept (no `version=`)."""
    day = _partition(path, SNAPSHOT_DATE)
    if day is None:
        raise ValueError(f"{path}: not a published file (no {SNAPSHOT_DATE}=)")
    version = _partition(path, VERSION)
    return day, int(version) if version is not None else 0


# ---- the catalog --------------------------------------------------------------------------------
#: Ingest run records `_catalog/ingest/<run_id>.json` (status, files and checksums per feed).
#: Written by `safetynet.intake.ingest`; read by `safetynet.verify`.
RUNS = f"{CATALOG}ingest/"
#: Repair records `_catalog/repairs/<repair_id>.json` (rewritten, lost, rebuilt files). Written by
#: `safetynet.verify` (`store verify --repair`).
REPAIRS = f"{CATALOG}repairs/"
#: Clean manifests `_catalog/clean/<dept>/<feed>.json` (counts, checksum, watermarks, held files).
#: Written by `safetynet.intake.clean`; read by the pipeline, freshness, verify and orchestration.
CLEAN_MANIFESTS = f"{CATALOG}clean/"
#: The incremental clean's side state `_catalog/clean_state/<dept>/<feed>/` (`state.json`: the raw files
#: the clean state covers and what it needs to add new ones; event-id segments; the keys deleted last).
#: Written and read by `safetynet.intake.clean_incremental`; rebuilt by any full clean.
CLEAN_STATE = f"{CATALOG}clean_state/"
#: A feed's latest health `_catalog/health/<dept>/<feed>.json`. Written by `safetynet.intake.health`.
HEALTH = f"{CATALOG}health/"
#: Raw files held out of clean/ `_catalog/held/<dept>/<feed>.json`. Written by `safetynet.intake.health`.
HELD = f"{CATALOG}held/"
#: The drop ledger `_catalog/drops/<dept>/<feed>/<name>.json` (versions of a drop seen). Written by
#: `connectors.drop_folder`.
DROPS = f"{CATALOG}drops/"
#: Kafka read intents `_catalog/kafka/<group>/<topic>/<partition>.json`. Written by `connectors.kafka_topic`.
KAFKA = f"{CATALOG}kafka/"
#: Lease generations `_catalog/leases/<name>/<generation>.json`. Written by `safetynet.core.lease`.
LEASES = f"{CATALOG}leases/"
#: Snapshot pointers `_catalog/snapshots/D.json`, manifests `D/vN.json`, claims `D/vN.claim`.
#: Written by `safetynet.publish.snapshot`; read by the review app, verify, backtest, the CLI.
SNAPSHOTS = f"{CATALOG}snapshots/"
#: Region name lists: manifests `_catalog/regions/<county>.json`, the lists `<county>/<sha>.csv`.
#: Written by `safetynet.intake.regions` (`safetynet regions import`).
REGIONS = f"{CATALOG}regions/"
#: Freshness reports `_catalog/freshness/D.json` (the latest check of that day). Written by
#: `quality.freshness`.
FRESHNESS = f"{CATALOG}freshness/"
#: The incremental monitoring build's bookkeeping: `state.json` (the snapshot version the last build
#: published, its build fingerprint, per feed the clean files' signature and digest) and the digests
#: (`digests/<dept>/<feed>/<name>.parquet`). Written and read by `safetynet.publish.incremental`.
INCREMENTAL = f"{CATALOG}incremental/"
#: Marks a store the demo created (`{"persons", "seed"}`). Written by `safetynet.demo.cli`.
DEMO_MARKER = f"{CATALOG}demo.json"
#: A throwaway object `safetynet check` writes and deletes to see the store is writable.
WRITE_CHECK = f"{CATALOG}.check"


def ingest_run(run_id: str) -> str:
    """An ingest run record: `_catalog/ingest/<run_id>.json`."""
    return f"{RUNS}{run_id}.json"


def repair_record(repair_id: str) -> str:
    """A repair record: `_catalog/repairs/<repair_id>.json`."""
    return f"{REPAIRS}{repair_id}.json"


def clean_manifest(prefix: str) -> str:
    """A feed's clean manifest: `_catalog/clean/<dept>/<feed>.json`."""
    return f"{CLEAN_MANIFESTS}{prefix}.json"


def clean_manifests(department: str) -> str:
    """A department's clean manifests (listing prefix): `_catalog/clean/<dept>/`."""
    return f"{CLEAN_MANIFESTS}{department}/"


def clean_state(prefix: str) -> str:
    """A feed's incremental-clean side state (listing prefix): `_catalog/clean_state/<dept>/<feed>/`."""
    return f"{CLEAN_STATE}{prefix}/"


def quality_feed_record(prefix: str) -> str:
    """The last result of a feed's quality suite, with the sha256 of the clean file and of the suite it
    ran on: `_catalog/quality/feeds/<dept>/<feed>.json`. Written by `quality.gate`, which reuses it
    while both are unchanged."""
    return f"{CATALOG}quality/feeds/{prefix}.json"


def health(prefix: str) -> str:
    """A feed's latest health: `_catalog/health/<dept>/<feed>.json`."""
    return f"{HEALTH}{prefix}.json"


def held(prefix: str) -> str:
    """A feed's held raw files: `_catalog/held/<dept>/<feed>.json`."""
    return f"{HELD}{prefix}.json"


def drop_ledgers(prefix: str) -> str:
    """The ledger entries of a feed's drops (listing prefix): `_catalog/drops/<dept>/<feed>/`."""
    return f"{DROPS}{prefix}/"


def drop_ledger(prefix: str, name: str) -> str:
    """The ledger entry of a drop (its versions seen): `_catalog/drops/<dept>/<feed>/<name>.json`."""
    return f"{DROPS}{prefix}/{name}.json"


def kafka_intent(group: str, topic: str, partition: int) -> str:
    """A partition's read intent: `_catalog/kafka/<group>/<topic>/<partition>.json`."""
    return f"{KAFKA}{group}/{topic}/{partition}.json"


def lease_generations(name: str) -> str:
    """A lease's generations (listing prefix): `_catalog/leases/<name>/`."""
    return f"{LEASES}{name}/"


def lease_generation(name: str, generation: int) -> str:
    """One generation of a lease: `_catalog/leases/<name>/<generation, 10 digits>.json`."""
    return f"{LEASES}{name}/{generation:010d}.json"


def snapshot_pointer(snapshot: dt.date) -> str:
    """A date's pointer (which version is current): `_catalog/snapshots/D.json`."""
    return f"{SNAPSHOTS}{snapshot.isoformat()}.json"


def snapshot_versions(snapshot: dt.date) -> str:
    """A date's manifests and claims (listing prefix): `_catalog/snapshots/D/`."""
    return f"{SNAPSHOTS}{snapshot.isoformat()}/"


def snapshot_version(snapshot: dt.date, version: int, ext: str = "json") -> str:
    """Version N of a date: its manifest `_catalog/snapshots/D/vN.json` (ext "claim": its claim)."""
    return f"{snapshot_versions(snapshot)}v{version}.{ext}"


def region_manifest(county: str) -> str:
    """A county's region list in force: `_catalog/regions/<county>.json`."""
    return f"{REGIONS}{county}.json"


def region_list(county: str, digest: str) -> str:
    """An imported region list (named by its checksum): `_catalog/regions/<county>/<digest>.csv`."""
    return f"{REGIONS}{county}/{digest}.csv"


def freshness_report(day: dt.date) -> str:
    """The latest freshness check of a day: `_catalog/freshness/D.json`."""
    return f"{FRESHNESS}{day.isoformat()}.json"


def incremental_state() -> str:
    """The incremental build's state: `_catalog/incremental/state.json`."""
    return f"{INCREMENTAL}state.json"


def incremental_digest(prefix: str, name: str) -> str:
    """A clean feed's digest (one row per person, case or household it links to, with a hash of its
    rows): `_catalog/incremental/digests/<dept>/<feed>/<name>.parquet` (`name`: content address)."""
    return f"{INCREMENTAL}digests/{prefix}/{name}.parquet"


def conditional_put_probe(token: str) -> str:
    """A throwaway object the S3 store writes twice to see conditional PUTs are honoured."""
    return f"{CATALOG}.conditional-put-probe/{token}"
