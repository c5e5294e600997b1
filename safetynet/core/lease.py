"""Leases in the store: one writer per feed, across processes and hosts, locally and on S3.

A lease is a sequence of generation objects `_catalog/leases/<name>/<generation>.json`, each
holding its owner (host, pid, run), a token and an expiry. The holder is the newest generation
that is neither released nor expired. Taking the lease = creating the next generation with
create-if-absent semantics (`ObjectStore.create`: a hard link locally, a conditional PUT on
S3), so of two processes that find the lease free — or stale, its holder dead — exactly one
gets it. The holder renews its expiry while it works (a background thread, every third of the
time to live) and releases it at the end; a holder that finds a newer generation than its own
has lost the lease (it was too slow to renew) and must stop.

    with held(store, ["medical_insurance.claim"], run_id=..., ttl_s=60, wait_s=0):
        ...  # ingest + clean of the feed
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

from safetynet.core import paths
from safetynet.core.store import ObjectStore
from schemas.errors import TransientError

log = logging.getLogger(__name__)

_HELD: contextvars.ContextVar[Mapping[str, Lease]] = contextvars.ContextVar("safetynet_leases", default=MappingProxyType({}))


class LeaseBusy(TransientError, RuntimeError):
    """Another live process holds the lease (after waiting as long as allowed). A `TransientError`:
    the CLI exits 4; an Airflow task is retried later with backoff."""


class LeaseLost(TransientError, RuntimeError):
    """A newer generation exists: this holder was too slow to renew and another took over. A
    `TransientError`: the CLI exits 1; an Airflow task is retried (the new attempt takes a new lease)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _path(name: str, gen: int) -> str:
    return paths.lease_generation(name, gen)


def _generations(store: ObjectStore, name: str) -> list[int]:
    out = []
    for e in store.list(paths.lease_generations(name), ".json"):
        stem = e.path.rsplit("/", 1)[-1][:-5]
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)


@dataclass
class Lease:
    store: ObjectStore
    name: str
    generation: int
    record: dict
    ttl_s: float
    lost: bool = field(default=False)
    #: this process's own clock says the lease is valid until then (time.monotonic()): a holder
    #: frozen past it (SIGSTOP, a stalled VM) may have been taken over without knowing it yet
    valid_until: float = field(default_factory=lambda: float("inf"))

    def __post_init__(self) -> None:
        if self.valid_until == float("inf"):
            self.valid_until = time.monotonic() + self.ttl_s

    def _write(self) -> None:
        self.store.write_bytes(_path(self.name, self.generation), json.dumps(self.record, sort_keys=True).encode())

    def check(self) -> None:
        """Raise LeaseLost if another process has taken the lease over, or may have: its expiry
        passed by this process's own clock without a renewal (checked before each write)."""
        if time.monotonic() > self.valid_until:
            self.lost = True
            raise LeaseLost(f"lease {self.name}: expired without renewal (this process was stalled for longer "
                            f"than the lease's {self.ttl_s:.0f} s): stop, another writer may have taken over")
        newer = [g for g in _generations(self.store, self.name) if g > self.generation]
        if newer or self.lost:
            self.lost = True
            raise LeaseLost(f"lease {self.name}: taken over by generation {max(newer or [self.generation])} "
                            f"(this process held {self.generation}): stop, another writer is running")

    def renew(self) -> None:
        started = time.monotonic()
        self.check()
        self.record["expires_at"] = (_now() + dt.timedelta(seconds=self.ttl_s)).isoformat()
        self._write()
        self.valid_until = started + self.ttl_s

    def release(self) -> None:
        if self.lost:
            return
        try:
            self.check()
        except LeaseLost:
            return
        self.record.update(released=True, released_at=_now().isoformat())
        self._write()


def _dead_here(rec: dict) -> bool:
    """The holder ran on this host and its process is gone (killed): no need to wait for expiry."""
    if rec.get("host") != socket.gethostname() or not isinstance(rec.get("pid"), int):
        return False
    if rec["pid"] == os.getpid():
        return False
    try:
        os.kill(rec["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def describe(rec: dict) -> str:
    return (f"held by {rec.get('host')} pid {rec.get('pid')} (run {rec.get('run_id') or '?'}) since "
            f"{rec.get('acquired_at', '?')[:19]}, expires {rec.get('expires_at', '?')[:19]} UTC")


def acquire(store: ObjectStore, name: str, *, run_id: str = "", ttl_s: float = 60.0, wait_s: float = 0.0) -> Lease:
    """Take the lease `name`, waiting up to `wait_s` for a live holder to finish; LeaseBusy after."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        gens = _generations(store, name)
        top = gens[-1] if gens else 0
        holder = None
        if top:
            try:
                holder = json.loads(store.read_bytes(_path(name, top)))
            except FileNotFoundError:  # pruned in between: look again
                continue
        free = (holder is None or holder.get("released") or dt.datetime.fromisoformat(holder["expires_at"]) < _now()
                or _dead_here(holder))
        if free:
            now = _now()
            rec = {"name": name, "host": socket.gethostname(), "pid": os.getpid(), "run_id": run_id,
                   "token": uuid.uuid4().hex, "acquired_at": now.isoformat(),
                   "expires_at": (now + dt.timedelta(seconds=ttl_s)).isoformat(), "released": False}
            if store.create(_path(name, top + 1), json.dumps(rec, sort_keys=True).encode()):
                if holder is not None and not holder.get("released"):
                    log.warning("lease %s: taken over from a stale holder (%s)", name, describe(holder),
                                extra={"event": "lease_takeover", "lease": name})
                for g in gens:  # the history before the previous holder is of no use
                    if g < top:
                        store.delete(_path(name, g))
                return Lease(store, name, top + 1, rec, ttl_s)
            continue  # another process created that generation first: look again
        assert holder is not None  # not free: someone holds it
        if time.monotonic() >= deadline:
            raise LeaseBusy(f"{name} is being written by another run: {describe(holder)}. Wait for it, or "
                            f"give a longer wait (--wait-lease SECONDS / SAFETYNET_LEASE_WAIT_S)")
        time.sleep(min(delay, max(0.05, deadline - time.monotonic())))
        delay = min(delay * 2, 5.0)


@contextmanager
def held(store: ObjectStore, names: list[str], *, run_id: str = "", ttl_s: float = 60.0,
         wait_s: float = 0.0) -> Iterator[list[Lease]]:
    """Hold the leases `names` (taken in sorted order, so two runs never wait on each other in a
    cycle; already held by this context: not taken again), renewed in the background."""
    have = _HELD.get()
    new: list[Lease] = []
    try:
        for n in sorted(set(names) - set(have)):
            new.append(acquire(store, n, run_id=run_id, ttl_s=ttl_s, wait_s=wait_s))
    except BaseException:
        for lease in new:
            lease.release()
        raise
    token = _HELD.set({**have, **{lease.name: lease for lease in new}})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 3):
            for lease in new:
                try:
                    lease.renew()
                except LeaseLost as e:
                    log.error("%s", e, extra={"event": "lease_lost", "lease": lease.name})
                except Exception:  # a store hiccup: the next round tries again before expiry
                    log.exception("lease %s: renewal failed", lease.name)

    t = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    if new:
        t.start()
    try:
        yield [*have.values(), *new]
    finally:
        stop.set()
        if new:
            t.join(timeout=10)
        _HELD.reset(token)
        for lease in new:
            lease.release()


def check_held(names: list[str]) -> None:
    """Raise LeaseLost if any of this context's leases among `names` was taken over."""
    for n in names:
        lease = _HELD.get().get(n)
        if lease is not None:
            lease.check()
