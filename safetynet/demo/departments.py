"""The departments' side, for the demo, tests and benchmarks: dropping export files into the landing
area (publishing events is `connectors.kafka_producer.publish`). Production departments drop files
with their own systems to the same landing prefixes.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from zoneinfo import ZoneInfo

from safetynet.core import paths
from safetynet.core.store import ObjectStore
from schemas.registry import contracts

SH = ZoneInfo("Asia/Shanghai")


def json_value(v: object) -> str:
    """`json.dumps`'s `default` for a district's values as a department's JSON export writes them:
    decimals as strings, times in Beijing time, dates ISO."""
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, dt.datetime):
        return v.astimezone(SH).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, dt.date):
        return v.isoformat()
    raise TypeError(type(v))


def drop_truth_as_files(d, store: ObjectStore, stamp: str = "20261031") -> None:
    """Every feed of a synthetic district (`safetynet.demo.synth.generate`) as one JSON Lines drop per
    feed, its clean truth: a store fed by file drops only (tests; the latency bench's large districts,
    where millions of Kafka events would take longer to produce than the whole run)."""
    for fid, c in contracts().items():
        lines = [json.dumps(r, ensure_ascii=False, default=json_value) for r in d.table(fid).to_pylist()]
        store.write_bytes(paths.landing_file(f"{c.prefix}/{c.feed}_{stamp}.jsonl"), ("\n".join(lines) + "\n").encode())


def drop_files(store: ObjectStore, files: dict[str, bytes]) -> list[str]:
    """Put files into `landing/` (paths relative to it: `<department>/<feed>/<name>`)."""
    out = []
    for rel, data in sorted(files.items()):
        path = paths.landing_file(rel)
        store.write_bytes(path, data)
        out.append(path)
    return out
