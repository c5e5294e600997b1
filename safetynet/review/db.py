"""The review database: engine, migrations (Alembic), small helpers shared by the app and CLI."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from sqlalchemy import Engine, create_engine, event

from safetynet.core.settings import Settings

MIGRATIONS = Path(__file__).parent / "migrations"


def url_of(settings: Settings) -> str:
    if settings.review_db:
        return settings.review_db
    Path(settings.work_dir).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(settings.work_dir).resolve() / 'review.db'}"


def engine_for(url: str) -> Engine:
    if url.startswith("sqlite"):
        eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(eng, "connect")
        def _pragmas(dbapi_con, _record) -> None:  # WAL: readers never wait for the writer
            cur = dbapi_con.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return eng
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


def alembic_config(engine: Engine):
    from alembic.config import Config

    # alembic's default stdout is the sys.stdout of when alembic.config was first imported (a
    # default argument), which may be long gone (a closed capture, a redirected pipe): pass today's
    cfg = Config(stdout=sys.stdout)
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to `revision` (idempotent)."""
    from alembic import command

    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
