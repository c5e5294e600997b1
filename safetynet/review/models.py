"""The review app's tables (SQLAlchemy Core). The schema is created and changed only by the
Alembic migrations in `safetynet/review/migrations/`; this module is their reference.

* `users`, `sessions`, `login_attempts` — local accounts (argon2 hashes), server-side sessions;
* `snapshots` — published snapshots loaded (from their manifests);
* `warnings` — every loaded warning row (one per snapshot × warning), with its facts;
* `households`, `members` — the latest snapshot's households and persons (the household page);
* `cases` — one per `alert_key` (rule + household + person): the lifecycle across snapshots;
* `actions` — every staff decision on a case (who, when, snapshot, rule version);
* `facet_counts` — the list's filter counts: warnings per snapshot × filter dimensions × case status, kept
  exact in place (a decision moves its warnings' counts from the old status to the new one, in its own
  transaction; a load recounts its date), so a list page never counts the county's warnings;
* `audit` — append-only, hash-chained log of views, unmasks, exports, decisions, logins.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False, unique=True),
    Column("display_name", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("region_prefix", String(12), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

sessions = Table(
    "sessions", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

login_attempts = Table(
    "login_attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("ok", Boolean, nullable=False),
    Index("ix_login_attempts_username_at", "username", "at"),
    Index("ix_login_attempts_ip_at", "ip", "at"),
)

snapshots = Table(
    "snapshots", metadata,
    Column("snapshot_date", Date, primary_key=True),
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("version", Integer),  # the snapshot version of its date (see safetynet.publish.snapshot); 0: before versions
    Column("policy_version", String(64)),
    Column("warnings", Integer, nullable=False),
    Column("households", Integer, nullable=False),
    Column("reopened", Integer, nullable=False, default=0),
    # feeds this snapshot was computed without or on old data: [{feed_id, title_zh, kind, problems}]
    Column("input_notes", JSON),
)

warnings = Table(
    "warnings", metadata,
    Column("snapshot_date", Date, primary_key=True),
    Column("warning_id", String(32), primary_key=True),
    Column("alert_key", String(32), nullable=False),
    Column("rule_id", String(48), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("rule_title_zh", String(64), nullable=False),
    Column("severity", String(4), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("household_no", String(32), nullable=False),
    Column("region_code", String(12), nullable=False),
    Column("street_code", String(9), nullable=False),
    Column("county_code", String(6), nullable=False),
    Column("subject_id_no", String(18)),
    Column("categories", String(64), nullable=False, default=""),  # the household's active assistance
    Column("summary_zh", Text, nullable=False),
    Column("thresholds", JSON, nullable=False),
    Column("facts", JSON, nullable=False),
    Column("magnitude", Float, nullable=False),
    Column("score", Float, nullable=False),
    Column("household_score", Float, nullable=False),
    Column("household_rank", Integer, nullable=False),
    Column("policy_version", String(64), nullable=False),
    Column("stale_inputs", JSON, nullable=False),
    Index("ix_warnings_list", "snapshot_date", "region_code", "score"),
    Index("ix_warnings_household", "household_no", "snapshot_date"),
    Index("ix_warnings_alert", "alert_key", "snapshot_date"),
)

# the list's page is cut on this index alone (covering: order, scope, join keys and the filters on warnings), see
# queries.list_warnings; descending, as the list orders (risk score, then household and warning number), so a page —
# and a keyset cursor's seek, one row-value comparison — is one forward range scan with no sort, and a filter is
# tested on the index entries, never on the table rows
Index("ix_warnings_page", warnings.c.snapshot_date, warnings.c.score.desc(), warnings.c.household_no.desc(),
      warnings.c.warning_id.desc(), warnings.c.region_code, warnings.c.alert_key, warnings.c.street_code,
      warnings.c.rule_id, warnings.c.severity, warnings.c.categories)

households = Table(
    "households", metadata,
    Column("household_no", String(32), primary_key=True),
    Column("snapshot_date", Date, nullable=False),
    Column("region_code", String(12), nullable=False),
    Column("street_code", String(9), nullable=False),
    Column("county_code", String(6), nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_households_region", "region_code"),
)

members = Table(
    "members", metadata,
    Column("household_no", String(32), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("id_no", String(18), nullable=False),
    Column("name", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_members_id_no", "id_no"),
)

cases = Table(
    "cases", metadata,
    Column("alert_key", String(32), primary_key=True),
    Column("household_no", String(32), nullable=False),
    Column("region_code", String(12), nullable=False),
    Column("street_code", String(9), nullable=False),
    Column("rule_id", String(48), nullable=False),
    Column("status", String(16), nullable=False),
    Column("assignee_id", Integer, ForeignKey("users.id")),
    Column("first_snapshot", Date, nullable=False),
    Column("last_snapshot", Date, nullable=False),
    Column("current_warning_id", String(32), nullable=False),
    Column("decided_warning_id", String(32)),  # the warning version a dismissal/closure was based on
    Column("reopen_note", Text),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_cases_region_status", "region_code", "status"),
    Index("ix_cases_household", "household_no"),
)

# the list's facet counts (see queries.FacetCounts): one row per group of a snapshot's warnings with the same
# filter values and case status; `n` drops to 0 rather than the row going (a decision only moves counts)
facet_counts = Table(
    "facet_counts", metadata,
    Column("snapshot_date", Date, primary_key=True),
    Column("region_code", String(12), primary_key=True),
    Column("street_code", String(9), primary_key=True),
    Column("rule_id", String(48), primary_key=True),
    Column("rule_title_zh", String(64), primary_key=True),
    Column("severity", String(4), primary_key=True),
    Column("categories", String(64), primary_key=True),
    Column("status", String(16), primary_key=True),
    Column("n", Integer, nullable=False),
)

actions = Table(
    "actions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_key", String(32), ForeignKey("cases.alert_key"), nullable=False),
    Column("action", String(16), nullable=False),
    Column("from_status", String(16), nullable=False),
    Column("to_status", String(16), nullable=False),
    Column("user_id", Integer, ForeignKey("users.id")),  # None: the loader (reopen)
    Column("at", DateTime(timezone=True), nullable=False),
    Column("snapshot_date", Date, nullable=False),
    Column("snapshot_version", Integer),  # the version of that date the decision was made on
    Column("warning_id", String(32), nullable=False),
    Column("rule_version", Integer, nullable=False),
    Column("reason_code", String(32)),
    Column("assistance", String(32)),
    Column("assignee_id", Integer, ForeignKey("users.id")),
    Column("note", Text),
    Index("ix_actions_alert", "alert_key", "at"),
)

audit = Table(
    "audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("user_id", Integer),
    Column("username", String(64), nullable=False),
    Column("role", String(32), nullable=False),
    Column("ip", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("object_type", String(32), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("region_code", String(12), nullable=False),
    Column("detail", Text, nullable=False),  # canonical JSON
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
    Index("ix_audit_at", "at"),
    Index("ix_audit_user", "username", "at"),
    Index("ix_audit_object", "object_type", "object_id"),
)

# one row: the hash of the last audit entry, locked while appending (serialises the chain)
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
)
