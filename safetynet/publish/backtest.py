"""Rule backtest: what a new policy file would have changed in published snapshots.

For the policy change a county makes every year (`safetynet rules backtest`): for each snapshot
date D given,

1. the **inputs as published** are rebuilt — not today's `clean/` state. D's manifest records,
   per feed, the watermarks of the clean state it was built on (`clean._watermarks`): the drop
   files (by name, and since they are recorded, by version) and per Kafka partition the last
   offset. The `raw/` files they cover are cleaned again in memory with the clean step's own SQL
   (`clean.clean_table`; a Kafka batch straddling the watermark keeps only offsets at or below
   it). A feed missing from the manifest, or without watermarks, is empty, as it was then. Each
   feed's rebuilt row count is checked against the count the manifest records;
2. the monitoring build and the warning rules run on those tables with the **new** policy
   (optionally only some rules);
3. the result is compared with the warnings published for D, per rule, by `alert_key` (the same
   concern): *kept* (in both), *added* (only in the backtest), *removed* (only published).

Nothing is written to the store: no `clean/`, no manifest, no catalog entry. The differences go
to a CSV file per date (UTF-8 with BOM, formulas neutralised, ID numbers masked).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from quality import evaluation
from quality.policy import Policy
from quality.rules import RULES, Rule, by_id
from safetynet.build import monitoring
from safetynet.core import paths
from safetynet.core.store import ObjectStore
from safetynet.intake import clean, health
from safetynet.intake.regions import region_names
from safetynet.publish import snapshot
from safetynet.publish.export import csv_safe
from schemas import normalise
from schemas.contract import Contract
from schemas.errors import ConfigError
from schemas.idno import mask, mask_text
from schemas.registry import contracts

log = logging.getLogger(__name__)

#: The CSV's columns, in order. Rows are the differences only: `change` is added or removed
#: (kept warnings are counted in the printed table, not listed).
CSV_COLUMNS = ("snapshot_date", "change", "rule_id", "rule_title_zh", "household_no", "street_code", "region_code",
               "subject", "summary_zh")


class UnknownRule(ConfigError):
    """A `--rule` id that no warning rule has (a `ConfigError`, so a `ValueError`: exit 2)."""


def select_rules(ids: Sequence[str] | None) -> tuple[Rule, ...]:
    """The rules to backtest, in their catalogue order (all when `ids` is empty)."""
    if not ids:
        return RULES
    known = by_id()
    unknown = sorted(set(ids) - set(known))
    if unknown:
        raise UnknownRule(f"unknown rule id(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(r for r in RULES if r.id in set(ids))


# ---- the inputs as published ----------------------------------------------------------------------
@dataclass
class FeedInput:
    """One feed's rebuilt input, against what the snapshot's manifest says it was."""

    feed_id: str
    published_rows: int | None  # the clean row count the manifest records (None: not recorded)
    rows: int = 0
    raw_files: int = 0
    note: str = ""

    @property
    def reproduced(self) -> bool:
        return self.published_rows is None or self.published_rows == self.rows


def published_raw(store: ObjectStore, c: Contract, watermarks: dict | None) -> tuple[ds.Dataset | None, int]:
    """The feed's `raw/` data a clean state with these watermarks covered, and how many files:
    drop files of a recorded name (and, where the watermarks list versions, of a recorded
    version), Kafka batches starting at or below their partition's watermark (rows above it
    filtered out). A file held as unhealthy now and not named by version is left out: a held
    delivery was never in a published clean state. None: nothing (no watermarks, no files)."""
    if not watermarks:
        return None, 0
    names = set(watermarks.get("files") or [])
    versions = {n: set(v) for n, v in (watermarks.get("file_versions") or {}).items()}
    offsets = {str(p): int(o) for p, o in (watermarks.get("kafka") or {}).items()}
    held = health.held(store, c)
    chosen: list[str] = []
    straddle = False
    for e in store.list(paths.raw(c.prefix), ".parquet"):
        f = clean.raw_file(e.path)
        if f is None:
            continue
        if f.kind == "file":
            if f.name in versions:  # the exact versions in force
                ok = f.version in versions[f.name]
            else:  # a manifest from before versions were recorded: by name
                ok = f.name in names and e.path not in held
        else:
            wm = offsets.get(f.partition)
            if wm is None:  # a partition not in the watermarks: none of its batches
                ok = False
            else:
                ok = f.first <= wm and e.path not in held
                straddle |= ok and f.last > wm
        if ok:
            chosen.append(e.path)
    if not chosen:
        return None, 0
    data = ds.dataset([store.full(p) for p in chosen], schema=c.raw_schema(), format="parquet", filesystem=store.fs)
    if straddle:  # a batch ingested past the watermark: only its rows up to it
        kafka = ds.field("_kafka_offset")
        cond = kafka.is_null()
        for p, wm in offsets.items():
            cond = cond | ((ds.field("_kafka_partition") == int(p)) & (kafka <= wm))
        data = data.filter(cond)
    return data, len(chosen)


def rebuild_inputs(store: ObjectStore, manifest: dict, con: duckdb.DuckDBPyConnection
                   ) -> tuple[dict[str, pa.Table], dict[str, FeedInput]]:
    """Every registered feed's clean table as the snapshot of `manifest` was built on (in memory)."""
    tables: dict[str, pa.Table] = {}
    checks: dict[str, FeedInput] = {}
    inputs = manifest.get("inputs") or {}
    for fid, c in contracts().items():
        i = inputs.get(fid)
        rows = i.get("rows") if i else None
        check = FeedInput(fid, 0 if i is None else rows)
        if i is None:
            check.note = "not in the manifest (a feed registered later): empty"
        elif i.get("contract_version") not in (None, c.version):
            check.note = f"published under contract v{i['contract_version']}, cleaned now with v{c.version}"
        raw, check.raw_files = published_raw(store, c, i.get("watermarks") if i else None)
        tables[fid], counts = clean.clean_table(con, c, raw)
        check.rows = counts.rows
        checks[fid] = check
    return tables, checks


# ---- the comparison ---------------------------------------------------------------------------------
@dataclass
class RuleDiff:
    rule_id: str
    title_zh: str
    version: int | None  # the rule's version now (None: no longer a rule)
    published_versions: tuple[int, ...]
    published: int = 0
    backtest: int = 0
    kept: int = 0
    added: int = 0
    removed: int = 0

    @property
    def version_label(self) -> str:
        now = f"v{self.version}" if self.version is not None else "retired"
        old = [f"v{v}" for v in self.published_versions]
        return now if not old or old == [now] else f"{'/'.join(old)}→{now}"


@dataclass
class Backtest:
    snapshot_date: dt.date
    old_policy: str
    new_policy: str
    rules: list[RuleDiff]
    changes: list[dict]  # one per added or removed warning (CSV_COLUMNS, the subject masked)
    inputs: dict[str, FeedInput] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def not_reproduced(self) -> list[FeedInput]:
        return [i for i in self.inputs.values() if not i.reproduced]

    def by_street(self) -> list[tuple[str, int, int, Counter]]:
        """(street code, added, removed, (rule id, change) → warnings) for every street with a change."""
        out: dict[str, list] = {}
        for r in self.changes:
            s = out.setdefault(r["street_code"] or "", [0, 0, Counter()])
            s[0 if r["change"] == "added" else 1] += 1
            s[2][(r["rule_id"], r["change"])] += 1
        return [(k, v[0], v[1], v[2]) for k, v in sorted(out.items())]


def _change_row(day: dt.date, change: str, r: dict, title: str) -> dict:
    return {"snapshot_date": day.isoformat(), "change": change, "rule_id": r["rule_id"], "rule_title_zh": title,
            "household_no": r["household_no"], "street_code": r["street_code"] or "",
            "region_code": r["region_code"] or "", "subject": mask(r["subject_id_no"]),
            "summary_zh": mask_text(r["summary_zh"] or "")}


def _extras(mine: list[dict], theirs: list[dict], n: int) -> list[dict]:
    """n of `mine` (warnings of one alert key) that the other side lacks: those whose warning id
    it does not have first, then in warning-id order (only when a rule fires twice on one key)."""
    other = {r["warning_id"] for r in theirs}
    return sorted(mine, key=lambda r: (r["warning_id"] in other, r["warning_id"]))[:n]


def compare(day: dt.date, published: pa.Table, backtest: pa.Table, rules: Sequence[Rule],
            include_retired: bool = False) -> tuple[list[RuleDiff], list[dict]]:
    """Per rule: counts, and kept / added / removed by `alert_key` (as multisets: a rule firing
    twice on one concern counts twice). `include_retired`: also rules only the published
    snapshot has (no longer in the catalogue), all of whose warnings are then removed."""
    cols = ["rule_id", "rule_version", "rule_title_zh", "alert_key", "warning_id", "household_no", "street_code",
            "region_code", "subject_id_no", "summary_zh"]
    pub_rows = published.select(cols).to_pylist()
    new_rows = backtest.select(cols).to_pylist()
    ids = [r.id for r in rules]
    if include_retired:
        ids += sorted({r["rule_id"] for r in pub_rows} - set(ids))
    current = by_id()
    diffs, changes = [], []
    for rid in ids:
        pub = [r for r in pub_rows if r["rule_id"] == rid]
        new = [r for r in new_rows if r["rule_id"] == rid]
        rule = current.get(rid)
        title = rule.title_zh if rule else (pub[0]["rule_title_zh"] if pub else rid)
        d = RuleDiff(rid, title, rule.version if rule else None,
                     tuple(sorted({r["rule_version"] for r in pub})), len(pub), len(new))
        pk, nk = Counter(r["alert_key"] for r in pub), Counter(r["alert_key"] for r in new)
        for key in sorted(pk.keys() | nk.keys()):
            p, n = pk[key], nk[key]
            d.kept += min(p, n)
            if n > p:
                mine = [r for r in new if r["alert_key"] == key]
                changes += [_change_row(day, "added", r, title)
                            for r in _extras(mine, [r for r in pub if r["alert_key"] == key], n - p)]
            elif p > n:
                mine = [r for r in pub if r["alert_key"] == key]
                changes += [_change_row(day, "removed", r, title)
                            for r in _extras(mine, [r for r in new if r["alert_key"] == key], p - n)]
        d.added, d.removed = d.backtest - d.kept, d.published - d.kept
        diffs.append(d)
    order = {rid: i for i, rid in enumerate(ids)}
    changes.sort(key=lambda r: (order[r["rule_id"]], r["change"], r["street_code"], r["household_no"], r["subject"]))
    return diffs, changes


# ---- the run ----------------------------------------------------------------------------------------
def backtest(store: ObjectStore, day: dt.date, pol: Policy, rules: Sequence[Rule] = RULES, *,
             include_retired: bool | None = None, memory_limit: str | None = None,
             step: Callable[[str], None] | None = None) -> Backtest:
    """Backtest `pol` (and `rules`) on the published snapshot of `day`; writes nothing.

    Raises `snapshot.SnapshotNotFound` (listing the published dates) for a date without one.
    """
    step = step or (lambda _s: None)
    m = snapshot.manifest(store, day)
    published = snapshot.read(store, "warnings", day, identified=True)
    con = normalise.connect(memory_limit=memory_limit)
    try:
        step("inputs")
        tables, inputs = rebuild_inputs(store, m, con)
        counties = sorted({v[:6] for v in tables["public_security.person"]["region_code"].to_pylist() if v})
        monitoring.register_sources(con, tables)
        step("build")
        b = monitoring.build(con, day, pol)
        step("rules")
        w = evaluation.evaluate(b, pol, rules=tuple(rules))
    finally:
        con.close()
    if include_retired is None:
        include_retired = tuple(rules) == RULES
    diffs, changes = compare(day, published, w, rules, include_retired)
    res = Backtest(day, m.get("policy_version") or "?", pol.version, diffs, changes, inputs)
    if counties and pol.policy.region_code not in counties:
        res.notes.append(f"the policy is for region {pol.policy.region_code}, the register covers "
                         f"{', '.join(counties)}")
    changed = [f"{d.rule_id} {d.version_label}" for d in diffs
               if d.published_versions and d.published_versions != (d.version,)]
    if changed:
        res.notes.append(f"rules changed since publishing ({', '.join(changed)}): their differences come from "
                         "the rule's own change too, not only from the policy")
    for i in inputs.values():
        if not i.reproduced:
            res.notes.append(f"{i.feed_id}: rebuilt {i.rows:,} clean rows, the manifest records "
                             f"{i.published_rows:,} — its raw files changed since publishing (rewritten or "
                             "re-delivered under the same name); differences may come from the data too")
        elif i.note:
            res.notes.append(f"{i.feed_id}: {i.note}")
    log.info("backtest %s: policy %s → %s: %d added, %d removed", day, res.old_policy, res.new_policy,
             sum(d.added for d in diffs), sum(d.removed for d in diffs),
             extra={"event": "backtest", "snapshot_date": day.isoformat()})
    return res


def csv_bytes(res: Backtest) -> bytes:
    """The differences as CSV: UTF-8 with BOM (Excel opens the Chinese), CRLF, formulas neutralised."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for r in res.changes:
        w.writerow(csv_safe([r[c] for c in CSV_COLUMNS]))
    return buf.getvalue().encode("utf-8-sig")


def write_csv(res: Backtest, out_dir: Path) -> Path:
    """`<out_dir>/backtest-<D>.csv` (created or replaced); returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"backtest-{res.snapshot_date.isoformat()}.csv"
    path.write_bytes(csv_bytes(res))
    return path


# ---- printing ---------------------------------------------------------------------------------------
def render(res: Backtest, con) -> None:
    """The header, the per-rule table and the changes by street, on a rich console."""
    from rich.markup import escape
    from rich.table import Table


    con.print(f"[bold]回测 Backtest {res.snapshot_date}[/bold]: published policy [bold]{escape(res.old_policy)}"
              f"[/bold] → new policy [bold]{escape(res.new_policy)}[/bold] (on the snapshot's published inputs)")
    for n in res.notes:
        con.print(f"  [yellow]note[/yellow]: {escape(n)}")
    t = Table(title=f"预警规则回测 Rule backtest {res.snapshot_date}")
    for col in ("rule", "规则", "ver", "published", "backtest", "kept", "added", "removed"):
        t.add_column(col, justify="left" if col in ("rule", "规则", "ver") else "right")
    tot = [0, 0, 0, 0, 0]
    for d in res.rules:
        vals = (d.published, d.backtest, d.kept, d.added, d.removed)
        tot = [a + b for a, b in zip(tot, vals, strict=True)]
        t.add_row(d.rule_id, d.title_zh, escape(d.version_label), f"{d.published:,}", f"{d.backtest:,}",
                  f"{d.kept:,}", f"[green]+{d.added:,}[/green]" if d.added else "0",
                  f"[red]-{d.removed:,}[/red]" if d.removed else "0")
    t.add_row("[bold]total[/bold]", "", "", *(f"{v:,}" for v in tot))
    con.print(t)
    streets = res.by_street()
    if not streets:
        con.print("no warning added or removed")
        return
    names = region_names()
    t2 = Table(title=f"按街道 Added / removed by street {res.snapshot_date}")
    for col in ("street", "街道", "added", "removed", "rules"):
        t2.add_column(col, justify="right" if col in ("added", "removed") else "left")
    order = {d.rule_id: i for i, d in enumerate(res.rules)}
    for code, added, removed, by_rule in streets:
        per_rule = []
        for rid in sorted({r for r, _ in by_rule}, key=order.__getitem__):  # every changed rule is one of res.rules
            a, r = by_rule[(rid, "added")], by_rule[(rid, "removed")]
            per_rule.append(f"{rid} " + " ".join(x for x in (f"+{a}" if a else "", f"-{r}" if r else "") if x))
        t2.add_row(code or "-", names.get(code, ""), f"{added:,}", f"{removed:,}", "; ".join(per_rule))
    con.print(t2)
