"""The object store: one interface over `pyarrow.fs` — a local directory or any S3 endpoint (MinIO).

Code above this module never branches on which. Writes are whole-object and atomic (a local
write goes to a temporary name, is fsynced and renamed; an S3 PUT is atomic by nature), so a
reader never sees half a file, and a write that returns is durable. Every call is retried with
exponential backoff on transient errors, so an S3 outage pauses the work instead of losing it.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from safetynet.core import paths
from safetynet.core.settings import Settings
from schemas.errors import ConfigError, TransientError

if TYPE_CHECKING:
    from minio import Minio

log = logging.getLogger(__name__)

#: errors that are the caller's, not the store's: never retried
_TERMINAL_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EINVAL}
T = TypeVar("T")

#: Parquet writer options used everywhere, so that the same table always gives the same bytes.
PARQUET_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True,
                       row_group_size=256 * 1024)


class StoreError(TransientError, RuntimeError):
    """A store call that still failed after every retry (terminal for this call). A `TransientError`:
    the CLI exits 1; an Airflow task is retried later with backoff (an S3 outage outlasting the
    store's own retries)."""


class StoreConfigError(ConfigError):
    """The store is configured wrongly: an `s3://` store without an endpoint, or an S3 server that
    ignores conditional writes. A `ConfigError` (and so a `ValueError`), not a `StoreError`: fatal, not
    retried — the CLI exits 2, an Airflow task fails at once; fix the settings or the server first."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the store root, "/"-separated
    size: int
    mtime_ns: int


class ObjectStore:
    """A zone-structured store rooted at a local directory or `s3://bucket[/prefix]`."""

    def __init__(self, filesystem: pafs.FileSystem, root: str, *, url: str, retries: int = 8,
                 backoff_max_s: float = 30.0, local: bool = False):
        self.fs = filesystem
        self.root = root.rstrip("/")
        self.url = url
        self.retries = retries
        self.backoff_max_s = backoff_max_s
        self.local = local
        self._conditional_checked = False
        self._minio: Minio | None = None  # S3 stores: the minio client (bucket creation, conditional PUT)

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        url = settings.store
        if url.startswith("s3://"):
            if not settings.s3_endpoint:
                raise StoreConfigError("SAFETYNET_STORE is s3:// but SAFETYNET_S3_ENDPOINT is not set")
            endpoint = settings.s3_endpoint
            scheme = "https" if endpoint.startswith("https://") else "http"
            host = endpoint.split("://", 1)[-1].rstrip("/")
            fs = pafs.S3FileSystem(
                access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
                secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
                region=settings.s3_region, endpoint_override=host, scheme=scheme,
                background_writes=False, connect_timeout=5, request_timeout=30,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2),
            )
            store = cls(fs, url[5:], url=url, retries=settings.store_retries,
                        backoff_max_s=settings.store_backoff_max_s)
            store._ensure_bucket(settings)
            return store
        path = Path(url[7:] if url.startswith("file://") else url).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return cls(pafs.LocalFileSystem(), str(path), url=f"file://{path}", retries=settings.store_retries,
                   backoff_max_s=settings.store_backoff_max_s, local=True)

    def _ensure_bucket(self, settings: Settings) -> None:
        """Create the bucket if missing, through the minio SDK (as MinIO operators do)."""
        from minio import Minio

        endpoint = settings.s3_endpoint or ""
        client = Minio(endpoint.split("://", 1)[-1].rstrip("/"),
                       access_key=settings.s3_access_key.get_secret_value() if settings.s3_access_key else None,
                       secret_key=settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None,
                       secure=endpoint.startswith("https://"), region=settings.s3_region)
        self._minio = client
        bucket = self.root.split("/", 1)[0]

        def make() -> None:
            if not client.bucket_exists(bucket):
                client.make_bucket(bucket, location=settings.s3_region)

        self._retry(make, f"create bucket {bucket}")

    # ---- paths ------------------------------------------------------------------------------
    def full(self, rel: str) -> str:
        return f"{self.root}/{rel.lstrip('/')}" if rel else self.root

    def rel(self, full: str) -> str:
        return full[len(self.root) + 1:] if full.startswith(self.root + "/") else full

    def uri(self, rel: str) -> str:
        """A human-readable location (file:// or s3://) for messages and manifests."""
        return f"{self.url.rstrip('/')}/{rel}"

    # ---- retry ------------------------------------------------------------------------------
    def _retry(self, op: Callable[[], T], what: str) -> T:
        delay = 0.2
        for attempt in range(self.retries + 1):
            try:
                return op()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError):
                raise  # terminal: retrying cannot help
            except OSError as e:  # includes ConnectionError and TimeoutError
                if e.errno in _TERMINAL_ERRNOS:
                    raise
                if attempt == self.retries:
                    raise StoreError(f"store: {what} failed after {attempt + 1} attempts: {e}") from e
                sleep = min(self.backoff_max_s, delay) * (0.5 + random.random() / 2)
                log.warning("store: %s failed (%s); retry %d/%d in %.1fs", what, _short(e), attempt + 1,
                            self.retries, sleep, extra={"event": "store_retry"})
                time.sleep(sleep)
                delay *= 2
        raise AssertionError("unreachable")

    # ---- bytes ------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write a whole object atomically and durably."""
        full = self.full(rel)
        if self.local:
            self._write_local(full, data)
            return

        def put() -> None:
            with self.fs.open_output_stream(full) as f:
                f.write(data)

        self._retry(put, f"write {rel}")

    @staticmethod
    def _durable_tmp(full: str, data: bytes) -> str:
        """`data` in a fsynced temporary file beside `full` (skipped by `list`); returns its path."""
        d = os.path.dirname(full)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    @staticmethod
    def _fsync_dir(full: str) -> None:
        dfd = os.open(os.path.dirname(full), os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    @classmethod
    def _write_local(cls, full: str, data: bytes) -> None:
        os.replace(cls._durable_tmp(full, data), full)
        cls._fsync_dir(full)

    def create(self, rel: str, data: bytes) -> bool:
        """Create an object only if it does not exist yet, atomically; False if it exists.

        Locally a hard link of a complete temporary file (link() fails on an existing name); on
        S3 a conditional PUT (`If-None-Match: *`, AWS S3 and MinIO): of two writers exactly one
        creates the object, the other is told so. A server that ignores the condition is refused
        (checked once per store), since claims would silently overwrite each other.
        """
        full = self.full(rel)
        if self.local:
            tmp = self._durable_tmp(full, data)
            try:
                os.link(tmp, full)
                self._fsync_dir(full)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if not self._conditional_checked:
            self._check_conditional_put()
        return self._put_if_absent(rel, data)

    def _put_if_absent(self, rel: str, data: bytes) -> bool:
        from minio.error import S3Error

        bucket, _, key = self.full(rel).partition("/")
        client = self._minio
        assert client is not None, "an S3 store has its minio client (from_settings)"

        def put() -> bool:
            try:  # minio's public put_object takes no request headers; its PutObject call does
                client._put_object(bucket, key, data, headers={"If-None-Match": "*",
                                                               "Content-Length": str(len(data))})
                return True
            except S3Error as e:
                if e.code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return False
                raise OSError(f"S3 {e.code}: {e.message}") from e

        return self._retry(put, f"create {rel}")

    def _check_conditional_put(self) -> None:
        probe = paths.conditional_put_probe(uuid.uuid4().hex)
        first, second = self._put_if_absent(probe, b"1"), self._put_if_absent(probe, b"2")
        self.delete(probe)
        if not (first and not second):
            raise StoreConfigError(f"the S3 server at {self.url} ignores conditional writes (If-None-Match: *): "
                                   "two publishers could claim the same snapshot version. Use AWS S3 or a MinIO "
                                   "release with conditional PUT support")
        self._conditional_checked = True

    def read_bytes(self, rel: str) -> bytes:
        def get() -> bytes:
            with self.fs.open_input_stream(self.full(rel)) as f:
                return f.read()

        return self._retry(get, f"read {rel}")

    def exists(self, rel: str) -> bool:
        info = self._retry(lambda: self.fs.get_file_info(self.full(rel)), f"stat {rel}")
        return info.type != pafs.FileType.NotFound

    def delete(self, rel: str) -> None:
        try:
            self._retry(lambda: self.fs.delete_file(self.full(rel)), f"delete {rel}")
        except FileNotFoundError:
            pass

    def delete_prefix(self, rel: str) -> None:
        for e in self.list(rel):
            self.delete(e.path)

    def list(self, prefix: str, suffix: str = "", recursive: bool = True) -> list[Entry]:
        """Files under `prefix` (recursive unless told: one level is one LIST request on S3), sorted
        by path; temp files are skipped."""
        sel = pafs.FileSelector(self.full(prefix), recursive=recursive, allow_not_found=True)
        try:
            infos = self._retry(lambda: self.fs.get_file_info(sel), f"list {prefix}")
        except FileNotFoundError:
            # Arrow's local listing races a concurrent mkdir: opendir fails (not found), then the
            # existence check it makes before returning "empty" sees the new directory and raises.
            # Listing again sees the directory either way.
            infos = self._retry(lambda: self.fs.get_file_info(sel), f"list {prefix}")
        out = [Entry(self.rel(i.path), i.size or 0, i.mtime_ns or 0) for i in infos
               if i.type == pafs.FileType.File and not os.path.basename(i.path).startswith(".tmp-")
               and i.path.endswith(suffix)]
        return sorted(out, key=lambda e: e.path)

    # ---- parquet ----------------------------------------------------------------------------
    def write_parquet(self, rel: str, table: pa.Table) -> int:
        """Write a table as one Parquet object (atomic); returns the byte size."""
        data = parquet_bytes(table)
        self.write_bytes(rel, data)
        return len(data)

    def read_parquet(self, rel: str) -> pa.Table:
        return pq.read_table(pa.BufferReader(self.read_bytes(rel)))

    def read_tables(self, prefix: str) -> Iterator[tuple[str, pa.Table]]:
        for e in self.list(prefix, ".parquet"):
            yield e.path, self.read_parquet(e.path)

    def dataset(self, prefix: str, schema: pa.Schema | None = None, exclude: Collection[str] = ()
                ) -> ds.Dataset | None:
        """A lazy pyarrow dataset over every Parquet file under `prefix` but the store-relative
        paths in `exclude` (None if there is none)."""
        files = [self.full(e.path) for e in self.list(prefix, ".parquet") if e.path not in exclude]
        if not files:
            return None
        return ds.dataset(files, schema=schema, format="parquet", filesystem=self.fs)


def _short(e: BaseException) -> str:
    s = str(e).splitlines()[0] if str(e) else type(e).__name__
    return s[:200]


def open_store(settings: Settings) -> ObjectStore:
    """The store the settings point at."""
    return ObjectStore.from_settings(settings)


def parquet_bytes(table: pa.Table) -> bytes:
    """A table as Parquet bytes with the hub's options (deterministic: same table, same bytes)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, **PARQUET_OPTIONS)
    return buf.getvalue()
