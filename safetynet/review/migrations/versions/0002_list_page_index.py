"""list page index: cut deep pages on a covering index (replaces ix_warnings_order)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("warnings", schema=None) as batch_op:
        batch_op.drop_index("ix_warnings_order")
        batch_op.create_index("ix_warnings_page", ["snapshot_date", "score", "household_no", "warning_id",
                                                   "region_code", "alert_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("warnings", schema=None) as batch_op:
        batch_op.drop_index("ix_warnings_page")
        batch_op.create_index("ix_warnings_order", ["snapshot_date", "score", "warning_id"], unique=False)
