"""The event envelope: how a department wraps one record of a feed into a Kafka event.

Every message value on a feed topic (`dept.<department>.<feed>.v<version>`) is one JSON object::

    {"event_id": "…", "source": "<department>", "feed": "<feed>", "op": "upsert" | "delete",
     "occurred_at": "<ISO 8601 time with offset>", "schema_version": <contract version>,
     "payload": {<the record: contract field → value>}}

`event_id` is unique per event (a redelivery repeats it: the clean step drops the copy); `op`
"delete" removes the record its payload's key names (`op` may be left out: "upsert");
`occurred_at` orders versions of one key; `schema_version` may be left out (the contract's
version). A JSON Lines drop may hold envelopes too (an export of the department's outbox): a line
is an envelope when it has an `event_id` and a `payload` (`is_envelope`; a payload that is no
object makes it an invalid envelope, not a flat record).

Declared once here: the field names, `wrap` (used by the demo's emitter, tests and benchmarks to
write events), and `is_envelope` / `unwrap` plus the JSON paths (`json_path`, `HEADER`) from
which `connectors.formats` generates the DuckDB SQL that checks and unwraps envelopes.
"""

from __future__ import annotations

import json
from typing import Any

#: The envelope's fields.
EVENT_ID = "event_id"
SOURCE = "source"  # the department
FEED = "feed"
OP = "op"
OCCURRED_AT = "occurred_at"
SCHEMA_VERSION = "schema_version"
PAYLOAD = "payload"
#: Every field, in the order `wrap` writes them.
FIELDS = (EVENT_ID, SOURCE, FEED, OP, OCCURRED_AT, SCHEMA_VERSION, PAYLOAD)
#: The fields around the payload, in the order the connectors extract them (`connectors.formats`).
HEADER = (EVENT_ID, OP, OCCURRED_AT, SOURCE, FEED, SCHEMA_VERSION)

#: The operations an event may carry; an envelope without `op` is an upsert.
UPSERT = "upsert"
DELETE = "delete"
OPS = (UPSERT, DELETE)


def wrap(payload: dict[str, Any], *, event_id: str, source: str, feed: str, occurred_at: str,
         schema_version: int, op: str = UPSERT) -> dict[str, Any]:
    """The envelope of one record (a dict; `encode` gives the message value)."""
    return {EVENT_ID: event_id, SOURCE: source, FEED: feed, OP: op, OCCURRED_AT: occurred_at,
            SCHEMA_VERSION: schema_version, PAYLOAD: payload}


def encode(envelope: dict[str, Any]) -> bytes:
    """A message value: the envelope as UTF-8 JSON (non-ASCII text kept as it is)."""
    return json.dumps(envelope, ensure_ascii=False).encode()


def is_envelope(obj: object) -> bool:
    """Whether a decoded JSON value is an envelope (rather than a flat record): an object with an
    `event_id` and a `payload` (an object, or a broken one: null, a string). Whether the envelope
    is *valid* (an object payload, op, source, feed, time, version) is checked by the connectors' SQL."""
    return isinstance(obj, dict) and PAYLOAD in obj and EVENT_ID in obj


def unwrap(obj: object) -> object:
    """The record of a decoded JSON value: an envelope's payload, anything else as it is."""
    return obj[PAYLOAD] if is_envelope(obj) else obj  # type: ignore[index]


def json_path(field: str) -> str:
    """The JSON path of an envelope field (`$.payload`), for DuckDB's `json_extract_string` and `json_type`."""
    return f"$.{field}"
