"""Monitoring: per county, the monitoring build and warnings; then quality gate → publish, for one snapshot date.

Scheduled when any feed's clean state changes (the ingest DAG's Assets) and daily at 18:00 UTC
(02:00 Asia/Shanghai), which builds the Beijing day that just ended. The snapshot date is the
run's logical date (`ds`); an asset-triggered run has none and builds the date of its `run_after`.
A backfill of a past date (`airflow backfill create --dag-id monitoring ...`) or a re-run
rewrites identical bytes and warning ids.

Households never span counties, so the build fans out by county (dynamic task mapping):
`counties` lists the register's counties (checking each one's policy file), `build_county` runs
once per county with that county's policy and stages its part in the store, and
`build_snapshot` — when every part is in — runs the quality gate on the combined outputs,
publishes the manifest and produces the snapshot notice and warnings to Kafka. On the Celery
executor the county tasks run on whichever workers are free; `safetynet run` runs the same
functions in one process, and the published bytes are the same.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import AssetAny, AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task

from safetynet import orchestration as orch

SNAPSHOT_DATE = "{{ (dag_run.logical_date or dag_run.run_after) | ds }}"
RUN_KEY = "{{ run_id }}"


@dag(
    dag_id="monitoring",
    description="Per-county monitoring build and warnings, then quality gate and publish of the snapshot of the run's date",
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
    @task
    def counties(snapshot_date: str, run_key: str) -> list[str]:
        return orch.monitoring_counties(snapshot_date, run_key)

    @task(map_index_template="{{ county }}")
    def build_county(county: str, snapshot_date: str, run_key: str) -> dict:
        get_current_context()["county"] = county  # type: ignore[typeddict-unknown-key]  # the map index's label
        return orch.build_county(snapshot_date, county, run_key)

    @task(outlets=[orch.snapshot_asset()])
    def build_snapshot(snapshot_date: str, parts: list[dict], run_key: str) -> dict:
        return orch.publish_monitoring(snapshot_date, parts, run_key)

    found = counties(SNAPSHOT_DATE, RUN_KEY)
    parts = build_county.partial(snapshot_date=SNAPSHOT_DATE, run_key=RUN_KEY).expand(county=found)
    build_snapshot(SNAPSHOT_DATE, parts, RUN_KEY)


monitoring()
