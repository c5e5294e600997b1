"""The whole run for one snapshot date: ingest → clean → quality gate → build → warnings → publish.

The CLI (`safetynet run`) and the Airflow tasks call these same functions. Each step is
idempotent for a snapshot date: a re-run rewrites identical bytes and the same warning ids.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from connectors.kafka_producer import ensure_topics, publish
from quality import freshness, policy
from quality.gate import QualityGateFailed
from quality.report import QualityReport
from safetynet.build import monitoring
from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake import health as feed_health
from safetynet.intake.clean import clean_path
from safetynet.publish import incremental as inc
from safetynet.publish import snapshot
from schemas import normalise
from schemas.errors import ConfigError, DataError
from schemas.outputs import SNAPSHOTS_TOPIC, WARNINGS_TOPIC
from schemas.registry import contracts

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    snapshot_date: dt.date
    policy_version: str
    persons: int = 0
    households: int = 0
    warnings: pa.Table | None = None
    manifest: dict = field(default_factory=dict)
    quality: QualityReport | None = None
    ingest: object | None = None
    kafka_published: int = 0
    docs: list[str] = field(default_factory=list)
    stale_inputs: list[str] = field(default_factory=list)
    unhealthy: dict[str, list[str]] = field(default_factory=dict)  # feed → problems (its latest health)
    accepted_unhealthy: list[str] = field(default_factory=list)
    build_mode: str = ""  # how the monitoring build ran: "full" | "incremental" (`safetynet.publish.incremental`)
    build_reason: str = ""  # why a full build, or what an incremental one re-evaluated
    households_reevaluated: int = 0  # households the build (re-)evaluated: all of them in a full build

    def published_line(self, store_url: str) -> str:
        """One line on what the publish did: the version, or why none was written."""
        m = self.manifest
        v = f"v{m.get('version')}"
        where = f"{store_url}/{paths.snapshot_version(self.snapshot_date, m['version'])}"
        if m.get("status") == "unchanged":
            return f"snapshot {self.snapshot_date} unchanged: identical to its current version {v} (nothing written)"
        if m.get("status") == "superseded":
            return (f"snapshot {self.snapshot_date} {v} written, but a concurrent publish made a higher version "
                    f"current (see `safetynet snapshots list`)")
        return f"snapshot {self.snapshot_date} {v} published and current → {where}"


def load_policy(county: str, snapshot: dt.date, policy_file: str | Path | None) -> policy.Policy:
    """The policy file given, or the shipped one for the county and the snapshot's year."""
    if policy_file:
        return policy.load(policy_file)
    return policy.for_region(county, snapshot.year)


class RegisterSpansCounties(ConfigError):
    """The register holds more than one county where one was asked for (`county_of`); `counties`
    names them. The monitoring build itself runs per county (`build_county`)."""

    def __init__(self, counties: list[str]):
        super().__init__(f"the register spans counties {counties}: give --policy for the one to build, "
                         "or run per county")
        self.counties = counties


def counties_of(store: ObjectStore) -> list[str]:
    """The counties the clean register covers (the first 6 digits of its region codes), sorted."""
    c = contracts()["public_security.person"]
    if not store.exists(clean_path(c)):
        raise ValueError("no clean person register (public_security.person) yet: ingest it first")
    codes = store.read_parquet(clean_path(c)).column("region_code")
    return sorted(v for v in pc.unique(pc.utf8_slice_codeunits(codes, 0, 6)).to_pylist() if v)


def county_of(store: ObjectStore) -> str:
    """The one county the clean register covers; `RegisterSpansCounties` (a `ConfigError`) if several."""
    counties = counties_of(store)
    if len(counties) != 1:
        raise RegisterSpansCounties(counties)
    return counties[0]


def policies(store: ObjectStore, snapshot_date: dt.date) -> dict[str, policy.Policy]:
    """County → the shipped policy file of the county and the snapshot's year, for every county of
    the register (a missing or invalid file: `PolicyError`, a `ConfigError`)."""
    try:
        counties = [county_of(store)]
    except RegisterSpansCounties as e:
        counties = e.counties
    return {c: load_policy(c, snapshot_date, None) for c in counties}


def inputs_of(store: ObjectStore) -> dict:
    """Per feed: contract version, clean row count and watermarks (from the clean manifests)."""
    out = {}
    for fid, c in contracts().items():
        try:
            m = json.loads(store.read_bytes(paths.clean_manifest(c.prefix)))
            out[fid] = {"contract_version": c.version, "rows": m["counts"]["rows"], "watermarks": m["watermarks"]}
        except FileNotFoundError:
            out[fid] = {"contract_version": c.version, "rows": 0, "watermarks": None, "missing": True}
    return out


def feed_health_for_gate(store: ObjectStore, accept_unhealthy: list[str] | tuple[str, ...] = ()) -> dict[str, dict]:
    """Every feed's recorded health as the gate reads it: ok = healthy, or accepted for this run."""
    unknown = sorted(set(accept_unhealthy) - set(contracts()))
    if unknown:
        raise ConfigError(f"--accept-unhealthy: unknown feed(s) {', '.join(unknown)}; known: {', '.join(contracts())}")
    latest = feed_health.latest(store, list(contracts().values()))
    return {fid: {"ok": not h.get("unhealthy") or fid in accept_unhealthy,
                  "accepted": bool(h.get("unhealthy")) and fid in accept_unhealthy,
                  "problems": h.get("problems", []), "drift": h.get("drift", [])}
            for fid, h in latest.items()}


@dataclass
class CountyPart:
    """One county's part of a snapshot (`build_county`): its published tables and how they were made.

    `warnings` are ranked within the county; `combine` ranks them over every county. `inputs` are
    the clean feeds' manifests (`inputs_of`) the build started from: every part of a snapshot must
    have been built from the same ones. `result` is the build itself (in the building process only:
    the incremental build's bookkeeping, `incremental.remember`)."""

    county: str
    policy_version: str
    person: pa.Table
    household: pa.Table
    warnings: pa.Table
    mode: str
    reason: str
    households: int
    stale_inputs: list[str]
    inputs: dict
    signatures: dict[str, str | None] = field(default_factory=dict)
    result: inc.Result | None = None

    TABLES = ("person", "household", "warnings")

    def meta(self) -> dict:
        return {"county": self.county, "policy_version": self.policy_version, "mode": self.mode,
                "reason": self.reason, "households": self.households, "stale_inputs": self.stale_inputs,
                "inputs": self.inputs, "signatures": self.signatures,
                "rows": {t: getattr(self, t).num_rows for t in self.TABLES}}


def stale_and_accepted(store: ObjectStore, snapshot_date: dt.date, health: Mapping[str, dict]) -> list[str]:
    """The feeds a snapshot's warnings list as stale inputs: late or missing at the snapshot's
    reference time, or unhealthy and accepted for this run."""
    return sorted(set(freshness.stale_feeds(store, freshness.snapshot_as_of(snapshot_date)))
                  | {fid for fid, h in health.items() if h["accepted"]})


def build_county(settings: Settings, store: ObjectStore, snapshot_date: dt.date, county: str, pol: policy.Policy, *,
                 counties: list[str], accept_unhealthy: list[str] | tuple[str, ...] = (), incremental: bool = True,
                 step: Callable[[str], None] | None = None) -> CountyPart:
    """The monitoring build and warnings of one county of the register (`counties`: all of them),
    with that county's policy: what a monitoring task of the DAG runs (one per county) and what
    `build_snapshot` runs for each county in turn.

    A register of one county is built as a whole — incrementally on top of the date's current
    version when that is valid (`safetynet.publish.incremental`), else in full: exactly the bytes of
    a build that never heard of counties. A register spanning counties is built per county
    (`incremental.build_county`: the feeds cut to what the county's households read, always in full;
    the incremental build's recorded state is for one county)."""
    policy.check_county(pol, county)
    health = feed_health_for_gate(store, accept_unhealthy)
    stale = stale_and_accepted(store, snapshot_date, health)
    inputs = inputs_of(store)
    by_rule = freshness.stale_inputs_by_rule(stale)
    con = normalise.connect(memory_limit=settings.duckdb_memory_limit)
    try:
        if counties == [county]:
            b = inc.build(con, store, snapshot_date, pol, stale_inputs=by_rule, incremental=incremental,
                          step=step or (lambda name: None))
        else:
            if county not in counties:
                raise ConfigError(f"county {county} is not in the register (its counties: {', '.join(counties)})")
            b = inc.build_county(con, store, snapshot_date, pol, county, stale_inputs=by_rule, step=step)
    finally:
        con.close()
    return CountyPart(county, pol.version, b.person, b.household, b.warnings, b.mode, b.reason, b.households,
                      stale, inputs, dict(b.signatures), b if counties == [county] else None)


def combine(parts: list[CountyPart]) -> dict[str, pa.Table]:
    """The snapshot's published tables from its county parts: rows in the published order
    (`monitoring.PUBLISHED`), the warning list ranked once over every county's households
    (`quality.evaluation.rank`). One part: its tables as they are (the same bytes as a build
    that never heard of counties)."""
    from quality import evaluation

    if not parts:
        raise ValueError("a snapshot needs at least one county part")
    parts = sorted(parts, key=lambda p: p.county)
    if len({p.county for p in parts}) != len(parts):
        raise ValueError(f"two parts of one county: {[p.county for p in parts]}")
    if len(parts) == 1:
        person, household = parts[0].person, parts[0].household
    else:
        person, household = (_sorted_concat([getattr(p, t) for p in parts], monitoring.PUBLISHED[step])
                             for t, step in (("person", "monitoring_person"), ("household", "monitoring_household")))
    warnings = evaluation.rank(pa.concat_tables([p.warnings.cast(evaluation.SCHEMA) for p in parts]))
    return {"monitoring/person": person, "monitoring/household": household, "warnings": warnings}


def _sorted_concat(tables: list[pa.Table], keys: tuple[str, ...]) -> pa.Table:
    t = pa.concat_tables([x.cast(tables[0].schema) for x in tables])
    t = t.take(pc.sort_indices(t, sort_keys=[(k, "ascending") for k in keys]))
    return monitoring.canonical_chunks(t)


def policy_version(parts: list[CountyPart]) -> str:
    """The manifest's policy version: the county's, or every county's (sorted, `+`-joined)."""
    return "+".join(p.policy_version for p in sorted(parts, key=lambda p: p.county))


def build_snapshot(settings: Settings, store: ObjectStore, snapshot_date: dt.date,
                   pol: policy.Policy | Mapping[str, policy.Policy],
                   quality: bool = True, publish_kafka: bool = True,
                   accept_unhealthy: list[str] | tuple[str, ...] = (),
                   step: Callable[[str], None] | None = None, full_gate: bool = False,
                   incremental: bool = True) -> RunResult:
    """From `clean/`: monitoring build, warnings, quality gate (GX, Data Docs), publish (+ Kafka).

    `pol`: the policy of the register's one county, or county → policy for every county of the
    register. Each county is built by `build_county` (what a monitoring task of the DAG runs per
    county), and the parts are published by `publish_parts` (what the DAG's final task runs): the
    same functions in one process, so the published bytes are the same whichever way it ran.

    The gate runs on the feeds' health, the clean feeds and the outputs before anything is
    published; a failed critical expectation raises `QualityGateFailed` and leaves the snapshot
    unpublished (its Data Docs are still written, so the report can be read). An unhealthy feed
    fails the gate unless listed in `accept_unhealthy`: then its previous clean state is used,
    the manifest records the acceptance, and warnings of rules reading it list it in
    `stale_inputs`. `step(name)` is called as each step starts (a progress display). The gate runs
    a feed's suite only when the feed's clean file changed since its recorded result
    (`quality.gate.validate(reuse=True)`), unless `full_gate`.

    The monitoring build and the warnings are incremental when that is valid (`incremental`; see
    `safetynet.publish.incremental`; a register of one county only): on top of the date's current
    version, re-evaluating only the households new facts touch, with results identical to a full
    build; `res.build_mode`, `res.build_reason` and `res.households_reevaluated` say how it ran.
    After a publish the build's inputs are recorded for the next incremental build (also after a
    full one).
    """
    step = step or (lambda name: None)
    pols = dict(pol) if isinstance(pol, Mapping) else {pol.policy.region_code: pol}
    step("feed health")
    health = feed_health_for_gate(store, accept_unhealthy)
    if not quality and not all(h["ok"] for h in health.values()):
        bad = [f"{fid}: {'; '.join(h['problems'])}" for fid, h in health.items() if not h["ok"]]
        raise QualityGateFailed("unhealthy feeds (not accepted): " + " | ".join(bad), None)
    counties = sorted(pols)
    step("monitoring build")
    parts = [build_county(settings, store, snapshot_date, c, pols[c], counties=counties,
                          accept_unhealthy=accept_unhealthy, incremental=incremental, step=step) for c in counties]
    return publish_parts(settings, store, snapshot_date, parts, quality=quality, publish_kafka=publish_kafka,
                         accept_unhealthy=accept_unhealthy, step=step, full_gate=full_gate,
                         gate_policy=pols[counties[0]] if len(counties) == 1 else None)


def publish_parts(settings: Settings, store: ObjectStore, snapshot_date: dt.date, parts: list[CountyPart], *,
                  quality: bool = True, publish_kafka: bool = True, accept_unhealthy: list[str] | tuple[str, ...] = (),
                  step: Callable[[str], None] | None = None, full_gate: bool = False,
                  gate_policy: policy.Policy | None = None) -> RunResult:
    """The snapshot of its county parts (every county of the register, built from the same clean
    inputs): combined (`combine`), through the quality gate, published, then the snapshot notice and
    the warnings to Kafka, and (one county) the incremental build's bookkeeping. `gate_policy`: the
    policy the gate checks the outputs' region codes against (one county); several counties: every
    part holds only its own county's households by construction (`incremental.build_county`)."""
    step = step or (lambda name: None)
    parts = sorted(parts, key=lambda p: p.county)
    if any(p.inputs != parts[0].inputs for p in parts[1:]):
        raise PartsOutOfStep(f"the county parts of snapshot {snapshot_date} were built from different clean "
                             "states (an ingest ran between their builds): nothing published; the run its "
                             "clean-feed asset event queued builds them again")
    res = RunResult(snapshot_date, policy_version(parts))
    health = feed_health_for_gate(store, accept_unhealthy)
    res.unhealthy = {fid: h["problems"] for fid, h in health.items() if h["problems"]}
    res.accepted_unhealthy = sorted(fid for fid, h in health.items() if h["accepted"])
    if not quality and not all(h["ok"] for h in health.values()):
        bad = [f"{fid}: {'; '.join(h['problems'])}" for fid, h in health.items() if not h["ok"]]
        raise QualityGateFailed("unhealthy feeds (not accepted): " + " | ".join(bad), None)
    res.stale_inputs = sorted(set().union(*(p.stale_inputs for p in parts)))
    if len(parts) == 1:
        res.build_mode, res.build_reason, res.households_reevaluated = parts[0].mode, parts[0].reason, parts[0].households
    else:
        res.build_mode = "full"
        res.build_reason = f"per county ({', '.join(p.county for p in parts)}): a register spanning counties"
        res.households_reevaluated = sum(p.households for p in parts)
    outputs = combine(parts)
    w = outputs["warnings"]
    if quality:
        from quality import datadocs, gate

        step("quality gate")
        gcon = normalise.connect(memory_limit=settings.duckdb_memory_limit)  # the gate's SQL under the same cap
        try:
            res.quality = gate.validate(store, snapshot_date, policy=gate_policy, health=health, reuse=not full_gate,
                                        outputs={"monitoring.person": outputs["monitoring/person"],
                                                 "monitoring.household": outputs["monitoring/household"], "warnings": w},
                                        con=gcon)
        finally:
            gcon.close()
        step("Data Docs")
        res.docs = datadocs.build_docs(res.quality, store)
        res.quality.raise_for_critical()
    ps = snapshot.Pseudonymiser(settings.pseudonym_secret.get_secret_value().encode())
    gate_record: dict = {}
    if res.quality is not None:  # the manifest keeps what is a function of the data, not when or how fast
        q = res.quality.as_dict()
        gate_record = {k: q[k] for k in ("ok", "counts", "missing")}
        gate_record["failures"] = [{k: f.get(k) for k in ("suite", "field", "expectation", "check", "critical", "unexpected_count")}
                                   for s_ in q["suites"] for f in s_.get("failures", [])]
        gate_record["docs"] = paths.DOCS_QUALITY
    inputs = json.loads(json.dumps(parts[0].inputs))
    for fid in inputs:
        inputs[fid]["stale"] = fid in res.stale_inputs
        if fid in res.unhealthy:
            inputs[fid]["unhealthy"] = res.unhealthy[fid]
            inputs[fid]["accepted_unhealthy"] = fid in res.accepted_unhealthy
    step("publish")
    res.manifest = snapshot.publish(store, snapshot_date, outputs, ps, policy_version=res.policy_version,
                                    inputs=inputs, quality=gate_record)
    res.persons, res.households, res.warnings = outputs["monitoring/person"].num_rows, \
        outputs["monitoring/household"].num_rows, w
    if publish_kafka and settings.kafka_bootstrap:
        step("warnings to Kafka")
        if res.manifest.get("status") == "published":  # first: one small message the review app waits for
            produce_snapshot_notice(settings, res.manifest)
        res.kafka_published = produce_warnings(settings, snapshot.pseudonymise_warnings(w, ps))
    # last: the inputs of this version for the next incremental build (seconds at a million persons after a
    # full build) — after the notice, so the review app is not kept waiting for it. One county only.
    if len(parts) == 1:
        p = parts[0]
        b = p.result or inc.Result(p.person, p.household, p.warnings, p.mode, p.reason, p.households, p.signatures)
        con = normalise.connect(memory_limit=settings.duckdb_memory_limit)
        try:
            inc.remember(store, con, snapshot_date, gate_policy or load_policy(p.county, snapshot_date, None),
                         b, res.manifest)
        finally:
            con.close()
    return res


class PartsOutOfStep(DataError):
    """The county parts of a snapshot were built from different clean states: nothing is published."""


# ---- staged parts (the DAG: one task per county writes its part, the final task publishes them) ------
STAGING = "_staging/monitoring/"
_RUN_KEY = re.compile(r"[^A-Za-z0-9_.-]")


def staging_prefix(snapshot_date: dt.date, run_key: str | None = None) -> str:
    """Where a run's county parts wait for the final task (listing prefix):
    `_staging/monitoring/snapshot_date=D/[run=<key>/]` — identified data, like `identified/`."""
    base = f"{STAGING}snapshot_date={snapshot_date.isoformat()}/"
    return base if run_key is None else f"{base}run={_RUN_KEY.sub('_', run_key)[:120]}/"


def stage_part(store: ObjectStore, snapshot_date: dt.date, run_key: str, part: CountyPart) -> dict:
    """Write a county part for the final task (Arrow IPC, zstd: the exact tables, schema and chunks
    round-trip, so the final task publishes the bytes a single process would); returns its
    descriptor (paths and checksums; no personal value) — the task's XCom."""
    base = f"{staging_prefix(snapshot_date, run_key)}county={part.county}/"
    files = {}
    for name in CountyPart.TABLES:
        data = _ipc_bytes(getattr(part, name))
        path = f"{base}{name}.arrow"
        store.write_bytes(path, data)
        files[name] = {"path": path, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    meta = {**part.meta(), "files": files}
    store.write_bytes(f"{base}part.json", json.dumps(meta, sort_keys=True, default=str).encode())
    return {"county": part.county, "part": f"{base}part.json", "policy_version": part.policy_version,
            "mode": part.mode, "households": part.households, "rows": meta["rows"]}


def load_part(store: ObjectStore, part_json: str) -> CountyPart:
    """A staged county part, each file checked against the checksum its descriptor records."""
    from schemas.errors import ChecksumMismatch

    meta = json.loads(store.read_bytes(part_json))
    tables = {}
    for name in CountyPart.TABLES:
        f = meta["files"][name]
        data = store.read_bytes(f["path"])
        if hashlib.sha256(data).hexdigest() != f["sha256"]:
            raise ChecksumMismatch(f"{f['path']} does not match the checksum its part records")
        tables[name] = pa.ipc.open_file(pa.BufferReader(data)).read_all()
    return CountyPart(meta["county"], meta["policy_version"], tables["person"], tables["household"],
                      tables["warnings"], meta["mode"], meta["reason"], meta["households"], meta["stale_inputs"],
                      meta["inputs"], meta.get("signatures") or {})


def clear_staging(store: ObjectStore, snapshot_date: dt.date, keep_run: str | None = None) -> int:
    """Delete the staged parts of the date's runs (but `keep_run`'s); returns the files deleted."""
    keep = staging_prefix(snapshot_date, keep_run) if keep_run else None
    n = 0
    for e in store.list(staging_prefix(snapshot_date)):
        if keep is None or not e.path.startswith(keep):
            store.delete(e.path)
            n += 1
    return n


def _ipc_bytes(t: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, t.schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def produce_snapshot_notice(settings: Settings, manifest: dict) -> None:
    """One message to `hub.snapshots.v1` (keyed by the date) saying a version is now current: the review
    app loads it on hearing it (`safetynet.review.watch`) instead of waiting for its catalog watch."""
    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka bootstrap configured (SAFETYNET_KAFKA_BOOTSTRAP): no snapshot notice can be produced")
    day = manifest["snapshot_date"]
    notice = {"snapshot_date": day, "version": manifest["version"], "content_sha256": manifest.get("content_sha256"),
              "published_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
    ensure_topics(bootstrap, [SNAPSHOTS_TOPIC], partitions=1)
    publish(bootstrap, SNAPSHOTS_TOPIC, [(str(day).encode(), json.dumps(notice, sort_keys=True).encode())])


def produce_warnings(settings: Settings, w: pa.Table) -> int:
    """Warnings to `hub.warnings.v1`, keyed by warning_id (pseudonymised; a replay adds no new key)."""

    bootstrap = settings.kafka_bootstrap
    if not bootstrap:
        raise ConfigError("no Kafka bootstrap configured (SAFETYNET_KAFKA_BOOTSTRAP): the warnings cannot be produced")
    ensure_topics(bootstrap, [WARNINGS_TOPIC])
    msgs = [(r["warning_id"].encode(), json.dumps(r, ensure_ascii=False, default=str, sort_keys=True).encode())
            for r in w.to_pylist()]
    return publish(bootstrap, WARNINGS_TOPIC, msgs)
