"""A feed connector: the feed's contract, its built-in mapping, and how its department sends it.

A feed module (`connectors/<department>/<feed>.py`) is a few lines: which contract, which payload
field keys its Kafka messages, which transports it arrives by, and its built-in (national)
mapping of column names and code values (`connectors.mapping`). The transports (`kafka_topic`,
`drop_folder`) and formats (`formats`) do the rest. A department folder needs no `__init__.py`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from connectors import mapping as mappings
from schemas.contract import Contract
from schemas.registry import contracts, feed_modules, get

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedConnector:
    contract: Contract
    message_key: str  # payload field the department keys its Kafka messages by (partitioning)
    transports: tuple[str, ...] = ("kafka", "file")
    mapping: str = ""  # the built-in (national) mapping, TOML in the form of a deployment's mapping file

    @property
    def feed_id(self) -> str:
        return self.contract.feed_id

    def load_mapping(self, directory: Path | None) -> mappings.Mapping:
        """The effective mapping: built-in, extended by `<directory>/<feed_id>.toml` if present."""
        return mappings.load(self.contract, self.mapping, directory)


def feed(feed_id: str, message_key: str, transports: tuple[str, ...] = ("kafka", "file"), mapping: str = ""
         ) -> FeedConnector:
    """Declare the connector of one feed (used by the feed modules). The built-in mapping is
    checked here, so a wrong one fails at import, naming the module."""
    c = get(feed_id)
    if message_key not in c.names:
        raise ValueError(f"{feed_id}: message key {message_key!r} is not a field of the contract")
    mappings.load(c, mapping, None)
    return FeedConnector(c, message_key, transports, mapping)


_ROOT = Path(__file__).parent


@cache
def connectors() -> dict[str, FeedConnector]:
    """Every feed connector by feed id, in the registry's order."""
    found: dict[str, FeedConnector] = {}
    for dept, mod, m in feed_modules(_ROOT, "connectors"):
        fc = getattr(m, "CONNECTOR", None)
        if isinstance(fc, FeedConnector):
            found[fc.feed_id] = fc
        else:
            log.warning("connectors/%s/%s.py declares no CONNECTOR: not a feed (skipped)", dept, mod)
    for fid, c in contracts().items():
        if fid not in found:
            log.warning("%s has a contract but no connector (connectors/%s/%s.py)", fid, c.department, c.feed)
    return {fid: found[fid] for fid in contracts() if fid in found}


def load_mappings(directory: Path | None, feed_ids: list[str] | None = None) -> dict[str, mappings.Mapping]:
    """The effective mapping of every (or the given) feed; every problem of every file at once."""
    conns = connectors()
    out: dict[str, mappings.Mapping] = {}
    problems = mappings.stray_files(directory, set(conns))
    for fid in feed_ids or list(contracts()):
        if fid not in conns:
            c = get(fid)
            problems.append(f"{fid} has a contract but no connector: add connectors/{c.department}/{c.feed}.py")
            continue
        try:
            out[fid] = conns[fid].load_mapping(directory)
        except mappings.MappingError as e:
            problems += e.problems
    if problems:
        raise mappings.MappingError(problems)
    return out
