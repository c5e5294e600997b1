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
import numpy as np
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


#: characters whose Python `repr` inside quotes is the character itself (printable, neither a quote nor
#: a backslash): ASCII, CJK ideographs and the punctuation the feeds use. A warning whose facts are
#: made only of them gets its id in SQL; any other (rare) is hashed in Python by `_hash`, as before.
_PLAIN = (r"[\x{20}-\x{26}\x{28}-\x{5b}\x{5d}-\x{7e}\x{b7}\x{3001}\x{3002}\x{4e00}-\x{9fff}"
          r"\x{ff08}\x{ff09}\x{ff0c}\x{ff1a}\x{ff1b}]*")
_KEY = ("feed", "record_key", "id_no", "field", "value")  # what a warning id hashes of each fact


def _repr_sql(x: str) -> str:
    """Python's `repr` of a string-or-None expression, for strings of `_PLAIN` characters."""
    return f"CASE WHEN {x} IS NULL THEN 'None' ELSE chr(39) || {x} || chr(39) END"


#: every rule's raw warnings, in rule order, before ordering facts and hashing ids (`_WARNINGS_SQL`)
_RAW = ("CREATE OR REPLACE TEMP TABLE __warnings (rule_index INTEGER, rule_id VARCHAR, rule_version VARCHAR, "
        "household_no VARCHAR, subject_id_no VARCHAR, facts STRUCT(feed VARCHAR, record_key VARCHAR, id_no VARCHAR, "
        "field VARCHAR, value VARCHAR, date DATE)[], summary_zh VARCHAR, magnitude DOUBLE)")


def _warnings_sql() -> str:
    """Over `__warnings`, in insertion order (a scan and projections: DuckDB keeps the order): each
    warning's facts in canonical order (feed, record key, field, person, value — as the ids hash
    them), `alert_key` and `warning_id` (the SQL form of `_hash` over `str` of each fact's `_KEY`
    tuple) and `plain` (false where a fact holds a character whose `repr` is not itself: that id is
    computed in Python). The households' regions are looked up apart (`_regions`): a join here
    would need a sort to restore the order, and the memory of both."""
    order = ("list_transform(list_sort(list_transform(coalesce(r.facts, []), lambda f_: {'k': [f_.feed, "
             "coalesce(f_.record_key, ''), f_.field, coalesce(f_.id_no, ''), coalesce(f_.value, '')], 'f': f_})), "
             "lambda s_: s_.f)")
    tup = " || ', ' || ".join(_repr_sql(f"f_.{k}") for k in _KEY)
    text = " || ".join(f"coalesce(f_.{k}, '')" for k in _KEY)
    return f"""
        WITH s AS (SELECT r.rule_index, r.rule_version, r.household_no, r.subject_id_no,
                          {order} AS facts, r.summary_zh, r.magnitude,
                          substr(sha256(concat_ws(chr(31), r.rule_id, coalesce(r.household_no, ''),
                                                  coalesce(r.subject_id_no, ''))), 1, 24) AS alert_key
                   FROM __warnings r)
        SELECT *, substr(sha256(alert_key || chr(31) || rule_version
                                || CASE WHEN len(facts) > 0 THEN chr(31) || array_to_string(
                                        list_transform(facts, lambda f_: '(' || {tup} || ')'), chr(31)) ELSE '' END),
                         1, 24) AS warning_id,
               coalesce(list_bool_and(list_transform(facts, lambda f_: regexp_full_match({text}, $plain))), true)
                   AS plain
        FROM s"""


def _regions(con: duckdb.DuckDBPyConnection, households: pa.ChunkedArray) -> pa.Array:
    """The region code of each household of `households` ('' where the build has none)."""
    known = con.sql("SELECT household_no, region_code FROM monitoring_household "
                    "WHERE household_no IN (SELECT household_no FROM __warnings)").to_arrow_table()
    at = pc.index_in(households, value_set=known["household_no"].combine_chunks())
    return pc.fill_null(known["region_code"].combine_chunks().take(at), "").combine_chunks()


def raw_warnings(con: duckdb.DuckDBPyConnection, rules: tuple[Rule, ...], params: dict) -> None:
    """Run every rule into `__warnings` (rule by rule: an error names its rule)."""
    con.execute(_RAW)
    for i, rule in enumerate(rules):
        used = {k: v for k, v in params.items() if f"${k}" in rule.sql}
        try:
            inserted = con.execute(f"""INSERT INTO __warnings SELECT {i}, '{rule.id}', '{rule.version}', household_no,
                                       subject_id_no, facts, summary_zh, magnitude FROM ({rule.sql})""", used).fetchone()
        except duckdb.Error as e:
            raise RuntimeError(f"warning rule {rule.id} v{rule.version} failed: {e}") from e
        n = inserted[0] if inserted else 0
        log.info("rule %s v%d: %d warnings", rule.id, rule.version, n,
                 extra={"event": "rule", "rule": rule.id, "warnings": n})


def evaluate_rules(con: duckdb.DuckDBPyConnection, rules: tuple[Rule, ...], params: dict) -> pa.Table:
    """Every rule's warnings as `_warnings_sql` returns them (Arrow), with `warning_id` final."""
    raw_warnings(con, rules, params)
    try:
        t = con.sql(_warnings_sql(), params={"plain": _PLAIN}).to_arrow_table()
        t = t.append_column("region_code", _regions(con, t["household_no"]))
    finally:
        con.execute("DROP TABLE IF EXISTS __warnings")
    i = t.schema.get_field_index("warning_id")
    return t.set_column(i, "warning_id", _python_ids(t))


def evaluate(build: Build, pol: Policy, rules: tuple[Rule, ...] = RULES,
             stale_inputs: Mapping[str, list[str]] | None = None) -> pa.Table:
    """All warnings of the snapshot, ranked by household risk score (stable order).

    `stale_inputs` (rule id → feeds it reads that were late or missing) is recorded on every
    warning of the rule; it is not part of the ids (the facts are what they are).
    """
    return rank(warning_table(build, pol, rules, stale_inputs))


def _python_ids(t: pa.Table) -> pa.Array:
    """`warning_id` with the rows whose facts are not `plain` hashed in Python (`_hash`)."""
    ids = t["warning_id"].combine_chunks()
    odd = pc.indices_nonzero(pc.invert(t["plain"].combine_chunks())).to_pylist()
    if not odd:
        return ids
    out = ids.to_pylist()
    for i in odd:
        facts = t["facts"][i].as_py() or []
        out[i] = _hash(t["alert_key"][i].as_py(), t["rule_version"][i].as_py(),
                       *(tuple(f[k] for k in _KEY) for f in facts))
    return pa.array(out, pa.string())


def warning_table(build: Build, pol: Policy, rules: tuple[Rule, ...] = RULES,
                  stale_inputs: Mapping[str, list[str]] | None = None) -> pa.Table:
    """Every rule's warnings as a table of `SCHEMA`, each with its household's score and top signals
    (functions of the household's own warnings), but not yet ranked: `rank` does that over all
    households (the incremental build merges the warnings of re-evaluated households first).
    Columnar: the facts are ordered and hashed in DuckDB, in one pass over every rule's warnings;
    Python adds the per-rule constants and the household scores."""
    params = rule_parameters(build, pol)
    t = evaluate_rules(build.con, rules, params)
    n, at = t.num_rows, t["rule_index"].combine_chunks()
    per_rule = {"snapshot_date": [build.snapshot_date] * len(rules), "rule_id": [r.id for r in rules],
                "rule_version": [r.version for r in rules], "rule_title_zh": [r.title_zh for r in rules],
                "severity": [r.severity for r in rules], "kind": [r.kind for r in rules],
                "thresholds": [json.dumps({k: params[k] for k in r.params}, ensure_ascii=False, sort_keys=True,
                                          default=str) for r in rules],
                "policy_version": [pol.version] * len(rules), "stale_inputs": [stale_for(r.id, stale_inputs) for r in rules]}
    cols = {name: pa.array(v, SCHEMA.field(name).type).take(at) for name, v in per_rule.items()}
    weights = [SEVERITY_WEIGHT[rules[i].severity] for i in at.to_pylist()]
    mags = [m or 1.0 for m in t["magnitude"].to_pylist()]  # NULL or 0 → 1
    region = t["region_code"].combine_chunks()
    cols.update(warning_id=t["warning_id"], alert_key=t["alert_key"], household_no=t["household_no"],
                region_code=region, street_code=pc.utf8_slice_codeunits(region, 0, 9),
                subject_id_no=t["subject_id_no"], summary_zh=t["summary_zh"], facts=t["facts"],
                magnitude=pa.array(mags, pa.float64()),
                score=pa.array([round(w * min(max(m, 1.0), 3.0), 2) for w, m in zip(weights, mags, strict=True)],
                               pa.float64()),
                household_score=pa.nulls(n, pa.float64()), household_rank=pa.nulls(n, pa.int32()),
                top_signals=pa.nulls(n, SCHEMA.field("top_signals").type))
    return household_scores(pa.table({f.name: cols[f.name] for f in SCHEMA}).cast(SCHEMA))


def _groups(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(group of each row, the groups' values): the distinct values in order of first appearance."""
    enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col,
                               null_encoding="encode")
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def household_scores(w: pa.Table) -> pa.Table:
    """`household_score` (sum of the household's warning scores, rounded to the fen as Python's
    `round` does) and `top_signals` (its three highest-scoring warnings' titles, ties by rule, then
    table order) on every warning, in the table's own order. Vectorised: the sums are added in row
    order (`bincount`), as a loop would add them."""
    n = w.num_rows
    g, households = _groups(w["household_no"])
    k = len(households)
    scores = w["score"].to_numpy()
    total = np.asarray([round(x, 2) for x in np.bincount(g, weights=scores, minlength=k).tolist()], dtype=np.float64)
    order = pc.sort_indices(pa.table({"g": g, "s": scores, "r": w["rule_id"], "i": np.arange(n)}),
                            sort_keys=[("g", "ascending"), ("s", "descending"), ("r", "ascending"),
                                       ("i", "ascending")]).to_numpy()
    counts = np.bincount(g, minlength=k)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
    top = order[np.arange(n) - starts[g[order]] < 3]  # each household's first three, in its order
    memo: dict[tuple[str, float], str] = {}
    signals = [memo.get((t, s)) or memo.setdefault((t, s), f"{t}（{s:g}）")
               for t, s in zip(w["rule_title_zh"].take(top).to_pylist(), scores[top].tolist(), strict=True)]
    offsets = np.concatenate(([0], np.cumsum(np.minimum(counts, 3)))).astype(np.int32)
    per_household = pa.ListArray.from_arrays(pa.array(offsets), pa.array(signals, pa.string()))
    for name, values in (("household_score", pa.array(total[g], pa.float64())),
                         ("top_signals", per_household.take(pa.array(g)))):
        i = w.schema.get_field_index(name)
        w = w.set_column(i, w.schema.field(i), values.cast(w.schema.field(i).type))
    return w


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
    g, households = _groups(warnings["household_no"])
    scores = np.empty(len(households), dtype=np.float64)
    scores[g] = warnings["household_score"].to_numpy()
    by = pc.sort_indices(pa.table({"s": scores, "h": households}),
                         sort_keys=[("s", "descending"), ("h", "ascending")]).to_numpy()
    ranks = np.empty(len(households), dtype=np.int32)
    ranks[by] = np.arange(1, len(households) + 1, dtype=np.int32)
    i = warnings.schema.get_field_index("household_rank")
    ranked = warnings.set_column(i, warnings.schema.field(i), pa.array(ranks[g], pa.int32()))
    return ranked.take(pc.sort_indices(ranked, sort_keys=ORDER)).combine_chunks()  # one chunk: the same bytes
