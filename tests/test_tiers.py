"""The test tiers: tests/conftest.py marks each test by the heavy fixtures it uses, and `make test-fast`'s
marker expression keeps only the pure ones. One nested collection (no test runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import HEAVY_FIXTURES, HEAVY_PARAMS, TIER_MARKERS

ROOT = Path(__file__).resolve().parents[1]
FAST = "not (broker or s3 or postgres or browser or airflow or slow or faults)"
FILES = ["tests/test_kafka_ingest.py", "tests/test_ingest_leases.py", "tests/test_review_schema.py",
         "tests/test_normalise.py"]


class Probe:
    """A plugin for a nested collection: each collected test's markers, the ones `-m` selects on."""

    def __init__(self) -> None:
        self.seen: dict[str, set[str]] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.seen = {i.nodeid: {m.name for m in i.iter_markers()} for i in session.items}


@pytest.fixture(scope="module")
def collected() -> dict[str, set[str]]:
    """FILES collected in this process (modules already imported are reused), output in the test's capture."""
    probe = Probe()
    args = ["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
            *(str(ROOT / f) for f in FILES)]
    assert pytest.main(args, plugins=[probe]) == pytest.ExitCode.OK
    return probe.seen


def selected(marks: set[str], expr: str) -> bool:
    """Whether `-m expr` keeps a test with these markers (the expressions here are plain Python booleans)."""
    names = {*TIER_MARKERS, "slow", "faults", "integration"}
    return bool(eval(expr, {"__builtins__": {}}, {n: n in marks for n in names}))


def find(collected: dict[str, set[str]], fragment: str) -> set[str]:
    hits = [v for k, v in collected.items() if fragment in k]
    assert len(hits) == 1, (fragment, sorted(collected))
    return hits[0]


def test_a_fixture_used_indirectly_marks_the_test(collected):
    # the `topic` fixture uses `broker`: the marker comes from the transitive closure
    marks = find(collected, "test_kafka_ingest.py::test_events_reconcile_and_clean_applies_dedup_corrections_deletes")
    assert "broker" in marks
    assert not selected(marks, FAST)


def test_s3_store_marks_every_parameter(collected):
    for kind in ("local", "s3"):
        marks = find(collected, f"test_one_holder_at_a_time_busy_message_release_and_takeover[{kind}]")
        assert "s3" in marks and not selected(marks, FAST)


def test_only_the_postgresql_parameter_is_marked_postgres(collected):
    pg = find(collected, "test_migrations_match_the_models[postgresql]")
    lite = find(collected, "test_migrations_match_the_models[sqlite]")
    assert "postgres" in pg and not selected(pg, FAST)
    assert "postgres" not in lite and selected(lite, FAST)


def test_pure_tests_carry_no_tier_marker_and_stay_in_the_fast_tier(collected):
    pure = [k for k in collected if k.startswith("tests/test_normalise.py::")]
    assert len(pure) > 10
    for k in pure:
        assert not collected[k] & {*TIER_MARKERS, "slow", "faults"}, k
        assert selected(collected[k], FAST)
    assert not selected(find(collected, "test_normalise.py::test_bad_dates_are_quarantined[2024-13-01]"), "broker")


def test_every_tier_marker_is_registered_and_mapped(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    assert {*TIER_MARKERS, "slow", "faults"} <= registered
    mapped = set(HEAVY_FIXTURES.values()) | set(HEAVY_PARAMS.values())
    assert mapped == {*TIER_MARKERS, "slow"}


def test_the_makefile_fast_target_deselects_every_tier():
    make = (ROOT / "Makefile").read_text()
    assert f'-m "{FAST}"' in make
