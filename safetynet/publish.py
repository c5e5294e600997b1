"""Publishing department events to Kafka and dropping files into the landing area.

Used by the demo, tests and benchmarks to play the departments' part; production departments
publish with their own systems to the same topics and landing prefixes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kafka import KafkaProducer

from safetynet.store import ObjectStore


def producer(bootstrap: str, **kw: object) -> KafkaProducer:
    """An idempotent, fully acknowledged producer (no duplicates from producer retries)."""
    cfg: dict = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
                     batch_size=1024 * 1024, max_request_size=16 * 1024 * 1024, retries=10)
    cfg.update(kw)
    return KafkaProducer(**cfg)


def publish(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]],
            progress: Callable[[int], None] | None = None, every: int = 5000) -> int:
    """Send (key, value) messages to `topic` in order; returns the count once all are acknowledged."""
    p = producer(bootstrap)
    n = 0
    try:
        for key, value in messages:
            p.send(topic, key=key, value=value)
            n += 1
            if progress and n % every == 0:
                progress(every)
        p.flush()
        if progress and n % every:
            progress(n % every)
    finally:
        p.close()
    return n


def drop_files(store: ObjectStore, files: dict[str, bytes]) -> list[str]:
    """Put files into `landing/` (paths relative to it: `<department>/<feed>/<name>`)."""
    out = []
    for rel, data in sorted(files.items()):
        path = f"landing/{rel}"
        store.write_bytes(path, data)
        out.append(path)
    return out
