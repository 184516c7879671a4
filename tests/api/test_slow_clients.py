"""Slow and greedy clients against a real ``flashsale serve`` process over real sockets: a client that
sends its request head or body too slowly is cut off after the configured timeout (the body's with a 408
in the error shape), a slow *answer* is not cut, and a process over its connection cap answers 503 in
the error shape."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from flashsale.engine import Sale
from flashsale.engine.settings import Settings

from flashsale.commands.token import mint
from flashsale.launcher import free_port, wait_for_port
from tests.api.conftest import SECRET, SKU
from tests.api.test_serve import FLASHSALE, _environment

# How long a test waits for the server to cut a connection it should cut: well past the timeouts used.
PATIENCE_S = 8.0


@dataclass
class Served:
    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


Serve = Callable[..., Served]


@pytest.fixture
def serve(redis_url: str, tmp_path: Path) -> Iterator[Serve]:
    """Starts `flashsale serve` (one worker process) with extra FLASHSALE_* settings."""
    started: list[subprocess.Popen[bytes]] = []

    def start(**settings: str) -> Served:
        port = free_port()
        env = _environment(
            FLASHSALE_REDIS_URL=redis_url,
            FLASHSALE_JWT_SECRET=SECRET,
            FLASHSALE_PORT=str(port),
            FLASHSALE_WORKERS="1",
            **{f"FLASHSALE_{name.upper()}": value for name, value in settings.items()},
        )
        log_path = tmp_path / f"serve-{port}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([*FLASHSALE, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(process)
        wait_for_port(port, 60, process)
        deadline = time.monotonic() + 30
        while True:  # the port opens before the app's lifespan has finished
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return Served(port, log_path)
            assert time.monotonic() < deadline, "flashsale serve did not answer /health"
            time.sleep(0.1)

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (raises TimeoutError if it never does)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def _trickle(sock: socket.socket, data: bytes, every_s: float) -> float:
    """Sends ``data`` a byte at a time until the server cuts the connection; returns when it did."""
    started = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:  # reset or broken pipe: the server has closed
            return time.monotonic() - started
        time.sleep(every_s)
        if time.monotonic() - started > PATIENCE_S:
            break
    raise AssertionError(f"the server took {len(data)} bytes over {PATIENCE_S:.0f} s without cutting")


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(serve: Serve) -> None:
    served = serve(http_header_timeout_s="1")
    port = served.port
    with _connect(port) as sock:
        started = time.monotonic()
        assert _read_until_closed(sock) == b""  # closed, with nothing to answer
        waited = time.monotonic() - started
    assert 0.8 <= waited <= 5, waited


def test_headers_trickled_a_byte_at_a_time_are_cut_off_however_steady(serve: Serve) -> None:
    served = serve(http_header_timeout_s="1")
    port = served.port
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Padding: " + b"a" * 400 + b"\r\n\r\n"
    with _connect(port) as sock:
        # A byte every 50 ms: each byte would reset a clock of "time since the last byte".
        cut_after = _trickle(sock, head, 0.05)
    assert cut_after <= 5, cut_after


def test_a_body_trickled_too_slowly_gets_408_in_the_error_shape_and_is_cut_off(
    serve: Serve, load_sale: Callable[..., Sale]
) -> None:
    load_sale()
    served = serve(http_header_timeout_s="5", http_body_timeout_s="1")
    port = served.port
    token = mint(Settings(jwt_secret=SECRET), "slow")
    body = json.dumps({"skuId": SKU, "quantity": 1}).encode()
    head = (
        f"POST /api/v1/reservations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with _connect(port) as sock:
        sock.sendall(head + body[:5])
        started = time.monotonic()
        answer = _read_until_closed(sock)  # the rest of the body never comes
        waited = time.monotonic() - started
    assert 0.8 <= waited <= 5, waited
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    headers, _, payload = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    error = json.loads(payload)
    assert (error["error"], error["status"], error["path"]) == (
        "REQUEST_TIMEOUT",
        408,
        "/api/v1/reservations",
    )
    assert error["message"]
    assert error["timestamp"].endswith("Z")
    # Nothing was reserved, and the server serves the next client as before.
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        assert http.get(f"/api/v1/products/{SKU}").json()["reserved"] == 0
    # The app saw its client go mid-body: a 408 of its own, not a 500 with a traceback.
    assert "slow_client_cut phase=body" in served.log()
    assert "unhandled_error" not in served.log()
    assert "Traceback" not in served.log()


def test_prompt_clients_are_not_cut_off_by_slow_answers_or_kept_alive_connections(
    serve: Serve, load_sale: Callable[..., Sale]
) -> None:
    load_sale(total=5)
    # The simulated payment takes 2 s: longer than either timeout, but that is the server's time.
    served = serve(http_header_timeout_s="1", http_body_timeout_s="1", payment_delay_ms="2000")
    port = served.port
    settings = Settings(jwt_secret=SECRET)
    headers = {"Authorization": f"Bearer {mint(settings, 'patient')}"}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        hold = http.post("/api/v1/reservations", json={"skuId": SKU}, headers=headers)
        assert hold.status_code == 201, hold.text
        paid = http.post(
            "/api/v1/orders/checkout",
            json={"reservationId": hold.json()["id"], "paymentMethod": "CREDIT_CARD"},
            headers=headers,
        )
        assert paid.status_code == 201, paid.text
        # One kept-alive connection, a request every 0.4 s for 2 s: idle gaps are keep-alive's business.
        for _ in range(5):
            time.sleep(0.4)
            assert http.get(f"/api/v1/products/{SKU}").status_code == 200


def test_a_process_over_its_connection_cap_answers_503_in_the_error_shape(serve: Serve) -> None:
    served = serve(http_max_connections="3", http_header_timeout_s="30")
    port = served.port
    with contextlib.ExitStack() as stack:
        idle = [stack.enter_context(_connect(port)) for _ in range(3)]
        time.sleep(0.3)  # let the server accept all three
        with _connect(port) as sock:
            sock.sendall(b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_until_closed(sock)
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 503 Service Unavailable", answer
        headers, _, payload = rest.partition(b"\r\n\r\n")
        assert b"connection: close" in headers.lower()
        assert b"retry-after: 1" in headers.lower()
        error = json.loads(payload)
        assert (error["error"], error["status"], error["path"]) == (
            "SERVICE_UNAVAILABLE",
            503,
            "/api/v1/products",
        )
        # Within the cap a request is served: one of the three idle connections asks.
        idle[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_until_closed(idle[0]).startswith(b"HTTP/1.1 200 OK")
    # Once they have gone, a new connection is served too.
    deadline = time.monotonic() + 5
    while httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
