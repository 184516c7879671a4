"""Applies a folded batch to PostgreSQL in one transaction, exactly once in effect.

The transaction first moves the partition's stored offset from the id this worker last saw to the
batch's last id (compare-and-set, which also locks the offset row): if another worker applied the
partition meanwhile, nothing of this batch is kept. Then it locks the touched inventory rows in sku
order, adds the summed deltas, writes reservations and orders, and commits. All statements go out in
one pipeline: a batch costs about two round trips, whatever its size.
"""

from __future__ import annotations

from typing import Any

import psycopg
from flashsale.engine.events import Event, stream_id_key
from flashsale.writeback.batch import Batch
from flashsale.writeback.database import queries
from psycopg import AsyncConnection


class OffsetMoved(RuntimeError):
    """Another worker applied this partition since we read its offset: our view is stale."""


class OutOfSync(RuntimeError):
    """PostgreSQL lacks a row the stream says exists (e.g. the database was reset but the stream was not)."""


async def ensure_offset(conn: AsyncConnection[Any], partition: int) -> str:
    """The partition's applied stream id ("0-0" when nothing was applied yet)."""
    async with conn.transaction():
        cursor = await conn.execute(queries()["ensure_offset"], {"partition": partition})
        row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


def unapplied(events: list[Event], applied_id: str) -> list[Event]:
    """The events after the applied offset: anything at or below it was applied already."""
    floor = stream_id_key(applied_id)
    if not events or stream_id_key(events[0].stream_id) > floor:
        return events  # the usual case: the batch starts after the offset
    return [e for e in events if stream_id_key(e.stream_id) > floor]


async def apply_batch(conn: AsyncConnection[Any], batch: Batch, expected_id: str) -> str:
    """Applies ``batch`` (events after ``expected_id``) in one transaction; returns the new applied id."""
    q = queries()
    async with conn.pipeline() as pipeline, conn.transaction():
        offset = await conn.execute(
            q["advance_offset"],
            {
                "partition": batch.partition,
                "applied_id": batch.last_id,
                "events": len(batch.events),
                "expected_id": expected_id,
            },
        )
        checks: list[tuple[psycopg.AsyncCursor[Any], int, str]] = []

        async def run(name: str, params: dict[str, Any], expect_rows: bool = False) -> None:
            if not params:
                return
            cursor = await conn.execute(q[name], params)
            if expect_rows:
                checks.append((cursor, len(next(iter(params.values()))), name))

        await run("upsert_products", batch.product_rows())
        await run("upsert_products", batch.products_if_missing_rows())
        await run("set_product_buckets", batch.product_bucket_rows())
        await run("update_product_totals", batch.product_total_rows(), expect_rows=True)
        await run("create_inventory", batch.new_inventory_rows())
        inventory = batch.inventory_rows()
        if inventory:
            await conn.execute(q["lock_inventory"], {"sku_id": inventory["sku_id"]})
        await run("apply_inventory_deltas", inventory, expect_rows=True)
        # Earlier rows change before new ones arrive: an order that failed in this batch must be FAILED
        # before its reservation's next order is inserted (one live order per reservation).
        await run("update_reservations", batch.changed_reservation_rows(), expect_rows=True)
        await run("insert_reservations", batch.new_reservation_rows())
        await run("update_orders", batch.changed_order_rows(), expect_rows=True)
        await run("insert_orders", batch.new_order_rows())
        await run("upsert_waiting_rooms", batch.waiting_room_rows())
        await run("add_waiting_room_counts", batch.waiting_room_count_rows(), expect_rows=True)
        await pipeline.sync()
        if await offset.fetchone() is None:
            raise OffsetMoved(f"partition {batch.partition}: offset is no longer {expected_id}")
        for cursor, expected, name in checks:
            if cursor.rowcount != expected:
                raise OutOfSync(
                    f"partition {batch.partition}: {name} matched {cursor.rowcount} of {expected} rows "
                    f"for events up to {batch.last_id}"
                )
    return batch.last_id
