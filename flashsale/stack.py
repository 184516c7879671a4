"""``flashsale up``: the whole stack on one machine, from nothing but Python.

Order of start: Redis, PostgreSQL, Kafka (each the configured URL, else an embedded server from the
launcher; Redis may be an embedded Redis Cluster, ``--redis-cluster N``), the database migration, the
demo sale, the write-behind worker (with the sweeper), the API with the storefront. Stop is the reverse;
every process started here is stopped, and a child or an embedded server (a cluster's nodes one by one)
that dies stops the whole stack, naming it (a half-running stack would quietly stop draining or serving).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any

from rich.console import Console

from flashsale import launcher
from flashsale.engine.settings import Settings
from flashsale.engine.settings import redact_url as _redact

log = logging.getLogger("flashsale.stack")

DEMO_SALE = Path(__file__).with_name("demo_sale.json")
JWT_SECRET_FILE = "jwt_secret"
ENV_FILE = "flashsale.env"
CLUSTER_SHAPE_FILE = "cluster.json"  # what launcher.RedisCluster records in the data dir of a cluster
STOP_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """Starting the stack failed; the message is one sentence for the user."""


class Shutdown(BaseException):
    """A stop signal arrived (SIGINT/SIGTERM); unwinds start-up or the wait loop into a clean stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def flashsale_command() -> list[str]:
    """How to run this install's ``flashsale`` (the console script next to this Python, else via -c)."""
    script = Path(sys.executable).with_name("flashsale")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from flashsale.cli import main; main()"]


def _flashsale_on_path() -> str:
    """Shell lines that make `flashsale` this install's: its bin directory (the virtual environment's)
    first on PATH, or, without a console script there, a function that runs it through this Python."""
    command = flashsale_command()
    if len(command) == 1:
        return f'export PATH={shlex.quote(str(Path(command[0]).parent))}:"$PATH"\n'
    return f'flashsale() {{ {shlex.join(command)} "$@"; }}\n'


def printable_flashsale() -> str:
    """``flashsale`` when that is what the user's PATH finds, else the full path of this install's script."""
    command = flashsale_command()
    if len(command) == 1 and shutil.which("flashsale") == command[0]:
        return "flashsale"
    return shlex.join(command)


@dataclass
class Child:
    """A process of the stack started here (the worker, the API), with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to the child (it stops its own workers), wait, then SIGKILL to its whole process group:
        it runs in a session of its own, so nothing it started outlives it."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("event=child_kill child=%s pid=%d reason=timeout", self.name, self.process.pid)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.log_file.close()
        return self.process.returncode

    def exit_description(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
            return f"by {signal.Signals(-code).name}"
        return f"with code {code}"

    def last_lines(self, count: int = 12) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-count:])


@dataclass(frozen=True)
class Ended:
    """A process of the stack that ended on its own: what it was, how it ended, the end of its log."""

    what: str
    how: str
    log_path: Path | None
    last_lines: str


@dataclass
class StackOptions:
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    api_workers: int = 1
    demo_sale: Path | None = DEMO_SALE
    reload_sale: bool = False  # load demo_sale even when Redis already holds a sale (an explicit --sale)
    sweeper: bool = True
    redis_cluster: int = 0  # masters of an embedded Redis Cluster; 0: one embedded Redis server
    redis_replicas: int = 0  # replicas of each of those masters


@dataclass
class Stack:
    """The running stack: servers, children and where everything is."""

    settings: Settings
    options: StackOptions
    console: Console
    servers: list[launcher.ManagedServer | launcher.RedisCluster] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    run_dir: Path | None = None
    endpoints: dict[str, str] = field(default_factory=dict)
    masters: list[tuple[str, str]] = field(default_factory=list)  # a cluster's: (host:port, its partitions)
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- start ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.run_dir = self._make_run_dir()
        redis_cluster = self.settings.redis_cluster
        if self.settings.redis_url:
            redis_url = self.settings.redis_url
            kind = "Redis Cluster" if redis_cluster else "Redis"
            self._done(kind, f"{_redact(redis_url)} (configured)")
        elif self.options.redis_cluster:
            redis_url = self._start_server("Redis Cluster", self._embedded_redis_cluster)
            redis_cluster = True
        else:
            redis_url = self._start_server("Redis", self._embedded_redis)
            redis_cluster = False  # FLASHSALE_REDIS_CLUSTER describes a configured URL's Redis only
        if redis_cluster:
            self.masters = self._cluster_masters(redis_url)
            for name, partitions in self.masters:
                self.console.print(f"  {'':<22} master {name}  partitions {partitions}", highlight=False)
        database_url = self.settings.database_url or self._start_server("PostgreSQL", self._embedded_postgres)
        if self.settings.database_url:
            self._done("PostgreSQL", f"{_redact(database_url)} (configured)")
        kafka = self.settings.kafka_bootstrap or self._start_server("Kafka", self._embedded_kafka)
        if self.settings.kafka_bootstrap:
            self._done("Kafka", f"{kafka} (configured)")
        port = self._api_port()
        self.settings = msgspec_replace(
            self.settings,
            redis_url=redis_url,
            redis_cluster=redis_cluster,  # FLASHSALE_REDIS_CLUSTER for every process started here
            database_url=database_url,
            kafka_bootstrap=kafka,
            jwt_secret=self._jwt_secret(),
            host=self.options.host,
            port=port,
            workers=self.options.api_workers,
        )
        self.endpoints.update(redis=redis_url, postgres=database_url, kafka=kafka)
        self.endpoints["env_file"] = str(self._write_env_file())

        self._step("Database", "migrating", lambda: self._run_once("migrate", ["db", "migrate"]))
        if self.options.demo_sale is not None:
            self.endpoints["demo_sale"] = self._step("Sale", "loading", self._load_demo_sale)
        self._spawn("worker", ["worker"] if self.options.sweeper else ["worker", "--no-sweep"])
        api = self._spawn("api", ["serve"])
        base = f"http://{_connectable(self.options.host)}:{port}"
        self._step("API", "waiting for", lambda: self._wait_http(api, f"{base}/health", 90))
        self.endpoints.update(storefront=f"{base}/", api=f"{base}/api/v1", metrics=f"{base}/metrics")
        self.endpoints["ready"] = f"{base}/health/ready"

    def _make_run_dir(self) -> Path:
        if self.options.data_dir is not None:
            self.options.data_dir.mkdir(parents=True, exist_ok=True)
            return self.options.data_dir.resolve()
        self._tmp = tempfile.TemporaryDirectory(prefix="flashsale-up-")
        return Path(self._tmp.name)

    def _data(self, name: str) -> Path | None:
        return self.options.data_dir.resolve() / name if self.options.data_dir is not None else None

    def _embedded_redis(self) -> tuple[launcher.ManagedServer, str, str]:
        data = self._data("redis")
        if data is not None and (data / CLUSTER_SHAPE_FILE).is_file():
            raise launcher.LaunchError(
                f"{data} holds a Redis Cluster's data: start it with --redis-cluster "
                f"{json.loads((data / CLUSTER_SHAPE_FILE).read_text())['masters']}"
            )
        server = self._register(launcher.RedisServer(data)).start()
        where = f"AOF in {data}" if data is not None else "in memory, discarded on stop"
        # Every process here reaches it on its unix socket (less CPU per round trip than loopback TCP);
        # its TCP port is for anything else (redis-cli -p, a client in a container).
        self.endpoints["redis_tcp"] = server.url
        return server, server.socket_url, f"{where}; TCP {server.url}"

    def _embedded_redis_cluster(self) -> tuple[launcher.RedisCluster, str, str]:
        data = self._data("redis")
        if data is not None and (data / "appendonly.aof").is_file():
            raise launcher.LaunchError(f"{data} holds one Redis server's data, not a cluster's")
        masters, replicas = self.options.redis_cluster, self.options.redis_replicas
        cluster = launcher.RedisCluster(
            masters, replicas=replicas, data_dir=data, partitions=self.settings.partitions
        )
        self._register(cluster).start()
        shape = f"{masters} masters" + (f", {replicas} replica(s) each" if replicas else "")
        where = f"AOF in {data}/node-*" if data is not None else "in memory, discarded on stop"
        return cluster, cluster.url, f"{shape}, {where}"

    def _cluster_masters(self, url: str) -> list[tuple[str, str]]:
        """Each master of the cluster by host:port, with the partitions it serves (as text)."""
        import redis

        from flashsale.engine.client import redis_client
        from flashsale.engine.nodes import partition_nodes

        client = redis_client(url, cluster=True, max_connections=2)
        try:
            nodes = partition_nodes(client, self.settings.keyspace())
        except redis.RedisError as error:
            raise StackError(f"cannot read the Redis Cluster's slot map at {_redact(url)}: {error}") from None
        finally:
            client.close()
        return [(node.name, ", ".join(map(str, node.partitions))) for node in nodes]

    def _embedded_postgres(self) -> tuple[launcher.ManagedServer, str, str]:
        server = self._register(launcher.PostgresServer(self._data("postgres"))).start()
        where = (
            f"data in {self._data('postgres')}" if self.options.data_dir else "temporary, discarded on stop"
        )
        return server, server.url, where

    def _embedded_kafka(self) -> tuple[launcher.ManagedServer, str, str]:
        broker = self._register(launcher.KafkaBroker()).start()
        return broker, broker.bootstrap, "Kafka-compatible Tansu broker, topics in memory"

    def _register(self, server: launcher.ManagedServer) -> Any:
        # Registered before it starts: a stop signal during its start still stops it.
        self.servers.append(server)
        return server

    def _start_server(
        self, title: str, start: Callable[[], tuple[launcher.ManagedServer | launcher.RedisCluster, str, str]]
    ) -> str:
        with self.console.status(f"Starting {title}…"):
            try:
                _server, url, where = start()
            except launcher.LaunchError as error:
                raise StackError(f"{title} did not start: {error}") from None
        self._done(title, f"{_redact(url)} ({where})")
        return url

    def _api_port(self) -> int:
        wanted = self.options.port if self.options.port is not None else self.settings.port
        if wanted == 0:
            return launcher.free_port()
        if _port_in_use(self.options.host, wanted):
            if self.options.port is not None:
                raise StackError(f"port {wanted} is already in use: pick another with --port")
            chosen = launcher.free_port()
            self.console.print(f"[yellow]Port {wanted} is in use; the API takes port {chosen} instead.[/]")
            return chosen
        return wanted

    def _jwt_secret(self) -> str:
        """The configured secret, else one kept in the data dir (tokens survive restarts), else a new one."""
        if self.settings.jwt_secret:
            self.endpoints["jwt_secret_from"] = "environment"
            return self.settings.jwt_secret
        assert self.run_dir is not None
        path = self.run_dir / JWT_SECRET_FILE
        if path.is_file() and path.read_text().strip():
            secret = path.read_text().strip()
        else:
            secret = secrets.token_hex(32)
            # Written with 0600 from the start: the secret signs every token of this stack.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secret + "\n")
        self.endpoints["jwt_secret_from"] = str(path)
        return secret

    def _write_env_file(self) -> Path:
        """This stack's settings as `export FLASHSALE_…=…` lines, and this install's `flashsale` first on
        PATH, so another shell can `. ` it and run any flashsale command (token, sale status, worker lag,
        reconcile) against the same servers."""
        assert self.run_dir is not None
        path = self.run_dir / ENV_FILE
        env = {k: v for k, v in self.settings.as_env().items() if k != "FLASHSALE_DATA_DIR"}
        lines = [f"# Redis Cluster master {name}: partitions {parts}\n" for name, parts in self.masters]
        lines += [f"export {key}={shlex.quote(value)}\n" for key, value in sorted(env.items())]
        lines.append(_flashsale_on_path())
        # 0600 from the start: it holds the JWT secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.writelines(lines)
        return path

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
        env.update(self.settings.as_env())
        env.pop("FLASHSALE_DATA_DIR", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _log_file(self, name: str) -> tuple[Path, IO[bytes]]:
        assert self.run_dir is not None
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        path = logs / f"{name}.log"
        return path, path.open("ab")

    def _run_once(self, name: str, args: list[str]) -> str:
        """Runs a flashsale command to completion (the migration); its output goes to its log file."""
        path, handle = self._log_file(name)
        with handle:
            result = subprocess.run(
                [*flashsale_command(), *args],
                env=self._child_env(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            tail = path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise StackError(f"`flashsale {' '.join(args)}` failed ({tail[0]}); full log: {path}")
        return "migrated"

    def _load_demo_sale(self) -> str:
        import redis

        from flashsale.engine import Engine
        from flashsale.engine.errors import FlashSaleError
        from flashsale.sales import SaleFileError, load_sales, read_sale_file, redis_now_ms

        assert self.options.demo_sale is not None
        assert self.settings.redis_url is not None
        engine = Engine.from_settings(self.settings, max_connections=4)
        try:
            engine.load_scripts()
            existing = engine.list_sales()
            if existing and not self.options.reload_sale:
                # A kept data dir: the sale (and its holds and orders) carries on where it stopped.
                detail = f"kept the {len(existing)} SKU(s) already in Redis"
            else:
                loaded = load_sales(engine, read_sale_file(self.options.demo_sale))
                now_ms = redis_now_ms(engine)
                upcoming = sum(1 for sale in loaded if sale.starts_at > now_ms)
                detail = f"{len(loaded)} SKUs from {self.options.demo_sale.name} ({upcoming} starting soon)"
            return detail
        except (SaleFileError, FlashSaleError) as error:
            raise StackError(f"the sale did not load: {error}") from None
        except redis.RedisError as error:
            raise StackError(f"cannot reach Redis at {_redact(self.settings.redis_url)}: {error}") from None
        finally:
            engine.close()

    def _spawn(self, name: str, args: list[str]) -> Child:
        path, handle = self._log_file(name)
        process = subprocess.Popen(
            [*flashsale_command(), *args],
            env=self._child_env(),
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            **launcher.owned_child_options(),
        )
        child = Child(name, process, path, handle)
        self.children.append(child)
        log.info("event=child_started child=%s pid=%d log=%s", name, process.pid, path)
        return child

    def _wait_http(self, child: Child, url: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not child.alive():
                raise StackError(
                    f"the {child.name} exited with code {child.process.returncode} while starting; "
                    f"its log: {child.log_path}\n{child.last_lines()}"
                )
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=2) as response,
            ):
                if response.status == 200:
                    return f"answering {url}"
            time.sleep(0.2)
        raise StackError(
            f"the {child.name} did not answer {url} within {timeout_s:.0f}s; log: {child.log_path}"
        )

    def _step(self, title: str, doing: str, action: Callable[[], str]) -> str:
        """Runs one start-up step under a spinner, then prints its outcome on a ✓ line."""
        with self.console.status(f"{doing.capitalize()} the {title.lower()}…"):
            detail = action()
        self._done(title, detail)
        return detail

    def _done(self, title: str, detail: str) -> None:
        self.console.print(f"[green]✓[/] {title:<22} {detail}")

    # -- run ------------------------------------------------------------------------------------------------
    def wait(self) -> Ended:
        """Blocks until a stop signal (raises Shutdown) or a process started here ends on its own: a child
        (the worker, the API) or an embedded server (Redis, PostgreSQL, Kafka). Either stops the stack: a
        restarted server would come back half (an embedded Redis without --data-dir comes back empty)."""
        while True:
            for child in self.children:
                if not child.alive():
                    return Ended(
                        f"the {child.name}", child.exit_description(), child.log_path, child.last_lines()
                    )
            for server in self._watched():
                if server.died():  # poll() has reaped it
                    assert server.process is not None
                    what = f"the embedded {server.title} server (pid {server.process.pid})"
                    if isinstance(server, launcher.RedisClusterNode):
                        what = f"the embedded Redis Cluster node {server.address} (pid {server.process.pid})"
                    log.info("event=server_died server=%s pid=%d", server.name, server.process.pid)
                    return Ended(what, server.exit_description(), server.log_path, server.last_log_lines())
            time.sleep(0.25)

    def _watched(self) -> Iterator[launcher.ManagedServer]:
        """Every server process started here: a cluster's nodes one by one."""
        for server in self.servers:
            if isinstance(server, launcher.RedisCluster):
                yield from server.nodes
            else:
                yield server

    # -- stop -----------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stops everything started here, newest first. Safe to call twice or half way through start."""
        for child in reversed(self.children):
            with self.console.status(f"Stopping the {child.name}…"):
                child.stop()
            self.console.print(f"[dim]■ stopped the {child.name} (ended {child.exit_description()})[/]")
        self.children.clear()
        for server in reversed(self.servers):
            with self.console.status(f"Stopping {server.name}…"):
                server.stop()
            self.console.print(f"[dim]■ stopped {server.name}[/]")
        self.servers.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def summary(self) -> list[str]:
        """Where everything is, and how to get a token."""
        token_env = ""
        source = self.endpoints.get("jwt_secret_from", "environment")
        if source != "environment":
            token_env = f'FLASHSALE_JWT_SECRET="$(cat {shlex.quote(source)})" '
        token = f"{token_env}{printable_flashsale()} token alice"
        lines = [
            f"Storefront   {self.endpoints['storefront']}",
            f"API          {self.endpoints['api']}   (e.g. {self.endpoints['api']}/products)",
            f"Metrics      {self.endpoints['metrics']}",
            f"Readiness    {self.endpoints['ready']}",
            f"Token        {token}",
            f"Other shell  . {shlex.quote(self.endpoints['env_file'])}   "
            "(then flashsale token alice, sale status, worker lag, reconcile)",
        ]
        if self.settings.demo_sign_in:
            lines.append("Sign in      any shopper name on the storefront (demo sign-in; --no-demo-sign-in)")
        redis_line = f"Redis        {_redact(self.endpoints['redis'])}"
        if "redis_tcp" in self.endpoints:
            redis_line += f"  (TCP {self.endpoints['redis_tcp']})"
        if self.settings.redis_cluster:
            named = "nodes" if "," in self.endpoints["redis"] else "a node"
            redis_line += f"  ({named} of the Redis Cluster: FLASHSALE_REDIS_CLUSTER=1)"
        lines.append(redis_line)
        lines += [f"  master     {name}  partitions {partitions}" for name, partitions in self.masters]
        lines += [
            f"PostgreSQL   {_redact(self.endpoints['postgres'])}",
            f"Kafka        {self.endpoints['kafka']}",
        ]
        if "demo_sale" in self.endpoints:
            lines.append(f"Demo sale    {self.endpoints['demo_sale']}")
        lines.append(f"Logs         {self.run_dir}/logs/  (api.log, worker.log, migrate.log)")
        return lines


def msgspec_replace(settings: Settings, **changes: object) -> Settings:
    import msgspec

    return msgspec.structs.replace(settings, **changes)


def _connectable(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host


def _port_in_use(host: str, port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.3)
        return probe.connect_ex((_connectable(host), port)) == 0


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise Shutdown in the main thread while inside; the old handlers come back after."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Shutdown(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stop_signals_ignored() -> Iterator[None]:
    """While stopping: a second Ctrl-C must not abandon half-stopped children (stop is bounded anyway)."""
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run(settings: Settings, options: StackOptions, console: Console) -> int:
    """Starts the stack, prints where everything is, waits for a stop signal or a dead child, stops all.

    Returns the exit code: 0 after a stop signal, 1 when the stack failed to start or a child died.
    """
    stack = Stack(settings, options, console)
    code = 0
    try:
        with stop_signals_raise():
            try:
                stack.start()
                console.print()
                console.rule("[bold]flashsale is running[/] — Ctrl-C stops everything")
                for line in stack.summary():
                    console.print(line, highlight=False, soft_wrap=True)
                console.rule()
                ended = stack.wait()
                console.print(
                    f"[red]✗ {ended.what} ended {ended.how}; stopping the stack.[/] "
                    f"Last lines of {ended.log_path}:\n{ended.last_lines}",
                    highlight=False,
                )
                code = 1
            except Shutdown as signalled:
                console.print(f"\n{signalled.args[0]} received: stopping everything…")
            except StackError as error:
                console.print(f"[red]✗ {error}[/]", highlight=False)
                code = 1
            except Exception as error:  # one sentence for the user (traceback at DEBUG), then a clean stop
                log.debug("event=stack_failed", exc_info=True)
                console.print(
                    f"[red]✗ flashsale up failed: {type(error).__name__}: {error}[/]", highlight=False
                )
                code = 1
    finally:
        with stop_signals_ignored():
            stack.stop()
    console.print(
        "Stopped; nothing left running." if code == 0 else "Stopped what had started; nothing left running."
    )
    return code
