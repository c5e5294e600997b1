"""A throw-away database on the machine's PostgreSQL (`SAFETYNET_TEST_POSTGRES`), for one test module."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

PG_ADMIN = os.environ.get("SAFETYNET_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def temp_database(prefix: str) -> tuple[str, Callable[[], None]]:
    """(SQLAlchemy psycopg2 URL of a new empty database, a function dropping it)."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    except psycopg2.OperationalError as e:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN} (set SAFETYNET_TEST_POSTGRES): {e}")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    d = admin.get_dsn_parameters()

    def drop() -> None:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()

    return f"postgresql+psycopg2://{d['user']}@{d['host']}:{d['port']}/{name}", drop
