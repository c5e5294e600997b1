"""The monitoring build fanned out by county (issue #17 point 4), without Airflow.

A two-county synthetic city (`generate(..., counties=("430103", "430104"))`: the district's streets
split into two counties; households never span them) is written as `clean/` Parquet. Then:

* the single-process path (`pipeline.build_snapshot` with one policy per county) and the DAG's
  path (`build_county` per county, each part staged in the store and read back, `publish_parts`)
  publish the same bytes: every file's sha256 in the manifest, and the manifest's content hash;
* each county's part holds exactly the rows a build over the whole register gives its households
  (the county cut reads what the dependency review says a household reads, nothing less);
* the warnings are ranked once over both counties (`quality.evaluation.rank`), and each county's
  warnings carry its own policy version;
* a one-county store goes through the same functions and keeps today's bytes (a staged part read
  back publishes what the single process publishes).

The Celery run of the same DAG on two workers is `tests/test_distributed.py`.
"""

from __future__ import annotations

import datetime as dt
import shutil

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from quality import evaluation, policy
from safetynet import pipeline
from safetynet.build import monitoring
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore, parquet_bytes
from safetynet.demo.synth import generate
from safetynet.intake.clean import clean_path
from safetynet.publish import incremental, snapshot
from schemas import normalise
from schemas.errors import DataError
from schemas.registry import contracts

#: builds a generated city several times over (whole pipelines): not in `make test-fast`
pytestmark = pytest.mark.slow

SNAP = dt.date(2026, 11, 1)
COUNTIES = ("430103", "430104")
PERSONS, SEED = 3000, 7


def _write_truth(d, root) -> ObjectStore:
    store = ObjectStore.from_settings(Settings(store=str(root), progress=False))
    for fid, c in contracts().items():
        t = d.table(fid)
        store.write_bytes(clean_path(c), parquet_bytes(t.sort_by([(k, "ascending") for k in c.key])))
    return store


def _settings(store: ObjectStore) -> Settings:
    return Settings(store=store.root, kafka_bootstrap=None, progress=False)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    d = generate(persons=PERSONS, seed=SEED, counties=COUNTIES)
    root = tmp_path_factory.mktemp("city") / "store"
    _write_truth(d, root)
    return root


@pytest.fixture
def store(city, tmp_path) -> ObjectStore:
    root = tmp_path / "store"
    shutil.copytree(city, root, dirs_exist_ok=True)
    return ObjectStore.from_settings(Settings(store=str(root), progress=False))


def _files(m: dict) -> dict[str, str]:
    return {p: f["sha256"] for p, f in m["files"].items()}


def _staged(store: ObjectStore, pols: dict, run_key: str = "run-1") -> pipeline.RunResult:
    """What the DAG does: one build per county (each its own process there), staged and read back."""
    s = _settings(store)
    counties = sorted(pols)
    descriptors = [pipeline.stage_part(store, SNAP, run_key, pipeline.build_county(
        s, store, SNAP, c, pols[c], counties=counties)) for c in reversed(counties)]  # any order
    parts = [pipeline.load_part(store, x["part"]) for x in descriptors]
    res = pipeline.publish_parts(s, store, SNAP, parts, quality=False, publish_kafka=False,
                                 gate_policy=pols[counties[0]] if len(counties) == 1 else None)
    assert pipeline.clear_staging(store, SNAP) == 4 * len(counties)  # 3 tables + the descriptor per county
    return res


def test_the_generator_splits_the_district_into_two_counties_households_never_span(city):
    store = ObjectStore.from_settings(Settings(store=str(city), progress=False))
    assert pipeline.counties_of(store) == list(COUNTIES)
    reg = store.read_parquet(clean_path(contracts()["public_security.person"]))
    per_hh = pa.table({"h": reg["household_no"], "c": pc.utf8_slice_codeunits(reg["region_code"], 0, 6)})
    spans = per_hh.group_by("h").aggregate([("c", "count_distinct")])
    assert pc.max(spans["c_count_distinct"]).as_py() == 1
    with pytest.raises(pipeline.RegisterSpansCounties, match=r"spans counties \['430103', '430104'\]"):
        pipeline.county_of(store)
    assert {c: p.version for c, p in pipeline.policies(store, SNAP).items()} == {
        "430103": "430103-2026.1", "430104": "430104-2026.1"}


def test_single_process_and_staged_parts_publish_identical_bytes(store, tmp_path):
    pols = pipeline.policies(store, SNAP)
    other = ObjectStore.from_settings(Settings(store=str(tmp_path / "other"), progress=False))
    shutil.copytree(store.root, other.root, dirs_exist_ok=True)

    one = pipeline.build_snapshot(_settings(store), store, SNAP, pols, quality=False, publish_kafka=False)
    fanned = _staged(other, pols)
    m1, m2 = snapshot.manifest(store, SNAP), snapshot.manifest(other, SNAP)
    assert one.manifest["status"] == fanned.manifest["status"] == "published"
    assert _files(m1) == _files(m2) and m1["content_sha256"] == m2["content_sha256"]
    assert m1["policy_version"] == "430103-2026.1+430104-2026.1"
    assert one.build_mode == "full" and "per county" in one.build_reason

    person = snapshot.read(store, "monitoring/person", SNAP, identified=True)
    assert person.num_rows == PERSONS
    assert sorted(pc.unique(person["county_code"]).to_pylist()) == list(COUNTIES)
    keys = list(zip(person["household_no"].to_pylist(), person["id_no"].to_pylist(), strict=True))
    assert keys == sorted(keys)  # one published order over both counties
    w = snapshot.read(store, "warnings", SNAP, identified=True)
    assert w.num_rows > 0
    by_county = {c: set(w.filter(pc.starts_with(w["region_code"], c))["policy_version"].to_pylist()) for c in COUNTIES}
    assert by_county == {"430103": {"430103-2026.1"}, "430104": {"430104-2026.1"}}
    # one ranking over both counties: ranks 1..n by household score, the list in rank order
    ranks = w["household_rank"].to_pylist()
    assert ranks == sorted(ranks) and sorted(set(ranks)) == list(range(1, len(set(ranks)) + 1))
    assert w.equals(evaluation.rank(w.cast(evaluation.SCHEMA)).select(w.column_names))
    # a re-run of either path finds the same content: nothing written
    again = _staged(other, pols, run_key="run-2")
    assert again.manifest["status"] == "unchanged"


def test_each_county_holds_exactly_the_whole_registers_rows_of_its_households(store):
    """With one policy for both counties, the county parts together are the whole-register build."""
    pol = policy.for_region("430103", 2026)
    con = normalise.connect(memory_limit="1GB")
    try:
        whole = incremental.build(con, store, SNAP, pol, incremental=False)
    finally:
        con.close()
    s = _settings(store)
    parts = []
    for c in COUNTIES:
        con = normalise.connect(memory_limit="1GB")
        try:
            parts.append(incremental.build_county(con, store, SNAP, pol, c))
        finally:
            con.close()
    for p, c in zip(parts, COUNTIES, strict=True):
        assert set(pc.unique(p.household["county_code"]).to_pylist()) == {c}
        assert 0 < p.person.num_rows < whole.person.num_rows
    for name, keys in (("person", monitoring.PUBLISHED["monitoring_person"]),
                       ("household", monitoring.PUBLISHED["monitoring_household"])):
        combined = pa.concat_tables([getattr(p, name) for p in parts]).sort_by([(k, "ascending") for k in keys])
        assert combined.equals(getattr(whole, name).sort_by([(k, "ascending") for k in keys])), name
    ranked = evaluation.rank(pa.concat_tables([p.warnings for p in parts]))
    assert ranked.equals(whole.warnings)
    assert s.duckdb_memory_limit  # the settings the pipeline builds with


def test_a_household_registered_in_two_counties_stops_the_county_build(store):
    c = contracts()["public_security.person"]
    reg = store.read_parquet(clean_path(c))
    codes = reg["region_code"].to_pylist()
    hh = reg["household_no"].to_pylist()
    sizes: dict[str, int] = {}
    for h, code in zip(hh, codes, strict=True):
        if code.startswith("430103"):
            sizes[h] = sizes.get(h, 0) + 1
    target = min(h for h, n in sizes.items() if n >= 2)
    second = [i for i, h in enumerate(hh) if h == target][1]  # one member of the household moves county
    moved = [*codes[:second], "430104" + codes[second][6:], *codes[second + 1:]]
    assert moved != codes
    store.write_bytes(clean_path(c), parquet_bytes(reg.set_column(reg.schema.get_field_index("region_code"),
                                                                  "region_code", pa.array(moved, pa.string()))))
    con = normalise.connect(memory_limit="1GB")
    try:
        with pytest.raises(DataError, match="household"):
            incremental.build_county(con, store, SNAP, policy.for_region("430103", 2026), "430103")
    finally:
        con.close()


def test_a_one_county_store_keeps_its_bytes_whichever_way_it_runs(tmp_path):
    d = generate(persons=2000, seed=SEED)
    a = _write_truth(d, tmp_path / "a")
    b = ObjectStore.from_settings(Settings(store=str(tmp_path / "b"), progress=False))
    shutil.copytree(a.root, b.root, dirs_exist_ok=True)
    pol = policy.for_region("430103", 2026)
    assert pipeline.policies(a, SNAP).keys() == {"430103"}
    one = pipeline.build_snapshot(_settings(a), a, SNAP, pol, quality=False, publish_kafka=False)
    staged = _staged(b, {"430103": pol})
    assert _files(snapshot.manifest(a, SNAP)) == _files(snapshot.manifest(b, SNAP))
    assert snapshot.manifest(a, SNAP)["policy_version"] == "430103-2026.1"
    assert (one.build_mode, staged.build_mode) == ("full", "full")
    # and the bytes a build that never heard of counties publishes: the build + rank + encode of before
    con = normalise.connect(memory_limit="1GB")
    try:
        monitoring.register_clean(con, a)
        bld = monitoring.build(con, SNAP, pol)
        tables = {"monitoring/person": bld.person, "monitoring/household": bld.household,
                  "warnings": evaluation.evaluate(bld, pol, stale_inputs=None)}
        ps = snapshot.Pseudonymiser(_settings(a).pseudonym_secret.get_secret_value().encode())
        blobs = snapshot.encode(tables, ps)
    finally:
        con.close()
    m = snapshot.manifest(a, SNAP)
    for (name, ident), (_, entry) in blobs.items():
        if name != "warnings":  # warnings carry the run's stale inputs: compared above through both paths
            assert m["files"][snapshot.path_of(name, SNAP, 1, ident)]["sha256"] == entry["sha256"], name
