#!/usr/bin/env bash
# One-shot MinIO set-up, run by docker-compose's `minio-init` service (minio/mc image) once
# MinIO is healthy. Idempotent: safe on every `docker compose up`.
#
#  - the hub's bucket (SAFETYNET_S3_BUCKET, default `safetynet`), private;
#  - policy `safetynet-hub`: safetynet-policy.json with @BUCKET@ replaced, i.e. list the bucket and
#    read/write/delete objects in it, nothing else (no other bucket, no bucket creation or
#    deletion, no admin API);
#  - the hub's own user (SAFETYNET_S3_ACCESS_KEY / SAFETYNET_S3_SECRET_KEY), with only that policy.
#    The root credentials stay with this job and MinIO; project services never see them.
#
# Uses bash builtins only for text handling (the mc image carries no sed/jq).
set -euo pipefail

: "${MINIO_ENDPOINT:?MINIO_ENDPOINT is not set}"
: "${MINIO_ROOT_USER:?MINIO_ROOT_USER is not set}"
: "${MINIO_ROOT_PASSWORD:?MINIO_ROOT_PASSWORD is not set}"
: "${HUB_BUCKET:?HUB_BUCKET is not set}"
: "${HUB_ACCESS_KEY:?HUB_ACCESS_KEY is not set}"
: "${HUB_SECRET_KEY:?HUB_SECRET_KEY is not set}"
POLICY_NAME="${HUB_POLICY_NAME:-safetynet-hub}"
POLICY_TEMPLATE="${POLICY_TEMPLATE:-$(dirname "$0")/safetynet-policy.json}"
MC="${MC_BIN:-mc}"

if [[ ! "$HUB_BUCKET" =~ ^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$ ]]; then
    echo "minio-init: '$HUB_BUCKET' is not a valid bucket name (3-63 of a-z 0-9 . -)" >&2
    exit 1
fi
if [[ "$HUB_ACCESS_KEY" == "$MINIO_ROOT_USER" ]]; then
    echo "minio-init: the hub's access key must not be the MinIO root user" >&2
    exit 1
fi

"$MC" alias set hub "$MINIO_ENDPOINT" "$MINIO_ROOT_USER" "$MINIO_ROOT_PASSWORD" >/dev/null

"$MC" mb --ignore-existing "hub/$HUB_BUCKET"
"$MC" anonymous set none "hub/$HUB_BUCKET"

template="$(<"$POLICY_TEMPLATE")"
policy_file="$(mktemp)"
trap 'rm -f "$policy_file"' EXIT
printf '%s\n' "${template//@BUCKET@/$HUB_BUCKET}" >"$policy_file"
"$MC" admin policy create hub "$POLICY_NAME" "$policy_file"   # creates or replaces

"$MC" admin user add hub "$HUB_ACCESS_KEY" "$HUB_SECRET_KEY"  # creates, or updates the secret
info="$("$MC" admin user info hub "$HUB_ACCESS_KEY")"
if [[ "$info" != *"$POLICY_NAME"* ]]; then
    "$MC" admin policy attach hub "$POLICY_NAME" --user "$HUB_ACCESS_KEY"
fi

echo "minio-init: bucket '$HUB_BUCKET' and user '$HUB_ACCESS_KEY' (policy $POLICY_NAME) ready"
