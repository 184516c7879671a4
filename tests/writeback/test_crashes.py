"""Processes killed (-9) under load: the API and redis-server (AOF with either fsync policy). Nothing a
client was told succeeded is lost, nothing is half-done, and afterwards Redis, PostgreSQL and the stream
reconcile with no drift."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import msgspec
import pytest
import redis
from click.testing import CliRunner
from flashsale.engine import Engine, FlashSaleError, SaleSettings
from flashsale.engine.settings import Settings
from flashsale.writeback import WorkerOptions, WorkerThread

from flashsale.cli import main
from flashsale.commands.token import mint
from flashsale.launcher import RedisServer, free_port, wait_for_port

SECRET = "crash-test-secret-0123456789abcdefghijkl"


def _reconciles(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["reconcile", "--json"], env=settings.as_env())
    assert result.exit_code == 0, result.output


def test_the_api_killed_under_load_loses_no_acknowledged_reservation(
    engine: Engine, settings: Settings
) -> None:
    engine.load_sale(SaleSettings(sku="CRASH-API", total=100_000, per_user_limit=1))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHSALE_", "PROMETHEUS_"))}
    env.update(settings.as_env())
    env.update(FLASHSALE_JWT_SECRET=SECRET, FLASHSALE_PORT=str(port), FLASHSALE_WORKERS="2")
    api = subprocess.Popen(
        [sys.executable, "-c", "from flashsale.cli import main; main()", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its worker processes die with it below
    )
    acknowledged: list[str] = []
    stop = threading.Event()
    token_settings = Settings(jwt_secret=SECRET)

    def shop(t: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            n = 0
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {mint(token_settings, f'c{t}-{n}')}"}
                n += 1
                try:
                    response = http.post("/api/v1/reservations", json={"skuId": "CRASH-API"}, headers=headers)
                except httpx.HTTPError:
                    continue  # the API is gone: no answer, no promise
                if response.status_code == 201:
                    acknowledged.append(response.json()["id"])

    try:
        wait_for_port(port, 60, api)
        threads = [threading.Thread(target=shop, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 20
        while len(acknowledged) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(api.pid, signal.SIGKILL)
        api.wait()
        time.sleep(0.3)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
    assert len(acknowledged) >= 100
    for rid in acknowledged:
        assert engine.get_reservation(rid).status == "RESERVED"
    with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
        assert worker.wait_drained(timeout_s=60)
    _reconciles(settings)


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_redis_killed_under_load_comes_back_from_its_aof_with_every_acknowledged_change(
    settings: Settings, tmp_path: Path, fsync: str
) -> None:
    """A process crash loses nothing with either policy (the writes are in the kernel); a power loss can
    lose up to a second with everysec (by Redis's design; not something a test here can cut)."""
    data = tmp_path / "redis"
    server = RedisServer(data).start()
    redis.Redis.from_url(server.url).config_set("appendfsync", fsync)
    settings = msgspec.structs.replace(settings, redis_url=server.url)
    engine = Engine.from_url(server.url, settings.engine_config())
    acknowledged: list[str] = []
    stop = threading.Event()

    def shop(t: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                acknowledged.append(engine.reserve("CRASH-REDIS", f"c{t}-{n}").id)
            except (redis.RedisError, FlashSaleError):
                time.sleep(0.01)  # Redis is gone (or not loaded yet): no answer, no promise

    try:
        engine.load_scripts()
        engine.load_sale(SaleSettings(sku="CRASH-REDIS", total=100_000, per_user_limit=1))
        with WorkerThread(settings, WorkerOptions(sweep=False)):
            threads = [threading.Thread(target=shop, args=(t,)) for t in range(4)]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 20
            while len(acknowledged) < 500 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            stop.set()
            for thread in threads:
                thread.join()
            server = RedisServer(data, port=server.port).start()
        assert len(acknowledged) >= 500
        for rid in acknowledged:
            assert engine.get_reservation(rid).status == "RESERVED", rid
        with WorkerThread(settings, WorkerOptions(sweep=False)) as worker:
            assert worker.wait_drained(timeout_s=60)
            assert worker.stats.stalls == 0  # the AOF kept the event at PostgreSQL's offset: nothing lost
        _reconciles(settings)
    finally:
        stop.set()
        engine.close()
        server.stop()
