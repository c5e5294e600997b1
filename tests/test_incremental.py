"""The incremental monitoring build (issue #16 point 2): re-evaluating only the households new facts
touch gives exactly the full build's tables, row for row, and the same published bytes.

A small district's truth is written as `clean/` Parquet and built and published once (a full build,
which records the incremental state); each test works on a copy. After a change to the clean facts,
`check` publishes through the pipeline (incrementally) and builds in full: the same warnings
(Arrow `equals`, schema, Parquet bytes) and every published file with the full build's sha256 (so
the same manifest content hash). The households an incremental build re-evaluates are compared
with `touched`, the rule the dependency review of `safetynet.publish.incremental` states, written
here independently.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import random
import shutil
from collections.abc import Callable

import pyarrow as pa
import pytest

from quality import freshness, policy
from safetynet import pipeline
from safetynet.core import paths
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.demo.synth import generate
from safetynet.intake.clean import clean_path
from safetynet.publish import incremental, snapshot
from schemas import normalise
from schemas.registry import contracts

SNAP = dt.date(2026, 11, 1)
POL = policy.for_region("430103", 2026)
REGISTER, ROSTER = "public_security.person", "civil_affairs.assistance_case"


# ---- the store ------------------------------------------------------------------------------------
def settings_of(store: ObjectStore) -> Settings:
    return Settings(store=store.root, kafka_bootstrap=None, progress=False)


def run(store: ObjectStore, day: dt.date = SNAP, pol: policy.Policy = POL, **kw) -> pipeline.RunResult:
    return pipeline.build_snapshot(settings_of(store), store, day, pol, quality=False, publish_kafka=False, **kw)


def rows(store: ObjectStore, fid: str) -> list[dict]:
    return store.read_parquet(clean_path(contracts()[fid])).to_pylist()


def write(store: ObjectStore, fid: str, data: pa.Table | list[dict]) -> None:
    """A feed's clean state as the clean step writes it: the contract's schema, in key order."""
    c = contracts()[fid]
    t = data if isinstance(data, pa.Table) else pa.Table.from_pylist(data, schema=c.arrow_schema())
    store.write_bytes(clean_path(c), parquet_bytes(t.sort_by([(k, "ascending") for k in c.key])))


def edit(store: ObjectStore, fid: str, change: Callable[[list[dict]], list[dict] | None]) -> None:
    rs = rows(store, fid)
    write(store, fid, change(rs) or rs)


@pytest.fixture(scope="module")
def district():
    return generate(persons=3000, seed=7)


@pytest.fixture(scope="module")
def base(tmp_path_factory, district):
    root = tmp_path_factory.mktemp("incremental") / "store"
    store = ObjectStore.from_settings(Settings(store=str(root)))
    for fid in contracts():
        write(store, fid, district.table(fid))
    r = run(store)
    assert (r.build_mode, r.manifest["status"]) == ("full", "published") and r.households_reevaluated == r.households
    assert store.exists(paths.incremental_state())
    return root


@pytest.fixture()
def store(base, tmp_path):
    shutil.copytree(base, tmp_path / "store")
    return ObjectStore.from_settings(Settings(store=str(tmp_path / "store")))


# ---- incremental = full ---------------------------------------------------------------------------
def build(store: ObjectStore, stale: list[str], inc: bool) -> incremental.Result:
    con = normalise.connect()
    try:
        return incremental.build(con, store, SNAP, POL, stale_inputs=freshness.stale_inputs_by_rule(stale),
                                 incremental=inc)
    finally:
        con.close()


def assert_same(a: pa.Table, b: pa.Table, what: str) -> None:
    assert a.schema.equals(b.schema, check_metadata=True), what
    assert a.equals(b), what
    assert parquet_bytes(a) == parquet_bytes(b), what


def check(store: ObjectStore) -> pipeline.RunResult:
    """Publish incrementally through the pipeline, and build in full: the same warnings (Arrow
    `equals`), and every published file (person, household, warnings; identified and pseudonymised)
    has the sha256 of the full build's file — so the manifest's content hash is the full build's."""
    stale = freshness.stale_feeds(store, freshness.snapshot_as_of(SNAP))  # what the pipeline finds (no raw/)
    full = build(store, stale, inc=False)
    assert full.mode == "full"
    r = run(store)
    assert r.build_mode == "incremental", r.build_reason
    assert r.manifest["status"] in ("published", "unchanged")
    assert_same(r.warnings, full.warnings, "warnings")
    m = r.manifest
    ps = snapshot.Pseudonymiser(settings_of(store).pseudonym_secret.get_secret_value().encode())
    files = snapshot.encode({"monitoring/person": full.person, "monitoring/household": full.household,
                             "warnings": full.warnings}, ps)
    assert {snapshot.path_of(name, SNAP, m["version"], ident): entry["sha256"]
            for (name, ident), (_, entry) in files.items()} == {p: e["sha256"] for p, e in m["files"].items()}
    person = snapshot.read(store, "monitoring/person", SNAP, identified=True).cast(full.person.schema)
    assert person.equals(full.person)
    return r


# ---- what a change touches (the dependency review's rule, independently) ---------------------------
def state(store: ObjectStore) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The register (person → household) and the roster (case → members)."""
    register = {r["id_no"]: r["household_no"] for r in rows(store, REGISTER)}
    roster = {r["case_no"]: {m["id_no"] for m in r["members"] or [] if m["id_no"]} for r in rows(store, ROSTER)}
    return register, roster


def touched(before, after, persons=(), cases=(), households=()) -> set[str]:
    """The households whose results may change: those of the changed persons, and of every member of
    every case that changed or has a changed person as member — before and after the change — and
    the changed households themselves."""
    persons, cases = set(persons), set(cases)
    for _, roster in (before, after):
        cases |= {c for c, members in roster.items() if members & persons}
    members = set(persons)
    for _, roster in (before, after):
        for c in cases:
            members |= roster.get(c, set())
    return set(households) | {register[p] for register, _ in (before, after) for p in members if p in register}


# ---- picking persons from the district --------------------------------------------------------------
def age(r: dict) -> int:
    b = r["birth_date"]
    return SNAP.year - b.year - ((SNAP.month, SNAP.day) < (b.month, b.day))


def earners(store: ObjectStore) -> set[str]:
    return {r["id_no"] for r in rows(store, "human_resources.employment") if r["month"] >= "2026-01"}


def case_members(store: ObjectStore, active: bool = True) -> dict[str, str]:
    """member → one of their cases (active cases only, by default)."""
    out = {}
    for c in rows(store, ROSTER):
        if not active or c["status"] in ("在保", "渐退期"):
            for m in c["members"] or []:
                out.setdefault(m["id_no"], c["case_no"])
    return out


def warnings_of(t: pa.Table, rule: str) -> list[dict]:
    return [r for r in t.select(["rule_id", "household_no", "subject_id_no"]).to_pylist() if r["rule_id"] == rule]


# ---- the changes ---------------------------------------------------------------------------------------
def a_death(store: ObjectStore) -> dict:
    """An earner of working age, in no case, dies: `earner_death` fires for them."""
    members = case_members(store, active=False)
    working = earners(store)
    p = next(r for r in rows(store, REGISTER) if r["status"] == "正常" and 25 <= age(r) <= 55
             and r["id_no"] in working and r["id_no"] not in members)

    def die(rs):
        for r in rs:
            if r["id_no"] == p["id_no"]:
                r.update(status="死亡", status_date=dt.date(2026, 10, 3))
    edit(store, REGISTER, die)
    return {"persons": {p["id_no"]}, "expect": ("earner_death", p["household_no"], p["id_no"]), "new": True}


def a_large_claim(store: ObjectStore) -> dict:
    """A member of an active case settles a 90,000 yuan hospital bill: `medical_burden` fires."""
    register = state(store)[0]
    pid = next(m for m in sorted(case_members(store)) if m in register)
    hh = register[pid]

    def add(rs):
        rs.append({"claim_id": "JS20261020999999999", "id_no": pid, "settle_date": dt.date(2026, 10, 20),
                   "hospital_name": "湖南省人民医院", "inpatient": True, "diagnosis_code": "S72.0",
                   "diagnosis_name": "股骨颈骨折", "total_amount": decimal.Decimal("120000.00"),
                   "fund_paid": decimal.Decimal("30000.00"), "out_of_pocket": decimal.Decimal("90000.00"),
                   "serious_illness": False})
    edit(store, "medical_insurance.claim", add)
    return {"persons": {pid}, "expect": ("medical_burden", hh, None)}


def an_unemployment_registration(store: ObjectStore) -> dict:
    """A working-age member of an active case registers as unemployed: `unemployment` fires."""
    register = {r["id_no"]: r for r in rows(store, REGISTER)}
    registered = {r["id_no"] for r in rows(store, "human_resources.unemployment")}
    pid = next(m for m in sorted(case_members(store)) if m in register and m not in registered
               and register[m]["status"] == "正常" and 20 <= age(register[m]) <= 55)

    def add(rs):
        rs.append({"id_no": pid, "registered_date": dt.date(2026, 10, 28), "benefit_monthly": None, "status": "登记",
                   "status_date": dt.date(2026, 10, 28)})
    edit(store, "human_resources.unemployment", add)
    return {"persons": {pid}, "expect": ("unemployment", register[pid]["household_no"], pid)}


def a_move(store: ObjectStore) -> dict:
    """A case member moves to another household: both households, and the case's, are touched."""
    register = state(store)[0]
    sizes: dict[str, int] = {}
    for h in register.values():
        sizes[h] = sizes.get(h, 0) + 1
    pid = next(m for m in sorted(case_members(store)) if m in register and sizes[register[m]] > 1)
    to = next(h for h in sorted(sizes) if h != register[pid])

    def move(rs):
        for r in rs:
            if r["id_no"] == pid:
                r.update(household_no=to, relation_to_head="其他")
    edit(store, REGISTER, move)
    return {"persons": {pid}}


def a_case_member_change(store: ObjectStore) -> dict:
    """A person of another household joins an active 低保 case, and one of its members leaves it."""
    register = state(store)[0]
    members = case_members(store, active=False)
    case = next(c for c in rows(store, ROSTER) if c["category"] == "低保" and c["status"] == "在保"
                and len(c["members"] or []) >= 2)
    joiner = next(p for p in sorted(register) if p not in members)

    def change(rs):
        for r in rs:
            if r["case_no"] == case["case_no"]:
                r["members"] = r["members"][1:] + [{"id_no": joiner, "relation": "其他"}]
    edit(store, ROSTER, change)
    return {"cases": {case["case_no"]}}


def a_removed_vehicle(store: ObjectStore, district) -> dict:
    """The cars of a 低保/特困 household with a car (a planted `recipient_vehicle` household) are
    deregistered: its warning goes."""
    planted = sorted(r["household_no"] for r in district.planted.to_pylist()
                     if r["rule_id"] == "recipient_vehicle" and r["kind"] == "planted")
    register = state(store)[0]
    owners = {p for p, h in register.items() if h == planted[0]}
    edit(store, "public_security.vehicle", lambda rs: [v for v in rs if v["owner_id_no"] not in owners])
    return {"persons": owners, "gone": ("recipient_vehicle", planted[0])}


def a_dangerous_house(store: ObjectStore) -> dict:
    """A household's house is rated D (dangerous) and not renovated: `dangerous_house` fires."""
    register = {r["id_no"]: r for r in rows(store, REGISTER)}
    rated = {r["household_no"] for r in rows(store, "housing.dangerous_house")}
    p = next(r for r in register.values() if r["household_no"] not in rated)

    def add(rs):
        rs.append({"household_no": p["household_no"], "region_code": p["region_code"], "rating": "D",
                   "assessed_date": dt.date(2026, 9, 1), "renovated": False})
    edit(store, "housing.dangerous_house", add)
    return {"households": {p["household_no"]}, "expect": ("dangerous_house", p["household_no"], None), "new": True}


def a_recipient_death(store: ObjectStore) -> dict:
    """A member of a case spanning two households dies while payments continue: `deceased_recipient`
    fires for both households (the other household's warning names a person it does not hold)."""
    register = state(store)[0]
    case = next(c for c in rows(store, ROSTER) if c["status"] in ("在保", "渐退期")
                and len({register.get(m["id_no"]) for m in c["members"] or []} - {None}) > 1)
    dead = case["members"][-1]["id_no"]

    def die(rs):
        for r in rs:
            if r["id_no"] == dead:
                r.update(status="死亡", status_date=dt.date(2026, 6, 15))
    edit(store, REGISTER, die)
    return {"persons": {dead}, "spanning": {register[m["id_no"]] for m in case["members"] if m["id_no"] in register}}


CHANGES = ["death", "large_claim", "unemployment", "move", "case_members", "removed_vehicle", "dangerous_house"]


def apply(name: str, store: ObjectStore, district) -> dict:
    return {"death": a_death, "large_claim": a_large_claim, "unemployment": an_unemployment_registration,
            "move": a_move, "case_members": a_case_member_change,
            "removed_vehicle": lambda s: a_removed_vehicle(s, district), "dangerous_house": a_dangerous_house,
            "recipient_death": a_recipient_death}[name](store)


# ---- the tests -------------------------------------------------------------------------------------------
def test_the_dependency_review_is_of_the_current_sql():
    """The incremental build's dependency review (its module docstring, `LINKS`, the affected set, the
    filtered inputs) was made for exactly this SQL. If this fails, a step or rule changed: review
    the change against the docstring, adjust the module if a household's results now read anything
    else (other households, a global aggregate, a new feed or column link), then update
    `incremental.REVIEWED_SQL`. Until then the incremental build is off (full builds)."""
    assert hashlib.sha256(incremental.sql_text().encode()).hexdigest() == incremental.REVIEWED_SQL
    assert set(incremental.feeds_read()) <= set(incremental.LINKS)


@pytest.mark.parametrize("change", [*CHANGES, "recipient_death"])
def test_one_change_re_evaluates_only_the_touched_households_and_equals_the_full_build(store, district, change):
    before = state(store)
    old = snapshot.read(store, "warnings", SNAP, identified=True)
    what = apply(change, store, district)
    expected = touched(before, state(store), what.get("persons", ()), what.get("cases", ()),
                       what.get("households", ()))
    r = check(store)
    assert r.households_reevaluated == len(expected), (r.build_reason, len(expected))
    assert 0 < len(expected) < 0.05 * r.households
    if "expect" in what:  # the change had its effect (the test is not vacuous)
        rule, hh, subject = what["expect"]
        fired = [(w["household_no"], w["subject_id_no"]) for w in warnings_of(r.warnings, rule)]
        assert (hh, subject) in fired
        if what.get("new"):
            assert (hh, subject) not in [(w["household_no"], w["subject_id_no"]) for w in warnings_of(old, rule)]
    if "spanning" in what:
        assert what["spanning"] <= {w["household_no"] for w in warnings_of(r.warnings, "deceased_recipient")}
        assert len(what["spanning"]) > 1 and what["spanning"] <= expected
    if "gone" in what:
        rule, hh = what["gone"]
        assert hh in {w["household_no"] for w in warnings_of(old, rule)}
        assert hh not in {w["household_no"] for w in warnings_of(r.warnings, rule)}


@pytest.mark.slow
def test_changes_in_every_feed_one_after_another_each_on_the_last_incremental_version(store, district):
    for change in CHANGES:
        apply(change, store, district)
        assert check(store).manifest["status"] == "published", change
    r = run(store, incremental=False)  # nothing new since: the full build finds the same content
    assert r.manifest["status"] == "unchanged" and r.manifest["version"] == 1 + len(CHANGES)


@pytest.mark.slow
def test_random_changes_in_all_feeds_equal_the_full_build(store):
    """Random small edits — values changed, rows added and removed, persons moved, members swapped —
    biased towards case members (the cross-household rules), several feeds per round."""
    rnd = random.Random(16)
    feeds = sorted(incremental.feeds_read())
    for _ in range(4):
        register = state(store)[0]
        pool = sorted(case_members(store, active=False)) + rnd.sample(sorted(register), 20)
        households = sorted(set(register.values()))
        for fid in rnd.sample(feeds, 4):
            edit(store, fid, lambda rs, fid=fid, pool=pool, hh=households: mutate(fid, rs, rnd, pool, hh))
        check(store)


def mutate(fid: str, rs: list[dict], rnd: random.Random, persons: list[str], households: list[str]) -> list[dict]:
    """One random edit of a feed's rows (of a row linked to one of `persons`, for person-level feeds):
    a field changed, the row removed, or a copy added under a new key (another person's, for a
    person's row). Keys stay unique, as in a clean state."""
    c, link = contracts()[fid], incremental.LINKS[fid]
    mine = [r for r in rs if r.get(link.column) in set(persons)] if link.kind == "person" else rs
    if not mine:
        return rs
    r = rnd.choice(mine)
    how = rnd.choice(["change", "remove", "add"])
    if how == "remove":
        return [x for x in rs if x is not r]
    if how == "add":
        r = dict(r)
        for k in c.key:
            r[k] = rnd.choice(persons) if k in ("id_no", "owner_id_no") else f"{r[k]}X" if k == c.key[0] else r[k]
        rs.append(r)
    field = rnd.choice([n for n in c.names if n not in c.key] or list(c.names))
    v = r[field]
    if field == "household_no":
        r[field] = rnd.choice(households)
    elif field == "members":
        r[field] = (v or [])[1:] + [{"id_no": rnd.choice(persons), "relation": "其他"}]
    elif field == "status" and fid == REGISTER:
        r.update(status="死亡", status_date=dt.date(2026, rnd.randint(1, 10), 1))
    elif field == "status" and fid == ROSTER:
        r[field] = rnd.choice(["在保", "渐退期", "停保"])
    elif isinstance(v, decimal.Decimal):
        r[field] = v * rnd.choice([0, 3, 10])
    elif isinstance(v, dt.date):
        r[field] = v - dt.timedelta(days=rnd.randint(1, 400))
    elif isinstance(v, bool) or (v is None and c.arrow_schema().field(field).type == pa.bool_()):
        r[field] = not v
    elif isinstance(v, int):
        r[field] = rnd.randint(1, 4)
    seen, out = set(), []
    for x in rs:
        k = tuple(x.get(k) for k in c.key)
        if None not in k and k not in seen:
            seen.add(k)
            out.append(x)
    return out


def test_without_a_change_the_same_version_stays_current(store):
    r = check(store)
    assert (r.households_reevaluated, r.manifest["status"], r.manifest["version"]) == (0, "unchanged", 1)


def test_kept_warnings_carry_the_stale_inputs_of_now(store):
    """The base was built with every feed stale (no `raw/`): the warnings kept from it are re-stamped
    with the stale feeds of this build, and re-ranked with the re-evaluated households'."""
    a_dangerous_house(store)
    for stale in ([], ["medical_insurance.claim", "public_security.person"]):
        new, full = build(store, stale, inc=True), build(store, stale, inc=False)
        assert (new.mode, new.households) == ("incremental", 1), new.reason
        for name in ("person", "household", "warnings"):
            assert_same(getattr(new, name), getattr(full, name), name)
        assert any(new.warnings["stale_inputs"].to_pylist()) == bool(stale)


def test_a_feed_no_step_or_rule_reads_touches_nothing(store):
    assert "housing.housing_aid" not in incremental.feeds_read()
    edit(store, "housing.housing_aid", lambda rs: rs[1:])
    assert check(store).households_reevaluated == 0


def test_another_snapshot_date_builds_in_full_then_incrementally_on_its_own_version(store):
    other = dt.date(2026, 11, 2)
    r = run(store, other)
    assert r.build_mode == "full" and "not 2026-11-02" in r.build_reason
    r = run(store, other)
    assert r.build_mode == "incremental" and r.manifest["status"] == "unchanged"
    assert run(store).build_mode == "full"  # the recorded state is now the other date's


def test_a_policy_change_builds_in_full(store):
    t = POL.thresholds.model_copy(update={"medical_burden_oop_12m": POL.thresholds.medical_burden_oop_12m * 2})
    pol = POL.model_copy(update={"thresholds": t, "policy": POL.policy.model_copy(update={"version": "430103-2026.2"})})
    r = run(store, pol=pol)
    assert r.build_mode == "full" and "policy" in r.build_reason
    assert run(store, pol=pol).build_mode == "incremental"


def test_a_large_change_builds_in_full(store):
    register = state(store)[0]
    movers = set(sorted(register)[::10])  # a tenth of the district's persons
    edit(store, "human_resources.employment", lambda rs: [r for r in rs if r["id_no"] not in movers])
    r = run(store)
    assert r.build_mode == "full" and "more than 5%" in r.build_reason and r.households_reevaluated == r.households


@pytest.mark.parametrize("why", ["sql", "state", "foreign_version", "digest", "null_household", "during"])
def test_anything_uncertain_builds_in_full(store, monkeypatch, why):
    edit(store, "medical_insurance.claim", lambda rs: rs[1:])
    if why == "sql":  # a step or rule changed since the dependency review
        monkeypatch.setattr(incremental, "REVIEWED_SQL", "0" * 64)
    elif why == "state":
        store.delete(paths.incremental_state())
    elif why == "foreign_version":  # the current version was published without recording its inputs
        monkeypatch.setattr(incremental, "remember", lambda *a, **k: False)
        a_dangerous_house(store)
        assert run(store, incremental=False).manifest["status"] == "published"
        monkeypatch.undo()
        a_dangerous_house(store)
    elif why == "digest":  # a recorded digest damaged
        path = next(e.path for e in store.list(paths.INCREMENTAL + "digests/medical_insurance/"))
        store.write_bytes(path, store.read_bytes(path) + b"x")
    elif why == "null_household":
        edit(store, REGISTER, lambda rs: [{**rs[0], "household_no": None}, *rs[1:]])
    elif why == "during":  # a clean file rewritten while the incremental build ran
        real = incremental.signatures
        calls = []

        def moving(s):
            calls.append(1)
            out = real(s)
            return out if len(calls) % 2 else {**out, "medical_insurance.claim": "rewritten"}
        monkeypatch.setattr(incremental, "signatures", moving)
    r = run(store)
    assert r.build_mode == "full", why
    assert {"sql": "SQL changed", "state": "no recorded", "foreign_version": "not the one",
            "digest": "checksum", "null_household": "without a household", "during": "during"}[why] in r.build_reason
    if why not in ("during", "null_household"):
        monkeypatch.undo()
        assert run(store).build_mode == "incremental"  # the full build recorded its inputs
