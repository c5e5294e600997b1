"""Shared by the review app's tests: a store with published snapshots, review databases on SQLite
and on the machine's PostgreSQL, accounts per role in two streets, logged-in clients, a live server.

The fixtures (`published`, `review_db`) are registered for every test module by tests/conftest.py
(`pytest_plugins`); import only the helpers (`from tests.review_support import client_for, ...`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from safetynet.cli import main
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from safetynet.demo.broker import free_port
from safetynet.demo.synth import generate
from tests.pg import temp_database

FIRST, NEXT = dt.date(2026, 11, 1), dt.date(2026, 12, 1)
PASSWORD = "Correct-horse-42"
STREET_A, STREET_B = "430103001", "430103002"  # 坡子街街道, 城南路街道 (street A's first community holds planted households)

# username → (role, region prefix): every role, in street A's branch and (where it has one) another
ACCOUNTS = {
    "admin": ("admin", ""),
    "county": ("county_reviewer", "430103"),
    "county_other": ("county_reviewer", "430104"),
    "street_a": ("street_worker", STREET_A),
    "street_b": ("street_worker", STREET_B),
    "community_a": ("community_assistant", STREET_A + "001"),
    "auditor": ("auditor", "430103"),
}


def publish_snapshot(store_dir: Path, day: dt.date) -> None:
    """`safetynet run` for one snapshot date over the store's clean data (quality gate, build, publish)."""
    rc = main(["run", "--snapshot-date", day.isoformat(), "--store", str(store_dir), "--no-progress"])
    assert rc == 0


@pytest.fixture(scope="session")
def published(tmp_path_factory) -> ObjectStore:
    """A store with the 2026-11-01 snapshot of a 2,500-person district published (only that one)."""
    from safetynet.demo.departments import drop_truth_as_files

    old = os.environ.pop("SAFETYNET_KAFKA_BOOTSTRAP", None)
    try:
        store_dir = tmp_path_factory.mktemp("review_store")
        store = ObjectStore.from_settings(Settings(store=str(store_dir)))
        # community 430103001001 holds every rule's first planted town household (safetynet.demo.synth.plant),
        # so it has the ≥ 5 warnings the decision tests take one each of, whatever the seed
        drop_truth_as_files(generate(persons=2500, seed=9), store)
        publish_snapshot(store_dir, FIRST)
    finally:
        if old is not None:
            os.environ["SAFETYNET_KAFKA_BOOTSTRAP"] = old
    store.dir = store_dir  # type: ignore[attr-defined]
    return store


@dataclass
class ReviewDB:
    kind: str
    url: str
    engine: object


def new_review_db(kind: str, tmp: Path) -> tuple[ReviewDB, callable]:
    from safetynet.review import db

    if kind == "sqlite":
        url, drop = f"sqlite:///{tmp / f'review-{uuid.uuid4().hex[:6]}.db'}", (lambda: None)
    else:
        url, drop = temp_database("sn_review")
    eng = db.engine_for(url)
    db.migrate(eng)

    def close() -> None:
        eng.dispose()
        drop()

    return ReviewDB(kind, url, eng), close


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def review_db(request, tmp_path_factory, published):
    """A migrated review database (SQLite, then PostgreSQL) with the first snapshot loaded and ACCOUNTS."""
    from safetynet.review import auth
    from safetynet.review.load import load_snapshot

    rdb, close = new_review_db(request.param, tmp_path_factory.mktemp(f"review_{request.param}"))
    load_snapshot(rdb.engine, published, FIRST)
    for username, (role, prefix) in ACCOUNTS.items():
        auth.add_user(rdb.engine, username, PASSWORD, role, prefix, f"测试·{username}")
    yield rdb
    close()


def client_for(engine, username: str | None):
    """A TestClient logged in as `username` through the login form (None: not logged in)."""
    from fastapi.testclient import TestClient

    from safetynet.review.app import create_app

    c = TestClient(create_app(engine), follow_redirects=False)
    if username is not None:
        login(c, username)
    return c


def login(c, username: str, password: str = PASSWORD):
    r = c.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
    r = c.post("/login", data={"username": username, "password": password, "csrf_token": token, "next": "/"})
    assert r.status_code == 303, r.text[:500]
    return r


def csrf_of(c) -> str:
    return c.get("/api/v1/me").json()["csrf_token"]


@dataclass
class LiveServer:
    url: str
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def live_server(engine) -> LiveServer:
    """The app under uvicorn on a free loopback port, in a thread (for the browser tests)."""
    import uvicorn

    from safetynet.review.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    t = threading.Thread(target=server.run, name="review-app", daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the review app did not start"
    return LiveServer(f"http://127.0.0.1:{port}", server, t)
