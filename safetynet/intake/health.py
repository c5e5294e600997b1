"""Feed health: is a feed's delivery fit to replace what the hub knows?

Per ingest run and feed: the quarantine rate, the top reasons, and **drift** — a field where one
unknown value or a missing column causes many rejects, reported once ("housing.property.status:
value 正常 in 930 of 932 records is not in the contract — add a mapping") instead of as 930 row
errors. A feed is **unhealthy** when its quarantine rate is over its threshold
(`SAFETYNET_MAX_QUARANTINE_RATE`, default 5 %, or `[health] max_quarantine_rate` in the feed's
mapping file) with at least `MIN_QUARANTINED` records quarantined, or when a snapshot feed
arrives empty.

An unhealthy delivery is *held*: its `raw/` files are listed in `_catalog/held/<dept>/<feed>.json`
and left out of `clean/`, so the feed's previous clean state stays in force; its drops are
re-offered when the feed's mapping changes. The feed's latest health is kept in
`_catalog/health/<dept>/<feed>.json`; the quality gate fails critically on an unhealthy feed
unless the operator accepts it for the run (`--accept-unhealthy FEED`), which the snapshot
manifest records and every warning of a rule reading the feed shows in `stale_inputs`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from connectors.mapping import names_code_value
from safetynet.core import paths
from safetynet.core.store import ObjectStore
from schemas.contract import Contract
from schemas.normalise import QUARANTINE_RULES

#: A drift line needs at least DRIFT_MIN_RECORDS records, and either this share of the feed's
#: input or DRIFT_MANY records: one cause behind many rejects, not scattered dirt.
DRIFT_MIN_RECORDS = 3
DRIFT_MIN_SHARE = 0.05
DRIFT_MANY = 100
#: A rate verdict needs at least this many quarantined records: one bad event among a trickle of
#: three is not a broken feed (it is quarantined and reported all the same).
MIN_QUARANTINED = 3
_HINT = {
    "enum_value": "is not in the contract — add a mapping ([values.{f}])",
    "bool_format": "is not a yes/no value — add a mapping ([values.{f}])",
    "required_missing": "is missing — if the export names the column differently, add a [headers] mapping",
}


@dataclass
class FeedHealth:
    feed_id: str
    run_id: str
    input: int
    quarantined: int
    threshold: float
    top_reasons: list[tuple[str, int]]
    drift: list[str]
    empty_snapshots: list[str] = field(default_factory=list)
    held_files: list[str] = field(default_factory=list)
    checked_at: str = ""
    nothing_accepted_files: int = 0  # file drops delivered in the run when not one record was accepted

    @property
    def rate(self) -> float:
        return self.quarantined / self.input if self.input else 0.0

    @property
    def problems(self) -> list[str]:
        """Why the feed is unhealthy (empty: healthy)."""
        out = []
        if self.input and self.rate > self.threshold and self.quarantined >= MIN_QUARANTINED:
            out.append(f"{self.feed_id}: {self.quarantined:,} of {self.input:,} records quarantined "
                       f"({self.rate:.1%} > {self.threshold:.0%})")
        elif self.nothing_accepted_files and self.quarantined == self.input:  # below MIN_QUARANTINED, but whole files
            out.append(f"{self.feed_id}: every record of the delivery was quarantined ({self.quarantined:,} of "
                       f"{self.input:,}, {self.nothing_accepted_files} file(s)): nothing usable arrived")
        out += [f"{self.feed_id}: snapshot delivery {n} is empty (it would replace the register with nothing)"
                for n in self.empty_snapshots]
        return out

    @property
    def unhealthy(self) -> bool:
        return bool(self.problems)

    def as_dict(self) -> dict:
        return {**asdict(self), "rate": round(self.rate, 6), "unhealthy": self.unhealthy, "problems": self.problems,
                "top_reasons": [list(x) for x in self.top_reasons]}


def drift_keys(c: Contract, rejected: pa.Table) -> Counter:
    """(field, rule, value) → rejected records; the value only where it names a department code
    (`connectors.mapping.names_code_value`), else ""."""
    out: Counter = Counter()
    fields, rules = rejected["_field"].to_pylist(), rejected["_rule"].to_pylist()
    values = {f.name: rejected[f.name].to_pylist() for f in c.fields
              if f.name in rejected.column_names and names_code_value(f, "enum_value")}
    for i, (f, r) in enumerate(zip(fields, rules, strict=True)):
        v = values[f][i] if f in values and names_code_value(c.field(f), r) else None
        out[(f or "", r, "" if v is None else str(v).strip()[:40])] += 1
    return out


def drift_lines(c: Contract, drift: Counter, total: int) -> list[str]:
    """The drift worth reporting, largest first: one line per (field, rule[, value])."""
    floor = max(DRIFT_MIN_RECORDS, min(DRIFT_MIN_SHARE * total, DRIFT_MANY))
    lines = []
    for (f, rule, value), n in sorted(drift.items(), key=lambda kv: (-kv[1], kv[0])):
        if n < floor:
            continue
        if not f:  # a record-level rule, or a whole file (value = its explanation)
            lines.append(f"{c.feed_id}: {value or rule} — {n:,} of {total:,} records")
            continue
        if f not in c.names:  # an envelope field (`envelope_invalid:<field>`)
            lines.append(f"{c.feed_id}: envelope field {f}: {rule} in {n:,} of {total:,} records "
                         f"— {QUARANTINE_RULES.get(rule, rule)}")
            continue
        label = c.field(f).label_zh
        what = f"value {value} in" if value else f"{rule} in"
        hint = _HINT.get(rule, "").format(f=f) or f"— {QUARANTINE_RULES.get(rule, rule)}"
        lines.append(f"{c.feed_id}.{f} ({label}): {what} {n:,} of {total:,} records {hint}")
    return lines


def evaluate(c: Contract, run_id: str, input_: int, quarantined: Counter, drift: Counter, threshold: float,
             empty_snapshots: list[str], files: int = 0) -> FeedHealth:
    """The delivery's health. `files`: drop files delivered in the run — a run whose files and
    events were all rejected is unhealthy however few records it had (a file nobody can read is
    a broken delivery, not one bad record in a trickle)."""
    n_q = sum(quarantined.values())
    return FeedHealth(c.feed_id, run_id, input_, n_q, threshold,
                      sorted(quarantined.items(), key=lambda kv: (-kv[1], kv[0]))[:3],
                      drift_lines(c, drift, input_), list(empty_snapshots),
                      checked_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                      nothing_accepted_files=files if input_ and n_q == input_ else 0)


# ---- the catalog ----------------------------------------------------------------------------------
def _health_path(c: Contract) -> str:
    return paths.health(c.prefix)


def _held_path(c: Contract) -> str:
    return paths.held(c.prefix)


def write(store: ObjectStore, c: Contract, h: FeedHealth) -> None:
    store.write_bytes(_health_path(c), json.dumps(h.as_dict(), ensure_ascii=False, indent=1).encode())


def latest(store: ObjectStore, contracts: list[Contract]) -> dict[str, dict]:
    """Per feed, its latest recorded health (feeds never checked are absent)."""
    out = {}
    for c in contracts:
        try:
            out[c.feed_id] = json.loads(store.read_bytes(_health_path(c)))
        except FileNotFoundError:
            pass
    return out


def unhealthy(store: ObjectStore, contracts: list[Contract]) -> dict[str, list[str]]:
    """Feed id → its problems, for every feed whose latest health is unhealthy."""
    return {fid: h["problems"] for fid, h in latest(store, contracts).items() if h.get("unhealthy")}


def held(store: ObjectStore, c: Contract) -> dict[str, dict]:
    """Store path of each held `raw/` file → why and by which run."""
    try:
        return json.loads(store.read_bytes(_held_path(c)))
    except FileNotFoundError:
        return {}


def release(store: ObjectStore, c: Contract, by: str = "operator") -> list[str]:
    """The operator accepts the feed's held deliveries as they are: their `raw/` files join
    `clean/` at the next clean, and the feed's recorded health says who released it when.
    Returns the released paths (the caller rebuilds the clean state)."""
    paths = sorted(held(store, c))
    set_held(store, c, {}, paths)
    try:
        h = json.loads(store.read_bytes(_health_path(c)))
    except FileNotFoundError:
        h = {"feed_id": c.feed_id, "problems": []}
    h.update(unhealthy=False, released={"at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "by": by,
                                        "files": paths, "problems": h.get("problems", [])}, problems=[])
    store.write_bytes(_health_path(c), json.dumps(h, ensure_ascii=False, indent=1).encode())
    return paths


def set_held(store: ObjectStore, c: Contract, hold: dict[str, dict], release: list[str]) -> None:
    """Add `hold` to the feed's held files and release the paths in `release`."""
    cur = held(store, c)
    for p in release:
        cur.pop(p, None)
    cur.update(hold)
    if cur or store.exists(_held_path(c)):
        store.write_bytes(_held_path(c), json.dumps(dict(sorted(cur.items())), ensure_ascii=False, indent=1).encode())

