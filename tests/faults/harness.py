"""The fault suite's rig: one small synthetic district delivered on a broker and in landing/,
a fresh store and consumer group per fault, and the two invariants every fault must keep.

1. **Exactly once.** Every delivered record — each Kafka message (topic, partition, offset) and
   each data row of a drop file (file, row) — is in `raw/` or `quarantine/` exactly once, the
   accepted ones in `raw/` and the rejected ones in `quarantine/` under the reason the generator
   planted (`Emission.expected`).
2. **Clean equals the truth.** After cleaning, every feed's clean table equals the district's
   truth for that feed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from safetynet.core.settings import Settings
from safetynet.core.store import ObjectStore
from schemas.registry import contracts, get

ROOT = Path(__file__).resolve().parents[2]
PERSONS, SEED = 700, 20261205


class Rig:
    """A district published once on `bootstrap` (default topics); a new store + group per fault."""

    def __init__(self, district, emission, bootstrap: str, tmp: Path):
        self.d, self.em, self.bootstrap, self.tmp = district, emission, bootstrap, tmp

    def settings(self, name: str, **kw) -> Settings:
        base = dict(store=str(self.tmp / name / "store"), work_dir=self.tmp / name / "work", progress=False,
                    kafka_bootstrap=self.bootstrap, kafka_group=f"f-{name}-{uuid.uuid4().hex[:6]}",
                    mappings=self.tmp / name / "mappings", max_quarantine_rate=1.0, batch_max_records=60,
                    kafka_retry_s=20.0, lease_wait_s=0.0)
        return Settings(**{**base, **kw})

    def store(self, s: Settings, *, drops: bool = True) -> ObjectStore:
        from safetynet.demo.departments import drop_files

        st = ObjectStore.from_settings(s)
        if drops:
            drop_files(st, self.em.files)
        return st

    def env(self, s: Settings, **extra: str) -> dict[str, str]:
        return {**os.environ, "SAFETYNET_STORE": s.store, "SAFETYNET_KAFKA_BOOTSTRAP": s.kafka_bootstrap or "",
                "SAFETYNET_KAFKA_GROUP": s.kafka_group, "SAFETYNET_MAPPINGS": str(s.mappings),
                "SAFETYNET_WORK_DIR": str(s.work_dir), "SAFETYNET_MAX_QUARANTINE_RATE": "1.0",
                "SAFETYNET_BATCH_MAX_RECORDS": str(s.batch_max_records), "SAFETYNET_PROGRESS": "false",
                "SAFETYNET_KAFKA_RETRY_S": str(s.kafka_retry_s), "SAFETYNET_LEASE_WAIT_S": "0", **extra}

    def cli(self, s: Settings, *args: str, **extra: str) -> subprocess.Popen:
        """`safetynet <args>` as a separate process (one that can be killed -9)."""
        return subprocess.Popen([sys.executable, "-m", "safetynet.cli", *args], cwd=ROOT, env=self.env(s, **extra),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)

    # ---- the invariants ---------------------------------------------------------------------------
    def assert_exactly_once(self, store: ObjectStore, *, missing: dict[str, int] | None = None,
                            extra: dict[str, tuple[int, dict[str, int]]] | None = None) -> dict[str, int]:
        """Invariant 1. `missing`: records a fault destroyed for good, per feed (named by `store
        verify`); `extra`: records a fault added, per feed (accepted, quarantined by rule)."""
        seen = {}
        for fid, c in contracts().items():
            keys: Counter = Counter()
            raw_rows = 0
            rules: Counter = Counter()
            for zone in ("raw", "quarantine"):
                for e in store.list(f"{zone}/{c.prefix}/", ".parquet"):
                    if "/damaged/" in e.path:
                        continue
                    t = pq.read_table(pa.BufferReader(store.read_bytes(e.path)))
                    batch = e.path.rsplit("/", 1)[-1]
                    for r in t.select([x for x in ("_source", "_kafka_topic", "_kafka_partition", "_kafka_offset",
                                                    "_source_file", "_row_number") if x in t.column_names]).to_pylist():
                        if r["_source"] == "kafka":
                            keys[("k", r["_kafka_topic"], r["_kafka_partition"], r["_kafka_offset"])] += 1
                        else:
                            keys[("f", r["_source_file"], batch.rsplit("+", 1)[-1], r["_row_number"])] += 1
                    if zone == "raw":
                        raw_rows += t.num_rows
                    else:
                        rules.update(pc.value_counts(t["_rule"]).to_pylist() and
                                     {v["values"]: v["counts"] for v in pc.value_counts(t["_rule"]).to_pylist()})
            dup = {k: n for k, n in keys.items() if n > 1}
            assert not dup, f"{fid}: {len(dup)} records delivered more than once into raw/+quarantine/: {list(dup)[:3]}"
            exp = self.em.expected[fid]
            gone = (missing or {}).get(fid, 0)
            add_ok, add_q = (extra or {}).get(fid, (0, {}))
            want_q = Counter({k: v for k, v in exp.quarantined.items() if v}) + Counter(add_q)
            delivered = exp.input + add_ok + sum(add_q.values())
            assert len(keys) == delivered - gone, f"{fid}: {len(keys)} records in raw/+quarantine/, delivered {delivered}"
            if not gone:
                assert raw_rows == exp.accepted + add_ok, f"{fid}: raw {raw_rows}, expected {exp.accepted + add_ok}"
                assert dict(rules) == dict(want_q), fid
            seen[fid] = len(keys)
        return seen

    def assert_clean_is_truth(self, store: ObjectStore, *, except_feeds: tuple[str, ...] = ()) -> int:
        """Invariant 2 (after cleaning every feed again)."""
        from safetynet.intake.clean import clean_all, read_clean

        cleaned = clean_all(store, list(contracts().values()))
        n = 0
        for fid in contracts():
            if fid in except_feeds:
                continue
            c = get(fid)
            assert cleaned[fid].reconciles, fid
            truth = self.d.table(fid).sort_by([(k, "ascending") for k in c.key])
            clean = read_clean(store, c).select(list(c.names)).sort_by([(k, "ascending") for k in c.key])
            assert clean.cast(truth.schema).equals(truth), f"{fid}: clean differs from the truth"
            n += clean.num_rows
        return n


    def assert_verified(self, s: Settings, store: ObjectStore) -> None:
        """`store verify`: every file matches the catalog, and every raw/quarantine file belongs to a
        run record."""
        from safetynet import verify

        rep = verify.verify(s, store)
        assert rep.ok and not rep.findings, [(f.path, f.problem, f.detail) for f in rep.findings]
        assert rep.checked["raw"] > 0 and not rep.unsummed["raw"]

    def killed_at(self, s: Settings, target: str, args: list[str], *, match: str = "", nth: int = 1,
                  when: str = "after", timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        """Run `safetynet <args>` in its own process and kill it with SIGKILL — a real kill -9 —
        right before or after the `nth` call of `target` ("module:Class.method") whose string
        arguments contain `match`. Returns the finished process (returncode -9 if it was hit)."""
        p = self._hooked(s, target, args, match, nth, when, "os.kill(os.getpid(), signal.SIGKILL)", env)
        out, err = p.communicate(timeout=timeout)
        kill_group(p)  # its writer process too, if the kernel has not stopped it yet
        return subprocess.CompletedProcess(p.args, p.returncode, out.decode(), err.decode())

    def paused_at(self, s: Settings, target: str, args: list[str], gate: Path, *, nth: int = 1,
                  **env: str) -> subprocess.Popen:
        """Start `safetynet <args>` in its own process; right before the `nth` call of `target` it
        creates `<gate>.reached` and waits (at most 120 s) until `gate` exists — so the test can
        inject a fault at a known point of the run (e.g. kill the broker before a commit) and
        then release it. Returns the running process."""
        return self._hooked(s, target, args, "", nth, "before", f"pause({str(gate)!r})", env)

    def _hooked(self, s: Settings, target: str, args: list[str], match: str, nth: int, when: str, action: str,
                env: dict[str, str]) -> subprocess.Popen:
        """`safetynet <args>` in its own process, with `action` (a line of Python: `os.kill(…)`,
        `pause(gate)`) run right before or after the `nth` call of `target` whose string arguments
        contain `match`."""
        code = f"""
import importlib, os, signal, sys, time
def pause(gate):
    open(gate + ".reached", "w").close()
    for _ in range(6000):
        if os.path.exists(gate):
            return
        time.sleep(0.02)
owner = importlib.import_module({target.split(":")[0]!r})
parts = {target.split(":")[1]!r}.split(".")
for p in parts[:-1]:
    owner = getattr(owner, p)
orig = getattr(owner, parts[-1])
n = [0]
def act():
    {action}
def hook(*a, **k):
    hit = {match!r} in " ".join(x for x in a if isinstance(x, str))
    n[0] += hit
    if hit and n[0] == {nth} and {when!r} == "before":
        act()
    r = orig(*a, **k)
    if hit and n[0] == {nth} and {when!r} == "after":
        act()
    return r
setattr(owner, parts[-1], hook)
from safetynet.cli import main
sys.exit(main({args!r}))
"""
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=self.env(s, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def wait_for(pred, timeout: float = 120.0, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the process and everything it started (its writer process)."""
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
