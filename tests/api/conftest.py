"""A real API server: uvicorn (uvloop + httptools) on a free loopback port, in a thread of the test
process, talking to the session's real Redis (tests/conftest.py). The thread lets a test look at the
app's payment gateway (a simulated one unless a test passes its own)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from flashsale.api.app import create_app
from flashsale.api.server import uvicorn_options
from flashsale.engine import AsyncEngine, Engine, Sale, SaleSettings
from flashsale.engine.settings import Settings
from flashsale.writeback.payments import PaymentGateway, SimulatedGateway

from flashsale.commands.token import mint
from flashsale.launcher import free_port

SECRET = "test-secret-for-the-api-suite-0123456789abcdef"
SKU = "SKU-001"


@dataclass
class ApiServer:
    url: str
    settings: Settings
    gateway: PaymentGateway
    server: uvicorn.Server
    thread: threading.Thread

    def token(self, user: str, *, admin: bool = False, ttl_s: int = 3600) -> str:
        return mint(self.settings, user, admin=admin, ttl_s=ttl_s)

    def auth(self, user: str, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user, admin=admin)}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def start_api(
    settings: Settings, gateway: PaymentGateway | None = None, engine: AsyncEngine | None = None
) -> ApiServer:
    gateway = gateway or SimulatedGateway()
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, engine, gateway=gateway),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        **uvicorn_options(settings),  # what `flashsale serve` runs: its protocol, deadlines and cap
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start")
        time.sleep(0.02)
    return ApiServer(f"http://127.0.0.1:{port}", settings, gateway, server, thread)


def api_settings(redis_url: str | None, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "jwt_secret": SECRET,
        "user_rate_limit_per_s": 1000.0,
        "user_rate_burst": 1000,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def start_server(redis_url: str) -> Iterator[Callable[..., ApiServer]]:
    """Starts servers with custom settings, gateway or engine; stops them after the test."""
    started: list[ApiServer] = []

    def start(
        gateway: PaymentGateway | None = None, engine: AsyncEngine | None = None, **overrides: Any
    ) -> ApiServer:
        settings = api_settings(overrides.pop("redis_url", redis_url), **overrides)
        server = start_api(settings, gateway, engine)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def api(start_server: Callable[..., ApiServer]) -> ApiServer:
    return start_server()


@pytest.fixture
def http(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture
def store(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def load_sale(engine: Engine) -> Callable[..., Sale]:
    """Puts a sale on Redis directly through the engine (the admin API has its own tests)."""

    def load(sku: str = SKU, **fields: Any) -> Sale:
        now = int(time.time() * 1000)
        values: dict[str, Any] = {
            "name": "Flash sneaker",
            "price_cents": 12_999,
            "flash_price_cents": 4_999,
            "total": 10,
            "per_user_limit": 1,
            "starts_at": now - 60_000,
            "ends_at": now + 3_600_000,
            "reservation_ttl_ms": 120_000,
        }
        values.update(fields)
        return engine.load_sale(SaleSettings(sku=sku, **values))

    return load
