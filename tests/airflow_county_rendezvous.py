"""A test hook: the `monitoring` DAG's county tasks meet before they build (tests/test_distributed.py).

Not production code, and not imported by it: tests/test_distributed.py copies this file into its own
AIRFLOW_HOME as `config/airflow_local_settings.py`, Airflow's cluster-policy module, which every Airflow
process of that test imports (Airflow puts `$AIRFLOW_HOME/config` on sys.path). Its `task_policy` runs
wherever the DAG file is parsed, the Celery workers' task processes included, and gives the mapped
`build_county` task an `on_execute_callback` — run on the worker after the task is marked running and
just before its build:

each county task touches `<SAFETYNET_TEST_COUNTY_RENDEZVOUS>/<run>/<county>` and waits (polling every
POLL_S, at most WAIT_S) until every county of the run — the `counties` task's XCom — has touched its
file, then writes `<county>.outcome` ("met" or "timed out") and builds. With one task slot per Celery
worker, two county tasks that are running at the same time are on different workers. A timeout does not
hang the run: the task goes on and the test's assertions fail, saying so. Nor can the hook fail a task:
Airflow logs a callback's exception and runs the task.

Off unless SAFETYNET_TEST_COUNTY_RENDEZVOUS (a directory) is set in the Airflow processes' environment.
Self-contained (the Airflow processes do not have the repository's `tests` package on their path); the
logs name county codes and counts only, never a person's data.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

ENV = "SAFETYNET_TEST_COUNTY_RENDEZVOUS"
DAG_ID, TASK_ID, COUNTIES_TASK = "monitoring", "build_county", "counties"
WAIT_S, POLL_S = 120.0, 0.2

log = logging.getLogger("safetynet.test.county_rendezvous")


def run_dir(root: str | Path, run_id: str) -> Path:
    """The rendezvous directory of one DAG run (the run id with anything but [A-Za-z0-9._-] as `_`)."""
    return Path(root) / re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


def rendezvous(context: Any) -> None:
    """`build_county`'s on_execute_callback: touch this county's file, wait for every county's (bounded)."""
    root = os.environ.get(ENV)
    if not root:
        return
    ti = context["ti"]
    county = str(context["task"].op_kwargs["county"])
    counties = [str(c) for c in ti.xcom_pull(task_ids=COUNTIES_TASK) or []]
    if county not in counties:  # not this run's counties: nothing to meet
        log.warning("county rendezvous (test hook): county %s is not among the run's %d; not waiting", county,
                    len(counties))
        return
    here = run_dir(root, ti.run_id)
    here.mkdir(parents=True, exist_ok=True)
    (here / county).touch()
    log.info("county rendezvous (test hook): county %s waits for the %d county task(s) of its run", county,
             len(counties))
    t0 = time.monotonic()
    while not all((here / c).exists() for c in counties):
        if time.monotonic() - t0 > WAIT_S:
            outcome = f"timed out after {WAIT_S:.0f} s"
            log.warning("county rendezvous (test hook): county %s %s waiting for %d county task(s); going on",
                        county, outcome, len(counties))
            break
        time.sleep(POLL_S)
    else:
        outcome = f"met after {time.monotonic() - t0:.1f} s"
        log.info("county rendezvous (test hook): county %s %s", county, outcome)
    (here / f"{county}.outcome").write_text(outcome)


def task_policy(task: Any) -> None:
    """Airflow's cluster policy: the rendezvous on the monitoring DAG's county tasks, when switched on."""
    if os.environ.get(ENV) and task.dag_id == DAG_ID and task.task_id == TASK_ID:
        task.on_execute_callback = [*(task.on_execute_callback or []), rendezvous]
