"""Readiness of the servers behind the API, each checked with a short timeout.

Redis decides readiness (the API cannot serve without it): every Redis that serves partitions must
answer a PING, the one server or, on a Redis Cluster, each master (engine.nodes says which serves which
partitions); each is reported under ``nodes`` by host:port, so a master that is down is named with the
partitions it holds back. PostgreSQL and Kafka are reported, as the design document's actuator health
does, but only the write-behind worker needs them; when their URL is not configured they are reported as
NOT_CONFIGURED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
from flashsale.api.schemas import Component, NodeHealth, Readiness
from flashsale.engine import AsyncEngine
from flashsale.engine.nodes import Node, node_clients_async, partition_nodes_async

TIMEOUT_S = 2.0

log = logging.getLogger("flashsale.api")


def _down(error: BaseException) -> Component:
    text = str(error) or type(error).__name__
    return Component(status="DOWN", detail=text.splitlines()[0][:200] if text else type(error).__name__)


async def _ping(client: aioredis.Redis, node: Node) -> NodeHealth:
    partitions = list(node.partitions)
    try:
        await asyncio.wait_for(client.ping(), TIMEOUT_S)
    except (Exception, TimeoutError) as error:
        return NodeHealth(status="DOWN", detail=_down(error).detail, partitions=partitions)
    return NodeHealth(status="UP", detail="PING answered", partitions=partitions)


async def _ping_nodes(engine: AsyncEngine) -> dict[str, NodeHealth]:
    nodes = await asyncio.wait_for(partition_nodes_async(engine.redis, engine.keys), TIMEOUT_S)
    clients = node_clients_async(engine.redis)
    try:
        answers = await asyncio.gather(*(_ping(clients[node.name], node) for node in nodes))
    finally:
        if isinstance(engine.redis, aiocluster.RedisCluster):  # clients of their own (one Redis: the pool)
            await asyncio.gather(*(client.aclose() for client in clients.values()))
    return {node.name: answer for node, answer in zip(nodes, answers, strict=True)}


async def redis_health(engine: AsyncEngine) -> Component:
    """UP when every node serving partitions answers a PING; DOWN names those that did not."""
    try:
        nodes = await _ping_nodes(engine)
    except (Exception, TimeoutError) as error:  # no map of the cluster, or a partition no master serves
        return _down(error)
    if isinstance(engine.redis, aiocluster.RedisCluster) and any(n.status == "DOWN" for n in nodes.values()):
        # The client's slot map may be older than a failover: read it again, then ask once more.
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(engine.redis.nodes_manager.initialize(), TIMEOUT_S)
            nodes = await _ping_nodes(engine)
    down = [
        f"{name} (partitions {', '.join(map(str, node.partitions))}): {node.detail}"
        for name, node in nodes.items()
        if node.status == "DOWN"
    ]
    if down:
        return Component(status="DOWN", detail=f"no answer to PING from {'; '.join(down)}", nodes=nodes)
    detail = "PING answered" if len(nodes) == 1 else f"PING answered by all {len(nodes)} masters"
    return Component(status="UP", detail=detail, nodes=nodes)


async def postgres_health(url: str | None) -> Component:
    if not url:
        return Component(status="NOT_CONFIGURED", detail="not configured (FLASHSALE_DATABASE_URL)")

    async def select_one() -> None:
        connection = await psycopg.AsyncConnection.connect(url, connect_timeout=int(TIMEOUT_S))
        async with connection:
            await connection.execute("SELECT 1")

    try:
        await asyncio.wait_for(select_one(), TIMEOUT_S + 0.5)
    except (Exception, TimeoutError) as error:
        return _down(error)
    return Component(status="UP", detail="SELECT 1 answered")


def _kafka_brokers(bootstrap: str) -> int:
    from confluent_kafka.admin import AdminClient

    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "socket.timeout.ms": int(TIMEOUT_S * 1000),
        "socket.connection.setup.timeout.ms": int(TIMEOUT_S * 1000),
        "logger": logging.getLogger("flashsale.api.kafka"),
    }
    client = AdminClient(config)
    return len(client.list_topics(timeout=TIMEOUT_S).brokers)


async def kafka_health(bootstrap: str | None) -> Component:
    if not bootstrap:
        return Component(status="NOT_CONFIGURED", detail="not configured (FLASHSALE_KAFKA_BOOTSTRAP)")
    try:
        brokers = await asyncio.wait_for(asyncio.to_thread(_kafka_brokers, bootstrap), TIMEOUT_S + 1.0)
    except (Exception, TimeoutError) as error:
        return _down(error)
    return Component(status="UP", detail=f"{brokers} broker(s) answered")


async def readiness(engine: AsyncEngine, database_url: str | None, kafka_bootstrap: str | None) -> Readiness:
    redis, postgres, kafka = await asyncio.gather(
        redis_health(engine), postgres_health(database_url), kafka_health(kafka_bootstrap)
    )
    return Readiness(
        status="UP" if redis.status == "UP" else "DOWN",
        components={"redis": redis, "postgresql": postgres, "kafka": kafka},
    )
