"""list under load: facet counts kept per group (table `facet_counts`), the page index in the list's order

`facet_counts` holds, per snapshot, the number of warnings for each combination of the list's filter
dimensions (community, street, rule, severity, assistance categories) and case status; decisions and loads
keep it exact in their own transactions, and the list reads its counts from it instead of a GROUP BY over
the county's warnings. It is filled here from the warnings and cases already loaded.

`ix_warnings_page` is re-created in the list's order — `score DESC, household_no DESC, warning_id DESC` — so a
page is a forward range scan of the index with no sort, and a keyset cursor one row-value comparison the index
seeks to (also within a run of equal scores); it also holds the columns the list filters on (street, rule,
severity, categories), so a filtered page is cut on index entries alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_DIMS = "snapshot_date, region_code, street_code, rule_id, rule_title_zh, severity, categories"


def upgrade() -> None:
    op.create_table(
        "facet_counts",
        sa.Column("snapshot_date", sa.Date(), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("street_code", sa.String(length=9), nullable=False),
        sa.Column("rule_id", sa.String(length=48), nullable=False),
        sa.Column("rule_title_zh", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=4), nullable=False),
        sa.Column("categories", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("snapshot_date", "region_code", "street_code", "rule_id", "rule_title_zh",
                                "severity", "categories", "status"),
    )
    dims = ", ".join(f"w.{d.strip()}" for d in _DIMS.split(","))
    op.execute(f"INSERT INTO facet_counts ({_DIMS}, status, n) "
               f"SELECT {dims}, c.status, count(*) FROM warnings w JOIN cases c ON c.alert_key = w.alert_key "
               f"GROUP BY {dims}, c.status")
    with op.batch_alter_table("warnings", schema=None) as batch_op:
        batch_op.drop_index("ix_warnings_page")
    op.create_index("ix_warnings_page", "warnings",
                    ["snapshot_date", sa.text("score DESC"), sa.text("household_no DESC"), sa.text("warning_id DESC"),
                     "region_code", "alert_key", "street_code", "rule_id", "severity", "categories"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_warnings_page", table_name="warnings")
    with op.batch_alter_table("warnings", schema=None) as batch_op:
        batch_op.create_index("ix_warnings_page", ["snapshot_date", "score", "household_no", "warning_id",
                                                   "region_code", "alert_key"], unique=False)
    op.drop_table("facet_counts")
