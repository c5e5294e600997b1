"""The feed registry: every `schemas/<department>/<feed>.py` that declares a `CONTRACT`."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path

from schemas.contract import Contract

_ROOT = Path(__file__).parent


@cache
def contracts() -> dict[str, Contract]:
    """All feed contracts by feed id (`department.feed`), in a stable order."""
    found: dict[str, Contract] = {}
    for dept in sorted(p.name for p in _ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        for mod in sorted(m.name for m in pkgutil.iter_modules([str(_ROOT / dept)])):
            c = getattr(importlib.import_module(f"schemas.{dept}.{mod}"), "CONTRACT", None)
            if isinstance(c, Contract):
                if c.feed_id != f"{dept}.{mod}":
                    raise ValueError(f"schemas/{dept}/{mod}.py declares {c.feed_id}: the file must be named after the feed")
                found[c.feed_id] = c
    return found


def get(feed_id: str) -> Contract:
    """The contract of one feed; a clear error lists the known ids."""
    try:
        return contracts()[feed_id]
    except KeyError:
        raise KeyError(f"unknown feed {feed_id!r}; known feeds: {', '.join(contracts())}") from None


def by_topic(topic: str) -> Contract:
    for c in contracts().values():
        if c.topic == topic:
            return c
    raise KeyError(f"no feed reads topic {topic!r}")
