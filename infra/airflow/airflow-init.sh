#!/usr/bin/env bash
# One-shot set-up of the Airflow metadata DB, run by the `airflow-init` service of
# docker-compose.yml (through the image's entrypoint, which first waits for the DB).
# Idempotent: re-running it on every `docker compose up` is safe.
set -euo pipefail

: "${AIRFLOW_ADMIN_USERNAME:?AIRFLOW_ADMIN_USERNAME is not set}"
: "${AIRFLOW_ADMIN_PASSWORD:?AIRFLOW_ADMIN_PASSWORD is not set}"
: "${AIRFLOW_ADMIN_EMAIL:?AIRFLOW_ADMIN_EMAIL is not set}"

echo "airflow-init: $(airflow version)"
# Creates or upgrades Airflow's schema, and the FAB auth manager's tables with it.
airflow db migrate

# `users create` leaves an existing user untouched (and exits 0), so a changed
# AIRFLOW_ADMIN_PASSWORD does not reset it: use `airflow users reset-password` for that.
airflow users create \
    --username "${AIRFLOW_ADMIN_USERNAME}" \
    --password "${AIRFLOW_ADMIN_PASSWORD}" \
    --email "${AIRFLOW_ADMIN_EMAIL}" \
    --firstname Hub \
    --lastname Admin \
    --role Admin

# The Kafka topics of the feed registry, for the `kafka-topics` job (a new feed needs no list edit).
TOPICS_FILE="${TOPICS_FILE:-/opt/safetynet/topics/topics.txt}"
safetynet feeds --topics >"${TOPICS_FILE}.tmp" && mv "${TOPICS_FILE}.tmp" "${TOPICS_FILE}"
echo "airflow-init: $(wc -l <"${TOPICS_FILE}") Kafka topics listed in ${TOPICS_FILE}"

echo "airflow-init: done"
