"""Monitoring: quality gate → monitoring build → warnings → publish, for one snapshot date.

Scheduled when any feed's clean state changes (the ingest DAG's Assets) and daily at 18:00 UTC
(02:00 Asia/Shanghai), which builds the Beijing day that just ended. The snapshot date is the
run's logical date (`ds`); an asset-triggered run has none and builds the date of its `run_after`.
A backfill of a past date (`airflow backfill create --dag-id monitoring ...`) or a re-run
rewrites identical bytes and warning ids.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, dag, task

from safetynet import orchestration as orch


@dag(
    dag_id="monitoring",
    description="Quality gate, monitoring build, warnings and publish of the snapshot of the run's date",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 18 * * *", timezone="UTC"),
                                 assets=AssetAny(*orch.clean_assets().values())),
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # asset events arriving during a build queue up as one next run
    # transient failures retried with backoff; a ConfigError (policy) or the quality gate (DataError) fails at once
    default_args=orch.task_defaults(2, dt.timedelta(minutes=1), dt.timedelta(minutes=15), dt.timedelta(hours=2)),
    tags=["safetynet", "monitoring"],
)
def monitoring():
    @task(outlets=[orch.snapshot_asset()])
    def build_snapshot(snapshot_date: str) -> dict:
        return orch.run_monitoring(snapshot_date)

    build_snapshot("{{ (dag_run.logical_date or dag_run.run_after) | ds }}")


monitoring()
