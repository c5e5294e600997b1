"""Ingest: every department feed → `raw/` + `quarantine/` → `clean/`, one task per feed.

Generated from the feed registry (`schemas.registry`): one task per feed id, each producing the
Asset of its clean state (`safetynet://clean/<department>/<feed>`, named by the feed id). A task
is bounded — it reads each topic up to the high watermark seen at its start and every waiting
drop — and safe to retry after a kill: offsets are committed and drops marked done only after
their Parquet is durable. A run that changes nothing is skipped (no asset event, so the
monitoring DAG is not woken for nothing).

Runs every 10 minutes and, with the Kafka provider installed, on Kafka activity: an
`AssetWatcher` on the department topics only *wakes* the DAG (`safetynet.wakeup.KafkaWakeupTrigger`,
debounced: the first record wakes at once, a burst's tail once more at its end); the data is still
read, and its offsets committed, by the connector's own group.

The first task, `feeds_with_work`, is a branch: a scheduled (or manual) run reads every feed; a
wake-up reads only the feeds with records past the connector's committed offsets, files waiting
or a clean state behind raw/ — the other feed tasks are skipped without being started, so one
department's event is one small task, not seventeen.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import AssetOrTimeSchedule, AssetWatcher, CronTriggerTimetable, dag, task

from safetynet import orchestration as orch
from safetynet.wakeup import KafkaWakeupTrigger

try:  # apache-airflow-providers-apache-kafka (confluent-kafka), the wake-up's consumer; without it: cron only
    import airflow.providers.apache.kafka.hooks.consume  # noqa: F401
except ImportError:
    HAS_KAFKA_PROVIDER = False
else:
    HAS_KAFKA_PROVIDER = True

FEEDS = orch.feed_specs()
CLEAN = orch.clean_assets()

watchers = []
if HAS_KAFKA_PROVIDER:
    watchers.append(AssetWatcher(
        name="department_topics",
        # the wake-up group's offsets are auto-committed by its consumer (the connection's extra)
        trigger=KafkaWakeupTrigger(topics=[f.topic for f in FEEDS], kafka_config_id=orch.KAFKA_CONN_ID),
    ))
KAFKA_ACTIVITY = orch.kafka_activity_asset(watchers)


@dag(
    dag_id="ingest",
    description="Department feeds (Kafka topics, file drops) → raw/ + quarantine/ → clean/, one task per feed",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("*/10 * * * *", timezone="UTC"),
                                 assets=KAFKA_ACTIVITY),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=4,
    # transient failures (store, lease busy, broker past kafka_retry_s) retried with backoff; a ConfigError or an
    # unhealthy feed (DataError) fails the task at once (orchestration.no_retry)
    default_args=orch.task_defaults(3, dt.timedelta(seconds=30), dt.timedelta(minutes=10), dt.timedelta(hours=1)),
    tags=["safetynet", "ingest"],
)
def ingest():
    @task.branch(doc_md="The feeds this run reads: every one on the schedule, those with work on a wake-up")
    def feeds_with_work(run_type: str) -> list[str]:
        return orch.feeds_with_work(run_type)

    pick = feeds_with_work("{{ dag_run.run_type }}")
    for f in FEEDS:

        @task(task_id=f.feed_id, outlets=[CLEAN[f.feed_id]], doc_md=f"{f.title_zh} `{f.feed_id}` ← `{f.topic}`")
        def ingest_feed(feed_id: str) -> dict:
            return orch.ingest_feed(feed_id, skip_unchanged=True)

        pick >> ingest_feed(f.feed_id)


ingest()
