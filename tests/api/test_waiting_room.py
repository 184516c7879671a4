"""The waiting room over HTTP, through a real server on real Redis: joining and the place it answers,
reserve refused without a live admission (NOT_ADMITTED, decided in the reserve script), the admin route,
bad input (unknown sale, no waiting room, join twice, forged and lapsed admissions) answered with a clear
4xx and nothing changed, and the per-user rate kept in Redis holding across two `flashsale serve`
processes at the configured rate, not twice it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from flashsale.engine import Engine, Sale
from flashsale.engine.models import WaitingRoom

from flashsale.launcher import free_port, wait_for_port
from tests.api.conftest import SECRET, SKU, ApiServer
from tests.api.test_reservations import V1, assert_error
from tests.engine.engine_checks import keyspace

WORKER = "test-admitter"


def redis_now_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def without_rate_buckets(picture: dict[str, Any]) -> dict[str, Any]:
    """The keyspace less the users' rate buckets: a refused request still counts against its user."""
    return {key: value for key, value in picture.items() if ":rl:" not in key}


@pytest.fixture
def room(engine: Engine, load_sale: Callable[..., Sale]) -> Callable[..., Sale]:
    """A sale of SKU with a waiting room, and the admitter's lease held by this test."""

    def make(starts_in_ms: int = -1000, **settings: int) -> Sale:
        load_sale(total=5, starts_at=redis_now_ms(engine) + starts_in_ms)
        sale = engine.set_waiting_room(SKU, WaitingRoom(**{"admit_per_s": 100, **settings}))
        engine.redis.set(engine.keys.for_sku(SKU).admitter_lease(SKU), WORKER)
        return sale

    return make


def test_a_shopper_joins_sees_the_place_reserves_only_once_admitted(
    api: ApiServer, http: httpx.Client, engine: Engine, room: Callable[..., Sale]
) -> None:
    room(starts_in_ms=2_000, admit_per_s=2)
    for user in ("ann", "ben", "cat"):
        joined = http.post(f"{V1}/sales/{SKU}/queue", headers=api.auth(user))
        assert joined.status_code == 200, joined.text
        assert joined.json()["new"] is True
    place = http.get(f"{V1}/sales/{SKU}/queue", headers=api.auth("cat")).json()
    assert place["status"] == "WAITING"
    assert place["lineLength"] == 3
    assert place["ahead"] == place["position"] - 1
    # Before the start: the time to the start, then 2 a second for those ahead and the shopper.
    assert 2.0 < place["estimatedWaitSeconds"] <= 2.0 + place["position"] / 2
    assert 1 <= place["pollAfterSeconds"] <= 15
    product = http.get(f"{V1}/products/{SKU}").json()
    assert product["waitingRoom"]["admitPerSecond"] == 2

    while redis_now_ms(engine) < engine.get_sale(SKU).starts_at + 1_100:
        time.sleep(0.05)
    refused = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("ann"))
    assert engine.admit(SKU, WORKER).admitted == 2  # 2 a second, counted from the start
    first = min(("ann", "ben", "cat"), key=lambda u: engine.queue_status(SKU, u).position or 0)
    first_place = http.get(f"{V1}/sales/{SKU}/queue", headers=api.auth(first)).json()
    assert first_place["status"] == "ADMITTED"
    assert first_place["admittedUntil"].endswith("Z")
    created = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth(first))
    assert created.status_code == 201, created.text
    assert_error(refused, 403, "NOT_ADMITTED")
    assert engine.get_sale(SKU).reserved == 1


def test_bad_waiting_room_requests_are_refused_and_change_nothing(
    api: ApiServer,
    http: httpx.Client,
    engine: Engine,
    load_sale: Callable[..., Sale],
    room: Callable[..., Sale],
) -> None:
    load_sale("SKU-PLAIN")
    room(admission_ttl_ms=1_000)
    http.post(f"{V1}/sales/{SKU}/queue", headers=api.auth("ann"))
    engine.admit(SKU, WORKER)
    time.sleep(1.1)  # ann's admission lapses unused
    before = without_rate_buckets(keyspace(engine.redis))
    ann, admin = api.auth("ann"), api.auth("ops", admin=True)
    forged = jwt.encode(
        {"sub": "ann", "iss": "flashsale", "iat": int(time.time()), "exp": int(time.time()) + 60},
        "not-the-secret-of-this-server-0123456789",
        algorithm="HS256",
    )

    assert_error(http.post(f"{V1}/sales/NO-SUCH-SKU/queue", headers=ann), 404, "NOT_FOUND")
    assert_error(http.post(f"{V1}/sales/SKU-PLAIN/queue", headers=ann), 404, "NO_WAITING_ROOM")
    assert_error(http.get(f"{V1}/sales/{SKU}/queue", headers=api.auth("nobody")), 404, "NOT_IN_QUEUE")
    assert_error(http.post(f"{V1}/sales/bad sku/queue", headers=ann), 400, "INVALID_ARGUMENT")
    assert_error(http.post(f"{V1}/sales/{SKU}/queue"), 401, "UNAUTHORIZED")
    assert_error(
        http.post(f"{V1}/sales/{SKU}/queue", headers={"Authorization": f"Bearer {forged}"}),
        401,
        "UNAUTHORIZED",
    )
    lapsed = assert_error(
        http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=ann), 403, "NOT_ADMITTED"
    )
    assert "lapsed" in lapsed["message"]
    assert_error(
        http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("bob")), 403, "NOT_ADMITTED"
    )
    room_body = {"admitPerSecond": 5}
    assert_error(
        http.put(f"{V1}/admin/sales/{SKU}/waiting-room", json=room_body, headers=ann), 403, "FORBIDDEN"
    )
    assert_error(
        http.put(f"{V1}/admin/sales/NO-SUCH-SKU/waiting-room", json=room_body, headers=admin),
        404,
        "NOT_FOUND",
    )
    for body in (
        {"admitPerSecond": 0},
        {"admitPerSecond": 5, "stockFactor": -1},
        {"admitPerSecond": 5, "admissionSeconds": 0},
        {},
        {"admitPerSecond": 5, "surprise": 1},
    ):
        assert_error(
            http.put(f"{V1}/admin/sales/{SKU}/waiting-room", json=body, headers=admin),
            400,
            "VALIDATION_ERROR",
        )
    after_start = {"admitPerSecond": 5, "opensAt": "2999-01-01T00:00:00Z"}
    refused = assert_error(
        http.put(f"{V1}/admin/sales/{SKU}/waiting-room", json=after_start, headers=admin),
        400,
        "INVALID_ARGUMENT",
    )
    assert refused["message"] == "the waiting room must open before the sale starts"
    assert without_rate_buckets(keyspace(engine.redis)) == before

    # Joining twice: the same place, and nothing changes.
    http.post(f"{V1}/sales/{SKU}/queue", headers=api.auth("cat"))
    before = without_rate_buckets(keyspace(engine.redis))
    again = http.post(f"{V1}/sales/{SKU}/queue", headers=api.auth("cat"))
    assert again.status_code == 200
    assert again.json()["new"] is False
    assert without_rate_buckets(keyspace(engine.redis)) == before


# -- the rate limit across two API processes --------------------------------------------------------------
FLASHSALE = [sys.executable, "-c", "from flashsale.cli import main; main()"]
RATE, BURST, SECONDS = 20, 10, 3.0


@pytest.fixture
def two_apis(redis_url: str) -> Iterator[list[str]]:
    """Two `flashsale serve` processes on one Redis, each with its own in-process limiter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHSALE_", "PROMETHEUS_"))}
    env.update(
        FLASHSALE_REDIS_URL=redis_url,
        FLASHSALE_JWT_SECRET=SECRET,
        FLASHSALE_USER_RATE_LIMIT_PER_S=str(RATE),
        FLASHSALE_USER_RATE_BURST=str(BURST),
    )
    ports = [free_port(), free_port()]
    processes = [
        subprocess.Popen(
            [*FLASHSALE, "serve", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_for_port(port, 60, process)
        yield [f"http://127.0.0.1:{port}" for port in ports]
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def test_the_rate_limit_holds_across_two_api_processes(
    two_apis: list[str], api: ApiServer, engine: Engine, room: Callable[..., Sale]
) -> None:
    room(starts_in_ms=60_000)
    headers = api.auth("greedy")
    clients = [httpx.Client(base_url=url, timeout=10, headers=headers) for url in two_apis]
    clients[0].post(f"{V1}/sales/{SKU}/queue").raise_for_status()
    time.sleep(BURST / RATE)  # the bucket full again
    answered: dict[int, list[int]] = {0: [], 1: []}
    started = time.monotonic()
    i = 0
    while time.monotonic() - started < SECONDS:
        which = i % 2
        answered[which].append(clients[which].get(f"{V1}/sales/{SKU}/queue").status_code)
        i += 1
    elapsed = time.monotonic() - started
    for client in clients:
        client.close()
    allowed = sum(codes.count(200) for codes in answered.values())
    limited = sum(codes.count(429) for codes in answered.values())
    assert set(answered[0]) | set(answered[1]) <= {200, 429}
    assert limited > allowed  # the client asked far faster than the rate
    assert all(200 in codes for codes in answered.values())  # both processes served
    expected = BURST + RATE * elapsed  # what one bucket allows in that time
    print(
        f"{allowed} allowed of {allowed + limited} in {elapsed:.2f} s across two processes; "
        f"one bucket allows {expected:.0f}"
    )
    assert abs(allowed - expected) <= 0.1 * expected + 2, (allowed, expected)


def test_a_users_first_request_to_a_process_skips_the_shared_rate_and_later_ones_keep_it(
    start_server: Callable[..., ApiServer], engine: Engine, load_sale: Callable[..., Sale]
) -> None:
    """Most shoppers press once: their first request to a process costs Redis no rate bucket. From the
    second on, the shared rate is kept in Redis (the bucket key lives while it is not full: 10 s here)."""
    api = start_server(user_rate_limit_per_s=0.1, user_rate_burst=5)
    load_sale(total=100, per_user_limit=10)
    bucket = engine.keys.for_sku(SKU).rate("twice")
    with api.client() as http:
        first = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("twice"))
        assert first.status_code == 201, first.text
        assert engine.redis.exists(bucket) == 0
        second = http.post(f"{V1}/reservations", json={"skuId": SKU}, headers=api.auth("twice"))
        assert second.status_code == 201, second.text
        assert engine.redis.exists(bucket) == 1
