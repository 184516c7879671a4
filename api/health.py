"""Readiness of the servers behind the API, each checked with a short timeout.

Redis decides readiness (the API cannot serve without it). PostgreSQL and Kafka are reported, as the
design document's actuator health does, but only the write-behind worker needs them; when their URL is
not configured they are reported as NOT_CONFIGURED.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
from flashsale.api.schemas import Component, Readiness
from flashsale.engine import AsyncEngine

TIMEOUT_S = 2.0

log = logging.getLogger("flashsale.api")


def _down(error: BaseException) -> Component:
    text = str(error) or type(error).__name__
    return Component(status="DOWN", detail=text.splitlines()[0][:200] if text else type(error).__name__)


async def redis_health(engine: AsyncEngine) -> Component:
    try:
        await asyncio.wait_for(engine.redis.ping(), TIMEOUT_S)
    except (Exception, TimeoutError) as error:
        return _down(error)
    return Component(status="UP", detail="PING answered")


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
