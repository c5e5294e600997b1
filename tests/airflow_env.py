"""A private Airflow environment for the DAG tests: AIRFLOW_HOME, metadata DB, the hub's settings.

Airflow always runs in subprocesses with this environment, so the test process never imports
Airflow or reads a user's `~/airflow`, and nothing inherited (`AIRFLOW*`, `SAFETYNET_*`) leaks in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAGS = ROOT / "dags"
AIRFLOW = Path(sys.executable).parent / "airflow"


def airflow_env(home: Path, bootstrap: str, sql_alchemy_conn: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of every Airflow process of one test module (SQLite metadata by default)."""
    group = f"sn-dags-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SAFETYNET_"))}
    env.update({
        "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn or f"sqlite:///{home / 'airflow.db'}",
        "SAFETYNET_STORE": str(home / "store"), "SAFETYNET_WORK_DIR": str(home / "work"),
        "SAFETYNET_KAFKA_BOOTSTRAP": bootstrap, "SAFETYNET_KAFKA_GROUP": group,
        "SAFETYNET_PROGRESS": "false",
        # the synthetic district plants every kind of dirty record: its small feeds quarantine up to
        # half at 2,000 persons (see safetynet.demo.cli.SYNTHETIC_MAX_QUARANTINE_RATE); real feeds keep 5 %
        "SAFETYNET_MAX_QUARANTINE_RATE": "0.75",
        # the wake-up trigger's consumer: its own group, offsets auto-committed (see dags/ingest.py)
        "AIRFLOW_CONN_SAFETYNET_KAFKA": json.dumps({"conn_type": "kafka", "extra": {
            "bootstrap.servers": bootstrap, "group.id": f"{group}-wakeup", "auto.offset.reset": "earliest",
            "enable.auto.commit": True, "session.timeout.ms": 6000, "heartbeat.interval.ms": 500}}),
    })
    env.update(extra)
    return env


def migrate(env: dict[str, str], cwd: Path) -> None:
    """`airflow db migrate` for this environment's metadata DB."""
    r = subprocess.run([str(AIRFLOW), "db", "migrate"], env=env, cwd=cwd, capture_output=True, text=True, check=False,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
