"""Evaluate the warning rules (`quality/rules.py`) over a monitoring build.

Every warning row carries its rule (id, version, severity, Chinese title), the household and
region, the person concerned, a one-line Chinese summary, the thresholds used, the facts that
fired it with the source feed of each, the policy version and the snapshot date.

Two keys make warnings stable across re-runs, replays and snapshots:

* `alert_key` = hash(rule id, household, person): the same concern in every snapshot — what the
  review app tracks a decision against;
* `warning_id` = hash(alert key, rule version, the facts' feed/key/field/value): the same facts
  give the same id; a material change of the facts gives a new one (the app re-opens then).

Household risk score: the sum over its warnings of severity weight × magnitude (capped at 3),
ranked; the top contributing signals are kept with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Mapping

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from quality.rules import RULES, SEVERITY_WEIGHT, Rule
from safetynet.build.monitoring import Build, add_months
from schemas.policy import Policy

log = logging.getLogger(__name__)

FACT = pa.struct([("feed", pa.string()), ("record_key", pa.string()), ("id_no", pa.string()),
                  ("field", pa.string()), ("value", pa.string()), ("date", pa.date32())])

SCHEMA = pa.schema([
    ("snapshot_date", pa.date32()), ("warning_id", pa.string()), ("alert_key", pa.string()),
    ("rule_id", pa.string()), ("rule_version", pa.int32()), ("rule_title_zh", pa.string()),
    ("severity", pa.string()), ("kind", pa.string()), ("household_no", pa.string()),
    ("region_code", pa.string()), ("street_code", pa.string()), ("subject_id_no", pa.string()),
    ("summary_zh", pa.string()), ("thresholds", pa.string()), ("facts", pa.list_(FACT)),
    ("magnitude", pa.float64()), ("score", pa.float64()), ("household_score", pa.float64()),
    ("household_rank", pa.int32()), ("top_signals", pa.list_(pa.string())), ("policy_version", pa.string()),
    ("stale_inputs", pa.list_(pa.string())),
])


def rule_parameters(build: Build, pol: Policy) -> dict:
    """The monitoring parameters plus every policy threshold and the derived dates rules bind."""
    t, snap = pol.thresholds, build.snapshot_date
    months = build.params["months12"]
    gap = t.unemployment_contribution_gap_months
    return {
        **build.params, **pol.params(),
        "gap_month": months[len(months) - 1 - gap] if gap < len(months) else "0000-00",
        "disaster_since": add_months(snap, -t.disaster_lookback_months),
        "temp_since": add_months(snap, -t.repeat_temporary_aid_window_months),
        "expiry": snap + dt.timedelta(days=t.phase_out_expiry_days),
        "death_grace_until": snap - dt.timedelta(days=t.death_grace_days),
    }


def _hash(*parts: object) -> str:
    return hashlib.sha256("\x1f".join("" if p is None else str(p) for p in parts).encode()).hexdigest()[:24]


def evaluate_rule(con: duckdb.DuckDBPyConnection, rule: Rule, params: dict) -> pa.Table:
    used = {k: v for k, v in params.items() if f"${k}" in rule.sql}
    try:
        return con.sql(rule.sql, params=used).to_arrow_table()
    except duckdb.Error as e:
        raise RuntimeError(f"warning rule {rule.id} v{rule.version} failed: {e}") from e


def evaluate(build: Build, pol: Policy, rules: tuple[Rule, ...] = RULES,
             stale_inputs: Mapping[str, list[str]] | None = None) -> pa.Table:
    """All warnings of the snapshot, ranked by household risk score (stable order).

    `stale_inputs` (rule id → feeds it reads that were late or missing) is recorded on every
    warning of the rule; it is not part of the ids (the facts are what they are).
    """
    return rank(pa.Table.from_pylist(warning_rows(build, pol, rules, stale_inputs), schema=SCHEMA))


def warning_rows(build: Build, pol: Policy, rules: tuple[Rule, ...] = RULES,
                 stale_inputs: Mapping[str, list[str]] | None = None) -> list[dict]:
    """Every rule's warnings as rows of `SCHEMA`, each with its household's score and top signals
    (functions of the household's own warnings), but not yet ranked: `rank` does that over all
    households (the incremental build merges the rows of re-evaluated households first)."""
    con = build.con
    params = rule_parameters(build, pol)
    rows: list[dict] = []
    for rule in rules:
        t = evaluate_rule(con, rule, params)
        hh = pa.table({"household_no": t["household_no"]})
        con.register("__fired", hh)
        try:  # regions of just the fired households (not a dict of every household)
            regions = dict(con.sql("SELECT f.household_no, h.region_code FROM __fired f "
                                   "JOIN monitoring_household h USING (household_no)").fetchall())
        finally:
            con.unregister("__fired")
        thresholds = json.dumps({k: params[k] for k in rule.params}, ensure_ascii=False, sort_keys=True, default=str)
        for r in t.to_pylist():
            facts = sorted(r["facts"] or [], key=lambda f: (f["feed"], f["record_key"] or "", f["field"],
                                                            f["id_no"] or "", f["value"] or ""))
            alert = _hash(rule.id, r["household_no"], r["subject_id_no"])
            wid = _hash(alert, rule.version, *((f["feed"], f["record_key"], f["id_no"], f["field"], f["value"])
                                              for f in facts))
            mag = float(r["magnitude"] or 1.0)
            region = regions.get(r["household_no"]) or ""
            rows.append({
                "snapshot_date": build.snapshot_date, "warning_id": wid, "alert_key": alert, "rule_id": rule.id,
                "rule_version": rule.version, "rule_title_zh": rule.title_zh, "severity": rule.severity,
                "kind": rule.kind, "household_no": r["household_no"], "region_code": region,
                "street_code": region[:9], "subject_id_no": r["subject_id_no"], "summary_zh": r["summary_zh"],
                "thresholds": thresholds, "facts": facts, "magnitude": mag,
                "score": round(SEVERITY_WEIGHT[rule.severity] * min(max(mag, 1.0), 3.0), 2),
                "policy_version": pol.version,
                "stale_inputs": stale_for(rule.id, stale_inputs),
            })
        log.info("rule %s v%d: %d warnings", rule.id, rule.version, t.num_rows,
                 extra={"event": "rule", "rule": rule.id, "warnings": t.num_rows})
    # household risk score and its top signals (the household's own warnings only)
    by_hh: dict[str, list[dict]] = {}
    for w in rows:
        by_hh.setdefault(w["household_no"], []).append(w)
    for ws in by_hh.values():
        score = round(sum(w["score"] for w in ws), 2)
        top = [f"{w['rule_title_zh']}（{w['score']:g}）" for w in sorted(ws, key=lambda w: (-w["score"], w["rule_id"]))][:3]
        for w in ws:
            w.update(household_score=score, top_signals=top)
    return rows


def stale_for(rule_id: str, stale_inputs: Mapping[str, list[str]] | None) -> list[str]:
    """The `stale_inputs` a warning of the rule records."""
    return sorted((stale_inputs or {}).get(rule_id, []))


#: the order of the warning list: household rank, then the warning's own score, rule and id
ORDER = [("household_rank", "ascending"), ("score", "descending"), ("rule_id", "ascending"),
         ("warning_id", "ascending")]


def rank(warnings: pa.Table) -> pa.Table:
    """Rank the households by risk score (highest first, ties by household number) into
    `household_rank`, and sort the warnings in list order (`ORDER`). Every warning must carry its
    household's `household_score`; the ranking is over all households of the table."""
    households = warnings["household_no"].to_pylist()
    scores = dict(zip(households, warnings["household_score"].to_pylist(), strict=True))
    ranks = {h: i + 1 for i, h in enumerate(sorted(scores, key=lambda h: (-scores[h], h)))}
    i = warnings.schema.get_field_index("household_rank")
    ranked = warnings.set_column(i, warnings.schema.field(i), pa.array([ranks[h] for h in households], pa.int32()))
    return ranked.take(pc.sort_indices(ranked, sort_keys=ORDER)).combine_chunks()  # one chunk: the same bytes
