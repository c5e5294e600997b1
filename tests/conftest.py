"""Fixtures: a real Kafka-protocol broker, a real S3-protocol server, a store per test."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from safetynet.demo.broker import EmbeddedBroker, free_port
from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore


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
