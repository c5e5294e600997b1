"""The departments' side, for the demo, tests and benchmarks: dropping export files into the landing
area (publishing events is `connectors.kafka_producer.publish`). Production departments drop files
with their own systems to the same landing prefixes.
"""

from __future__ import annotations

from safetynet.core import paths
from safetynet.core.store import ObjectStore


def drop_files(store: ObjectStore, files: dict[str, bytes]) -> list[str]:
    """Put files into `landing/` (paths relative to it: `<department>/<feed>/<name>`)."""
    out = []
    for rel, data in sorted(files.items()):
        path = paths.landing_file(rel)
        store.write_bytes(path, data)
        out.append(path)
    return out
