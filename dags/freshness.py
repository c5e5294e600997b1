"""Freshness: per department feed, when data last arrived versus the cadence its contract expects.

Hourly. A late or missing feed is a data-quality warning (log event `feed_stale`, and listed in
`_catalog/freshness/<date>.json`); the task succeeds either way.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import CronTriggerTimetable, dag, task

from safetynet import orchestration as orch


@dag(
    dag_id="freshness",
    description="Per feed: last arrival versus the contract's cadence; late feeds are data-quality warnings",
    schedule=CronTriggerTimetable("5 * * * *", timezone="UTC"),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    # transient failures (the store) retried with backoff; a ConfigError fails at once (orchestration.no_retry)
    default_args=orch.task_defaults(2, dt.timedelta(minutes=1), dt.timedelta(minutes=10), dt.timedelta(minutes=30)),
    tags=["safetynet", "quality"],
)
def freshness():
    @task(outlets=[orch.freshness_asset()])
    def check_freshness(now: str) -> dict:
        return orch.check_freshness(now)

    check_freshness("{{ (dag_run.logical_date or dag_run.run_after) | ts }}")


freshness()
