"""The monitoring run, incrementally: re-evaluate only the households new facts touch.

A full build runs every step of `safetynet.build.monitoring` over every clean feed and every rule
of `quality.rules` over the result. When the snapshot date's current version was built by the
same code from inputs this module recorded, and few facts changed since, `build` computes the
same three tables — `monitoring/person`, `monitoring/household`, `warnings`, row for row, in the
same order, with the same values and so the same published bytes — by re-running the same steps
and rules over only the facts of the *affected* households and keeping the current version's rows
of all the others. Whenever that cannot be shown to hold it builds in full: never wrong, only
slower.

**What changed** is found from the data, not guessed. After each publish `remember` records, per
feed the build reads, the signature of its clean files (sha256 of every file) and a *digest*: one
row per person, case or household the feed's rows link to (`LINKS`), with the number of those rows
and the sum of their 64-bit row hashes (DuckDB's `hash` over every contract field; the lineage
columns `_event_id` and `_occurred_at` are not facts, and no step or rule reads them) — plus, for
the register, the person's households and, for the roster, a case's members. A feed whose
signature is unchanged is skipped; for the others the new digest is compared with the recorded
one (a full outer join on the link: added, removed and changed rows alike). The result: the
changed persons, cases and households. A changed row goes unseen only if its old and new 64-bit
hashes are equal (a changed number or date never: DuckDB hashes them bijectively; a changed text
with a probability of 2⁻⁶⁴). A cryptographic row hash (md5 of each row's JSON) was measured at
about eight times the cost: 10 s instead of 1.3 s per million persons for a full build's digests.

**Affected households** (the dependency review of every step and rule; `REVIEWED_SQL` pins the
SQL it was made for). A household's results read: its members' person-level facts (register row,
wages, pensions, unemployment, claims, enrolment, disability, disasters, and vehicles/property
they own); the cases any member belongs to (case row and payments); the person-level facts of
*every member of those cases*, whatever household they live in (`deceased_recipient` names a dead
member of another household, `recipient_vehicle`/`recipient_property` count cars and homes of all
of a case's members, `recipient_high_income` sums the income of all of them); and its own
dangerous-house rating (the person table's derived columns, `monitoring.PERSON_DERIVED`, are each
a function of the same person's row). Nothing else: no step or rule reads a global aggregate, and no rule
relates households otherwise (duplicate enrolment is per person over the person's cases; a
warning's region is its own household's). So the affected households are

* the households, in the recorded and the current register, of every changed person and of every
  member (recorded and current) of every case that changed or that has a changed person as member;
* the households whose dangerous-house rating changed.

Two SQL constructs are global: `x NOT IN (subquery)` is NULL for every row once the subquery holds
a NULL. The subqueries of the rules are over `case_no` (required) and the register's
`household_no` (required, but checked: a register with a NULL `household_no` builds in full).

**The filtered build** runs the very same steps and rules over the clean feeds cut to the affected
households' members (`P_A`), the cases they belong to (`C_A`), every member of those cases (their
person-level facts complete), and the affected households' own rows — everything an affected
household's results read, so its rows are exactly the full build's. Rows of other households that
come out of it are dropped; those households keep the current version's rows. The warning list is
ranked again over all households (`quality.evaluation.rank`, the same function as the full build)
and every warning's `stale_inputs` is recomputed from the current stale set.

**Valid only when** (else a full build, with the reason in `Result.reason`):

* `state.json` is for the same snapshot date and describes the date's current version
  (its `content_sha256`), with the same `fingerprint`: the source of the build steps, the rules and
  their evaluation and of this module, the policy (every parameter), the output schema version,
  the feed contracts, DuckDB's and pyarrow's versions;
* the steps' and rules' SQL is the one the dependency review above was made for (`REVIEWED_SQL`;
  `tests/test_incremental.py` fails when it is not, asking for the review);
* every feed the build reads has a `LINKS` entry, and the recorded digests are intact;
* at most `MAX_FRACTION` of the households are affected;
* no clean file changed while the incremental build ran (signatures before and after).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import inspect
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from quality import evaluation, rules
from quality.rules import RULES
from safetynet.build import monitoring
from safetynet.core import paths
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.intake.clean import clean_path
from safetynet.publish import snapshot
from schemas import outputs
from schemas.errors import ChecksumMismatch, DataError
from schemas.policy import Policy
from schemas.registry import contracts

log = logging.getLogger(__name__)

#: the largest share of households an incremental build re-evaluates; more: a full build
MAX_FRACTION = 0.05

#: sha256 of the macros', steps' and rules' SQL (`sql_text()`) the dependency review of this module's
#: docstring was made for. A change of any macro, step or rule SQL turns the incremental build off (full
#: builds) until the review is redone for the new SQL — the LINKS, the affected set and the
#: filtered inputs — and this value updated. (Last: `serious_illness` and
#: `severe_disability` gate on the household row's own `active_categories` (any low-income
#: category) instead of joining the case members again — the same cases' members' households the
#: household table already lists: no new link; the household column `serious_ill_members` counts
#: living members only — the `alive` column of the household's own persons. Before them: the age macro `sn_age` — a function of one row's
#: columns; `earner_death` v4 and `serious_illness` v3 read more columns of the person's own row
#: (an undated death, `alive`); `severe_disability` v3 the certificate row's own `issued_date` and
#: `subsidies`; `deceased_recipient` v3 a cancelled (注销) member, the payments of the member's case
#: and, per month paid, which of the case's members were dead or cancelled by then — a case's
#: payments and members and the person-level facts of every member of the household's cases, which
#: the affected set already covers; `earner_death` v4 its household's living members (the same
#: household): no new link between households.)
REVIEWED_SQL = "ad4890181427f08d615ded01c8b259fd670844c0b85b85f8478a901059c19465"


@dataclass(frozen=True)
class Link:
    """What a feed's rows are facts of: a person (`kind` "person"), a case or a household, and the
    column naming it; `extra`: an SQL aggregate kept in the digest (the register: the person's
    households; the roster: the case's members) — the recorded side of a move."""

    kind: str
    column: str
    extra: str | None = None


LINKS: dict[str, Link] = {
    "public_security.person": Link("person", "id_no", "list_sort(list_distinct(list(household_no)))"),
    "public_security.vehicle": Link("person", "owner_id_no"),
    "human_resources.employment": Link("person", "id_no"),
    "human_resources.pension": Link("person", "id_no"),
    "human_resources.unemployment": Link("person", "id_no"),
    "medical_insurance.claim": Link("person", "id_no"),
    "medical_insurance.enrollment": Link("person", "id_no"),
    "housing.property": Link("person", "owner_id_no"),
    "housing.housing_aid": Link("person", "id_no"),
    "disabled_persons_federation.disability": Link("person", "id_no"),
    "emergency_management.disaster": Link("person", "id_no"),
    "housing.dangerous_house": Link("household", "household_no"),
    "civil_affairs.assistance_case": Link(
        "case", "case_no", "list_sort(list_distinct(flatten(list(list_transform(members, lambda m: m.id_no)))))"),
    "civil_affairs.assistance_payment": Link("case", "case_no"),
    "civil_affairs.income_check": Link("case", "case_no"),
}

REGISTER = "public_security.person"
ROSTER = "civil_affairs.assistance_case"


@dataclass
class Result:
    """The three published tables of a build, and how they were made."""

    person: pa.Table
    household: pa.Table
    warnings: pa.Table
    mode: str  # "full" | "incremental"
    reason: str  # why a full build; for an incremental one, what changed
    households: int  # households (re-)evaluated
    signatures: dict[str, str | None]  # feed → its clean files' signature when the build read them
    digests: dict[str, pa.Table] = field(default_factory=dict)  # feed → new digest (computed on the way)


class _Full(Exception):
    """The incremental build does not apply: build in full (the message says why)."""


# ---- what the build reads ----------------------------------------------------------------------------
_IDENT = re.compile(r"\b[a-z_][a-z0-9_]*\b")


def sql_text() -> str:
    """The SQL of every macro, step, derived person column and rule, as the dependency review reads it."""
    return "\n".join([f"-- macro {n}{body}" for n, body in monitoring.MACROS.items()]
                     + [f"-- step {n}\n{sql}" for n, sql in monitoring.STEPS]
                     + [f"-- derived monitoring_person.{c}\n{e}" for c, e in monitoring.PERSON_DERIVED.items()]
                     + [f"-- rule {r.id}\n{r.sql}" for r in RULES])


def feeds_read() -> list[str]:
    """The feeds whose name occurs in a step's or rule's SQL (over-approximated: any occurrence)."""
    idents = set(_IDENT.findall(sql_text()))
    return sorted(fid for fid, name in monitoring.sources().items() if name in idents)


def fingerprint(pol: Policy) -> str:
    """What a recorded state must have been built with for its version to be reused (without the
    modules' source — an installation without it — a value no later build matches)."""
    h = hashlib.sha256()
    for module in (monitoring, rules, evaluation, sys.modules[__name__]):
        try:
            h.update(inspect.getsource(module).encode())
        except (OSError, TypeError):
            return f"unknown-{uuid.uuid4().hex}"
    h.update(pol.model_dump_json().encode())
    h.update(f"{outputs.VERSION}\x1f{duckdb.__version__}\x1f{pa.__version__}".encode())
    for fid, c in sorted(contracts().items()):
        h.update(f"{fid}\x1f{c.version}\x1f{c.arrow_schema()}".encode())
    return h.hexdigest()


# ---- signatures and digests --------------------------------------------------------------------------
def signature(store: ObjectStore, fid: str) -> str | None:
    """sha256 over the path and sha256 of every file the build reads of the feed (None: no clean data)."""
    path = clean_path(contracts()[fid])
    if not store.exists(path):
        return None
    h = hashlib.sha256()
    for e in store.list(monitoring.clean_folder(path), ".parquet"):
        h.update(f"{e.path}\x1f{hashlib.sha256(store.read_bytes(e.path)).hexdigest()}\n".encode())
    return h.hexdigest()


def signatures(store: ObjectStore) -> dict[str, str | None]:
    return {fid: signature(store, fid) for fid in feeds_read()}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def digest_sql(fid: str, relation: str) -> str:
    """The digest of a feed's rows in `relation`: per link value, the number of its rows and the sum of
    their 64-bit row hashes (a multiset digest: any added, removed or changed row changes it, unless
    a changed row's old and new hashes coincide), and the `extra` aggregate."""
    c, link = contracts()[fid], LINKS[fid]
    row = ", ".join(_q(n) for n in c.names)
    extra = f", {link.extra} AS extra" if link.extra else ""
    return (f"SELECT {_q(link.column)} AS link, CAST(count(*) AS VARCHAR) || ':' "
            f"|| CAST(sum(CAST(hash({row}) AS HUGEINT)) AS VARCHAR) AS h{extra} "
            f"FROM {relation} GROUP BY {_q(link.column)}")


def _digest_name(fp: str, sig: str) -> str:
    return hashlib.sha256(f"{fp}\x1f{sig}".encode()).hexdigest()


def _full_name(fid: str) -> str:
    return f"__full_{monitoring.sources()[fid]}"


def _register_full(con: duckdb.DuckDBPyConnection, store: ObjectStore, feeds: list[str]
                   ) -> dict[str, ds.Dataset | pa.Table]:
    """Every feed's whole clean data under `__full_<name>` (an empty table of its schema if none)."""
    data = monitoring.clean_data(store)
    out: dict[str, ds.Dataset | pa.Table] = {}
    for fid in feeds:
        rel = data.get(fid)
        out[fid] = rel if rel is not None else contracts()[fid].arrow_schema().empty_table()
        con.register(_full_name(fid), out[fid])
    return out


def _digest(con: duckdb.DuckDBPyConnection, fid: str) -> pa.Table:
    return con.sql(digest_sql(fid, _full_name(fid))).to_arrow_table()


# ---- the state ------------------------------------------------------------------------------------------
def _read_state(store: ObjectStore) -> dict:
    try:
        return json.loads(store.read_bytes(paths.incremental_state()))
    except FileNotFoundError:
        raise _Full("no recorded incremental state (first build)") from None


def _read_digest(store: ObjectStore, entry: dict) -> pa.Table | None:
    """A recorded digest, checked against the checksum the state records (None: the feed had no data)."""
    if entry.get("digest") is None:
        return None
    data = store.read_bytes(entry["digest"])
    if hashlib.sha256(data).hexdigest() != entry["digest_sha256"]:
        raise _Full(f"the recorded digest {entry['digest']} does not match its checksum")
    return pq.read_table(pa.BufferReader(data))


def remember(store: ObjectStore, con: duckdb.DuckDBPyConnection, snapshot_date: dt.date, pol: Policy,
             result: Result, manifest: dict) -> bool:
    """After a publish: record the version now current and the digests of the inputs it was built
    from, for the next build of the date. Nothing is recorded (the next build is full) unless the
    publish made or kept this build's data current and the clean files are still the ones the
    build read. Returns whether the state was written."""
    if manifest.get("status") not in ("published", "unchanged"):
        return False
    try:
        return _remember(store, con, snapshot_date, pol, result, manifest)
    except (duckdb.Error, pa.ArrowException, OSError, ValueError, KeyError) as e:  # bookkeeping: never fail a publish
        log.warning("incremental state not recorded (%s): the next build of %s is a full one", type(e).__name__,
                    snapshot_date, extra={"event": "incremental_state_failed"})
        return False


def _remember(store: ObjectStore, con: duckdb.DuckDBPyConnection, snapshot_date: dt.date, pol: Policy,
              result: Result, manifest: dict) -> bool:
    fp = fingerprint(pol)
    feeds = sorted(result.signatures)
    try:
        old = json.loads(store.read_bytes(paths.incremental_state()))
    except (FileNotFoundError, ValueError):
        old = {}
    reusable = old.get("feeds", {}) if old.get("fingerprint") == fp else {}
    entries: dict[str, dict] = {}
    registered = False
    for fid in feeds:
        sig = result.signatures[fid]
        prior = reusable.get(fid)
        if sig is None:
            entries[fid] = {"signature": None, "digest": None, "digest_sha256": None}
        elif prior and prior.get("signature") == sig and prior.get("digest") and store.exists(prior["digest"]):
            entries[fid] = prior
        else:
            t = result.digests.get(fid)
            if t is None:
                if not registered:
                    _register_full(con, store, feeds)
                    registered = True
                t = _digest(con, fid)
            data = parquet_bytes(t)
            path = paths.incremental_digest(contracts()[fid].prefix, _digest_name(fp, sig))
            store.write_bytes(path, data)
            entries[fid] = {"signature": sig, "digest": path, "digest_sha256": hashlib.sha256(data).hexdigest()}
    now = signatures(store)
    if now != result.signatures:
        changed = sorted(f for f in feeds if now.get(f) != result.signatures.get(f))
        log.info("incremental state not recorded: clean data of %s changed during the build", ", ".join(changed),
                 extra={"event": "incremental_state_skipped", "feeds": changed})
        return False
    state = {"snapshot_date": snapshot_date.isoformat(), "version": manifest["version"],
             "content_sha256": manifest["content_sha256"], "fingerprint": fp, "feeds": entries}
    store.write_bytes(paths.incremental_state(), json.dumps(state, indent=1, sort_keys=True).encode())
    keep = {e["digest"] for e in entries.values() if e.get("digest")}
    for e in (old.get("feeds") or {}).values():  # digests only the replaced state referenced
        if e.get("digest") and e["digest"] not in keep:
            store.delete(e["digest"])
    return True


# ---- the build --------------------------------------------------------------------------------------------
def build(con: duckdb.DuckDBPyConnection, store: ObjectStore, snapshot_date: dt.date, pol: Policy, *,
          stale_inputs: Mapping[str, list[str]] | None = None, incremental: bool = True,
          max_fraction: float = MAX_FRACTION, step: Callable[[str], None] | None = None) -> Result:
    """The snapshot's person, household and warning tables: incrementally on top of the date's
    current version when that is valid (module docstring), else by a full build. `stale_inputs`:
    rule id → the stale feeds it reads (as `quality.evaluation.evaluate`)."""
    step = step or (lambda name: None)
    reason = "full build asked for"
    if incremental:
        sigs = signatures(store)
        try:
            res = _incremental(con, store, snapshot_date, pol, sigs, stale_inputs, max_fraction, step)
            if signatures(store) == sigs:
                log.info("monitoring build %s: incremental, %d households re-evaluated (%s)", snapshot_date,
                         res.households, res.reason, extra={"event": "monitoring_build", "mode": "incremental",
                                                            "households": res.households})
                return res
            reason = "clean data changed during the incremental build"
        except _Full as e:
            reason = str(e)
        except (duckdb.Error, pa.ArrowException, OSError, ValueError, KeyError, LookupError, ChecksumMismatch) as e:
            reason = f"incremental build failed ({type(e).__name__})"
            log.warning("monitoring build %s: %s; building in full", snapshot_date, reason,
                        extra={"event": "monitoring_build_fallback"})
    sigs = signatures(store)
    monitoring.register_clean(con, store)
    b = monitoring.build(con, snapshot_date, pol)
    step("warnings")
    w = evaluation.evaluate(b, pol, stale_inputs=stale_inputs)
    log.info("monitoring build %s: full, %d households (%s)", snapshot_date, b.household.num_rows, reason,
             extra={"event": "monitoring_build", "mode": "full", "households": b.household.num_rows})
    return Result(b.person, b.household, w, "full", reason, b.household.num_rows, sigs)


def build_county(con: duckdb.DuckDBPyConnection, store: ObjectStore, snapshot_date: dt.date, pol: Policy,
                 county: str, *, stale_inputs: Mapping[str, list[str]] | None = None,
                 step: Callable[[str], None] | None = None) -> Result:
    """One county's part of a snapshot whose register spans counties: a full build of the same steps
    and rules over the clean feeds cut to what the county's households' results read, and only their rows.

    Households never span counties (checked: a household whose members are registered in two counties
    stops the build). What a household's results read is what the incremental build's dependency review
    says (module docstring): its members' person-level facts, the cases any member belongs to, every
    member of those cases (whatever household or county they live in) with their person-level facts,
    and its own dangerous-house rating. So the build runs over the county's register persons (`P_C`),
    the cases they belong to (`C_C`), every member of those cases and the county's households' own
    rows — the filtered build of `_incremental` with the county's households as the affected set — and
    keeps the rows of the county's households: exactly the rows a build over the whole register would
    give them under the same policy. Warnings are ranked within the county here; the snapshot ranks
    them once more over every county (`quality.evaluation.rank`, when the parts are combined).
    """
    step = step or (lambda name: None)
    feeds = sorted(contracts())
    full = _register_full(con, store, feeds)
    reg = _full_name(REGISTER)
    spans = con.execute(f"""SELECT count(*) FROM (SELECT household_no FROM {reg} GROUP BY household_no
                            HAVING count(DISTINCT substr(region_code, 1, 6)) > 1)""").fetchall()[0][0]
    if spans:
        raise HouseholdsSpanCounties(f"{spans} household(s) of the register have members in two or more counties: "
                                     "a household belongs to one county (fix the register's region codes)")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __county_hh AS SELECT DISTINCT household_no FROM {reg}
                    WHERE substr(region_code, 1, 6) = $county AND household_no IS NOT NULL""", {"county": county})
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __members AS SELECT DISTINCT c.case_no, m.id_no
                    FROM {_full_name(ROSTER)} c, unnest(c.members) AS u(m)""")
    keep = _closure(con, reg, "__county_hh")
    unlinked = sorted(set(feeds) - set(LINKS))
    if unlinked:  # a feed the dependency review does not know: what it links to cannot be cut
        raise HouseholdsSpanCounties(f"feeds without a dependency link cannot be cut by county: {', '.join(unlinked)}")
    monitoring.register_sources(con, {fid: _rows_of(full[fid], LINKS[fid].column, keep[LINKS[fid].kind])
                                      for fid in feeds})
    b = monitoring.build(con, snapshot_date, pol)
    step("warnings")
    w = evaluation.warning_table(b, pol, stale_inputs=stale_inputs)
    warnings = evaluation.rank(w.filter(pc.is_in(w["household_no"], value_set=keep["household"].cast(pa.string()))))
    person, household = (monitoring.canonical_chunks(con.sql(
        f"SELECT * FROM {name} WHERE household_no IN (SELECT household_no FROM __county_hh) "
        f"ORDER BY {', '.join(monitoring.PUBLISHED[name])}").to_arrow_table())
        for name in ("monitoring_person", "monitoring_household"))
    log.info("monitoring build %s county %s: %d households", snapshot_date, county, household.num_rows,
             extra={"event": "monitoring_build", "mode": "county", "county": county, "households": household.num_rows})
    return Result(person, household, warnings, "full", f"county {county} of a register spanning counties",
                  household.num_rows, {})


class HouseholdsSpanCounties(DataError, ValueError):
    """The register cannot be cut by county (a household registered in two counties): a `DataError`."""


def _incremental(con: duckdb.DuckDBPyConnection, store: ObjectStore, snapshot_date: dt.date, pol: Policy,
                 sigs: dict[str, str | None], stale_inputs: Mapping[str, list[str]] | None, max_fraction: float,
                 step: Callable[[str], None]) -> Result:
    state = _read_state(store)
    if state.get("snapshot_date") != snapshot_date.isoformat():
        raise _Full(f"the recorded state is of snapshot {state.get('snapshot_date')}, not {snapshot_date}")
    if state.get("fingerprint") != fingerprint(pol):
        raise _Full("the build code, rules, policy or contracts changed since the recorded build")
    if hashlib.sha256(sql_text().encode()).hexdigest() != REVIEWED_SQL:
        raise _Full("the steps' or rules' SQL changed since the incremental build's dependency review")
    unmapped = sorted(set(sigs) - set(LINKS))
    if unmapped:
        raise _Full(f"feeds read by the build without a dependency link: {', '.join(unmapped)}")
    try:
        current = snapshot.manifest(store, snapshot_date)
    except snapshot.SnapshotNotFound:
        raise _Full(f"no published snapshot {snapshot_date}") from None
    if current.get("content_sha256") != state.get("content_sha256"):
        raise _Full(f"the current version v{current.get('version')} is not the one the recorded build published")
    recorded = state.get("feeds") or {}
    if set(recorded) != set(sigs):
        raise _Full("the recorded state covers other feeds")
    changed = sorted(fid for fid in sigs if sigs[fid] != recorded[fid].get("signature"))

    full = _register_full(con, store, sorted(sigs))
    if con.sql(f"SELECT count(*) FROM {_full_name(REGISTER)} WHERE household_no IS NULL").fetchall()[0][0]:
        raise _Full("the register has persons without a household number")
    digests = _changes(con, store, changed, recorded)
    n_all = int(current["datasets"]["monitoring/household"]["rows"])
    n = con.sql("SELECT count(*) FROM __affected").fetchall()[0][0]
    if n > max_fraction * n_all:
        raise _Full(f"{n} of {n_all} households affected (more than {max_fraction:.0%})")
    what = f"{n} households affected by changes in {', '.join(changed) or 'no feed'}"

    # the filtered build: everything the affected households' results read, and no more
    keep = _closure(con, _full_name(REGISTER), "__affected")
    monitoring.register_sources(con, {fid: _rows_of(full[fid], LINKS[fid].column, keep[LINKS[fid].kind])
                                      for fid in sigs})
    b = monitoring.build(con, snapshot_date, pol)
    step("warnings")
    affected = set(con.sql("SELECT household_no FROM __affected").fetchnumpy()["household_no"].tolist())
    w = evaluation.warning_table(b, pol, stale_inputs=stale_inputs)
    new = w.filter(pc.is_in(w["household_no"], value_set=pa.array(sorted(affected), pa.string())))

    # merge with the current version: its rows of every household not affected
    version = current["version"]
    ordered = sorted(affected)
    person = _merge(con, "monitoring_person", snapshot.read(store, "monitoring/person", snapshot_date,
                                                            identified=True, version=version), ordered)
    household = _merge(con, "monitoring_household", snapshot.read(store, "monitoring/household", snapshot_date,
                                                                   version=version), ordered)
    prev = snapshot.read(store, "warnings", snapshot_date, identified=True, version=version).cast(evaluation.SCHEMA)
    prev = prev.filter(pc.invert(pc.is_in(prev["household_no"], value_set=pa.array(sorted(affected), pa.string()))))
    stale = pa.array([evaluation.stale_for(r, stale_inputs) for r in prev["rule_id"].to_pylist()],
                     evaluation.SCHEMA.field("stale_inputs").type)
    prev = prev.set_column(prev.schema.get_field_index("stale_inputs"), evaluation.SCHEMA.field("stale_inputs"), stale)
    warnings = evaluation.rank(pa.concat_tables([prev, new]))
    return Result(person, household, warnings, "incremental", what, n, sigs, digests)


def _changes(con: duckdb.DuckDBPyConnection, store: ObjectStore, changed: list[str], recorded: dict
             ) -> dict[str, pa.Table]:
    """The changed persons, cases and households of the changed feeds, closed over the cases, into the
    temp table `__affected(household_no)` (and `__members(case_no, id_no)`: the current roster);
    returns the new digests."""
    con.execute("CREATE OR REPLACE TEMP TABLE __chg_person (id_no VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE __chg_case (case_no VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE __chg_household (household_no VARCHAR)")
    con.execute("CREATE OR REPLACE TEMP TABLE __old_members (case_no VARCHAR, id_no VARCHAR)")
    digests: dict[str, pa.Table] = {}
    for fid in changed:
        link = LINKS[fid]
        new = digests[fid] = _digest(con, fid)
        old = _read_digest(store, recorded[fid])
        if old is None:  # the feed had no data: every row is new
            old = new.schema.empty_table()
        if old.schema.names != new.schema.names:
            raise _Full(f"the recorded digest of {fid} has another layout")
        con.register("__dg_new", new)
        con.register("__dg_old", old)
        extra = ", o.extra AS old_extra, n.extra AS new_extra" if link.extra else ""
        con.execute(f"""CREATE OR REPLACE TEMP TABLE __diff AS
                        SELECT coalesce(n.link, o.link) AS link{extra}
                        FROM __dg_new n FULL OUTER JOIN __dg_old o ON n.link IS NOT DISTINCT FROM o.link
                        WHERE n.h IS DISTINCT FROM o.h""")
        con.unregister("__dg_new")
        con.unregister("__dg_old")
        target = {"person": "__chg_person", "case": "__chg_case", "household": "__chg_household"}[link.kind]
        con.execute(f"INSERT INTO {target} SELECT link FROM __diff WHERE link IS NOT NULL")
        if fid == REGISTER:  # a changed register row: its households before and after
            con.execute("""INSERT INTO __chg_household SELECT unnest(old_extra) FROM __diff
                           UNION SELECT unnest(new_extra) FROM __diff""")
        elif fid == ROSTER:  # a changed case: its members before (after: the current roster)
            con.execute("INSERT INTO __old_members SELECT link, unnest(old_extra) FROM __diff WHERE link IS NOT NULL")
        log.debug("incremental: %s changed (%d %s keys)", fid, con.sql("SELECT count(*) FROM __diff").fetchall()[0][0],
                  link.kind)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __members AS SELECT DISTINCT c.case_no, m.id_no
                    FROM {_full_name(ROSTER)} c, unnest(c.members) AS u(m)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE __touched_cases AS SELECT case_no FROM __chg_case
                   UNION SELECT case_no FROM __members WHERE id_no IN (SELECT id_no FROM __chg_person)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE __touched_persons AS SELECT id_no FROM __chg_person
                   UNION SELECT id_no FROM __members WHERE case_no IN (SELECT case_no FROM __touched_cases)
                   UNION SELECT id_no FROM __old_members WHERE case_no IN (SELECT case_no FROM __touched_cases)""")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __affected AS
                    SELECT household_no FROM __chg_household WHERE household_no IS NOT NULL
                    UNION SELECT household_no FROM {_full_name(REGISTER)}
                    WHERE id_no IN (SELECT id_no FROM __touched_persons)""")
    return digests


def _rows_of(data: ds.Dataset | pa.Table, column: str, values: pa.Array) -> pa.Table:
    """The rows whose `column` is one of `values` (a scan that skips row groups by their statistics)."""
    if isinstance(data, pa.Table):
        return data.filter(pc.is_in(data[column], value_set=values))
    return data.to_table(filter=ds.field(column).isin(values))


def _merge(con: duckdb.DuckDBPyConnection, step: str, previous: pa.Table, affected: list[str]) -> pa.Table:
    """A published step's table: the previous version's rows of the households not affected and the
    filtered build's rows of the affected ones, in the published order (`monitoring.PUBLISHED`:
    household first, so a household's rows are one block of the sorted table; strings compare by
    their UTF-8 bytes in DuckDB, Arrow and Python alike)."""
    if monitoring.PUBLISHED[step][0] != "household_no":
        raise _Full(f"the published {step} is not sorted by household first")
    order = ", ".join(monitoring.PUBLISHED[step])
    new = con.sql(f"SELECT * FROM {step} WHERE household_no IN (SELECT household_no FROM __affected) "
                  f"ORDER BY {order}").to_arrow_table()
    if previous.column_names != new.column_names:
        raise _Full(f"the published {step} has other columns than the build")
    prev = previous.cast(new.schema)
    hh = prev["household_no"]
    if len(hh) > 1 and not pc.all(pc.less_equal(hh.slice(0, len(hh) - 1), hh.slice(1))).as_py():
        raise _Full(f"the published {step} is not in household order")
    prev_hh, new_hh = hh.to_pylist(), new["household_no"].to_pylist()
    pieces, start = [], 0
    for h in affected:  # sorted: replace each affected household's block (or insert it)
        lo = bisect.bisect_left(prev_hh, h, start)
        hi = bisect.bisect_right(prev_hh, h, lo)
        a = bisect.bisect_left(new_hh, h)
        pieces += [prev.slice(start, lo - start), new.slice(a, bisect.bisect_right(new_hh, h, a) - a)]
        start = hi
    pieces.append(prev.slice(start))
    return monitoring.canonical_chunks(pa.concat_tables(pieces))


def _closure(con: duckdb.DuckDBPyConnection, register: str, households: str) -> dict[str, pa.Array]:
    """What the results of the households in table `households` read (the dependency review above):
    kind (person, case, household) → the keys to keep — their members; the cases any member belongs to
    (`__members`: case → member, already on `con`); every member of those cases."""
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __pa AS SELECT DISTINCT id_no FROM {register}
                    WHERE household_no IN (SELECT household_no FROM {households})""")
    con.execute("""CREATE OR REPLACE TEMP TABLE __ca AS SELECT DISTINCT case_no FROM __members
                   WHERE id_no IN (SELECT id_no FROM __pa)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE __pneed AS SELECT id_no FROM __pa
                   UNION SELECT id_no FROM __members WHERE case_no IN (SELECT case_no FROM __ca) AND id_no IS NOT NULL""")
    return {kind: pa.array(con.sql(sql).fetchnumpy()["k"].tolist(), pa.string()) for kind, sql in (
        ("person", "SELECT id_no AS k FROM __pneed"), ("case", "SELECT case_no AS k FROM __ca"),
        ("household", f"SELECT household_no AS k FROM {households}"))}
