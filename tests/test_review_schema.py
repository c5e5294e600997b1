"""The review database's schema comes only from the Alembic migrations, and they match the models."""

from __future__ import annotations

import pytest

from tests.review_support import new_review_db


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_migrations_match_the_models(kind, tmp_path):
    from alembic import command

    from safetynet.review import db

    rdb, close = new_review_db(kind, tmp_path)
    try:
        cfg = db.alembic_config(rdb.engine)
        with rdb.engine.begin() as c:
            cfg.attributes["connection"] = c
            command.check(cfg)  # raises when the models would need a new migration
        db.migrate(rdb.engine)  # idempotent
    finally:
        close()
