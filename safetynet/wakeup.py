"""The ingest DAG's wake-up on Kafka activity: an Airflow event trigger for an `AssetWatcher`.

`KafkaWakeupTrigger` watches the department topics with its own consumer group (the Airflow
connection `orchestration.KAFKA_CONN_ID`, confluent-kafka through the Kafka provider's hook) and
yields an asset event — which wakes the ingest DAG — when records arrive. It only wakes: the data
is read, and its offsets committed, by the connector's own group in the ingest tasks.

A burst is debounced on both edges (`Debounce`): the first record after a quiet spell wakes at
once; records arriving within `min_interval_s` of a wake-up are gathered into one more wake-up
when the interval has passed. Nothing waits for the cron schedule (a throttle that only dropped
the records inside its interval left a burst's tail to the next 10-minute tick), and a burst of
a million records is a handful of asset events, not a million. Wake-ups arriving while an ingest
run is active wait as queued asset events: Airflow starts the next run when that one ends.

Unlike the provider's `AwaitMessageTrigger`, which ends after its first event (so the triggerer
starts it again, with a new consumer and a new group join), this trigger keeps running and keeps
its consumer: each event is an asset event, and the triggerer passes on every one it yields.

The event's payload says where the wake-up came from — the first record's topic, partition,
offset and timestamp, and how many records it gathers — never a record's key or value, which
may hold an ID number.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

try:  # Airflow 3 (the triggerer); without Airflow, `Debounce` still works (the unit tests)
    from airflow.triggers.base import BaseEventTrigger, TriggerEvent
except ImportError:  # pragma: no cover - the package runs without Airflow too
    BaseEventTrigger = object  # type: ignore[assignment,misc]
    TriggerEvent = None  # type: ignore[assignment,misc]

#: at most one wake-up per this many seconds; a burst's tail is one more wake-up at its end
MIN_INTERVAL_S = 10.0


class Debounce:
    """Leading- and trailing-edge debouncing of record arrivals (pure: time is passed in).

    `seen(record, now)` notes an arrival (the first since the last wake-up is kept, as a payload);
    `due(now)` returns the wake-up payload when one is due — at once for the first arrival after
    a quiet spell, else once `min_interval_s` have passed since the last wake-up — or None."""

    def __init__(self, min_interval_s: float = MIN_INTERVAL_S):
        self.min_interval_s = min_interval_s
        self.last: float | None = None
        self.first: dict | None = None
        self.count = 0

    def seen(self, record: dict) -> None:
        if self.first is None:
            self.first = record
        self.count += 1

    def due(self, now: float) -> dict | None:
        if self.first is None or (self.last is not None and now - self.last < self.min_interval_s):
            return None
        out = {**self.first, "records": self.count}
        self.first, self.count, self.last = None, 0, now
        return out


def record_of(message: Any) -> dict:
    """Where a confluent-kafka message is — never its key or value."""
    ts = message.timestamp() if callable(getattr(message, "timestamp", None)) else None
    return {"topic": message.topic(), "partition": message.partition(), "offset": message.offset(),
            "timestamp_ms": ts[1] if isinstance(ts, tuple) else None}


class KafkaWakeupTrigger(BaseEventTrigger):
    """An event trigger on Kafka topics, debounced (`Debounce`); see the module doc."""

    def __init__(self, topics: list[str], kafka_config_id: str, min_interval_s: float = MIN_INTERVAL_S,
                 poll_timeout: float = 1.0, max_records: int = 10_000):
        super().__init__()
        self.topics = list(topics)
        self.kafka_config_id = kafka_config_id
        self.min_interval_s = min_interval_s
        self.poll_timeout = poll_timeout
        self.max_records = max_records
        self._consumer: Any = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"topics": self.topics, "kafka_config_id": self.kafka_config_id,
                 "min_interval_s": self.min_interval_s, "poll_timeout": self.poll_timeout,
                 "max_records": self.max_records})

    async def run(self, clock: Callable[[], float] = time.monotonic) -> AsyncIterator[Any]:
        from airflow.providers.apache.kafka.hooks.consume import KafkaConsumerHook
        from asgiref.sync import sync_to_async

        hook = KafkaConsumerHook(topics=self.topics, kafka_config_id=self.kafka_config_id)
        self._consumer = await sync_to_async(hook.get_consumer)()
        consume = sync_to_async(self._consumer.consume)
        d = Debounce(self.min_interval_s)
        while True:
            for m in await consume(num_messages=self.max_records, timeout=self.poll_timeout):
                err = m.error()
                if err is None:
                    d.seen(record_of(m))
                elif not _harmless(err):
                    raise RuntimeError(f"Kafka wake-up consumer error: {err}")
            ev = d.due(clock())
            if ev is not None:
                yield TriggerEvent(ev)
            await asyncio.sleep(0)

    async def cleanup(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            from asgiref.sync import sync_to_async

            await sync_to_async(consumer.close)()


def _harmless(err: Any) -> bool:
    """A partition-EOF notice (when `enable.partition.eof` is set) is not an error."""
    try:
        from confluent_kafka import KafkaError

        return bool(err.code() == KafkaError._PARTITION_EOF)
    except (ImportError, AttributeError):
        return False
