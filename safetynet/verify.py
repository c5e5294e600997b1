"""`safetynet store verify [--repair]`: every zone's files against what the catalog recorded.

What each file is checked against:

- `raw/` and `quarantine/` — the run record that last wrote it (`_catalog/ingest/<run>.json`,
  `feeds.<feed>.checksums`: SHA-256, bytes, rows, ingested_at), or a later repair record
  (`_catalog/repairs/<id>.json`). A file no record lists is reported as *unrecorded*; a file a
  record lists without a checksum (written before checksums were recorded) is checked for being
  readable Parquet only.
- `clean/` — its clean manifest (`_catalog/clean/<department>/<feed>.json`: sha256, bytes, rows).
- published files — every version's manifest (`_catalog/snapshots/<D>/v<N>.json`, `files`).

With `--repair`, in this order:

1. a damaged or missing **Kafka batch** (`<topic>+<partition>+<first>+<last>`) is fetched
   again from its recorded offsets (a plain consumer: no group, nothing committed) and written
   with its recorded `ingested_at` and the feed's mapping: the result must be byte-identical to
   the recorded checksum, or nothing is written. If the topic no longer holds every record of
   the range, the exact range lost is named, and the damaged file is moved to
   `quarantine/<prefix>/damaged/` so the pipeline can go on without it (recorded in the repair
   record, and reported by every later verify);
2. a damaged **drop file's batch** (`file+<name>+<version>`) is read again from `landing/` when
   the landing file still has that version (same rule: byte-identical or nothing written);
3. a damaged **clean** file is rebuilt from `raw/` (the clean step is deterministic);
4. a damaged **published** file is rebuilt from the inputs its manifest records (the raw files
   its watermarks cover, cleaned again — as `safetynet rules backtest` does), with the policy
   it names and the store's pseudonym secret, and restored only if byte-identical.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.base import load_mappings
from connectors.drop_folder import Drop, DropFolderSource
from connectors.kafka_topic import KafkaBatch, consumer_config
from quality import evaluation, freshness
from safetynet import pipeline
from safetynet.build import monitoring
from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake import clean
from safetynet.intake.ingest import ingest_drop, write_kafka_batch
from safetynet.publish import backtest, snapshot
from schemas import normalise
from schemas.registry import contracts

log = logging.getLogger(__name__)

Advance = Callable[..., None]


@dataclass
class Finding:
    zone: str  # raw | quarantine | clean | published
    path: str
    problem: str  # missing | checksum | unreadable | rows | unrecorded | lost (recorded earlier)
    detail: str
    repair: str = ""  # what --repair did, or why it could not
    repaired: bool = False
    lost: str = ""  # the records this damage lost for good, exactly

    @property
    def resolved(self) -> bool:
        """Nothing left to do: repaired, or a loss already recorded (and the pipeline runs)."""
        return self.repaired or self.problem == "lost"


@dataclass
class VerifyReport:
    checked: Counter = field(default_factory=Counter)  # zone → files
    bytes: Counter = field(default_factory=Counter)  # zone → bytes read
    unsummed: Counter = field(default_factory=Counter)  # zone → files with no recorded checksum
    findings: list[Finding] = field(default_factory=list)
    repair_record: str = ""

    @property
    def ok(self) -> bool:
        return all(f.resolved for f in self.findings)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "checked": dict(self.checked), "bytes": dict(self.bytes),
                "unsummed": dict(self.unsummed), "findings": [asdict(f) for f in self.findings],
                **({"repair_record": self.repair_record} if self.repair_record else {})}


# ---- what the catalog recorded ------------------------------------------------------------------
def _records(store: ObjectStore, prefix: str) -> list[tuple[str, dict]]:
    out = []
    for e in store.list(prefix, ".json"):
        try:
            out.append((e.path, json.loads(store.read_bytes(e.path))))
        except (FileNotFoundError, ValueError):
            continue
    return out


def expected_zone_files(store: ObjectStore) -> tuple[dict[str, dict | None], dict[str, dict], dict[str, str]]:
    """raw/quarantine path → its recorded entry (None: listed without a checksum), in run-record
    then repair-record order (the last writer wins); path → the feed's mapping record of that
    run; path → a loss recorded by a repair (the file is no longer expected)."""
    events: list[tuple[str, str, dict]] = []
    for _, r in _records(store, paths.RUNS):
        events.append((r.get("run_id", ""), "run", r))
    for _, r in _records(store, paths.REPAIRS):
        events.append((r.get("repair_id", ""), "repair", r))
    expected: dict[str, dict | None] = {}
    mapping: dict[str, dict] = {}
    lost: dict[str, str] = {}
    for _, kind, r in sorted(events, key=lambda x: x[0]):
        if kind == "run":
            for fc in (r.get("feeds") or {}).values():
                sums = fc.get("checksums") or {}
                for f in fc.get("files") or []:
                    expected[f] = sums.get(f)
                    mapping[f] = fc.get("mapping") or {}
                    lost.pop(f, None)
            adopted = r.get("orphan_checksums") or {}
            for files in (r.get("orphan_files") or {}).values():
                for f in files:
                    if expected.get(f) is None:
                        expected[f] = adopted.get(f)
        else:
            for f, entry in (r.get("rewritten") or {}).items():
                expected[f] = entry
            for f, why in (r.get("lost") or {}).items():
                expected.pop(f, None)
                lost[f] = why
    return expected, mapping, lost


def _check(store: ObjectStore, rep: VerifyReport, zone: str, path: str, entry: dict | None,
           advance: Advance) -> Finding | None:
    """Read one file and compare it with its recorded entry (None: readability only)."""
    rep.checked[zone] += 1
    try:
        data = store.read_bytes(path)
    except FileNotFoundError:
        return Finding(zone, path, "missing", "the catalog lists it, the store has no such file")
    rep.bytes[zone] += len(data)
    advance(1, path.rsplit("/", 1)[-1][:40])
    if entry is None or not entry.get("sha256"):
        rep.unsummed[zone] += 1
    elif hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return Finding(zone, path, "checksum", f"{len(data):,} bytes, recorded {entry.get('bytes', '?'):,} bytes "
                       f"sha256 {entry['sha256'][:12]}…: changed or damaged after it was written")
    if not path.endswith(".parquet"):
        return None
    try:
        rows = pq.read_metadata(pa.BufferReader(data)).num_rows
    except (pa.ArrowInvalid, OSError) as e:
        return Finding(zone, path, "unreadable", f"not readable Parquet ({str(e).splitlines()[0][:120]})")
    if entry is not None and entry.get("rows") is not None and rows != entry["rows"]:
        return Finding(zone, path, "rows", f"{rows:,} rows, recorded {entry['rows']:,}")
    return None


# ---- verify ---------------------------------------------------------------------------------------
def verify(settings: Settings, store: ObjectStore, *, repair: bool = False, progress: Advance | None = None
           ) -> VerifyReport:
    """Check every zone (and with `repair`, mend what can be mended; see the module doc)."""
    advance = progress or (lambda *a, **k: None)
    rep = VerifyReport()
    expected, mappings, lost = expected_zone_files(store)
    for path, why in sorted(lost.items()):
        rep.findings.append(Finding(path.split("/", 1)[0], path, "lost", why, lost=why))
    # raw/ and quarantine/: what the runs recorded, then what no run recorded
    for path, entry in sorted(expected.items()):
        f = _check(store, rep, path.split("/", 1)[0], path, entry, advance)
        if f:
            rep.findings.append(f)
    for zone, prefix in (("raw", paths.RAW), ("quarantine", paths.QUARANTINE)):
        for e in store.list(prefix):
            if e.path not in expected and not paths.is_damaged(e.path):
                rep.findings.append(Finding(zone, e.path, "unrecorded", "no run record lists this file (written by "
                                            "a run that crashed before recording it? the next ingest adopts it)"))
    # clean/
    clean_sums = {}
    for c in contracts().values():
        try:
            m = json.loads(store.read_bytes(paths.clean_manifest(c.prefix)))
        except FileNotFoundError:
            continue
        clean_sums[c.feed_id] = m
        entry = {"sha256": m.get("sha256"), "bytes": m.get("bytes"), "rows": (m.get("counts") or {}).get("rows")}
        f = _check(store, rep, "clean", m.get("path") or clean.clean_path(c), entry, advance)
        if f:
            rep.findings.append(f)
    # published
    for day in snapshot.snapshots(store):
        for v in snapshot.versions(store, day) or [0]:
            m = snapshot.manifest(store, day, v)
            for path, entry in sorted((m.get("files") or {}).items()):
                f = _check(store, rep, "published", path, entry, advance)
                if f:
                    rep.findings.append(f)
    if repair and not rep.ok:
        _repair(settings, store, rep, expected, mappings, advance)
    for f in rep.findings:
        log.log(logging.INFO if f.resolved else logging.ERROR, "store verify: %s %s: %s %s%s", f.zone, f.path,
                f.problem, f.detail, f" — {f.repair}" if f.repair else "",
                extra={"event": "store_verify", "zone": f.zone, "problem": f.problem, "repaired": f.repaired})
    return rep


# ---- repair ---------------------------------------------------------------------------------------
def _feed_of(path: str) -> str | None:
    """The feed a raw/quarantine path belongs to (`<zone>/<department>/<feed>/…`)."""
    parts = path.split("/")
    if len(parts) < 3:
        return None
    prefix = f"{parts[1]}/{parts[2]}"
    return next((c.feed_id for c in contracts().values() if c.prefix == prefix), None)


class _RepairRecord(TypedDict):
    """What a repair did (`_catalog/repairs/<id>.json`): files rewritten (path → recorded entry), lost
    (path → what was lost), rebuilt (paths)."""

    repair_id: str
    rewritten: dict[str, dict]
    lost: dict[str, str]
    rebuilt: list[str]


def _repair(settings: Settings, store: ObjectStore, rep: VerifyReport, expected: dict[str, dict | None],
            mappings: dict[str, dict], advance: Advance) -> None:

    record: _RepairRecord = {
        "repair_id": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8],
        "rewritten": {}, "lost": {}, "rebuilt": []}
    con = normalise.connect()
    try:
        zone_findings = [f for f in rep.findings if f.zone in ("raw", "quarantine") and not f.resolved
                         and f.problem != "unrecorded"]
        done: set[str] = set()
        for f in zone_findings:
            if f.path in done:
                continue
            name = clean.raw_file(f.path)
            fid = _feed_of(f.path)
            if name is None or fid is None:
                f.repair = "not a file name ingest writes: cannot tell its source"
                continue
            # a batch's raw and quarantine files are written together: repair both
            siblings = [p for p in expected if _feed_of(p) == fid and p.rsplit("/", 1)[-1] == f.path.rsplit("/", 1)[-1]]
            entries = {p: rec for p in siblings if (rec := expected[p]) is not None and rec.get("sha256")}
            if len(entries) < len(siblings):  # one without a record, or a record without a checksum
                f.repair = ("written before run records kept checksums: cannot prove a re-fetch identical; "
                            "re-ingest it by hand")
                continue
            if name.kind == "kafka":
                outcome = _refetch_kafka(settings, store, con, fid, name, entries, mappings.get(f.path) or {})
            else:
                outcome = _reread_drop(settings, store, con, fid, name, entries, mappings.get(f.path) or {})
            ok, msg, lost = outcome
            for g in rep.findings:
                if g.path in entries:
                    g.repair, g.repaired = msg, ok
                    if lost:
                        g.lost = lost
            done |= set(entries)
            if ok:
                record["rewritten"].update({p: entries[p] for p in entries})
            elif lost:  # gone for good: move the damaged files aside so the pipeline can run on
                for p in entries:
                    if store.exists(p):
                        aside = paths.damaged(p)
                        store.write_bytes(aside, store.read_bytes(p))
                        store.delete(p)
                    record["lost"][p] = lost
                    for g in rep.findings:
                        if g.path == p:
                            g.repaired = True
                            g.repair = f"{msg}; the damaged file was moved to {paths.damaged(p)}"
        # clean/: deterministic from raw/
        for f in [f for f in rep.findings if f.zone == "clean" and not f.resolved]:
            fid = _feed_of(f.path)
            c = contracts()[fid] if fid else None
            if c is None:
                f.repair = "not a clean file of a known feed"
                continue
            try:
                counts = clean.clean_feed(store, c, con)
            except Exception as e:  # e.g. a raw file still damaged
                f.repair = f"could not rebuild from raw/: {str(e).splitlines()[0][:160]}"
                continue
            f.repaired = True
            f.repair = f"rebuilt from raw/ ({counts.rows:,} rows)"
            if any(p.startswith(paths.raw(c.prefix)) for p in record["lost"]):
                f.repair += "; without the lost raw files named above"
            record["rebuilt"].append(f.path)
        # published: rebuilt from the recorded inputs, restored only if identical
        pub = [f for f in rep.findings if f.zone == "published" and not f.resolved]
        by_version: dict[tuple[str, int], list[Finding]] = {}
        for f in pub:
            day, version = paths.snapshot_of(f.path)
            by_version.setdefault((day, version), []).append(f)
        for (day, version), fs in sorted(by_version.items()):
            try:
                ok, msg = _rebuild_published(settings, store, dt.date.fromisoformat(day), version, [f.path for f in fs])
            except Exception as e:  # e.g. a raw file it needs is itself damaged
                ok, msg = False, f"could not rebuild: {str(e).splitlines()[0][:160]}"
            for f in fs:
                f.repaired, f.repair = ok, msg
            if ok:
                record["rebuilt"] += [f.path for f in fs]
    finally:
        con.close()
    if record["rewritten"] or record["lost"] or record["rebuilt"]:
        rep.repair_record = paths.repair_record(record["repair_id"])
        store.write_bytes(rep.repair_record, json.dumps(record, ensure_ascii=False, indent=1).encode())


def _identical(store: ObjectStore, entries: dict[str, dict], written: dict[str, dict]) -> tuple[bool, str]:
    """Whether a re-derivation wrote exactly the recorded files (compares checksums)."""
    differ = [p for p in entries if (written.get(p) or {}).get("sha256") != entries[p]["sha256"]]
    extra = [p for p in written if p not in entries and p.endswith(".parquet")]
    return not differ and not extra, ", ".join(p.rsplit("/", 1)[-1] for p in differ + extra)


def _mapping_for(settings: Settings, fid: str, recorded: dict):

    m = load_mappings(settings.mappings, [fid])[fid]
    if recorded.get("checksum") and recorded["checksum"] != m.checksum:
        return m, (f"the feed's mapping changed since (recorded {recorded['checksum'][:12]}, now "
                   f"{m.checksum[:12]}): the batch cannot be re-derived as it was")
    return m, ""


def _refetch_kafka(settings: Settings, store: ObjectStore, con, fid: str, name: clean.RawFile,
                   entries: dict[str, dict], recorded_mapping: dict) -> tuple[bool, str, str]:
    """Fetch the batch's offsets again and rewrite it, if the topic still holds all of them."""
    from kafka import KafkaConsumer, TopicPartition


    c = contracts()[fid]
    topic = name.path.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("+", 3)[0]
    part, first, last = int(name.partition), name.first, name.last
    want = sum(e.get("rows") or 0 for e in entries.values())
    span = f"topic {topic} partition {part} offsets {first}–{last} ({want:,} records)"
    if not settings.kafka_bootstrap:
        return False, f"no Kafka bootstrap configured: cannot re-fetch {span}", ""
    mapping, why = _mapping_for(settings, fid, recorded_mapping)
    if why:
        return False, why, ""
    cfg = {k: v for k, v in consumer_config(settings).items() if k not in ("session_timeout_ms", "heartbeat_interval_ms")}
    consumer = KafkaConsumer(**{**cfg, "group_id": None, "request_timeout_ms": 15_000})
    values: list[bytes | None] = []
    offsets: list[int] = []
    try:
        tp = TopicPartition(topic, part)
        parts = consumer.partitions_for_topic(topic)
        if not parts or part not in parts:
            consumer.topics()
            parts = consumer.partitions_for_topic(topic) or set()
        if part in parts:
            consumer.assign([tp])
            consumer.seek(tp, first)
            idle = 0
            while idle < 5:
                got = consumer.poll(timeout_ms=settings.poll_timeout_ms, max_records=settings.batch_max_records)
                msgs = got.get(tp, [])
                idle = 0 if msgs else idle + 1
                for m in msgs:
                    if first <= m.offset <= last:
                        values.append(m.value)
                        offsets.append(m.offset)
                hw = consumer.highwater(tp)
                if (msgs and msgs[-1].offset >= last) or (hw is not None and consumer.position(tp) >= min(hw, last + 1)):
                    break
    finally:
        consumer.close(autocommit=False)
    if len(values) < want or (offsets and offsets[0] != first):
        held = f"{offsets[0]}–{offsets[-1]}" if offsets else "none"
        lost = (f"{span}: the topic no longer holds them (fetched {len(values):,}, offsets {held}): "
                f"{want - len(values):,} records lost")
        return False, f"cannot re-fetch: {lost}", lost
    date = paths.ingest_date_of(name.path)
    b = KafkaBatch(topic, part, first, last, date, values, offsets)
    at = dt.datetime.fromisoformat(next(iter(entries.values()))["ingested_at"])
    staged = _Staging(store)
    res = write_kafka_batch(staged, con, c, b, mapping, ingested_at=at)
    same, which = _identical(store, entries, res.checksums)
    if not same:
        return False, (f"re-fetched {span}, but the result differs from the recorded batch ({which}): the topic's "
                       "records at these offsets are not the ones ingested; nothing written"), ""
    staged.commit()
    return True, f"re-fetched {span} from Kafka: byte-identical to the recorded checksum", ""


def _reread_drop(settings: Settings, store: ObjectStore, con, fid: str, name: clean.RawFile, entries: dict[str, dict],
                 recorded_mapping: dict) -> tuple[bool, str, str]:
    """Read the drop's landing file again and rewrite its batch, if landing still has that version."""

    c = contracts()[fid]
    src = DropFolderSource(store, c)
    found = None
    for e in store.list(src.landing):
        n = e.path[len(src.landing):]
        if n.replace("/", "_") != name.name:
            continue
        data = store.read_bytes(e.path)
        sha = hashlib.sha256(data).hexdigest()
        if sha[:12] == name.version:
            found = Drop(e.path, n, data, sha, None)
        else:
            lost = (f"drop file {n} version {name.version}: landing/ now holds version {sha[:12]} (replaced); "
                    f"its {sum(x.get('rows') or 0 for x in entries.values()):,} records are lost")
            return False, f"cannot re-read: {lost}", lost
    if found is None:
        lost = (f"drop file {name.name} version {name.version}: no longer in {src.landing}; its "
                f"{sum(x.get('rows') or 0 for x in entries.values()):,} records are lost")
        return False, f"cannot re-read: {lost}", lost
    mapping, why = _mapping_for(settings, fid, recorded_mapping)
    if why:
        return False, why, ""
    at = dt.datetime.fromisoformat(next(iter(entries.values()))["ingested_at"])
    staged = _Staging(store)
    res = ingest_drop(staged, con, c, found, mapping, ingested_at=at)
    same, which = _identical(store, entries, res.checksums)
    if not same:
        return False, f"re-read {found.name} from landing/, but the result differs from the recorded batch ({which})", ""
    staged.commit()
    return True, f"re-read drop file {found.name} from landing/: byte-identical to the recorded checksum", ""


class _Staging:
    """A store facade that keeps writes in memory until `commit()` (nothing reaches the store
    unless the re-derived files are proven identical)."""

    def __init__(self, store: ObjectStore):
        self.store = store
        self.pending: dict[str, bytes] = {}

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.pending[rel] = data

    def commit(self) -> None:
        for rel, data in self.pending.items():
            self.store.write_bytes(rel, data)

    def __getattr__(self, name: str):
        return getattr(self.store, name)


def _rebuild_published(settings: Settings, store: ObjectStore, day: dt.date, version: int, paths: list[str]
                       ) -> tuple[bool, str]:
    """Rebuild a version's datasets from the inputs its manifest records; restore the damaged files
    if the rebuild is byte-identical to what the manifest recorded."""
    m = snapshot.manifest(store, day, version or None)
    con = normalise.connect(memory_limit=settings.duckdb_memory_limit)
    try:
        tables, inputs = backtest.rebuild_inputs(store, m, con)
        bad = [i.feed_id for i in inputs.values() if not i.reproduced]
        if bad:
            return False, (f"its inputs cannot be rebuilt as published ({', '.join(bad)} changed since): re-run "
                           f"`safetynet run --snapshot-date {day}` to publish a new version")
        counties = sorted({v[:6] for v in tables["public_security.person"]["region_code"].to_pylist() if v})
        pol = pipeline.load_policy(counties[0] if counties else "", day, None)
        if pol.version != m.get("policy_version"):
            return False, (f"it was published with policy {m.get('policy_version')}, the shipped policy is now "
                           f"{pol.version}: re-run `safetynet run --snapshot-date {day}` to publish a new version")
        monitoring.register_sources(con, tables)
        b = monitoring.build(con, day, pol)
        stale = sorted(f for f, i in (m.get("inputs") or {}).items() if i.get("stale"))
        w = evaluation.evaluate(b, pol, stale_inputs=freshness.stale_inputs_by_rule(stale))
        ps = snapshot.Pseudonymiser(settings.pseudonym_secret.get_secret_value().encode())
        blobs = snapshot.encode({"monitoring/person": b.person, "monitoring/household": b.household,
                                 "warnings": w}, ps)
    finally:
        con.close()
    rebuilt = {snapshot.path_of(n, day, m["version"], ident): (data, e) for (n, ident), (data, e) in blobs.items()}
    differ = [p for p in paths if p not in rebuilt or rebuilt[p][1]["sha256"] != m["files"][p]["sha256"]]
    if differ:
        return False, (f"the rebuild differs from the published bytes ({', '.join(differ)}): re-run "
                       f"`safetynet run --snapshot-date {day}` to publish a new version")
    for p in paths:
        store.write_bytes(p, rebuilt[p][0])
    return True, f"rebuilt from the inputs the manifest of {day} v{m['version']} records: byte-identical"


# ---- output ---------------------------------------------------------------------------------------
ZONE_ZH = {"raw": "原始区", "quarantine": "隔离区", "clean": "清洗区", "published": "发布区"}


def print_report(rep: VerifyReport, con) -> None:
    from rich.table import Table
    from rich.text import Text

    t = Table(title="存储校验 Store verify")
    for col in ("zone", "files", "MB", "no checksum", "damaged", "repaired", "lost"):
        t.add_column(col)
    for zone in ("raw", "quarantine", "clean", "published"):
        fs = [f for f in rep.findings if f.zone == zone]
        bad = [f for f in fs if f.problem != "lost"]
        t.add_row(f"{zone} {ZONE_ZH[zone]}", f"{rep.checked[zone]:,}", f"{rep.bytes[zone] / 1e6:,.1f}",
                  f"{rep.unsummed[zone]:,}" if rep.unsummed[zone] else "",
                  str(len(bad)) if bad else "✓", str(sum(f.repaired for f in bad)) if bad else "",
                  str(sum(bool(f.lost) for f in fs)) if any(f.lost for f in fs) else "")
    con.print(t)
    for f in rep.findings:
        mark = "✓" if f.repaired else "·" if f.problem == "lost" else "✗"
        con.print(Text(f"{mark} {f.zone} {f.path}: {f.problem}: {f.detail}" + (f"\n    → {f.repair}" if f.repair else "")))
    if rep.repair_record:
        con.print(Text(f"repair record: {rep.repair_record}"))
    lost = sorted({f.lost for f in rep.findings if f.lost})
    for line in lost:
        con.print(Text(f"LOST: {line}"))
    if rep.ok:
        con.print(Text("store verify: every file matches the catalog" + (" after repair" if any(f.repaired for f in rep.findings) else "")
                       + (f"; {len(lost)} range(s) recorded as lost (LOST above)" if lost else "")))
    else:
        damaged = sum(not f.resolved for f in rep.findings)
        con.print(Text(f"store verify: {damaged} file(s) damaged" + ("" if any(f.repair for f in rep.findings)
                                                             else "; run with --repair to mend what can be mended")))
