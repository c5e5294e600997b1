"""docker-compose.yml: valid per the Compose Specification, and consistent with the code.

No Docker engine runs here, so this is what keeps the production-like stack honest:

- the file validates against the Compose Specification's JSON schema (vendored in
  infra/compose-spec/), before and after interpolation with `.env.example`;
- every `${VAR}` it uses is documented in `.env.example`, secrets are required (`${VAR:?}`),
  never defaulted or written into the file, and `.env.example` ships none;
- every service that runs project code gets the SAFETYNET_* settings production needs
  (safetynet/core/settings.py), and `Settings.problems()` finds nothing with them;
- the services agree with each other (bucket, MinIO user, DB users and passwords, Kafka
  listeners, Airflow's shared secrets and Execution API URL);
- depends_on waits on healthchecks / finished one-shot jobs, and every stateful service keeps
  its data on a named volume;
- the topic job creates exactly the feed registry's topics plus hub.snapshots.v1 and hub.warnings.v1, and the
  Airflow image is built from the Airflow version and packages uv.lock pins.

The interpolation below follows the Compose Specification (`$$`, `${VAR}`, `${VAR:-default}`,
`${VAR-default}`, `${VAR:?err}`, `${VAR?err}`, `${VAR:+alt}`, `${VAR+alt}`, `$VAR`); nesting is
not used in docker-compose.yml and a test keeps it that way.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import stat
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from jsonschema import Draft202012Validator

from safetynet.core.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
INFRA = ROOT / "infra"
SCHEMA = INFRA / "compose-spec" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
DOCKERFILE = INFRA / "airflow" / "Dockerfile"
HUB_DOCKERFILE = "infra/airflow/Dockerfile"

AIRFLOW_COMMANDS = {  # Airflow 3's components, each its own service
    "airflow-apiserver": "api-server",
    "airflow-scheduler": "scheduler",
    "airflow-dag-processor": "dag-processor",
    "airflow-triggerer": "triggerer",
}
ONE_SHOT = {"kafka-topics", "minio-init", "airflow-init"}
LONG_RUNNING = {"kafka", "minio", "postgres", "review", *AIRFLOW_COMMANDS}
PROJECT_SERVICES = {"airflow-init", "review", *AIRFLOW_COMMANDS}  # run the hub image
STATEFUL = {  # service -> where its data lives in the container
    "kafka": "/var/lib/kafka/data",
    "minio": "/data",
    "postgres": "/var/lib/postgresql/data",
}

# What production needs set on every service running project code (a shared s3:// store, a real
# broker, a real pseudonym key). Settings fields defaulting to None that may stay unset:
PRODUCTION_REQUIRED = {"store", "s3_endpoint", "s3_access_key", "s3_secret_key", "kafka_bootstrap",
                       "pseudonym_secret"}
UNSET_ALLOWED = {  # field -> why it may stay unset in this stack
    "kafka_sasl_mechanism": "the broker's listeners are PLAINTEXT inside the compose network",
    "kafka_sasl_username": "idem",
    "kafka_sasl_password": "idem",
    "review_db": "only the review service opens the review database (set there, checked in test_review_app_service)",
}
# SAFETYNET_* variables the stack sets that no Settings field reads (none left: the review app's DB
# URL is `Settings.review_db`).
PENDING_VARS: set[str] = set()
SECRET_NAME = re.compile(r"PASSWORD|SECRET|_KEY$|FERNET|TOKEN")
RESTART_LONG_RUNNING = {"always", "unless-stopped", "on-failure"}


# --- interpolation, as Compose does it ------------------------------------------------------------

_REF = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?|:\+|\+)(?P<arg>.*))?", re.DOTALL)


class MissingVariable(Exception):
    pass


def refs(text: str) -> list[tuple[str, str | None, str]]:
    """(name, operator, argument) of every variable reference in one string."""
    out = []
    for m in _REF.finditer(text):
        if m["escaped"]:
            continue
        if m["named"]:
            out.append((m["named"], None, ""))
            continue
        b = _BRACED.fullmatch(m["braced"])
        assert b, f"unparsable interpolation ${{{m['braced']}}} in {text!r}"
        out.append((b["name"], b["op"], b["arg"] or ""))
    return out


def interpolate_str(text: str, env: dict[str, str]) -> str:
    def one(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        if m["named"]:
            return env.get(m["named"], "")
        b = _BRACED.fullmatch(m["braced"])
        name, op, arg = b["name"], b["op"], b["arg"] or ""
        is_set, value = name in env, env.get(name, "")
        if op is None:
            return value
        if op == ":-":
            return value if value else arg
        if op == "-":
            return value if is_set else arg
        if op == ":?":
            if not value:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == "?":
            if not is_set:
                raise MissingVariable(f"{name}: {arg}")
            return value
        if op == ":+":
            return arg if value else ""
        return arg if is_set else ""  # "+"

    return _REF.sub(one, text)


def interpolate(node, env: dict[str, str]):
    if isinstance(node, str):
        return interpolate_str(node, env)
    if isinstance(node, list):
        return [interpolate(x, env) for x in node]
    if isinstance(node, dict):
        return {k: interpolate(v, env) for k, v in node.items()}
    return node


def strings(node):
    """Every string value in a YAML tree (keys excluded: Compose does not interpolate them)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, list):
        for x in node:
            yield from strings(x)
    elif isinstance(node, dict):
        for v in node.values():
            yield from strings(v)


# --- fixtures -------------------------------------------------------------------------------------

# Variables documented by the comment above the variable just before them (a user and its password).
_SHARES_COMMENT_WITH = {"MINIO_ROOT_PASSWORD": "MINIO_ROOT_USER", "SAFETYNET_S3_SECRET_KEY": "SAFETYNET_S3_ACCESS_KEY"}


def parse_env_example(text: str) -> tuple[dict[str, str], list[str]]:
    """Variables of .env.example, and those not directly under a comment line."""
    values: dict[str, str] = {}
    undocumented: list[str] = []
    above = ""  # the line just above, stripped
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
            assert m, f".env.example: not a VAR=value line: {raw!r}"
            assert m[1] not in values, f".env.example: {m[1]} is listed twice"
            values[m[1]] = m[2]
            partner = _SHARES_COMMENT_WITH.get(m[1])
            if not (above.startswith("#") or (partner and above.startswith(partner + "="))):
                undocumented.append(m[1])
        above = line
    return values, undocumented


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return parse_env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))[0]


@pytest.fixture(scope="module")
def dot_env(env_example: dict[str, str]) -> dict[str, str]:
    """A filled-in .env: .env.example with a distinct dummy value for every required secret."""
    filled = {}
    for k, v in env_example.items():
        if v:
            filled[k] = v
        elif k == "KAFKA_CLUSTER_ID":
            filled[k] = "QFvXhnMeSyG7n1Cci7ELUQ"
        else:
            filled[k] = "t" + hashlib.sha256(k.encode()).hexdigest()[:31]
    return filled


@pytest.fixture(scope="module")
def compose(raw: dict, dot_env: dict[str, str]) -> dict:
    return interpolate(raw, dot_env)


def services(doc: dict) -> dict[str, dict]:
    return doc["services"]


def environment(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def mounts(svc: dict) -> list[dict]:
    """Volumes of a service in long form: type, source, target, read_only."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, dict):
            out.append({"type": v.get("type"), "source": v.get("source"), "target": v["target"],
                        "read_only": bool(v.get("read_only"))})
            continue
        parts = v.split(":")
        source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
        kind = "bind" if source and (source.startswith((".", "/", "~"))) else "volume"
        out.append({"type": kind, "source": source, "target": target,
                    "read_only": len(parts) > 2 and "ro" in parts[2].split(",")})
    return out


def depends_on(svc: dict) -> dict[str, dict]:
    d = svc.get("depends_on") or {}
    return {name: {} for name in d} if isinstance(d, list) else d


def settings_from(env: dict, monkeypatch) -> Settings:
    """The hub's settings as a container with `env` (its SAFETYNET_ variables only) would load them."""
    for key in list(os.environ):
        if key.startswith("SAFETYNET_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith("SAFETYNET_") and value is not None:
            monkeypatch.setenv(key, value)
    return Settings()


def is_hub_image(svc: dict) -> bool:
    b = svc.get("build")
    return isinstance(b, dict) and b.get("dockerfile") == HUB_DOCKERFILE


# --- the Compose Specification --------------------------------------------------------------------

def test_vendored_schema_is_the_recorded_one():
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256, (
        "infra/compose-spec/compose-spec.json changed: update it only as infra/compose-spec/README.md says")
    Draft202012Validator.check_schema(json.loads(SCHEMA.read_text(encoding="utf-8")))


@pytest.mark.parametrize("stage", ["as written", "interpolated with .env.example"])
def test_compose_file_is_valid_per_the_compose_specification(stage, raw, compose):
    doc = raw if stage == "as written" else compose
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(
        f"  {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)


def test_interpolations_are_simple_and_parse(raw):
    for text in strings(raw):
        for name, op, arg in refs(text):
            assert "$" not in arg, f"nested interpolation in {text!r}: keep `${{{name}{op}...}}` flat"


def test_the_expected_services_exist(raw):
    missing = (ONE_SHOT | LONG_RUNNING) - set(services(raw))
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


# --- .env / secrets -------------------------------------------------------------------------------

def test_every_variable_is_documented_in_env_example(raw, env_example):
    used = {name for text in strings(raw) for name, _, _ in refs(text)}
    undocumented = used - set(env_example)
    assert not undocumented, f"used in docker-compose.yml but missing from .env.example: {sorted(undocumented)}"
    stale = set(env_example) - used
    assert not stale, f"listed in .env.example but unused by docker-compose.yml: {sorted(stale)}"
    _, uncommented = parse_env_example(ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert not uncommented, f".env.example: give each of {uncommented} a comment line above it"


def test_secrets_are_required_never_defaulted_and_not_shipped(raw, env_example):
    required = set()
    for text in strings(raw):
        for name, op, arg in refs(text):
            if SECRET_NAME.search(name):
                assert op == ":?", (f"secret {name} must be required as ${{{name}:?message}}, "
                                    f"not {'read bare' if op is None else 'given a default'} ({text!r})")
            if op == ":?":
                assert arg.strip(), f"${{{name}:?}} needs a message telling what to set"
                required.add(name)
    shipped = {k for k in required if env_example.get(k)}
    assert not shipped, f".env.example must leave required values empty (no usable secret): {sorted(shipped)}"


def test_no_secret_is_written_into_the_compose_file(raw):
    for name, svc in services(raw).items():
        for key, value in environment(svc).items():
            if value is None:
                continue
            if SECRET_NAME.search(key):
                found = refs(value)
                assert len(found) == 1 and found[0][1] == ":?" and value == f"${{{found[0][0]}:?{found[0][2]}}}", (
                    f"{name}: {key} must come from .env as a whole `${{VAR:?...}}`, got {value!r}")
            for m in re.finditer(r"://[^/@:\s]+:(?P<pw>[^@\s]+)@", value):
                found = refs(m["pw"])
                assert len(found) == 1 and found[0][1] == ":?", (
                    f"{name}: the password in {key} must be a required `${{VAR:?...}}`, got {m['pw']!r}")


# --- settings of the project's services -----------------------------------------------------------

def setting_env_names() -> dict[str, str]:
    """SAFETYNET_<FIELD> -> field, for every field of Settings."""
    prefix = Settings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper(): name for name in Settings.model_fields}


def vars_named_in_code() -> set[str]:
    """SAFETYNET_* names mentioned anywhere in the project's code (read outside Settings, too)."""
    found = set()
    for folder in ("safetynet", "connectors", "schemas", "quality", "dags"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(r"\bSAFETYNET_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")))
    return found


def test_the_hub_image_runs_exactly_the_project_services(raw):
    built = {name for name, svc in services(raw).items() if is_hub_image(svc)}
    assert built == PROJECT_SERVICES, f"services built from {HUB_DOCKERFILE}: {sorted(built)}"
    images = {services(raw)[name]["image"] for name in built}
    assert len(images) == 1, f"the project services must share one image tag, got {images}"


def test_required_settings_fields_still_exist():
    missing = (PRODUCTION_REQUIRED | set(UNSET_ALLOWED)) - set(Settings.model_fields)
    assert not missing, f"safetynet/core/settings.py no longer has {sorted(missing)}: update this test and the compose file"


@pytest.mark.parametrize("service", sorted(PROJECT_SERVICES))
def test_project_service_gets_every_setting_production_needs(service, compose, monkeypatch):
    env = environment(services(compose)[service])
    by_env = setting_env_names()
    field_to_env = {f: e for e, f in by_env.items()}

    missing = sorted(field_to_env[f] for f in PRODUCTION_REQUIRED if not env.get(field_to_env[f]))
    assert not missing, f"{service}: production needs {missing} set"

    # A setting without a usable default must be set, or be consciously left off here.
    for field, info in Settings.model_fields.items():
        if info.is_required() or info.default is None:
            assert env.get(field_to_env[field]) or field in UNSET_ALLOWED, (
                f"{service}: {field_to_env[field]} has no default and is not set; set it in "
                "docker-compose.yml (x-safetynet-env) or list it in UNSET_ALLOWED with the reason")

    known = set(by_env) | vars_named_in_code() | PENDING_VARS
    unknown = sorted(k for k in env if k.startswith("SAFETYNET_") and k not in known)
    assert not unknown, f"{service}: {unknown} is read by no code (a typo?)"

    settings = settings_from(env, monkeypatch)
    assert settings.problems() == [], f"{service}: {settings.problems()}"
    assert settings.store.startswith("s3://"), f"{service}: SAFETYNET_STORE must be the shared s3:// store, not {settings.store!r}"
    assert not settings.kafka_security_protocol.startswith("SASL"), "SASL is on but no SASL settings are passed"


def test_review_app_service(compose):
    svc = services(compose)["review"]
    assert svc["command"][:2] == ["safetynet", "serve"], "the review app runs `safetynet serve`"
    assert "0.0.0.0" in svc["command"], "the review app must listen on all interfaces in its container"
    url = urlsplit(environment(svc)["SAFETYNET_REVIEW_DB"])
    assert url.scheme.startswith("postgresql") and url.hostname == "postgres"
    assert (url.username, url.path) == ("review", "/review")
    assert url.password == environment(services(compose)["postgres"])["REVIEW_DB_PASSWORD"]
    assert not any(m["target"] == "/opt/airflow/dags" for m in mounts(svc)), "the review app needs no DAGs"
    import argparse

    from safetynet.review.cli import add_parsers

    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(), lambda a: None)
    args = p.parse_args(svc["command"][1:])  # the compose command parses with the real CLI
    assert (args.host, args.port) == ("0.0.0.0", 8000)


# --- the services agree with each other -----------------------------------------------------------

def test_object_store_wiring(compose):
    svcs = services(compose)
    init = environment(svcs["minio-init"])
    for name in PROJECT_SERVICES:
        env = environment(svcs[name])
        endpoint = urlsplit(env["SAFETYNET_S3_ENDPOINT"])
        assert endpoint.hostname == "minio" and endpoint.port == 9000, f"{name}: S3 endpoint is {endpoint.geturl()}"
        assert env["SAFETYNET_STORE"][5:].split("/")[0] == init["HUB_BUCKET"], (
            f"{name}: SAFETYNET_STORE's bucket differs from the one minio-init creates")
        assert (env["SAFETYNET_S3_ACCESS_KEY"], env["SAFETYNET_S3_SECRET_KEY"]) == (
            init["HUB_ACCESS_KEY"], init["HUB_SECRET_KEY"]), f"{name}: not the MinIO user minio-init creates"
        assert env["SAFETYNET_S3_ACCESS_KEY"] != environment(svcs["minio"])["MINIO_ROOT_USER"], (
            "the hub must not use MinIO's root user")
    minio_env = environment(svcs["minio"])
    assert (init["MINIO_ROOT_USER"], init["MINIO_ROOT_PASSWORD"]) == (
        minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
    assert urlsplit(init["MINIO_ENDPOINT"]).hostname == "minio"
    for name in PROJECT_SERVICES:
        assert "MINIO_ROOT_PASSWORD" not in environment(svcs[name]), f"{name} must not see MinIO's root password"


def test_kafka_wiring(compose):
    svcs = services(compose)
    kafka = environment(svcs["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "single-node KRaft"
    assert kafka["CLUSTER_ID"], "KRaft needs CLUSTER_ID"
    node_id = str(kafka["KAFKA_NODE_ID"])
    voters = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert any(v.split("@")[0] == node_id for v in voters), "the node must be one of the quorum voters"
    listeners = dict(x.split("://") for x in kafka["KAFKA_LISTENERS"].split(","))
    assert kafka["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    proto_map = dict(x.split(":") for x in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(proto_map), "every listener needs a security protocol"
    advertised = {addr: name for name, addr in (x.split("://") for x in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))}
    assert set(advertised.values()) <= set(listeners), "every advertised listener must be a listener"
    for name in PROJECT_SERVICES:
        env = environment(svcs[name])
        proto = env.get("SAFETYNET_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
        for server in env["SAFETYNET_KAFKA_BOOTSTRAP"].split(","):
            assert server in advertised, f"{name}: bootstrap {server} is not an advertised listener {sorted(advertised)}"
            assert server.split(":")[0] in svcs, f"{name}: {server} is no service of the stack"
            listener = advertised[server]
            assert proto_map[listener] == proto, f"{name}: speaks {proto} to the {proto_map[listener]} listener {listener}"
    assert kafka.get("KAFKA_LOG_DIRS") == STATEFUL["kafka"], "Kafka's log dir must be its data volume"


def test_database_wiring(compose):
    svcs = services(compose)
    pg = environment(svcs["postgres"])
    init_sql = (INFRA / "postgres" / "init" / "10-hub-databases.sh").read_text(encoding="utf-8")
    for role, var in (("airflow", "AIRFLOW_DB_PASSWORD"), ("review", "REVIEW_DB_PASSWORD")):
        assert f"CREATE ROLE {role} LOGIN PASSWORD" in init_sql and f"CREATE DATABASE {role} OWNER {role}" in init_sql
        assert f"${{{var}" in init_sql and pg.get(var), f"postgres must pass {var} to its init script"
    for name in {"airflow-init", *AIRFLOW_COMMANDS}:
        url = urlsplit(environment(svcs[name])["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
        assert url.scheme == "postgresql+psycopg2" and url.hostname == "postgres"
        assert (url.username, url.path, url.password) == ("airflow", "/airflow", pg["AIRFLOW_DB_PASSWORD"]), name
    init_mounts = {m["target"]: m for m in mounts(svcs["postgres"])}
    assert init_mounts["/docker-entrypoint-initdb.d"]["source"] == "./infra/postgres/init"


def test_airflow_components(compose):
    svcs = services(compose)
    airflow = {n: environment(svcs[n]) for n in {"airflow-init", *AIRFLOW_COMMANDS}}
    for name, cmd in AIRFLOW_COMMANDS.items():
        assert svcs[name]["command"] == [cmd], f"{name} must run `airflow {cmd}`"
    shared = ["AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CORE__AUTH_MANAGER", "AIRFLOW__CORE__FERNET_KEY",
              "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API_AUTH__JWT_ISSUER", "AIRFLOW__API__SECRET_KEY",
              "AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    for key in shared:
        values = {n: env.get(key) for n, env in airflow.items()}
        assert all(values.values()) and len(set(values.values())) == 1, f"{key} must be set alike on {values}"
    some = next(iter(airflow.values()))
    assert some["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    exec_url = urlsplit(some["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert exec_url.hostname == "airflow-apiserver" and exec_url.path == "/execution/"
    assert exec_url.port == 8080 and any(p.endswith(":8080") for p in svcs["airflow-apiserver"]["ports"])
    for name in ("airflow-scheduler", "airflow-dag-processor"):
        dags = [m for m in mounts(svcs[name]) if m["target"] == "/opt/airflow/dags"]
        assert dags and dags[0]["source"] == "./dags" and dags[0]["read_only"], f"{name} must mount ./dags read-only"
    assert svcs["airflow-init"]["command"][-1] == "/opt/safetynet/airflow-init.sh"
    assert "airflow-init.sh /opt/safetynet/airflow-init.sh" in DOCKERFILE.read_text(encoding="utf-8")
    init_script = (INFRA / "airflow" / "airflow-init.sh").read_text(encoding="utf-8")
    assert "airflow db migrate" in init_script and "airflow users create" in init_script
    for var in re.findall(r"\$\{(AIRFLOW_ADMIN_[A-Z]+)", init_script):
        assert airflow["airflow-init"].get(var), f"airflow-init must pass {var}"


# --- start-up order, health, restart, volumes -----------------------------------------------------

def test_depends_on_waits_for_health_or_completion(raw):
    svcs = services(raw)
    for name, svc in svcs.items():
        for dep, spec in depends_on(svc).items():
            assert dep in svcs, f"{name} depends on unknown service {dep}"
            cond = spec.get("condition")
            if dep in ONE_SHOT:
                assert cond == "service_completed_successfully", f"{name} -> {dep}: wait for the job to finish"
            else:
                assert cond == "service_healthy", f"{name} -> {dep}: use condition service_healthy"
                hc = svcs[dep].get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), f"{name} waits on {dep}, which has no healthcheck"
    # no cycle
    order, seen = [], set()

    def visit(n, path=()):
        assert n not in path, f"depends_on cycle: {' -> '.join((*path, n))}"
        if n not in seen:
            for d in depends_on(svcs[n]):
                visit(d, (*path, n))
            seen.add(n)
            order.append(n)

    for n in svcs:
        visit(n)


def test_what_must_run_before_what(raw):
    svcs = services(raw)

    def deps(n):
        return set(depends_on(svcs[n]))

    assert "kafka" in deps("kafka-topics") and "minio" in deps("minio-init") and "postgres" in deps("airflow-init")
    for name in AIRFLOW_COMMANDS:
        assert {"postgres", "airflow-init"} <= deps(name), f"{name} must wait for postgres and airflow-init"
    for name in ("airflow-scheduler", "airflow-triggerer"):  # they run/wake ingest: topics and bucket first
        assert {"kafka-topics", "minio-init", "airflow-apiserver"} <= deps(name), name
    assert {"postgres", "minio-init"} <= deps("review")


def test_long_running_services_have_healthchecks_and_restart(raw):
    svcs = services(raw)
    for name in LONG_RUNNING:
        svc = svcs[name]
        assert (svc.get("healthcheck") or {}).get("test"), f"{name} needs a healthcheck"
        assert svc.get("restart") in RESTART_LONG_RUNNING, f"{name} needs a restart policy, has {svc.get('restart')!r}"
    for name in ONE_SHOT:
        assert svcs[name].get("restart") == "no", f"one-shot {name} must not be restarted (restart: \"no\")"
        assert not svcs[name].get("ports"), f"one-shot {name} publishes no port"


def test_healthcheck_snippets_compile(raw):
    for name, svc in services(raw).items():
        test = (svc.get("healthcheck") or {}).get("test") or []
        if isinstance(test, list) and test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"{name} healthcheck", "exec")


def test_stateful_services_keep_data_on_named_volumes(raw):
    svcs = services(raw)
    declared = set(raw.get("volumes") or {})
    used = set()
    for name, svc in svcs.items():
        for m in mounts(svc):
            if m["type"] == "volume" and m["source"]:
                assert m["source"] in declared, f"{name}: volume {m['source']} is not declared under volumes:"
                used.add(m["source"])
            elif m["type"] == "bind":
                assert m["read_only"], f"{name}: bind mount {m['source']} must be read-only (:ro)"
                assert m["source"].startswith("./"), f"{name}: bind only from inside the repository, not {m['source']}"
                if m["source"].startswith("./infra/"):
                    assert (ROOT / m["source"]).exists(), f"{name}: {m['source']} does not exist"
    for name, path in STATEFUL.items():
        named = [m for m in mounts(svcs[name]) if m["type"] == "volume" and m["target"] == path]
        assert named, f"{name} keeps its data at {path}: mount a named volume there"
    assert declared == used, f"declared but unused volumes: {sorted(declared - used)}"
    assert svcs["minio"]["command"][:2] == ["server", STATEFUL["minio"]]


def test_only_the_entry_points_are_published(raw):
    published = {name for name, svc in services(raw).items() if svc.get("ports")}
    assert published == {"kafka", "minio", "airflow-apiserver", "review"}, published
    for name in published:
        for p in services(raw)[name]["ports"]:
            assert str(p).startswith("${HUB_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: bind {p} to HUB_BIND_ADDRESS"


# --- Kafka topics ---------------------------------------------------------------------------------

def listed_topics(capsys) -> list[str]:
    """`safetynet feeds --topics`: what airflow-init writes for the kafka-topics job."""
    from safetynet.cli import main

    capsys.readouterr()
    assert main(["feeds", "--topics"]) == 0
    return capsys.readouterr().out.split()


def test_topic_list_is_the_registry(capsys):
    from schemas.registry import contracts

    expected = sorted(c.topic for c in contracts().values()) + ["hub.snapshots.v1", "hub.warnings.v1"]
    assert listed_topics(capsys) == expected
    assert all(re.fullmatch(r"dept\.[a-z_]+\.[a-z_]+\.v\d+", t) for t in expected[:-2])


def test_topic_job_creates_the_listed_topics(raw):
    """No committed topic list: airflow-init (the hub image, so the registry it ships) writes it to
    a volume the kafka-topics job reads, so a new feed needs no edit here."""
    job = services(raw)["kafka-topics"]
    env = environment(job)
    binds = {m["target"]: m["source"] for m in mounts(job)}
    assert binds.get("/opt/infra/kafka") == "./infra/kafka"
    init = services(raw)["airflow-init"]
    init_binds = {m["target"]: m["source"] for m in mounts(init)}
    shared = init_binds.get("/opt/safetynet/topics")
    assert shared and shared in raw.get("volumes", {}), "airflow-init writes the topic list to a named volume"
    listing = next(t for t, s in binds.items() if s == shared)
    assert env["TOPICS_FILE"] == f"{listing}/topics.txt"
    assert depends_on(job)["airflow-init"]["condition"] == "service_completed_successfully"
    script = (INFRA / "airflow" / "airflow-init.sh").read_text(encoding="utf-8")
    assert 'TOPICS_FILE="${TOPICS_FILE:-/opt/safetynet/topics/topics.txt}"' in script
    assert "safetynet feeds --topics" in script
    assert job["entrypoint"][-1] == "/opt/infra/kafka/create-topics.sh"
    assert env["TOPICS_BOOTSTRAP"].split(":")[0] == "kafka"
    assert job["image"] == services(raw)["kafka"]["image"], "use the broker's own image (its kafka-topics.sh)"
    assert str(environment(services(raw)["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"]).lower() == "false"


def _stub(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/usr/bin/env bash\n" + body, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@pytest.mark.parametrize("broker_loses_one", [False, True])
def test_create_topics_script(tmp_path, broker_loses_one, capsys):
    """Run infra/kafka/create-topics.sh against a stand-in kafka-topics.sh that records its calls."""
    log = tmp_path / "calls"
    drop = "hub.warnings.v1" if broker_loses_one else "-none-"
    stub = _stub(tmp_path, "kafka-topics.sh", f"""
echo "$*" >> {log}
if [[ " $* " == *" --list "* ]]; then
  grep -o -- '--topic [^ ]*' {log} | cut -d' ' -f2 | grep -vx -- '{drop}' || true
fi
""")
    wanted = listed_topics(capsys)
    (tmp_path / "topics.txt").write_text("\n".join(wanted) + "\n", encoding="utf-8")
    env = {**os.environ, "TOPICS_BOOTSTRAP": "kafka:9092", "TOPICS_PARTITIONS": "3",
           "TOPICS_REPLICATION_FACTOR": "1", "KAFKA_TOPICS_BIN": str(stub), "TOPICS_FILE": str(tmp_path / "topics.txt")}
    r = subprocess.run(["bash", str(INFRA / "kafka" / "create-topics.sh")], env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    created = re.findall(r"--create --if-not-exists --topic (\S+) --partitions 3 --replication-factor 1",
                         log.read_text())
    assert created == wanted
    if broker_loses_one:
        assert r.returncode != 0 and "hub.warnings.v1 is missing" in r.stderr
    else:
        assert r.returncode == 0, r.stderr


# --- MinIO ----------------------------------------------------------------------------------------

def test_minio_policy_is_limited_to_the_bucket():
    policy = json.loads((INFRA / "minio" / "safetynet-policy.json").read_text(encoding="utf-8"))
    actions, resources = set(), set()
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions |= set(st["Action"])
        resources |= set(st["Resource"])
    assert resources == {"arn:aws:s3:::@BUCKET@", "arn:aws:s3:::@BUCKET@/*"}
    assert all(a.startswith("s3:") and "*" not in a for a in actions), actions
    assert not actions & {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy"}
    assert {"s3:ListBucket", "s3:GetObject", "s3:PutObject", "s3:DeleteObject"} <= actions


@pytest.mark.parametrize("already_attached", [False, True])
def test_minio_init_script(tmp_path, already_attached):
    """Run infra/minio/init.sh against a stand-in `mc` that records its calls."""
    log = tmp_path / "calls"
    policy_copy = tmp_path / "policy.json"
    stub = _stub(tmp_path, "mc", f"""
echo "$*" >> {log}
if [[ "$1 $2 $3" == "admin policy create" ]]; then cp "$6" {policy_copy}; fi
if [[ "$1 $2 $3" == "admin user info" ]]; then echo "AccessKey: $5"; echo "PolicyName: {'safetynet-hub' if already_attached else ''}"; fi
""")
    env = {**os.environ, "MINIO_ENDPOINT": "http://minio:9000", "MINIO_ROOT_USER": "root",
           "MINIO_ROOT_PASSWORD": "rootpassword", "HUB_BUCKET": "hub-bucket", "HUB_ACCESS_KEY": "hub",
           "HUB_SECRET_KEY": "hubsecret1", "MC_BIN": str(stub)}
    r = subprocess.run(["bash", str(INFRA / "minio" / "init.sh")], env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "alias set hub http://minio:9000 root rootpassword"
    assert "mb --ignore-existing hub/hub-bucket" in calls
    assert "anonymous set none hub/hub-bucket" in calls
    assert "admin user add hub hub hubsecret1" in calls
    attached = "admin policy attach hub safetynet-hub --user hub" in calls
    assert attached is not already_attached
    rendered = json.loads(policy_copy.read_text())
    assert "@BUCKET@" not in json.dumps(rendered)
    assert {r for st in rendered["Statement"] for r in st["Resource"]} == {
        "arn:aws:s3:::hub-bucket", "arn:aws:s3:::hub-bucket/*"}

    bad = subprocess.run(["bash", str(INFRA / "minio" / "init.sh")], env={**env, "HUB_BUCKET": "Bad_Bucket"},
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0 and "not a valid bucket name" in bad.stderr


def test_minio_init_job(raw):
    job = services(raw)["minio-init"]
    assert job["entrypoint"][-1] == "/opt/infra/minio/init.sh"
    assert {m["target"]: m["source"] for m in mounts(job)}.get("/opt/infra/minio") == "./infra/minio"
    assert environment(job)["POLICY_TEMPLATE"] == "/opt/infra/minio/safetynet-policy.json"


def test_shell_scripts_parse():
    scripts = sorted(INFRA.rglob("*.sh"))
    assert scripts
    for path in scripts:
        r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, check=False)
        assert r.returncode == 0, f"{path.relative_to(ROOT)}: {r.stderr}"
        assert os.access(path, os.X_OK), f"{path.relative_to(ROOT)} must be executable"


# --- the Airflow image ----------------------------------------------------------------------------

def _lock() -> dict:
    return tomllib.loads((ROOT / "uv.lock").read_text(encoding="utf-8"))


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_is_built_from_the_locked_airflow_and_python():
    text = DOCKERFILE.read_text(encoding="utf-8")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    lock = _lock()
    airflow = next(p["version"] for p in lock["package"] if p["name"] == "apache-airflow")
    assert args["AIRFLOW_VERSION"] == airflow, (
        f"infra/airflow/Dockerfile builds on Airflow {args['AIRFLOW_VERSION']}, uv.lock pins {airflow}")
    python = re.search(r"(\d+\.\d+)", lock["requires-python"])[1]
    assert args["PYTHON_VERSION"] == python, f"image Python {args['PYTHON_VERSION']}, project needs {python}"
    assert "FROM apache/airflow:slim-${AIRFLOW_VERSION}-python${PYTHON_VERSION}" in text
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in text
    assert re.search(r"uv export --frozen\b[^\n]*--no-dev", text), "the image must install uv.lock's pins"
    assert "pip check" in text


def test_image_contains_every_package_of_the_wheel():
    text = DOCKERFILE.read_text(encoding="utf-8")
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    for pkg in packages:
        assert re.search(rf"^COPY {re.escape(pkg)} \./{re.escape(pkg)}$", text, re.MULTILINE), (
            f"infra/airflow/Dockerfile must COPY {pkg}/ (a wheel package of pyproject.toml)")
        assert f"!{pkg}" in ignore, f"Dockerfile.dockerignore must let {pkg}/ into the build context"
    readme = pyproject["project"].get("readme")
    if readme:
        assert f"!{readme}" in ignore and readme in text


def test_image_requirements_are_pinned_and_agree_with_the_lock():
    locked = {_norm(p["name"]): p["version"] for p in _lock()["package"] if "version" in p}
    req = (INFRA / "airflow" / "image-requirements.txt").read_text(encoding="utf-8")
    pins = {}
    for line in req.splitlines():
        line = line.split(";")[0].strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        assert m, f"image-requirements.txt: not an exact pin: {line!r}"
        pins[_norm(m[1])] = m[2]
    clash = {n: (v, locked[n]) for n, v in pins.items() if n in locked and locked[n] != v}
    assert not clash, (f"image-requirements.txt and uv.lock pin different versions {clash}: "
                       "run infra/airflow/update-image-requirements.sh")
    wanted = [_norm(ln.strip()) for ln in (INFRA / "airflow" / "image-requirements.in").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    unpinned = [n for n in wanted if n not in pins and n not in locked]
    assert not unpinned, f"{unpinned} not pinned: run infra/airflow/update-image-requirements.sh"


def test_python_snippets_of_infra_parse():
    for path in INFRA.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), str(path))


# --- the Celery variant (docker-compose.celery.yml, an override of this file) -------------------------

CELERY = ROOT / "docker-compose.celery.yml"
CELERY_AIRFLOW = {"airflow-init", *AIRFLOW_COMMANDS, "airflow-worker", "flower"}  # every Airflow process


@pytest.fixture(scope="module")
def celery_raw() -> dict:
    return yaml.safe_load(CELERY.read_text(encoding="utf-8"))


def _merge(base: dict, over: dict) -> dict:
    """Compose's merge of a service definition: mappings (environment, depends_on …) merged key by
    key, sequences and scalars replaced (the `command`, `ports`, `healthcheck.test`)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="module")
def celery_stack(raw, celery_raw, dot_env) -> dict[str, dict]:
    """`docker compose -f docker-compose.yml -f docker-compose.celery.yml config`'s services, interpolated:
    the override merged onto the base, `extends` resolved (from the base file)."""
    out = {n: dict(s) for n, s in services(raw).items()}
    for name, svc in services(celery_raw).items():
        svc = dict(svc)
        ext = svc.pop("extends", None)
        if ext is not None:
            assert ext["file"] == COMPOSE.name, f"{name} extends a service of another file: {ext}"
            base = {k: v for k, v in services(raw)[ext["service"]].items() if k != "depends_on"}
            out[name] = _merge(base, svc)
        else:
            out[name] = _merge(out.get(name, {}), svc)
    return interpolate(out, dot_env)


@pytest.mark.parametrize("stage", ["as written", "interpolated with .env.example"])
def test_celery_override_is_valid_per_the_compose_specification(stage, celery_raw, dot_env):
    doc = celery_raw if stage == "as written" else interpolate(celery_raw, dot_env)
    validator = Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "docker-compose.celery.yml breaks the Compose Specification:\n" + "\n".join(
        f"  {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors)


def test_celery_override_uses_only_documented_variables_and_required_secrets(celery_raw, env_example):
    for text in strings(celery_raw):
        for name, op, arg in refs(text):
            assert name in env_example, f"docker-compose.celery.yml uses {name}, not in .env.example"
            assert "$" not in arg
            if SECRET_NAME.search(name):
                assert op == ":?" and arg.strip(), f"secret {name} must be required as ${{{name}:?message}}"


def test_celery_every_airflow_process_runs_the_celery_executor_alike(celery_stack):
    envs = {n: environment(celery_stack[n]) for n in CELERY_AIRFLOW}
    for key in ("AIRFLOW__CORE__EXECUTOR", "AIRFLOW__CELERY__BROKER_URL", "AIRFLOW__CELERY__RESULT_BACKEND",
                "AIRFLOW__OPERATORS__DEFAULT_QUEUE", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__API_AUTH__JWT_SECRET",
                "AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__CORE__EXECUTION_API_SERVER_URL"):
        values = {n: env.get(key) for n, env in envs.items()}
        assert all(values.values()) and len(set(values.values())) == 1, f"{key} must be set alike on {values}"
    some = next(iter(envs.values()))
    assert some["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    broker = urlsplit(some["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)
    # results in the metadata database: the same server, database, user and password as Airflow's own
    backend = urlsplit(some["AIRFLOW__CELERY__RESULT_BACKEND"].removeprefix("db+"))
    meta = urlsplit(some["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    assert (backend.hostname, backend.port, backend.path, backend.username, backend.password) == \
        (meta.hostname, meta.port, meta.path, meta.username, meta.password)


def test_celery_workers_serve_the_queue_one_task_at_a_time_with_the_hub_settings(celery_stack, monkeypatch):
    w = celery_stack["airflow-worker"]
    assert is_hub_image(w) and w["image"] == celery_stack["airflow-scheduler"]["image"]
    cmd = w["command"]
    assert cmd[:2] == ["celery", "worker"]
    env = environment(w)
    assert cmd[cmd.index("--queues") + 1] == env["AIRFLOW__OPERATORS__DEFAULT_QUEUE"]
    assert cmd[cmd.index("--concurrency") + 1] == env["AIRFLOW__CELERY__WORKER_CONCURRENCY"] == "1"
    assert "ports" not in w, "a worker publishes nothing (its log server is reached inside the network)"
    dags = [m for m in mounts(w) if m["target"] == "/opt/airflow/dags"]
    assert dags and dags[0]["source"] == "./dags" and dags[0]["read_only"]
    assert any(m["target"] == "/opt/safetynet/mappings" and m["read_only"] for m in mounts(w))
    assert {"postgres", "airflow-init", "redis", "minio-init", "kafka-topics", "airflow-apiserver"} <= set(depends_on(w))
    assert (w.get("healthcheck") or {}).get("test") and w.get("restart") in RESTART_LONG_RUNNING
    assert "inspect ping" in " ".join(w["healthcheck"]["test"])
    settings = settings_from(env, monkeypatch)
    assert settings.problems() == [] and settings.store.startswith("s3://")


def test_celery_redis_and_flower(celery_stack, celery_raw):
    r = celery_stack["redis"]
    assert r["image"].startswith("redis:") and not r.get("ports"), "Redis stays inside the compose network"
    assert r["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"] and r.get("restart") in RESTART_LONG_RUNNING
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-worker"):
        assert depends_on(celery_stack[name]).get("redis", {}).get("condition") == "service_healthy", name
    for name, svc in services(celery_raw).items():  # the override adds dependencies only on what exists
        for dep, spec in depends_on(svc).items():
            assert dep in celery_stack, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") in ("service_healthy", "service_completed_successfully")
    f = celery_stack["flower"]
    assert f["profiles"] == ["flower"] and f["command"] == ["celery", "flower"]
    assert all(str(p).startswith("127.0.0.1:") for p in f["ports"]), "flower binds to HUB_BIND_ADDRESS"
    assert services(celery_raw)["flower"]["ports"][0].startswith("${HUB_BIND_ADDRESS:-127.0.0.1}:")


def test_celery_packages_are_in_the_lock():
    locked = {_norm(p["name"]) for p in _lock()["package"]}
    assert {"apache-airflow-providers-celery", "celery", "redis"} <= locked
    deps = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"])
    assert "apache-airflow-providers-celery" in deps and "celery[redis]" in deps
