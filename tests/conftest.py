"""Fixtures: a real Kafka-protocol broker, a real S3-protocol server, a store per test — and the test
tiers: each test gets the marker of every heavy fixture it uses (directly or through other fixtures),
so `make test-fast` (`-m "not (broker or s3 or postgres or browser or airflow or slow or faults)"`)
runs only the pure tests. See README "Test tiers"."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.broker import EmbeddedBroker, free_port

#: the review app's fixtures (`published`, a district published once per session; `review_db`), here so
#: every module shares the one session-scoped build instead of importing its own copy
pytest_plugins = ["tests.review_support"]

#: fixture name → the tier marker of what it starts (or `slow`: what it runs). Matched against
#: `item.fixturenames`, the transitive closure of the fixtures a test uses, so a fixture built on these
#: (s3_store, topic, scenario, review_db …) needs no entry of its own.
# Speed is measured in benchmarks, never in tests: hypothesis's per-example deadline (200 ms) failed a
# property test on a loaded machine (286 ms) although every example agreed. Profiles set elsewhere keep theirs.
hypothesis_settings.register_profile("hub", deadline=None)
hypothesis_settings.load_profile("hub")

HEAVY_FIXTURES: dict[str, str] = {
    # an embedded Tansu broker (safetynet.demo.broker.EmbeddedBroker)
    "broker": "broker",  # here; also tests/test_airflow_postgres.py's module-scoped one
    "rig": "broker",  # tests/faults/conftest.py
    "durable_broker": "broker",  # tests/faults/test_faults.py (Tansu on moto S3)
    "feed_broker": "broker",  # tests/test_contracts.py
    "demo": "broker",  # tests/test_cli.py: a `safetynet demo` subprocess, which starts its own broker
    # moto's ThreadedMotoServer
    "s3_server": "s3",  # here
    # the machine's PostgreSQL (tests/pg.py temp_database)
    "pg_url": "postgres",  # tests/test_airflow_postgres.py
    # Playwright (pytest-playwright launches Debian's chromium)
    "browser": "browser",
    "page": "browser",
    "context": "browser",
    "new_context": "browser",
    # Airflow subprocesses (`airflow db migrate`, `dags test`, standalone scheduler …)
    "airflow_env": "airflow",  # tests/test_dags.py
    "driver": "airflow",  # tests/test_dags.py
    "stack": "airflow",  # tests/test_airflow_postgres.py
    # `slow`: no server, but the whole pipeline (`safetynet run`) over a generated district
    "published": "slow",  # tests/review_support.py (so every review_db test), tests/test_backtest.py
    "run_store": "slow",  # tests/test_pipeline.py: one run per test
}
#: parametrized fixtures whose parameter picks the server: (fixture, param value) → marker
HEAVY_PARAMS: dict[tuple[str, str], str] = {
    ("review_db", "postgresql"): "postgres",  # tests/review_support.py: SQLite, then PostgreSQL
}
TIER_MARKERS = ("broker", "s3", "postgres", "browser", "airflow")  # and `slow` (by fixture or by hand)


def tier_markers(item: pytest.Item) -> set[str]:
    """The tier markers a collected test gets from the fixtures it uses."""
    names = set(getattr(item, "fixturenames", ()))
    found = {m for f, m in HEAVY_FIXTURES.items() if f in names}
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        found |= {m for (f, v), m in HEAVY_PARAMS.items() if f in names and callspec.params.get(f) == v}
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for marker in sorted(tier_markers(item) - have):
            item.add_marker(getattr(pytest.mark, marker))


@pytest.fixture(scope="session")
def broker():
    """One embedded Tansu broker for the session; tests use unique topics/groups."""
    with EmbeddedBroker() as b:
        yield b


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server on a free loopback port (the S3 wire protocol, as MinIO speaks it)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"server": server, "port": port, "endpoint": f"http://127.0.0.1:{port}"}
    server.stop()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Browser tests (pytest-playwright): Debian's Chromium, headless, unable to resolve anything
    but the loopback address — never a downloaded browser, never the network."""
    return {**browser_type_launch_args, "executable_path": "/usr/bin/chromium", "headless": True,
            "args": ["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                     "--disable-background-networking", "--disable-component-update", "--no-first-run",
                     "--disable-sync", "--disable-gpu"]}


@pytest.fixture
def local_settings(tmp_path: Path) -> Settings:
    return Settings(store=str(tmp_path / "store"), work_dir=tmp_path / "work", progress=False,
                    kafka_group=f"g-{uuid.uuid4().hex[:8]}", mappings=tmp_path / "mappings")


@pytest.fixture
def local_store(local_settings: Settings) -> ObjectStore:
    return ObjectStore.from_settings(local_settings)


@pytest.fixture
def s3_settings(s3_server, tmp_path: Path) -> Settings:
    return Settings(store=f"s3://t-{uuid.uuid4().hex[:12]}", s3_endpoint=s3_server["endpoint"],
                    s3_access_key="testing", s3_secret_key="testing", work_dir=tmp_path / "work",
                    progress=False, store_retries=10, store_backoff_max_s=2.0,
                    kafka_group=f"g-{uuid.uuid4().hex[:8]}", mappings=tmp_path / "mappings")


@pytest.fixture
def s3_store(s3_settings: Settings) -> ObjectStore:
    return ObjectStore.from_settings(s3_settings)
