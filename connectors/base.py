"""A feed connector: the feed's contract plus how its department sends it.

A feed module (`connectors/<department>/<feed>.py`) is a few lines: which contract, which payload
field keys its Kafka messages, which transports it arrives by and which drop files it accepts.
The transports (`kafka_topic`, `drop_folder`) and formats (`formats`) do the rest.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from schemas.contract import Contract
from schemas.registry import get


@dataclass(frozen=True)
class FeedConnector:
    contract: Contract
    message_key: str  # payload field the department keys its Kafka messages by (partitioning)
    transports: tuple[str, ...] = ("kafka", "file")

    @property
    def feed_id(self) -> str:
        return self.contract.feed_id


def feed(feed_id: str, message_key: str, transports: tuple[str, ...] = ("kafka", "file")) -> FeedConnector:
    """Declare the connector of one feed (used by the feed modules)."""
    c = get(feed_id)
    if message_key not in c.names:
        raise ValueError(f"{feed_id}: message key {message_key!r} is not a field of the contract")
    return FeedConnector(c, message_key, transports)


_ROOT = Path(__file__).parent


@cache
def connectors() -> dict[str, FeedConnector]:
    """Every feed connector by feed id; each must have a contract and vice versa."""
    found: dict[str, FeedConnector] = {}
    for dept in sorted(p.name for p in _ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        for mod in sorted(m.name for m in pkgutil.iter_modules([str(_ROOT / dept)])):
            fc = getattr(importlib.import_module(f"connectors.{dept}.{mod}"), "CONNECTOR", None)
            if isinstance(fc, FeedConnector):
                found[fc.feed_id] = fc
    return found
