"""Errors grouped by how they are handled (`schemas.errors`): configuration and data problems fail at
once (CLI exit 2 / 3, Airflow `AirflowFailException`, no retry); transient ones go to the retries.

Pure unit tests: no broker, no PostgreSQL, no Airflow process (only Airflow's exception classes)."""

from __future__ import annotations

import datetime as dt
import importlib
import sys
from pathlib import Path

import pytest

from schemas.errors import ConfigError, DataError, TransientError, handling

#: (module, class, group, a built-in base callers still catch it by)
KNOWN = [
    ("schemas.policy", "PolicyError", "config", ValueError),
    ("quality.policy", "PolicyError", "config", ValueError),  # the same class, re-exported
    ("connectors.mapping", "MappingError", "config", ValueError),
    ("safetynet.intake.regions", "RegionListError", "config", ValueError),
    ("safetynet.core.settings", "SettingsError", "config", ValueError),
    ("safetynet.publish.backtest", "UnknownRule", "config", ValueError),
    ("safetynet.publish.snapshot", "SnapshotNotFound", "config", LookupError),
    ("safetynet.orchestration", "FeedUnhealthy", "data", RuntimeError),
    ("quality.gate", "QualityGateFailed", "data", RuntimeError),
    ("safetynet.core.store", "StoreError", "transient", RuntimeError),
    ("safetynet.core.lease", "LeaseBusy", "transient", RuntimeError),
    ("safetynet.core.lease", "LeaseLost", "transient", RuntimeError),
]
GROUPS = {"config": ConfigError, "data": DataError, "transient": TransientError}


def _cls(module: str, name: str) -> type[Exception]:
    return getattr(importlib.import_module(module), name)


def _instance(cls: type[Exception]) -> Exception:
    """An instance of `cls`, whatever its constructor takes."""
    for args in (("x",), (["x"],), ("source", ["x"]), ("x", None)):
        try:
            return cls(*args)
        except TypeError:
            continue
    raise AssertionError(f"cannot build {cls}")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A task process's environment: only a local store (and an empty mapping directory)."""
    for k in [k for k in __import__("os").environ if k.startswith("SAFETYNET_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("SAFETYNET_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("SAFETYNET_MAPPINGS", str(tmp_path / "mappings"))
    monkeypatch.setenv("SAFETYNET_WORK_DIR", str(tmp_path / "var"))
    return tmp_path


# ---- the grouping -------------------------------------------------------------------------------
def test_the_three_groups_are_disjoint_and_configuration_stays_a_value_error():
    assert issubclass(ConfigError, ValueError)  # `except ValueError` (code and tests) still catches them
    for a in GROUPS.values():
        for b in GROUPS.values():
            assert a is b or not (issubclass(a, b) or issubclass(b, a))
    assert not issubclass(DataError, ValueError) and not issubclass(TransientError, ValueError)
    assert handling(ValueError("a bug")) == "unexpected" and handling(KeyError("x")) == "unexpected"


@pytest.mark.parametrize(("module", "name", "group", "builtin"), KNOWN, ids=[f"{m}.{n}" for m, n, *_ in KNOWN])
def test_each_known_error_is_in_its_group(module, name, group, builtin):
    cls = _cls(module, name)
    assert issubclass(cls, GROUPS[group]) and issubclass(cls, builtin)
    assert [g for g, base in GROUPS.items() if issubclass(cls, base)] == [group]  # exactly one group
    assert handling(_instance(cls)) == group


def test_a_missing_or_invalid_policy_file_is_a_config_error(tmp_path: Path):
    from quality import policy

    with pytest.raises(ConfigError, match="does not exist"):
        policy.load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[policy]\nregion_code = 430103\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="is invalid"):
        policy.load(bad)
    with pytest.raises(ValueError):  # as before
        policy.load(bad)


def test_a_policy_for_another_county_is_a_config_error():
    from quality import policy

    pol = policy.for_region("430103", 2026)
    policy.check_county(pol, "430103")
    with pytest.raises(ConfigError, match="does not match data of 431302"):
        policy.check_county(pol, "431302")


def test_invalid_settings_are_one_config_error_naming_every_problem(env, monkeypatch):
    from safetynet.core import settings

    assert settings.load(progress=False).store == str(env / "store")
    monkeypatch.setenv("SAFETYNET_STORE", "http://example.invalid/store")
    monkeypatch.setenv("SAFETYNET_LEASE_TTL_S", "0")
    with pytest.raises(settings.SettingsError) as e:
        settings.load()
    assert isinstance(e.value, ConfigError) and e.value.__cause__ is None  # pydantic's text (values) not chained
    assert "SAFETYNET_STORE: store must be a local path" in str(e.value) and "SAFETYNET_LEASE_TTL_S" in str(e.value)
    monkeypatch.setenv("SAFETYNET_STORE", "s3://b")
    monkeypatch.delenv("SAFETYNET_LEASE_TTL_S")
    with pytest.raises(ConfigError, match=r"configuration problems: .*S3_ENDPOINT.*bucket name of 3\+"):
        settings.load()
    with pytest.raises(ConfigError, match="empty database path"):
        settings.db_url("  ")


def test_an_invalid_mapping_file_is_a_config_error(tmp_path: Path):
    from connectors import mapping
    from schemas.registry import get

    (tmp_path / "housing.property.toml").write_text('[headers]\n"权属状态" = "no_such_field"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="mapping problems"):
        mapping.load(get("housing.property"), "", tmp_path)


# ---- the CLI: exit codes by group ----------------------------------------------------------------
@pytest.mark.parametrize(("module", "name", "code", "prefix"), [
    ("schemas.policy", "PolicyError", 2, ""), ("safetynet.publish.snapshot", "SnapshotNotFound", 2, ""),
    ("safetynet.publish.backtest", "UnknownRule", 2, ""), ("safetynet.core.settings", "SettingsError", 2, ""),
    ("safetynet.orchestration", "FeedUnhealthy", 3, ""),
    ("safetynet.core.store", "StoreError", 1, ""), ("safetynet.core.lease", "LeaseLost", 1, ""),
    ("safetynet.core.lease", "LeaseBusy", 4, "not started: "),
])
def test_the_cli_maps_each_group_to_its_exit_code(module, name, code, prefix):
    from safetynet import cli

    assert cli._expected(_cls(module, name)("the message")) == (code, prefix + "the message")


def test_the_cli_keeps_the_codes_of_its_special_cases():
    from safetynet import cli, pipeline
    from safetynet.intake.regions import RegionListError

    assert cli._expected(pipeline.QualityGateFailed("quality gate failed", None)) == (3, "not published: quality gate failed")
    assert cli._expected(RegionListError("x.csv", ["line 2: bad"])) == (2, "x.csv: not imported — 1 problem: line 2: bad")
    code, line = cli._expected(_instance(_cls("connectors.mapping", "MappingError")))
    assert code == 2 and line.endswith("fix the mapping file(s) (see `safetynet feeds profile`)")
    assert cli._expected(ConfigError("c")) == (2, "c") and cli._expected(DataError("d")) == (3, "d")
    assert cli._expected(TransientError("t")) == (1, "t") and cli._expected(ValueError("bug")) is None


# ---- Airflow: config and data fail at once, transient errors go to the retries ---------------------
def test_a_task_given_a_bad_policy_fails_without_retries(env, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from quality import policy
    from safetynet import orchestration, pipeline

    bad = env / "430103-2026.toml"
    bad.write_text("[policy]\nregion_code = \"430103\"\nyear = 2026\n", encoding="utf-8")
    monkeypatch.setattr(pipeline, "county_of", lambda store: "430103")
    monkeypatch.setattr(policy, "for_region", lambda county, year: policy.load(bad))
    with pytest.raises(AirflowFailException) as e:
        orchestration.run_monitoring("2026-11-01")
    assert f"policy file {bad} is invalid" in str(e.value) and "standards" in str(e.value)
    assert isinstance(e.value.__cause__, policy.PolicyError)
    assert not isinstance(e.value, ConfigError)  # Airflow's own class: its task runner fails without retry


def test_a_task_with_invalid_settings_or_an_unknown_feed_fails_without_retries(env, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from safetynet import orchestration

    with pytest.raises(AirflowFailException, match=r"unknown feed 'no\.such_feed'"):
        orchestration.ingest_feed("no.such_feed")
    monkeypatch.setenv("SAFETYNET_STORE", "ftp://host/store")
    for task, arg in ((orchestration.ingest_feed, "housing.property"), (orchestration.check_freshness,
                                                                        "2026-11-01T00:00:00+08:00")):
        with pytest.raises(AirflowFailException, match="SAFETYNET_STORE: store must be a local path"):
            task(arg)


@pytest.mark.parametrize("transient", ["store", "busy"])
def test_a_transient_error_is_raised_as_it_is_for_airflow_to_retry(env, monkeypatch, transient):
    from airflow.sdk.exceptions import AirflowFailException

    from safetynet import orchestration
    from safetynet.core import lease
    from safetynet.core.store import StoreError

    err = StoreError("store: list failed after 9 attempts: timed out") if transient == "store" else \
        lease.LeaseBusy("housing.property is being written by another run")

    def held(*a, **kw):
        raise err

    monkeypatch.setattr(lease, "held", held)
    with pytest.raises(type(err)) as e:
        orchestration.ingest_feed("housing.property")
    assert e.value is err and not isinstance(e.value, AirflowFailException)


def test_no_retry_maps_by_group_and_passes_everything_else():
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    from safetynet.orchestration import FeedUnhealthy, no_retry

    def raising(e: BaseException):
        @no_retry
        def task() -> None:
            raise e
        return task

    assert no_retry(lambda x: x + 1)(1) == 2
    for e in (ConfigError("c"), FeedUnhealthy("f unhealthy")):
        with pytest.raises(AirflowFailException) as got:
            raising(e)()
        assert str(got.value) == str(e) and got.value.__cause__ is e
    for e in (TransientError("t"), RuntimeError("a bug"), KeyError("k"), AirflowSkipException("nothing new"),
              AirflowFailException("already")):
        with pytest.raises(type(e)) as got:
            raising(e)()
        assert got.value is e


def test_without_airflow_the_original_error_is_raised(monkeypatch):
    from safetynet.orchestration import no_retry

    monkeypatch.setitem(sys.modules, "airflow.sdk", None)  # `from airflow.sdk import …` → ImportError

    @no_retry
    def task() -> None:
        raise ConfigError("no policy")

    with pytest.raises(ConfigError, match="no policy"):
        task()


def test_every_dag_retries_with_exponential_backoff():
    """Transient errors are the retries' job: every DAG's default_args back off exponentially."""
    import ast

    for f in sorted((Path(__file__).parents[1] / "dags").glob("*.py")):
        calls = [n for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "task_defaults"]
        if f.name == "__init__.py":
            continue
        assert len(calls) == 1, f.name
        assert len(calls[0].args) >= 3, f"{f.name}: task_defaults without max_retry (no exponential backoff)"
    from safetynet.orchestration import task_defaults

    d = task_defaults(2, dt.timedelta(minutes=1), dt.timedelta(minutes=10))
    assert d["retries"] == 2 and d["retry_exponential_backoff"] is True


def test_a_blocked_quality_gate_fails_the_monitoring_task_without_retries(env, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from quality.gate import QualityGateFailed
    from safetynet import orchestration, pipeline

    def blocked(*a, **kw):
        raise QualityGateFailed("quality gate failed for snapshot 2026-11-01 (1 critical failure)", None)

    monkeypatch.setattr(pipeline, "county_of", lambda store: "430103")
    monkeypatch.setattr(pipeline, "build_snapshot", blocked)
    with pytest.raises(AirflowFailException, match="quality gate failed for snapshot 2026-11-01") as e:
        orchestration.run_monitoring("2026-11-01")
    assert isinstance(e.value.__cause__, QualityGateFailed)


# ---- issue #15 point 4 follow-ups: the broker, the store's configuration, kafka bootstrap, the register,
# ---- --accept-unhealthy and checksums each in their group --------------------------------------------
FOLLOW_UPS = [
    ("safetynet.intake.ingest", "BrokerUnreachable", "transient", RuntimeError),
    ("safetynet.core.store", "StoreConfigError", "config", ValueError),
    ("schemas.errors", "ChecksumMismatch", "data", ValueError),
]


@pytest.mark.parametrize(("module", "name", "group", "builtin"), FOLLOW_UPS, ids=[f"{m}.{n}" for m, n, *_ in FOLLOW_UPS])
def test_each_follow_up_error_is_in_its_group(module, name, group, builtin):
    test_each_known_error_is_in_its_group(module, name, group, builtin)
    code = {"config": 2, "data": 3, "transient": 1}[group]
    from safetynet import cli

    assert cli._expected(_cls(module, name)("the message")) == (code, "the message")


def test_a_store_configuration_error_is_no_store_error():
    from safetynet.core.store import StoreConfigError, StoreError

    assert not issubclass(StoreConfigError, StoreError)  # a StoreError is transient: it would be retried


def test_an_unreachable_broker_is_transient_and_still_a_runtime_error(monkeypatch):
    from safetynet.core.settings import Settings
    from safetynet.intake import ingest

    monkeypatch.setattr(ingest.time, "sleep", lambda s: None)
    calls = []

    def down() -> None:
        calls.append(1)
        raise ConnectionError("connection refused")

    s = Settings.model_construct(kafka_bootstrap="127.0.0.1:1", kafka_retry_s=0.0)
    with pytest.raises(ingest.BrokerUnreachable, match="stayed unreachable for 0 s") as e:
        ingest._retrying(s, "hr.staff", down)
    assert isinstance(e.value, TransientError) and isinstance(e.value, RuntimeError) and calls == [1]
    assert handling(e.value) == "transient"


def test_ingest_without_a_kafka_bootstrap_is_a_config_error(env):
    from safetynet.core import settings
    from safetynet.core.store import ObjectStore
    from safetynet.intake.ingest import ingest

    s = settings.load(progress=False)
    assert not s.kafka_bootstrap
    with pytest.raises(ConfigError, match="no Kafka bootstrap configured"):
        ingest(s, ObjectStore.from_settings(s), ["housing.property"], kafka=True)


def test_an_s3_store_without_an_endpoint_is_a_config_error(env):
    from safetynet.core.settings import Settings
    from safetynet.core.store import ObjectStore, StoreConfigError

    s = Settings.model_construct(**{**Settings().model_dump(), "store": "s3://bucket", "s3_endpoint": None})
    with pytest.raises(StoreConfigError, match="SAFETYNET_S3_ENDPOINT is not set") as e:
        ObjectStore.from_settings(s)
    assert handling(e.value) == "config"


def test_an_s3_server_ignoring_conditional_writes_is_a_config_error(tmp_path: Path, monkeypatch):
    import pyarrow.fs as pafs

    from safetynet.core.store import ObjectStore, StoreConfigError

    st = ObjectStore(pafs.LocalFileSystem(), str(tmp_path), url="s3://bucket", retries=0)  # as an S3 store
    monkeypatch.setattr(st, "_put_if_absent", lambda rel, data: True)  # the second create "succeeds" too
    monkeypatch.setattr(st, "delete", lambda rel: None)
    with pytest.raises(StoreConfigError, match=r"ignores conditional writes \(If-None-Match: \*\): two publishers"):
        st.create("_catalog/x.claim", b"1")
    assert not st._conditional_checked


class _Register:
    """A store holding only a clean person register of the given region codes."""

    def __init__(self, codes: list[str]):
        self.codes = codes

    def exists(self, rel: str) -> bool:
        return True

    def read_parquet(self, rel: str):
        import pyarrow as pa

        return pa.table({"region_code": pa.array(self.codes, pa.string())})


def test_a_register_spanning_counties_is_a_config_error():
    from safetynet import cli, pipeline

    assert pipeline.county_of(_Register(["430103001", "430103002"])) == "430103"
    with pytest.raises(ConfigError, match=r"the register spans counties \['430103', '431302'\]"):
        pipeline.county_of(_Register(["430103001", "431302001"]))
    with pytest.raises(cli.UsageError, match="spans counties"):  # the CLI's wording stays
        cli.data_county(_Register(["430103001", "431302001"]))


def test_accepting_an_unknown_feed_is_a_config_error():
    from safetynet import pipeline

    with pytest.raises(ConfigError, match=r"--accept-unhealthy: unknown feed\(s\) no\.such_feed"):
        pipeline.feed_health_for_gate(None, ["no.such_feed"])


def test_a_region_list_not_matching_its_manifest_is_a_data_error():
    from safetynet.intake import regions
    from schemas.errors import ChecksumMismatch

    class Store:
        def read_bytes(self, rel: str) -> bytes:
            return b"code,name\n431302001,x\n"

    manifest = {"file": "_catalog/regions/431302/l.csv", "sha256": "0" * 64, "county": "431302"}
    with pytest.raises(ChecksumMismatch, match="does not match the sha256 in") as e:
        regions.read_list(Store(), manifest)
    assert isinstance(e.value, ValueError) and handling(e.value) == "data"
