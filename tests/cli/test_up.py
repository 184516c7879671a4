"""`flashsale up` as a new user runs it: a subprocess in an empty directory, no FLASHSALE_* set.

It must start every server, serve the storefront and the API, carry a reservation and a checkout into
PostgreSQL and Kafka, and leave no process behind on SIGTERM or when one of its children dies.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flashsale.launcher import KafkaBroker, RedisCluster

FLASHSALE = Path(sys.executable).with_name("flashsale")
START_TIMEOUT_S = 120


@dataclass
class RunningStack:
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if match := re.search(pattern, line):
                return match
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n" + "\n".join(self.lines))

    def value(self, label: str) -> str:
        return self.wait_for(rf"^{label}\s+(\S.*)$").group(1).strip()

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def finish(self, timeout: float = 90) -> int:
        code = self.process.wait(timeout=timeout)
        while True:
            try:
                line = self._queue.get(timeout=2)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSALE_")}
    env["COLUMNS"] = "200"  # one line per printed URL
    return env


@pytest.fixture
def start_up(tmp_path: Path) -> Iterator[Callable[..., RunningStack]]:
    started: list[RunningStack] = []

    def start(*args: str, env: dict[str, str] | None = None, own_group: bool = False) -> RunningStack:
        process = subprocess.Popen(
            [str(FLASHSALE), "up", "--port", "0", *args],
            cwd=tmp_path,
            env={**clean_env(), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group, as in a terminal, so a test can send the group a Ctrl-C.
            start_new_session=own_group,
        )
        stack = RunningStack(process)
        started.append(stack)
        return stack

    yield start
    for stack in started:  # a failed test must not leave a stack running for the next one
        if stack.process.poll() is None:
            for child in stack.descendants():
                child.kill()
            stack.process.kill()
            stack.process.wait()


def assert_all_gone(pids: list[psutil.Process]) -> None:
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert not alive, f"still running after stop: {[(p.pid, p.name()) for p in alive]}"


def mint_token(stack: RunningStack, cwd: Path) -> str:
    command = stack.value("Token")
    assert command.endswith(" token alice")
    result = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def kafka_messages(
    bootstrap: str, topic: str, partitions: int, wanted: Callable[[dict[str, Any]], bool], expected: int
) -> list[dict[str, Any]]:
    """The matching messages of a topic, read with assign() (no consumer-group join to wait for)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-up", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    try:
        while len(found) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            body = json.loads(message.value())
            if wanted(body):
                found.append(body)
    finally:
        consumer.close()
    return found


def wait_for_count(database_url: str, query: str, expected: int, timeout_s: float = 30) -> int:
    """Polls a count(*) query until it reaches ``expected`` or the timeout; returns the last count."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while True:
            row = conn.execute(query).fetchone()
            count = int(row[0]) if row else 0
            if count >= expected or time.monotonic() > deadline:
                return count
            time.sleep(0.2)


def test_up_from_an_empty_directory_serves_a_sale_end_to_end_and_stops_clean(
    start_up: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = start_up()
    storefront = stack.value("Storefront")
    api = stack.value("API").split()[0]
    database_url = stack.value("PostgreSQL")
    bootstrap = stack.value("Kafka")
    stack.wait_for(r"^Logs\s")
    children = stack.descendants()
    names = {p.name() for p in children}
    assert {"redis-server", "postgres", "tansu"} <= names, names
    assert sum(1 for p in children if "flashsale" in " ".join(p.cmdline())) >= 2  # worker and API

    page = httpx.get(storefront, timeout=10)
    assert page.status_code == 200
    assert "<html" in page.text.lower()
    products = httpx.get(f"{api}/products", timeout=10).json()
    assert {p["skuId"] for p in products} >= {"SKU-PS5-SLIM", "SKU-SWITCH-OLED"}
    upcoming = next(p for p in products if p["skuId"] == "SKU-SWITCH-OLED")
    assert upcoming["startsAt"] > next(p for p in products if p["skuId"] == "SKU-PS5-SLIM")["startsAt"]

    headers = {"Authorization": f"Bearer {mint_token(stack, tmp_path)}"}
    hold = httpx.post(f"{api}/reservations", json={"skuId": "SKU-PS5-SLIM", "quantity": 1}, headers=headers)
    assert hold.status_code == 201, hold.text
    reservation_id = hold.json()["id"]
    order = httpx.post(
        f"{api}/orders/checkout",
        json={"reservationId": reservation_id, "paymentMethod": "CREDIT_CARD"},
        headers=headers,
        timeout=30,
    )
    assert order.status_code == 201, order.text
    order_id = order.json()["id"]
    assert order.json()["status"] == "CONFIRMED"

    # The worker carries both into PostgreSQL ...
    deadline = time.monotonic() + 30
    with psycopg.connect(database_url) as conn:
        while True:
            row = conn.execute(
                "SELECT r.status::text, o.status::text, i.sold_count FROM reservations r "
                "JOIN orders o USING (reservation_id) JOIN inventory i ON i.sku_id = r.sku_id "
                "WHERE r.reservation_id = %s",
                (reservation_id,),
            ).fetchone()
            conn.commit()
            if row == ("CONFIRMED", "CONFIRMED", 1) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert row == ("CONFIRMED", "CONFIRMED", 1)
    # ... and into Kafka, keyed by SKU.
    reservation_events = kafka_messages(
        bootstrap, "flash-sale-reservations", 10, lambda m: m.get("reservation_id") == reservation_id, 2
    )
    assert [m["type"] for m in reservation_events] == ["reserved", "confirmed"]
    order_events = kafka_messages(
        bootstrap, "flash-sale-orders", 5, lambda m: m.get("order_id") == order_id, 2
    )
    assert [m["type"] for m in order_events] == ["checkout_started", "confirmed"]

    # Another shell, a clean one (no venv activated, no FLASHSALE_*), sources the printed env file and
    # reaches the same stack with a bare `flashsale`: the file puts this install first on PATH.
    env_file = stack.value("Other shell").split()[1]
    other_shell = subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", f". {env_file} && flashsale token alice && "
         "flashsale sale status && flashsale worker lag --json"],
        cwd=tmp_path,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert other_shell.returncode == 0, other_shell.stderr
    token, _, rest = other_shell.stdout.partition("\n")
    assert "SKU-PS5-SLIM" in rest
    assert '"partition"' in rest
    mine = httpx.get(f"{api}/reservations/{reservation_id}", headers={"Authorization": f"Bearer {token}"})
    assert mine.status_code == 200, mine.text  # alice's token, signed with this stack's secret

    stack.process.send_signal(signal.SIGTERM)
    assert stack.finish() == 0, "\n".join(stack.lines)
    assert "nothing left running" in stack.lines[-1]
    assert_all_gone(children)


def test_ctrl_c_to_the_terminal_group_stops_everything(start_up: Callable[..., RunningStack]) -> None:
    stack = start_up("--no-demo", own_group=True)
    stack.wait_for(r"^Logs\s")
    children = stack.descendants()
    os.killpg(stack.process.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole group
    assert stack.finish() == 0
    assert "SIGINT received: stopping everything" in "\n".join(stack.lines)
    assert stack.lines[-1] == "Stopped; nothing left running."
    assert_all_gone(children)


def test_a_dying_child_stops_the_whole_stack(start_up: Callable[..., RunningStack]) -> None:
    stack = start_up("--no-demo")
    stack.wait_for(r"^Logs\s")
    children = stack.descendants()
    worker = next(p for p in children if p.cmdline()[-1:] == ["worker"])
    worker.send_signal(signal.SIGKILL)
    assert stack.finish() == 1
    output = "\n".join(stack.lines)
    assert "the worker ended by SIGKILL; stopping the stack" in output
    assert_all_gone(children)


@pytest.mark.parametrize(
    ("process_name", "title"),
    [("redis-server", "Redis"), ("postgres", "PostgreSQL"), ("tansu", "Kafka (Tansu)")],
)
def test_a_killed_embedded_server_stops_the_whole_stack_and_is_named(
    start_up: Callable[..., RunningStack], process_name: str, title: str
) -> None:
    stack = start_up("--no-demo")
    stack.wait_for(r"^Logs\s")
    children = stack.descendants()
    # The server itself (PostgreSQL's postmaster, not one of its backends): a direct child of `up`.
    server = next(p for p in psutil.Process(stack.process.pid).children() if p.name() == process_name)
    server.send_signal(signal.SIGKILL)
    assert stack.finish(timeout=60) == 1, "\n".join(stack.lines)
    output = "\n".join(stack.lines)
    assert f"✗ the embedded {title} server (pid {server.pid}) ended by SIGKILL; stopping the stack" in output
    assert "Traceback" not in output
    assert stack.lines[-1] == "Stopped what had started; nothing left running."
    assert_all_gone(children)  # the worker, the API, the other servers, and what the dead one left


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: when we run as root, PostgreSQL runs as an unprivileged user who must
    # traverse the path, and a concurrent pytest session resets pytest-of-root/ to mode 0700.
    path = Path(tempfile.mkdtemp(prefix="flashsale-test-data-"))
    yield path / "data"
    shutil.rmtree(path, ignore_errors=True)


def test_data_dir_keeps_the_sale_and_the_token_secret_between_runs(
    start_up: Callable[..., RunningStack], tmp_path: Path, data_dir: Path
) -> None:
    data = data_dir
    first = start_up("--data-dir", str(data))
    api = first.value("API").split()[0]
    token = mint_token(first, tmp_path)
    headers = {"Authorization": f"Bearer {token}"}
    hold = httpx.post(f"{api}/reservations", json={"skuId": "SKU-KINDLE-PW", "quantity": 2}, headers=headers)
    assert hold.status_code == 201, hold.text
    first.process.send_signal(signal.SIGTERM)
    assert first.finish() == 0
    assert (data / "redis" / "appendonly.aof").exists() or (data / "redis" / "appendonlydir").is_dir()

    second = start_up("--data-dir", str(data))
    assert "kept the 5 SKU(s) already in Redis" in second.value("Demo sale")
    api = second.value("API").split()[0]
    # The same token still verifies, and the hold made before the restart is still there.
    kept = httpx.get(f"{api}/reservations/{hold.json()['id']}", headers=headers, timeout=10)
    assert kept.status_code == 200, kept.text
    assert kept.json()["status"] == "RESERVED"
    kindle = next(p for p in httpx.get(f"{api}/products").json() if p["skuId"] == "SKU-KINDLE-PW")
    assert (kindle["available"], kindle["reserved"]) == (498, 2)
    # PostgreSQL kept its rows too: the hold is there (applied before or after the restart), once.
    database_url = second.value("PostgreSQL")
    query = f"SELECT count(*) FROM reservations WHERE reservation_id = '{hold.json()['id']}'"
    assert wait_for_count(database_url, query, 1) == 1
    assert wait_for_count(database_url, "SELECT count(*) FROM products", 5) == 5
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT reserved_count FROM inventory WHERE sku_id = 'SKU-KINDLE-PW'").fetchone()
    assert row == (2,)
    second.process.send_signal(signal.SIGTERM)
    assert second.finish() == 0


def test_configured_servers_are_used_and_left_running(
    start_up: Callable[..., RunningStack], redis_url: str, database_url: str
) -> None:
    with KafkaBroker() as broker:
        configured = {
            "FLASHSALE_REDIS_URL": redis_url,
            "FLASHSALE_DATABASE_URL": database_url,
            "FLASHSALE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "FLASHSALE_JWT_SECRET": "configured-secret-for-this-test",
        }
        stack = start_up(env=configured)
        stack.wait_for(r"^Logs\s")
        output = "\n".join(stack.lines)
        assert f"Redis                  {redis_url} (configured)" in output
        assert f"Kafka                  {broker.bootstrap} (configured)" in output
        # The secret comes from the environment: the printed command needs nothing else.
        assert re.match(r"^\S*flashsale token alice$", stack.value("Token"))
        children = stack.descendants()
        assert not {"redis-server", "postgres", "tansu"} & {p.name() for p in children}
        assert httpx.get(stack.value("Storefront"), timeout=10).status_code == 200
        # The worker carries the demo sale into the configured database.
        assert wait_for_count(database_url, "SELECT count(*) FROM products", 5) == 5
        stack.process.send_signal(signal.SIGTERM)
        assert stack.finish() == 0
        assert_all_gone(children)
        assert broker.process is not None
        assert broker.process.poll() is None


def test_an_unreachable_configured_server_is_one_sentence_and_nothing_is_left(
    start_up: Callable[..., RunningStack],
) -> None:
    stack = start_up("--no-demo", env={"FLASHSALE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    stack.wait_for(r"^✓ Kafka")
    children = stack.descendants()
    assert stack.finish() == 1
    output = "\n".join(stack.lines)
    assert "✗ `flashsale db migrate` failed (" in output
    assert "Traceback" not in output
    assert stack.lines[-1] == "Stopped what had started; nothing left running."
    assert_all_gone(children)


# -- a Redis Cluster (--redis-cluster N) -----------------------------------------------------------------


def cluster_masters(stack: RunningStack, count: int) -> dict[str, list[int]]:
    """The masters the summary lists (`  master  host:port  partitions 1, 2, ...`), by host:port."""
    stack.wait_for(r"^Logs\s")
    masters = {}
    for line in stack.lines[stack.lines.index(next(x for x in stack.lines if x.startswith("Redis  "))) :]:
        if match := re.match(r"^  master\s+(\S+)\s+partitions ([\d, ]+)$", line):
            masters[match.group(1)] = [int(p) for p in match.group(2).split(", ")]
    assert len(masters) == count, "\n".join(stack.lines)
    return masters


def test_up_with_a_redis_cluster_serves_every_master_and_a_dead_node_stops_it_named(
    start_up: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = start_up("--redis-cluster", "3")
    masters = cluster_masters(stack, 3)
    assert sorted(p for partitions in masters.values() for p in partitions) == list(range(16))
    assert sorted(len(partitions) for partitions in masters.values()) == [5, 5, 6]  # the launcher's cut
    assert "(a node of the Redis Cluster: FLASHSALE_REDIS_CLUSTER=1)" in stack.value("Redis")
    assert re.search(r"^✓ Redis Cluster\s+redis://127\.0\.0\.1:\d+/0 \(3 masters, in memory", "\n".join(
        stack.lines), re.M)  # fmt: skip
    children = stack.descendants()
    nodes = [p for p in children if p.name() == "redis-server"]
    assert len(nodes) == 3

    # The processes it started were told: the env file says so, and the API answers for every master.
    env_file = Path(stack.value("Other shell").split()[1]).read_text()
    assert "export FLASHSALE_REDIS_CLUSTER=True\n" in env_file
    for name, partitions in masters.items():
        assert f"# Redis Cluster master {name}: partitions {', '.join(map(str, partitions))}\n" in env_file
    api = stack.value("API").split()[0]
    ready = httpx.get(stack.value("Readiness"), timeout=10)
    assert ready.status_code == 200, ready.text
    nodes_ready = ready.json()["components"]["redis"]["nodes"]
    assert {name: node["partitions"] for name, node in nodes_ready.items()} == masters

    headers = {"Authorization": f"Bearer {mint_token(stack, tmp_path)}"}
    products = httpx.get(f"{api}/products", timeout=10).json()
    assert len(products) == 5
    live = [p["skuId"] for p in products if p["skuId"] != "SKU-SWITCH-OLED"]  # that one starts later
    for sku in live:
        hold = httpx.post(f"{api}/reservations", json={"skuId": sku}, headers=headers, timeout=10)
        assert hold.status_code == 201, hold.text
        order = httpx.post(
            f"{api}/orders/checkout",
            json={"reservationId": hold.json()["id"], "paymentMethod": "CREDIT_CARD"},
            headers=headers,
            timeout=30,
        )
        assert order.status_code == 201, order.text
        assert order.json()["status"] == "CONFIRMED"
    # The worker carried them from every master's streams into PostgreSQL.
    database_url = stack.value("PostgreSQL")
    confirmed = "SELECT count(*) FROM reservations WHERE status = 'CONFIRMED'"
    assert wait_for_count(database_url, confirmed, len(live)) == len(live)
    assert wait_for_count(database_url, "SELECT count(*) FROM products", 5) == 5

    # kill -9 of one master: the whole stack stops and names that node.
    victim = nodes[1]
    # It listens on its port and on its cluster bus port (+ 10000).
    port = min(c.laddr.port for c in victim.net_connections("tcp") if c.status == psutil.CONN_LISTEN)
    victim.send_signal(signal.SIGKILL)
    assert stack.finish(timeout=60) == 1, "\n".join(stack.lines)
    output = "\n".join(stack.lines)
    assert (
        f"✗ the embedded Redis Cluster node 127.0.0.1:{port} (pid {victim.pid}) ended by SIGKILL; "
        "stopping the stack" in output
    )
    assert "Traceback" not in output
    assert stack.lines[-1] == "Stopped what had started; nothing left running."
    assert_all_gone(children)


def test_a_configured_redis_cluster_is_used_named_per_master_and_left_running(
    start_up: Callable[..., RunningStack], redis_cluster: RedisCluster, database_url: str
) -> None:
    configured = {
        "FLASHSALE_REDIS_URL": redis_cluster.url,
        "FLASHSALE_REDIS_CLUSTER": "1",
        "FLASHSALE_DATABASE_URL": database_url,
    }
    stack = start_up("--no-demo", env=configured)
    masters = cluster_masters(stack, 3)
    assert set(masters) == {node.address for node in redis_cluster.masters}
    assert f"✓ Redis Cluster          {redis_cluster.url} (configured)" in stack.lines
    children = stack.descendants()
    assert "redis-server" not in {p.name() for p in children}
    ready = httpx.get(stack.value("Readiness"), timeout=10)
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["components"]["redis"]["nodes"]) == set(masters)
    stack.process.send_signal(signal.SIGTERM)
    assert stack.finish() == 0
    assert_all_gone(children)
    assert not redis_cluster.died()
