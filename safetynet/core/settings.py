"""Typed, frozen settings, built once at the edge (CLI, Airflow task, web app) and passed down.

Library code never reads `os.environ`: it receives a `Settings`. Every variable is
`SAFETYNET_<NAME>`; `safetynet check-config` shows what is in force and where it came from.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.errors import ConfigError


class SettingsError(ConfigError):
    """Settings that cannot be used: an invalid `SAFETYNET_*` value, or values that do not work
    together (`Settings.problems`). A `ConfigError`: exit 2, an Airflow task fails without retries.
    (Inside a field validator it is a `ValueError` like any other, so pydantic reports it.)"""


class Settings(BaseSettings):
    """All configuration of the hub. Env vars: `SAFETYNET_` + the upper-case field name."""

    model_config = SettingsConfigDict(env_prefix="SAFETYNET_", frozen=True, extra="ignore")

    # --- object store ---------------------------------------------------------------------
    store: str = Field("./var/store", description="Store root: a local path, file:// URL, or s3://bucket[/prefix]")
    s3_endpoint: str | None = Field(None, description="S3/MinIO endpoint URL, e.g. http://minio:9000")
    s3_access_key: SecretStr | None = None
    s3_secret_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    store_retries: int = Field(8, ge=0, description="Retries of a failed store call (exponential backoff)")
    store_backoff_max_s: float = Field(30.0, gt=0, description="Cap of one backoff sleep")

    # --- Kafka ----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port]; unset → an embedded broker is started for the demo")
    kafka_group: str = Field("safetynet-connector", description="Consumer group the connector commits to")
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    batch_max_records: int = Field(50_000, gt=0, description="Max records in one Parquet batch file")
    poll_timeout_ms: int = Field(1_000, gt=0)
    writer_process_min_records: int = Field(
        10_000, ge=0, description="Kafka batches of at least this many records are validated and written by "
        "two writer threads while the next batch is fetched (0: always; a large number: never; the name is kept "
        "from when the writer was a process)")

    kafka_consumers: int = Field(
        0, ge=0, description="Consumer processes reading one topic's partitions when its backlog is large (like Kafka "
        "Connect's tasks.max): the ingest's own process and up to this many minus one spawned ones, each with a share "
        "of the partitions (at most one process per partition); 0 (auto): with 4 or more CPUs the fewest from one per CPU "
        "up to two per CPU whose shares of the backlog are even, below 4 CPUs one process (measured on 2 CPUs: no "
        "gain); 1: one process, never spawn")
    kafka_parallel_min_records: int = Field(
        500_000, ge=0, description="Spawn consumer processes only when a topic's partitions hold at least this many "
        "records past the committed offsets (a process start costs its imports, about a second of CPU: on 2 CPUs "
        "the processes only break even near a million records); below: one process")

    kafka_retry_s: float = Field(120.0, ge=0, description="How long an ingest retries a lost broker connection "
                                 "(exponential backoff) before it fails")

    # --- one writer per feed --------------------------------------------------------------------
    lease_ttl_s: float = Field(60.0, gt=1, description="A feed's ingest lease expires this long after its last "
                               "renewal (renewed every third of it while the run works); a dead run's lease is "
                               "taken over then")
    lease_wait_s: float = Field(0.0, ge=0, description="How long an ingest waits for another run holding a feed "
                                "before it exits (exit 4)")

    # --- feed mappings and health ------------------------------------------------------------
    mappings: Path = Field(Path("./mappings"), description="Directory of per-feed mapping files "
                           "<department>.<feed>.toml (a county's column names and code values → the contract's)")
    max_quarantine_rate: float = Field(0.05, ge=0, le=1, description="A feed whose run quarantines more than "
                                       "this share is unhealthy (per feed: [health] in its mapping file)")

    # --- monitoring build -------------------------------------------------------------------
    duckdb_memory_limit: str = Field("4GB", description="Memory cap of the DuckDB build; beyond it DuckDB spills to disk")

    # --- misc -----------------------------------------------------------------------------
    work_dir: Path = Field(Path("./var"), description="Local scratch: embedded broker data, temp files")
    pseudonym_secret: SecretStr = Field(SecretStr("dev-only-change-me"),
                                        description="HMAC key of the id_no pseudonym in downstream datasets")
    progress: bool = Field(True, description="Show progress bars on a terminal")

    # --- review app -------------------------------------------------------------------------
    review_db: str | None = Field(
        None, description="Review app database: a file path (SQLite), sqlite:///path.db or "
        "postgresql+psycopg2://user:pw@host/db; unset → SQLite at <work_dir>/review.db")
    review_secure_cookies: bool = Field(False, description="Mark session cookies Secure (behind HTTPS)")
    review_session_hours: float = Field(10.0, gt=0, description="Idle time after which a review session ends")

    @field_validator("store")
    @classmethod
    def _store_scheme(cls, v: str) -> str:
        if "://" in v and not v.startswith(("file://", "s3://")):
            raise ValueError(f"store must be a local path, file:// or s3:// URL, got scheme of {v.split('://')[0]!r}")
        return v

    @field_validator("review_db")
    @classmethod
    def _review_db(cls, v: str | None) -> str | None:
        return db_url(v) if v else v

    def with_store(self, store: str | None) -> Settings:
        """A copy pointing at another store (the CLI's `--store`)."""
        return self if not store else self.model_copy(update={"store": store})

    def problems(self) -> list[str]:
        """Every configuration problem at once (Singer-style: report all, not the first)."""
        out: list[str] = []
        if self.store.startswith("s3://"):
            if not self.s3_endpoint:
                out.append("SAFETYNET_STORE is s3:// but SAFETYNET_S3_ENDPOINT is not set")
            if self.s3_access_key is None or self.s3_secret_key is None:
                out.append("SAFETYNET_STORE is s3:// but SAFETYNET_S3_ACCESS_KEY / SAFETYNET_S3_SECRET_KEY are not set")
            if len(self.store[5:].split("/", 1)[0]) < 3:
                out.append("SAFETYNET_STORE s3:// URL needs a bucket name of 3+ characters")
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            out.append("SAFETYNET_KAFKA_SECURITY_PROTOCOL uses SASL but SAFETYNET_KAFKA_SASL_USERNAME is not set")
        if self.pseudonym_secret.get_secret_value() == "dev-only-change-me" and self.store.startswith("s3://"):
            out.append("SAFETYNET_PSEUDONYM_SECRET is the development default; set a real secret for a shared store")
        return out


def db_url(v: str) -> str:
    """A database given as an SQLAlchemy URL, or as a file path meaning SQLite (`var/review.db`)."""
    if "://" in v:
        return v
    if not v.strip():
        raise SettingsError("empty database path")
    return f"sqlite:///{Path(v).expanduser().resolve()}"


def load(**overrides) -> Settings:
    """Settings from the environment and `overrides`, checked at the edge (an Airflow task): every
    invalid variable, then every problem of `Settings.problems`, as one `SettingsError` — never a
    pydantic `ValidationError`, whose text would echo the values (a password in a database URL)."""
    try:
        s = Settings(**overrides)
    except ValidationError as e:
        raise SettingsError(f"configuration: {describe_errors(e)}") from None
    problems = s.problems()
    if problems:
        raise SettingsError("configuration problems: " + "; ".join(problems))
    return s


def describe_errors(e: BaseException) -> str:
    """A pydantic ValidationError of the settings as one line naming each variable, e.g.
    `SAFETYNET_STORE: store must be a local path, file:// or s3:// URL, got scheme of 'http'`."""
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e)
    parts = []
    for err in errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        name = f"SAFETYNET_{loc.upper()}" if loc in Settings.model_fields else loc
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{name}: {msg}" if name else msg)
    return "; ".join(parts)
