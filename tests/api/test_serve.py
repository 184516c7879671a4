"""``flashsale serve`` as a user runs it: a subprocess with worker processes, configured by environment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from flashsale.engine import Sale
from flashsale.engine.settings import Settings
from prometheus_client.parser import text_string_to_metric_families

from flashsale.commands.token import mint
from flashsale.launcher import free_port, wait_for_port
from tests.api.conftest import SECRET, SKU

FLASHSALE = [sys.executable, "-c", "from flashsale.cli import main; main()"]


def _environment(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHSALE_", "PROMETHEUS_"))}
    env.update(variables)
    return env


def test_serve_without_a_redis_url_says_so_in_one_sentence() -> None:
    result = subprocess.run(
        [*FLASHSALE, "serve"], env=_environment(FLASHSALE_JWT_SECRET=SECRET), capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "FLASHSALE_REDIS_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def served(redis_url: str) -> Iterator[str]:
    port = free_port()
    env = _environment(
        FLASHSALE_REDIS_URL=redis_url,
        FLASHSALE_JWT_SECRET=SECRET,
        FLASHSALE_PORT=str(port),
        FLASHSALE_WORKERS="2",
    )
    process = subprocess.Popen(
        [*FLASHSALE, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_for_port(port, 60, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_serve_runs_worker_processes_whose_metrics_add_up(
    served: str, load_sale: Callable[..., Sale]
) -> None:
    load_sale(total=50, per_user_limit=1)
    settings = Settings(jwt_secret=SECRET)
    with httpx.Client(base_url=served, timeout=10) as http:
        deadline = time.monotonic() + 30
        while http.get("/health/ready").status_code != 200:  # every worker up and connected
            assert time.monotonic() < deadline
            time.sleep(0.1)
        # Fresh connections spread the requests over the workers' shared socket.
        for i in range(20):
            headers = {"Authorization": f"Bearer {mint(settings, f'user-{i}')}", "Connection": "close"}
            response = http.post("/api/v1/reservations", json={"skuId": SKU}, headers=headers)
            assert response.status_code == 201, response.text
        # Whichever worker answers the scrape, it reports what all of them counted.
        scrapes = [http.get("/metrics", headers={"Connection": "close"}).text for _ in range(6)]
    for text in scrapes:
        created = [
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "flashsale_reservations_total" and sample.labels == {"outcome": "created"}
        ]
        assert created == [20.0]
