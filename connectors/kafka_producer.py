"""Transport: writing to Kafka topics with kafka-python — an idempotent, fully acknowledged producer,
and topic creation where the deployment lets the hub create its own topics (`hub.warnings.v1`).

The hub produces its warnings here; the demo, tests and benchmarks also play the departments' part
with it. Production departments publish with their own systems to the same topics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from kafka import KafkaProducer


def producer(bootstrap: str, **kw: object) -> KafkaProducer:
    """An idempotent, fully acknowledged producer (no duplicates from producer retries)."""
    cfg: dict = dict(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=20,
                     batch_size=1024 * 1024, max_request_size=16 * 1024 * 1024, retries=10)
    cfg.update(kw)
    return KafkaProducer(**cfg)


def publish(bootstrap: str, topic: str, messages: Iterable[tuple[bytes | None, bytes | None]],
            progress: Callable[[int], None] | None = None, every: int = 5000) -> int:
    """Send (key, value) messages to `topic` in order (a None value: a tombstone); returns the count once
    all are acknowledged."""
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


def ensure_topics(bootstrap: str, topics: list[str], partitions: int = 3) -> None:
    """Create missing topics (the production stack does this in its topic-init job)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            try:
                admin.create_topics(new)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
