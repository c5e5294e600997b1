"""The feed registry: every `schemas/<department>/<feed>.py` that declares a `CONTRACT`.

Feeds are found by file, not by package ceremony: a department folder needs no `__init__.py`.
A module there that declares no `CONTRACT` is reported (logged), never silently skipped.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from schemas.contract import Contract

log = logging.getLogger(__name__)

_ROOT = Path(__file__).parent


def feed_modules(root: Path, package: str) -> Iterator[tuple[str, str, object]]:
    """(department, module name, imported module) for every `<root>/<department>/<module>.py`."""
    for path in sorted(root.glob("*/*.py")):
        dept, mod = path.parent.name, path.stem
        if mod.startswith("_") or dept.startswith(("_", ".")):
            continue
        yield dept, mod, importlib.import_module(f"{package}.{dept}.{mod}")


@cache
def contracts() -> dict[str, Contract]:
    """All feed contracts by feed id (`department.feed`), in a stable order."""
    found: dict[str, Contract] = {}
    for dept, mod, m in feed_modules(_ROOT, "schemas"):
        c = getattr(m, "CONTRACT", None)
        if not isinstance(c, Contract):
            log.warning("schemas/%s/%s.py declares no CONTRACT: not a feed (skipped)", dept, mod)
            continue
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
