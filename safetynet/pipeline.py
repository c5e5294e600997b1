"""The whole run for one snapshot date: ingest → clean → quality gate → build → warnings → publish.

The CLI (`safetynet run`) and the Airflow tasks call these same functions. Each step is
idempotent for a snapshot date: a re-run rewrites identical bytes and the same warning ids.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from connectors.kafka_producer import ensure_topics, publish
from quality import freshness, policy
from quality.gate import QualityGateFailed
from quality.report import QualityReport
from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake import health as feed_health
from safetynet.intake.clean import clean_path
from safetynet.publish import incremental as inc
from safetynet.publish import snapshot
from schemas import normalise
from schemas.errors import ConfigError
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


def county_of(store: ObjectStore) -> str:
    """The county the clean register covers (the first 6 digits of its region codes)."""

    c = contracts()["public_security.person"]
    if not store.exists(clean_path(c)):
        raise ValueError("no clean person register (public_security.person) yet: ingest it first")
    codes = store.read_parquet(clean_path(c)).column("region_code")
    counties = sorted({v[:6] for v in codes.to_pylist() if v})
    if len(counties) != 1:
        raise ConfigError(f"the register spans counties {counties}: give --policy for the one to build, "
                          "or run per county")
    return counties[0]


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


def build_snapshot(settings: Settings, store: ObjectStore, snapshot_date: dt.date, pol: policy.Policy,
                   quality: bool = True, publish_kafka: bool = True,
                   accept_unhealthy: list[str] | tuple[str, ...] = (),
                   step: Callable[[str], None] | None = None, full_gate: bool = False,
                   incremental: bool = True) -> RunResult:
    """From `clean/`: monitoring build, warnings, quality gate (GX, Data Docs), publish (+ Kafka).

    The gate runs on the feeds' health, the clean feeds and the outputs before anything is
    published; a failed critical expectation raises `QualityGateFailed` and leaves the snapshot
    unpublished (its Data Docs are still written, so the report can be read). An unhealthy feed
    fails the gate unless listed in `accept_unhealthy`: then its previous clean state is used,
    the manifest records the acceptance, and warnings of rules reading it list it in
    `stale_inputs`. `step(name)` is called as each step starts (a progress display). The gate runs
    a feed's suite only when the feed's clean file changed since its recorded result
    (`quality.gate.validate(reuse=True)`), unless `full_gate`.

    The monitoring build and the warnings are incremental when that is valid (`incremental`; see
    `safetynet.publish.incremental`): on top of the date's current version, re-evaluating only the
    households new facts touch, with results identical to a full build; `res.build_mode`,
    `res.build_reason` and `res.households_reevaluated` say how it ran. After a publish the
    build's inputs are recorded for the next incremental build (also after a full one).
    """
    step = step or (lambda name: None)
    res = RunResult(snapshot_date, pol.version)
    step("feed health")
    health = feed_health_for_gate(store, accept_unhealthy)
    res.unhealthy = {fid: h["problems"] for fid, h in health.items() if h["problems"]}
    res.accepted_unhealthy = sorted(fid for fid, h in health.items() if h["accepted"])
    if not quality and not all(h["ok"] for h in health.values()):
        bad = [f"{fid}: {'; '.join(h['problems'])}" for fid, h in health.items() if not h["ok"]]
        raise QualityGateFailed("unhealthy feeds (not accepted): " + " | ".join(bad), None)
    con = normalise.connect(memory_limit=settings.duckdb_memory_limit)
    try:
        step("monitoring build")
        res.stale_inputs = sorted(set(freshness.stale_feeds(store, freshness.snapshot_as_of(snapshot_date)))
                                  | set(res.accepted_unhealthy))
        b = inc.build(con, store, snapshot_date, pol, stale_inputs=freshness.stale_inputs_by_rule(res.stale_inputs),
                      incremental=incremental, step=step)
        res.build_mode, res.build_reason, res.households_reevaluated = b.mode, b.reason, b.households
        w = b.warnings
        outputs = {"monitoring/person": b.person, "monitoring/household": b.household, "warnings": w}
        if quality:
            from quality import datadocs, gate

            step("quality gate")
            res.quality = gate.validate(store, snapshot_date, policy=pol, health=health, reuse=not full_gate, outputs={
                "monitoring.person": b.person, "monitoring.household": b.household, "warnings": w})
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
        inputs = inputs_of(store)
        for fid in inputs:
            inputs[fid]["stale"] = fid in res.stale_inputs
            if fid in res.unhealthy:
                inputs[fid]["unhealthy"] = res.unhealthy[fid]
                inputs[fid]["accepted_unhealthy"] = fid in res.accepted_unhealthy
        step("publish")
        res.manifest = snapshot.publish(store, snapshot_date, outputs, ps, policy_version=pol.version,
                                        inputs=inputs, quality=gate_record)
        res.persons, res.households, res.warnings = b.person.num_rows, b.household.num_rows, w
        if publish_kafka and settings.kafka_bootstrap:
            step("warnings to Kafka")
            if res.manifest.get("status") == "published":  # first: one small message the review app waits for
                produce_snapshot_notice(settings, res.manifest)
            res.kafka_published = produce_warnings(settings, snapshot.pseudonymise_warnings(w, ps))
        # last: the inputs of this version for the next incremental build (seconds at a million persons after a
        # full build) — after the notice, so the review app is not kept waiting for it
        inc.remember(store, con, snapshot_date, pol, b, res.manifest)
    finally:
        con.close()
    return res


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
