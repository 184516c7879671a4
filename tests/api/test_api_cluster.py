"""The API on a Redis Cluster of three masters (FLASHSALE_REDIS_CLUSTER=1), through a real uvicorn server:
reserve, checkout and release for SKUs on every master; readiness and the node gauge per master, naming
the one that is down; and a sold-out flag ended by a stock message published on another master than the
one the API listens on (Redis broadcasts a PUBLISH to every node of a cluster)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest
import redis
from flashsale.engine import Engine, Sale, SaleSettings
from flashsale.engine.nodes import partition_nodes
from prometheus_client.parser import text_string_to_metric_families

from flashsale.launcher import RedisCluster
from tests.api.conftest import ApiServer
from tests.api.test_orders import checkout
from tests.api.test_reservations import V1, reserve
from tests.api.test_soldout import app_of, listening


@pytest.fixture
def redis_kind() -> str:
    """Every test here runs on the session's 3-master cluster (tests/conftest.py)."""
    return "cluster"


@pytest.fixture
def cluster_api(start_server: Callable[..., ApiServer]) -> ApiServer:
    return start_server(redis_cluster=True)


def skus_on_every_master(engine: Engine, per_master: int = 1) -> dict[str, list[str]]:
    """SKU ids whose partitions are served by each master: {host:port: [sku, ...]}."""
    wanted = {node.name: set(node.partitions) for node in partition_nodes(engine.redis, engine.keys)}
    found: dict[str, list[str]] = {name: [] for name in wanted}
    n = 0
    while any(len(skus) < per_master for skus in found.values()):
        sku = f"SKU-C{n:03d}"
        n += 1
        index = engine.keys.for_sku(sku).index
        name = next(name for name, partitions in wanted.items() if index in partitions)
        if len(found[name]) < per_master:
            found[name].append(sku)
    return found


def samples(http: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = http.get("/metrics")
    assert response.status_code == 200, response.text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_reserve_checkout_and_release_over_http_for_skus_on_every_master(
    cluster_api: ApiServer, load_sale: Callable[..., Sale], engine: Engine
) -> None:
    by_master = skus_on_every_master(engine, per_master=2)
    assert len(by_master) == 3
    skus = sorted(sku for group in by_master.values() for sku in group)
    for sku in skus:
        load_sale(sku, total=3, per_user_limit=2)
    with cluster_api.client() as http:
        listed = http.get(f"{V1}/products").json()
        assert [product["skuId"] for product in listed] == skus  # every master's SKUs, in one list
        for sku in skus:
            kept = reserve(http, cluster_api, "alice", sku)
            assert kept.status_code == 201, kept.text
            let_go = reserve(http, cluster_api, "bob", sku)
            assert let_go.status_code == 201, let_go.text
            order = checkout(http, cluster_api, "alice", kept.json()["id"])
            assert order.status_code == 201, order.text
            assert order.json()["status"] == "CONFIRMED"
            order_id = order.json()["id"]
            read = http.get(f"{V1}/orders/{order_id}", headers=cluster_api.auth("alice"))
            assert read.json()["status"] == "CONFIRMED"
            released = http.delete(
                f"{V1}/reservations/{let_go.json()['id']}", headers=cluster_api.auth("bob")
            )
            assert released.status_code == 200, released.text
            assert released.json()["status"] == "CANCELLED"
            sale = engine.get_sale(sku)
            assert (sale.available, sale.reserved, sale.sold) == (2, 0, 1)
        scraped = samples(http)
    # The simulated gateway's ledger lives in every master's partitions: one authorization and one
    # capture per order, summed over the cluster.
    assert scraped["flashsale_payments_total", (("result", "authorized"),)] == len(skus)
    assert scraped["flashsale_payments_total", (("result", "captured"),)] == len(skus)
    assert scraped["flashsale_redis_up", ()] == 1
    for sku in skus:
        assert scraped["flashsale_stock_units", (("sku", sku), ("state", "sold"))] == 1


def test_readiness_reports_every_master_with_its_partitions(cluster_api: ApiServer, engine: Engine) -> None:
    nodes = {node.name: list(node.partitions) for node in partition_nodes(engine.redis, engine.keys)}
    with cluster_api.client() as http:
        ready = http.get("/health/ready")
        scraped = samples(http)
    assert ready.status_code == 200, ready.text
    redis_component = ready.json()["components"]["redis"]
    assert redis_component["status"] == "UP"
    assert redis_component["detail"] == "PING answered by all 3 masters"
    assert {name: node["partitions"] for name, node in redis_component["nodes"].items()} == nodes
    assert {node["status"] for node in redis_component["nodes"].values()} == {"UP"}
    for name, partitions in nodes.items():
        assert scraped["flashsale_redis_node_up", (("node", name),)] == 1
        assert scraped["flashsale_redis_node_partitions", (("node", name),)] == len(partitions)


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[RedisCluster]:
    """A cluster of three masters for this module alone: its tests kill a master."""
    with RedisCluster(3) as cluster:
        yield cluster


def test_a_master_that_is_down_makes_the_api_not_ready_and_is_named(
    own_cluster: RedisCluster, start_server: Callable[..., ApiServer]
) -> None:
    api = start_server(redis_url=own_cluster.url, redis_cluster=True)
    victim = own_cluster.masters[1]
    with api.client() as http:
        assert http.get("/health/ready").status_code == 200
        own_cluster.kill(1)
        try:
            ready = http.get("/health/ready")
            scraped = samples(http)
        finally:
            victim.start()
        assert ready.status_code == 503, ready.text
        body = ready.json()
        assert body["status"] == "DOWN"
        redis_component = body["components"]["redis"]
        assert redis_component["status"] == "DOWN"
        statuses = {name: node["status"] for name, node in redis_component["nodes"].items()}
        assert statuses == {node.address: "DOWN" if node is victim else "UP" for node in own_cluster.masters}
        lost = redis_component["nodes"][victim.address]["partitions"]
        assert lost
        assert redis_component["detail"].startswith(
            f"no answer to PING from {victim.address} (partitions {', '.join(map(str, lost))}): "
        )
        assert redis_component["detail"].endswith(redis_component["nodes"][victim.address]["detail"])
        for node in own_cluster.masters:
            assert scraped["flashsale_redis_node_up", (("node", node.address),)] == int(node is not victim)

        own_cluster.wait_until_ready()
        deadline = time.monotonic() + 15
        while (ready := http.get("/health/ready")).status_code != 200:
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.1)


def _subscribed_node(cluster: RedisCluster, channel: str) -> str:
    """The node whose clients include a subscriber of ``channel`` (PUBSUB is per node on a cluster)."""
    deadline = time.monotonic() + 10
    while True:
        for node in cluster.nodes:
            client = node.client(decode_responses=True)
            try:
                if dict(client.pubsub_numsub(channel)).get(channel, 0):
                    return str(node.address)
            finally:
                client.close()
        assert time.monotonic() < deadline, f"nobody subscribes to {channel}"
        time.sleep(0.05)


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_sale_that_comes_back_on_another_master_ends_the_sold_out_flag(
    redis_cluster: RedisCluster,
    start_server: Callable[..., ApiServer],
    load_sale: Callable[..., Sale],
    engine: Engine,
) -> None:
    # A TTL of a minute: within the test only the stock message can end the flag.
    api = listening(start_server(redis_cluster=True, soldout_ttl_ms=60_000))
    listener_node = _subscribed_node(redis_cluster, engine.keys.partition(0).stock_channel())
    others = {
        name: skus
        for name, skus in skus_on_every_master(engine).items()
        if name != listener_node  # the API's subscription is on another master than the SKU's
    }
    assert len(others) == 2
    for master, (sku,) in others.items():
        load_sale(sku, total=1, per_user_limit=5, reservation_ttl_ms=600_000)
        with api.client() as http:
            held = reserve(http, api, "alice", sku)
            assert held.status_code == 201, held.text
            assert reserve(http, api, "bob", sku).status_code == 400  # sold out: the flag is set
            store = redis_cluster.node_at(int(master.rsplit(":", 1)[1])).client(decode_responses=True)
            try:
                before = evalsha_calls(store)
                refused = reserve(http, api, "carol", sku)
                assert refused.status_code == 400
                assert refused.json()["error"] == "OUT_OF_STOCK"
                assert evalsha_calls(store) == before  # answered from the flag, not by the SKU's master
            finally:
                store.close()
            assert app_of(api).soldout.refuses(sku, 1)

            engine.release(held.json()["id"], "alice")  # runs on the SKU's master, publishes
            deadline = time.monotonic() + 2.0
            while (again := reserve(http, api, "dave", sku)).status_code != 201:
                assert time.monotonic() < deadline, again.text
                time.sleep(0.01)


def test_after_a_failover_readiness_names_the_promoted_replica_and_reservations_go_on(
    start_server: Callable[..., ApiServer],
) -> None:
    with RedisCluster(3, replicas=1, node_timeout_ms=1000) as cluster:
        engine = Engine.from_url(cluster.url, cluster=True)
        try:
            engine.load_scripts()
            api = start_server(redis_url=cluster.url, redis_cluster=True)
            victim = cluster.masters[0]
            (sku,) = skus_on_every_master(engine)[victim.address]
            engine.load_sale(SaleSettings(sku=sku, total=10, per_user_limit=5, reservation_ttl_ms=600_000))
            with api.client() as http:
                before = http.get("/health/ready").json()["components"]["redis"]["nodes"]
                partitions = before[victim.address]["partitions"]
                assert reserve(http, api, "alice", sku).status_code == 201
                cluster.kill(0)
                deadline = time.monotonic() + 30
                while (ready := http.get("/health/ready")).status_code != 200:
                    assert time.monotonic() < deadline, ready.text
                    time.sleep(0.2)
                nodes = ready.json()["components"]["redis"]["nodes"]
                assert victim.address not in nodes
                (promoted,) = set(nodes) - set(before)
                assert promoted in {replica.address for replica in cluster.replicas}
                assert nodes[promoted]["partitions"] == partitions
                deadline = time.monotonic() + 30
                while (again := reserve(http, api, "bob", sku)).status_code != 201:
                    assert time.monotonic() < deadline, again.text
                    time.sleep(0.2)
        finally:
            engine.close()
