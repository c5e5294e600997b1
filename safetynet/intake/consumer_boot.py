"""The first code a spawned Kafka consumer process runs (`safetynet.intake.ingest._read_parallel`).

It lives apart from `ingest`, importing nothing heavy, because what a process imports before its
work starts is the price of parallel consumption (a consumer process is only worth starting for a
large backlog, and its start-up runs on the cores the other consumers use). A consumer process
never converts to pandas, but `pyarrow.dataset` (imported by the store module) imports pandas just
to see whether it is there: close to a second of CPU, half of the process's imports. So pandas is
made unimportable here first (pyarrow then works without it, as where pandas is not installed),
and only then is the job — pickled by the parent into bytes, so that unpickling it cannot import
anything early — unpickled and run.
"""

from __future__ import annotations

import importlib.abc
import pickle
import sys
from typing import Any


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError(f"{name} is not used in a Kafka consumer process")
        return None


def main(job: bytes, q: Any, stop: Any) -> None:
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    from safetynet.intake.ingest import _consumer_process

    _consumer_process(pickle.loads(job), q, stop)
