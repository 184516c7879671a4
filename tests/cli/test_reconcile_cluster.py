"""`flashsale reconcile` (and `sale status`) when a master of a Redis Cluster is down: the node and its
partitions are named, the other masters are still checked (shown), nothing is repaired, and the exit code
is 2 (`sale status`: 1); once the master is back (empty: the test cluster keeps no AOF), the drift is
found and `--repair redis-from-postgres` rebuilds that master's partitions.

Runs on the session's 3-master cluster (tests/conftest.py) and gives the killed master back whatever
happens, so the tests after it find the cluster whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import redis
from click.testing import CliRunner, Result
from flashsale.engine import Engine, SaleSettings
from flashsale.engine.nodes import partition_nodes

from flashsale.cli import main
from flashsale.launcher import RedisCluster

Drain = Callable[[Engine, str], int]


def reconcile(env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(main, ["reconcile", *args], env=env, catch_exceptions=False)


@pytest.fixture
def cluster_engine(redis_cluster: RedisCluster) -> Iterator[Engine]:
    for node in redis_cluster.masters:
        client = node.client()
        try:
            client.flushall()
        finally:
            client.close()
    engine = Engine.from_url(redis_cluster.url, cluster=True, max_connections=16)
    engine.load_scripts()
    yield engine
    engine.close()


def one_sku_per_master(engine: Engine) -> dict[str, str]:
    """node -> a SKU whose partition that node serves."""
    skus: dict[str, str] = {}
    nodes = partition_nodes(engine.redis, engine.keys)
    for n in range(200):
        sku = f"SKU-NODE-{n}"
        node = next(node.name for node in nodes if engine.keys.for_sku(sku).index in node.partitions)
        skus.setdefault(node, sku)
        if len(skus) == len(nodes):
            return skus
    raise AssertionError("no SKU found for every master")


def test_a_master_down_is_named_with_its_partitions_exits_2_and_once_back_empty_is_rebuilt(
    redis_cluster: RedisCluster, cluster_engine: Engine, database_url: str, drain: Drain
) -> None:
    engine = cluster_engine
    env = {
        "FLASHSALE_REDIS_URL": redis_cluster.url,
        "FLASHSALE_REDIS_CLUSTER": "1",
        "FLASHSALE_DATABASE_URL": database_url,
    }
    skus = one_sku_per_master(engine)
    now = int(engine.redis.time()[0]) * 1000
    for sku in skus.values():
        engine.load_sale(SaleSettings(sku=sku, name=sku, total=10, per_user_limit=2, starts_at=now - 1_000))
        hold = engine.reserve(sku, "ann")
        engine.confirm(engine.begin_checkout(hold.id, "ann", "card").id, "ann")
        engine.reserve(sku, "bob")
    drain(engine, database_url)
    assert reconcile(env).exit_code == 0

    victim = redis_cluster.masters[1]  # not the startup node the URL names
    assert victim.url != redis_cluster.url
    down = next(n for n in partition_nodes(engine.redis, engine.keys) if n.name == victim.address)
    victim.kill()
    try:
        # Right away (within the cluster's node timeout the other masters still serve their slots).
        result = reconcile(env, "--json")
        assert result.exit_code == 2, result.output
        document = json.loads(result.stdout)
        assert document["ok"] is False
        assert document["complete"] is False
        unreadable = {u["node"]: u for u in document["unreadable_nodes"]}
        assert unreadable[victim.address]["partitions"] == list(down.partitions)
        assert unreadable[victim.address]["error"]
        assert f"Redis node {victim.address} could not be read" in result.stderr
        nodes = {n["node"]: n for n in document["nodes"]}
        assert nodes[victim.address]["read"] is False
        assert nodes[victim.address]["partitions"] == list(down.partitions)
        # The other masters were still checked: their SKUs are there, without drift; the dead one's SKU
        # is left out rather than reported as missing.
        checked = {view["sku"]: view for view in document["skus"]}
        assert skus[victim.address] not in checked
        assert document["drift"] == []
        for node, sku in skus.items():
            if node != victim.address and node not in unreadable:
                assert checked[sku]["node"] == node
                assert checked[sku]["drift"] == 0

        table = reconcile(env)
        assert table.exit_code == 2
        assert f"Redis node {victim.address} could not be read" in table.output
        assert f"partitions {', '.join(map(str, down.partitions))} were not checked" in table.output

        repair = reconcile(env, "--repair", "redis-from-postgres", "--yes")
        assert repair.exit_code == 2
        assert "nothing was repaired" in repair.output

        # sale status shows the other masters' SKUs and names the one that could not be read.
        status = CliRunner().invoke(main, ["sale", "status", "--json"], env=env, catch_exceptions=False)
        assert status.exit_code == 1
        shown = json.loads(status.stdout)
        assert [(u["node"], u["partitions"]) for u in shown["unreadable_nodes"]] == [
            (victim.address, list(down.partitions))
        ]
        assert {row["sku"]: row["node"] for row in shown["sales"]} == {
            sku: node for node, sku in skus.items() if node != victim.address
        }
        assert f"Redis node {victim.address} could not be read" in status.stderr
    finally:
        victim.start()
        redis_cluster.wait_until_ready()

    # Back, but empty (no AOF here): its SKU's keys are gone, which reconcile finds and the rebuild puts
    # back on that master, from PostgreSQL.
    after = Engine.from_url(redis_cluster.url, cluster=True, max_connections=16)
    try:
        lost = skus[victim.address]
        result = reconcile(env, "--json")
        assert result.exit_code == 1, result.output
        document = json.loads(result.stdout)
        assert document["complete"] is True
        assert {d["sku"] for d in document["drift"]} == {lost}
        assert reconcile(env, "--repair", "redis-from-postgres", "--yes").exit_code == 0
        sale = after.get_sale(lost)
        assert (sale.total, sale.available, sale.reserved, sale.sold) == (10, 8, 1, 1)
        client = victim.client(decode_responses=True)
        try:
            assert client.exists(after.keys.for_sku(lost).sku(lost)) == 1  # on that master itself
        finally:
            client.close()
        assert reconcile(env).exit_code == 0
    finally:
        after.close()


def test_a_cluster_whose_startup_node_is_unreachable_cannot_run(database_url: str) -> None:
    result = reconcile(
        {
            "FLASHSALE_REDIS_URL": "redis://127.0.0.1:1/0",
            "FLASHSALE_REDIS_CLUSTER": "1",
            "FLASHSALE_DATABASE_URL": database_url,
        }
    )
    assert result.exit_code == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.output
    assert not isinstance(result.exception, redis.RedisError)
