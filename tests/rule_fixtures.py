"""Declarative rule fixtures: a few households and their facts per case, run through the real engine.

A fixture file (`tests/rules/<rule>.toml`) holds cases; each case is one registration household
with its persons and the department records about them, written as a department would send them
(contract field names, text values). The loader mints valid ID numbers from the birth dates,
drops every feed's records as JSON Lines into a fresh store, and runs the real ingest, clean,
monitoring build and warning rules — no synthetic generator, no reference implementation::

    rule = "disaster_damage"
    snapshot = "2026-11-01"

    [[case]]
    name = "house collapsed in August"
    fires = true
    persons = [{rel = "户主", birth = "1962-03-05"}, {rel = "配偶", birth = "1965-07-01"}]
    [[case.records."emergency_management.disaster"]]
    id_no = "@1"            # the case's first person
    disaster_date = "2026-08-12"
    ...

A value `@n` is the ID number of the case's n-th person, `@hh` its household number. A case that
fires may list `summary_has`: text the warning's Chinese summary must contain (what the street
worker reads), e.g. `summary_has = ["日期不详"]`. A case may also list `household_has`: columns of
its household's published row (`monitoring_household`), e.g. `household_has = {serious_ill_members = 0}`.

Monthly wages (人社 `human_resources.employment`, one record per person, month and employer) have a
shorthand: a case's `wages` list, each entry expanding to one employment record per month from
`from` to `to` inclusive (both `YYYY-MM`), added to any explicit employment records of the case::

    wages = [{who = "@1", from = "2025-11", to = "2026-08", wage = "4800"},
             {who = "@2", from = "2026-01", to = "2026-10", wage = "3000", employer_name = "另一公司",
              employer_credit_code = "91430103MA4L0XYZ2Y"}]

`employer_name` and `employer_credit_code` default to "测试公司" and "91430103MA4L0ABC1X". The key
of an employment record is (id_no, month, employer_credit_code): a month written both ways for
the same person and employer is one record (the later one kept), as a department resend would be.
"""

from __future__ import annotations

import datetime as dt
import json
import tomllib
from pathlib import Path

from quality import evaluation, policy
from safetynet.build import monitoring
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.intake.clean import clean_all
from safetynet.intake.ingest import ingest
from schemas import idno, normalise
from schemas.registry import contracts

FIXTURES = Path(__file__).parent / "rules"
REGION = "430103001001"


def load(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _person(case_no: int, i: int, p: dict) -> dict:
    birth = dt.date.fromisoformat(p["birth"])
    s17 = f"{REGION[:6]}{birth:%Y%m%d}{(case_no * 10 + i) % 1000:03d}"
    return {"id_no": s17 + idno.check_char(s17), "name": "测试", "gender": p.get("gender", "男" if i % 2 else "女"),
            "birth_date": p["birth"], "household_no": f"FX{case_no:04d}", "relation_to_head": p["rel"],
            "region_code": p.get("region", REGION), "address": "测试地址", "hukou_type": p.get("hukou", "城镇"),
            "status": p.get("status", "正常"), "status_date": p.get("status_date")}


WAGE_DEFAULTS = {"employer_name": "测试公司", "employer_credit_code": "91430103MA4L0ABC1X"}
_WAGE_KEYS = {"who", "from", "to", "wage", *WAGE_DEFAULTS}


def _months(start: str, end: str) -> list[str]:
    """'YYYY-MM' from `start` to `end` inclusive."""
    (y, m), (ey, em) = (map(int, start.split("-")), map(int, end.split("-")))
    if (y, m) > (ey, em):
        raise ValueError(f"wages: from {start} is after to {end}")
    out = []
    while (y, m) <= (ey, em):
        out.append(f"{y:04d}-{m:02d}")
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def expand_wages(wages: list[dict]) -> list[dict]:
    """A case's `wages` shorthand → `human_resources.employment` records, one per month (see above)."""
    out = []
    for w in wages:
        if unknown := set(w) - _WAGE_KEYS:
            raise ValueError(f"wages: unknown keys {sorted(unknown)} (allowed: {sorted(_WAGE_KEYS)})")
        if missing := {"who", "from", "to", "wage"} - set(w):
            raise ValueError(f"wages: missing {sorted(missing)} in {w}")
        employer = {k: w.get(k, v) for k, v in WAGE_DEFAULTS.items()}
        out += [{"id_no": w["who"], "month": month, **employer, "wage": str(w["wage"])}
                for month in _months(w["from"], w["to"])]
    return out


def run(fixture: dict, root: Path, households: dict[str, dict] | None = None) -> dict[str, dict[str, list[str]]]:
    """Ingest the fixture into a store at `root`, build the snapshot; rule id → the households it fired
    on → the Chinese summaries of those warnings. `households`, if given, is filled with household
    number → that household's `monitoring_household` row."""
    store = ObjectStore.from_settings(Settings(store=str(root)))
    records: dict[str, list[dict]] = {fid: [] for fid in contracts()}
    for n, case in enumerate(fixture["case"], 1):
        persons = [_person(n, i, p) for i, p in enumerate(case["persons"], 1)]
        records["public_security.person"] += persons
        subs = {f"@{i}": p["id_no"] for i, p in enumerate(persons, 1)} | {"@hh": persons[0]["household_no"]}

        def sub(v, subs=subs):  # recursively: member lists hold references too
            if isinstance(v, str):
                return subs.get(v, v)
            if isinstance(v, list):
                return [sub(x, subs) for x in v]
            return {k: sub(x, subs) for k, x in v.items()} if isinstance(v, dict) else v

        for fid, recs in case.get("records", {}).items():
            records[fid] += [sub(r) for r in recs]
        records["human_resources.employment"] += [sub(r) for r in expand_wages(case.get("wages", []))]
    for fid, recs in records.items():
        if recs:
            c = contracts()[fid]
            body = "\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n"
            store.write_bytes(f"landing/{c.prefix}/fixture_20261031.jsonl", body.encode())
    s = Settings(store=str(root), mappings=root / "no-mappings", progress=False)
    report = ingest(s, store, kafka=False)
    bad = {fid: dict(f.quarantined) for fid, f in report.feeds.items() if f.quarantined}
    assert not bad, f"fixture records quarantined: {bad}"  # a fixture must be valid department data
    clean_all(store, list(contracts().values()))
    snap = dt.date.fromisoformat(fixture["snapshot"])
    pol = policy.for_region(REGION[:6], snap.year)
    con = normalise.connect()
    try:
        monitoring.register_clean(con, store)
        b = monitoring.build(con, snap, pol)
        w = evaluation.evaluate(b, pol)
        if households is not None:
            households.update({r["household_no"]: r for r in
                               con.sql("SELECT * FROM monitoring_household").to_arrow_table().to_pylist()})
    finally:
        con.close()
    out: dict[str, dict[str, list[str]]] = {}
    for r in w.select(["rule_id", "household_no", "summary_zh"]).to_pylist():
        out.setdefault(r["rule_id"], {}).setdefault(r["household_no"], []).append(r["summary_zh"])
    return out
