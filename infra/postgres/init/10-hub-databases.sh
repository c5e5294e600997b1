#!/usr/bin/env bash
# Runs once, when the postgres container initialises an empty data volume
# (/docker-entrypoint-initdb.d). Changing passwords later: ALTER ROLE ... PASSWORD by hand.
#
# Two databases, each owned by its own login role, and neither role can connect to the other's
# database: `airflow` (Airflow's metadata) and `review` (the review app: users, audit log).
set -euo pipefail

: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${REVIEW_DB_PASSWORD:?REVIEW_DB_PASSWORD is not set}"

# Passwords go in as psql variables (:'var' quotes them as SQL literals), never into the SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v airflow_password="$AIRFLOW_DB_PASSWORD" \
     -v review_password="$REVIEW_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow ENCODING 'UTF8';
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE airflow TO airflow;

CREATE ROLE review LOGIN PASSWORD :'review_password';
CREATE DATABASE review OWNER review ENCODING 'UTF8';
REVOKE ALL ON DATABASE review FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE review TO review;
SQL

echo "postgres init: databases airflow and review created"
