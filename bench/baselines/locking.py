"""The design document's reservation path (/work/shared/seed), faithfully, as the baseline to beat.

``ReservationService.createReservation`` in one PostgreSQL transaction (Spring's @Transactional):
  1. Redis: has the user purchased this SKU already? (``user_limit:<user>:<sku>``)
  2. PostgreSQL: ``findByUserIdAndSkuIdAndStatus(RESERVED)``: an active reservation already?
  3. Redis: ``DECRBY stock:<sku>``, the optimistic step; below zero → compensate (INCRBY) and refuse.
  4. PostgreSQL: ``SELECT … FOR UPDATE`` the inventory row, ``UPDATE`` its counts, ``INSERT`` the reservation,
     commit. Any failure rolls back and compensates the Redis decrement.
  5. Redis: cache the active reservation (``reservation:<user>:<sku>``, 3 minutes).
The Kafka publish of step 6 is left out, which only flatters the baseline. Refusals raise the engine's own
exceptions, so both systems' outcomes are counted under the same codes.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import redis.asyncio as aioredis
from flashsale.engine import AlreadyPurchased, AlreadyReserved, OutOfStock
from flashsale.writeback.database import Queries
from psycopg_pool import AsyncConnectionPool

HERE = Path(__file__).resolve().parent


def load_queries(path: Path = HERE / "queries.sql") -> Queries:
    """The baseline's named queries, read with the project's one SQL parser."""
    return Queries(path.read_text(), source=str(path))


class LockingReservations:
    """Reservations as the design document makes them: Redis DECR, then a row-locking transaction."""

    def __init__(self, redis: aioredis.Redis, pool: AsyncConnectionPool) -> None:
        self.redis = redis
        self.pool = pool
        self.q = load_queries()

    @staticmethod
    async def create_schema(database_url: str) -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute((HERE / "locking.sql").read_text().encode())

    async def create_sale(self, sku: str, total: int) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(self.q["create_product"], {"sku": sku, "total": total})
        await self.redis.set(f"stock:{sku}", total)

    async def reserve(self, sku: str, user: str, quantity: int = 1) -> str:
        if await self.redis.exists(f"user_limit:{user}:{sku}"):
            raise AlreadyPurchased(f"user {user} already bought sku {sku}")
        reservation_id = str(uuid.uuid4())
        params = {"sku": sku, "user": user, "quantity": quantity, "reservation_id": reservation_id}
        stock_key = f"stock:{sku}"
        decremented = False
        try:
            async with self.pool.connection() as conn, conn.transaction():
                found = await conn.execute(self.q["find_active_reservation"], params)
                if await found.fetchone() is not None:
                    raise AlreadyReserved(f"user {user} already holds sku {sku}")
                if await self.redis.decrby(stock_key, quantity) < 0:
                    await self.redis.incrby(stock_key, quantity)
                    raise OutOfStock(f"sku {sku} is sold out")
                decremented = True
                locked = await (await conn.execute(self.q["lock_inventory"], params)).fetchone()
                if locked is None or locked[0] < quantity:
                    raise OutOfStock(f"sku {sku} has no row or too few units")
                await conn.execute(self.q["reserve_inventory"], params)
                await conn.execute(self.q["insert_reservation"], params)
        except BaseException:
            # The transaction rolled back (or never committed): give the optimistic unit back too.
            if decremented:
                await self.redis.incrby(stock_key, quantity)
            raise
        await self.redis.set(f"reservation:{user}:{sku}", reservation_id, ex=180)
        return reservation_id

    async def inventory(self, sku: str) -> dict[str, int]:
        async with self.pool.connection() as conn:
            row = await (await conn.execute(self.q["inventory"], {"sku": sku})).fetchone()
            reserved_rows = await (await conn.execute(self.q["count_reservations"], {"sku": sku})).fetchone()
        if row is None or reserved_rows is None:
            raise LookupError(f"no inventory row for sku {sku}")
        total, available, reserved, sold = row
        return {
            "total": total,
            "available": available,
            "reserved": reserved,
            "sold": sold,
            "reservation_rows": reserved_rows[0],
        }
