#!/usr/bin/env bash
# Creates every topic of $TOPICS_FILE (written by airflow-init from the feed registry) on the
# broker; run once by docker-compose's `kafka-topics`
# service (apache/kafka image) after the broker is healthy. Idempotent (--if-not-exists), and it
# fails, so that nothing depending on it starts, if any topic is still missing afterwards.
set -euo pipefail

BOOTSTRAP="${TOPICS_BOOTSTRAP:?TOPICS_BOOTSTRAP (host:port of the broker) is not set}"
PARTITIONS="${TOPICS_PARTITIONS:-3}"
REPLICATION="${TOPICS_REPLICATION_FACTOR:-1}"
TOPICS_FILE="${TOPICS_FILE:?TOPICS_FILE (the topic list, one a line) is not set}"
KAFKA_TOPICS="${KAFKA_TOPICS_BIN:-/opt/kafka/bin/kafka-topics.sh}"

wanted=()
while IFS= read -r line || [[ -n "$line" ]]; do
    line="${line//[[:space:]]/}"
    [[ -z "$line" || "$line" == \#* ]] && continue
    wanted+=("$line")
done <"$TOPICS_FILE"
if [[ ${#wanted[@]} -eq 0 ]]; then
    echo "no topics in $TOPICS_FILE" >&2
    exit 1
fi

for topic in "${wanted[@]}"; do
    echo "kafka-topics: ensure $topic (partitions=$PARTITIONS, replication=$REPLICATION)"
    "$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
        --topic "$topic" --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
done

existing="$("$KAFKA_TOPICS" --bootstrap-server "$BOOTSTRAP" --list)"
missing=0
for topic in "${wanted[@]}"; do
    if ! grep -qxF "$topic" <<<"$existing"; then
        echo "kafka-topics: $topic is missing after creation" >&2
        missing=1
    fi
done
[[ $missing -eq 0 ]] && echo "kafka-topics: all ${#wanted[@]} topics present"
exit "$missing"
