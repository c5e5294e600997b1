"""The hub's errors, grouped by how they are handled — the same way by the CLI and by Airflow.

Every layer may import this module (it is in the lowest one and imports nothing of the hub), so
an exception class states its handling by its base class, not by a list kept somewhere else:

| base | what | CLI (`safetynet.cli`) | Airflow task (`safetynet.orchestration`) |
| --- | --- | --- | --- |
| `ConfigError` | the operator's input is wrong: settings, policy, mapping, region list, an unknown feed or rule | exit 2, one line | `AirflowFailException`: failed at once, no retry |
| `DataError` | the data is: an unhealthy delivery, the quality gate blocking a snapshot | exit 3, one line | `AirflowFailException`: failed at once, no retry; the previous state stays in force |
| `TransientError` | the infrastructure is, for now: the store after its own retries, a busy or lost lease | its own code (1, or 4 for a busy feed) | re-raised as it is: the task's `retries` with exponential backoff |

A concrete class keeps its built-in base too where callers catch that (`PolicyError` is a
`ConfigError` and, through it, a `ValueError`; `LeaseBusy` a `TransientError` and a
`RuntimeError`). Anything else — a bug — is none of these: the CLI exits 1 with "unexpected",
Airflow retries it like a transient error.
"""

from __future__ import annotations

__all__ = ["ChecksumMismatch", "ConfigError", "DataError", "TransientError", "handling"]


class ConfigError(ValueError):
    """Configuration the operator must correct: invalid settings, a missing or invalid policy file (or
    one of another county), an invalid mapping file or region list, an unknown feed or rule id.

    Fatal and never retried — the same input fails the same way. The CLI prints the message on one
    line and exits 2; an Airflow task fails with `AirflowFailException` (no retries): fix the
    configuration, then clear the task. A `ValueError`, as these problems were before they had a
    class of their own, so `except ValueError` keeps catching them."""


class DataError(Exception):
    """The data needs attention, not the run: a feed's delivery is unhealthy (held out of `clean/`), or
    the quality gate blocked a snapshot. Nothing new is published; the previous state stays in force.

    Retrying the same data cannot help, so it is not retried either: the CLI exits 3, an Airflow task
    fails with `AirflowFailException` (no retries). The next delivery, a mapping fix or an accepted
    feed (`safetynet run --accept-unhealthy FEED`) is what makes the next run go through."""


class TransientError(Exception):
    """A failure of the moment: the object store still failing after its own retries (an S3 outage or
    timeout), another run holding a feed's lease, a lease lost to a stalled renewal.

    Retried: in Airflow by the task's `retries` with exponential backoff (`orchestration.task_defaults`,
    the DAGs' `default_args`) — the task functions re-raise it as it is; the tasks are idempotent, so
    a retry is safe. The CLI exits 1 (4 for a busy feed): run it again later."""


class ChecksumMismatch(DataError, ValueError):
    """A stored file whose bytes do not match the checksum recorded for it (a region list against its
    manifest, a published file against its snapshot manifest): it was damaged or rewritten since.

    A `DataError`: retrying cannot help — the CLI exits 3, an Airflow task fails without retries;
    importing the list again (`safetynet regions import`), or `safetynet store verify --repair` for a
    published file, is what mends it. A `ValueError`, as it was before it had a class, so
    `except ValueError` keeps catching it."""


def handling(e: BaseException) -> str:
    """`"config"`, `"data"`, `"transient"` or `"unexpected"`: how `e` is handled (see the module doc)."""
    if isinstance(e, ConfigError):
        return "config"
    if isinstance(e, DataError):
        return "data"
    if isinstance(e, TransientError):
        return "transient"
    return "unexpected"
