"""Payment settlement (writeback/settlement.py) against real Redis: every row of its table, that a pass
leaves nothing behind that it should have settled (the list shrinks to the payments still in flight), and
the write-behind worker running it on its partitions (and not with --no-settle)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from flashsale.engine import AsyncEngine, Order, SaleSettings
from flashsale.engine.client import redis_client
from flashsale.engine.keys import Keyspace, new_order_id
from flashsale.engine.settings import Settings
from flashsale.writeback.payments import Payment, PaymentStatus, SimulatedGateway
from flashsale.writeback.settlement import Settlement, read_settlements
from flashsale.writeback.worker import WorkerOptions, WorkerThread, worker_command

SKU = "SKU-SETTLE"
KEYS = Keyspace()


@pytest.fixture
async def gateway(async_engine: AsyncEngine) -> SimulatedGateway:
    await async_engine.load_sale(SaleSettings(sku=SKU, total=1_000, flash_price_cents=2_500))
    return SimulatedGateway(async_engine.redis, async_engine.keys)


async def paying(engine: AsyncEngine, user: str) -> Order:
    """A PENDING order of ``user``: a reservation being paid for."""
    hold = await engine.reserve(SKU, user)
    return await engine.begin_checkout(hold.id, user, "CREDIT_CARD")


async def authorized(engine: AsyncEngine, gateway: SimulatedGateway, user: str) -> Order:
    order = await paying(engine, user)
    await gateway.authorize(
        order_id=order.id, amount_cents=order.total_cents, method="CREDIT_CARD", transaction_id=None
    )
    return order


async def status_of(gateway: SimulatedGateway, order_id: str) -> PaymentStatus | None:
    payment: Payment | None = await gateway.status(order_id)
    return None if payment is None else payment.status


async def test_authorizations_are_captured_voided_or_left_as_their_order_says(
    async_engine: AsyncEngine, gateway: SimulatedGateway
) -> None:
    e = async_engine
    confirmed = await authorized(e, gateway, "confirmed")
    await e.confirm(confirmed.id, "confirmed", "tx")
    fulfilled = await authorized(e, gateway, "fulfilled")
    await e.confirm(fulfilled.id, "fulfilled", "tx")
    await e.fulfil_order(fulfilled.id)
    failed = await authorized(e, gateway, "failed")
    await e.fail_checkout(failed.id, "failed", "PAYMENT_ERROR")
    cancelled = await authorized(e, gateway, "cancelled")
    await e.cancel_order(cancelled.id, "cancelled")
    pending = await authorized(e, gateway, "pending")
    missing = new_order_id(e.keys.for_sku(SKU))
    await gateway.authorize(order_id=missing, amount_cents=100, method="PAYPAL", transaction_id=None)

    settled = await Settlement(e, gateway).settle_all()

    assert {(s.order_id, s.action, s.reason) for s in settled} == {
        (confirmed.id, "capture", "order_confirmed"),
        (fulfilled.id, "capture", "order_fulfilled"),
        (failed.id, "void", "order_failed"),
        (cancelled.id, "void", "order_cancelled"),
        (missing, "void", "order_missing"),
    }
    assert await status_of(gateway, confirmed.id) == PaymentStatus.CAPTURED
    assert await status_of(gateway, pending.id) == PaymentStatus.AUTHORIZED
    partition = e.keys.for_sku(SKU).index
    assert await gateway.unsettled(partition, 100) == [pending.id], "only the payment still in flight"
    assert await read_settlements(e.redis, e.keys) == {"capture": 2, "void": 3, "refund": 0, "finalize": 0}
    # A second pass has nothing more to do, and the pending one is voided once its hold has ended.
    assert await Settlement(e, gateway).settle_all() == []
    await e.fail_checkout(
        pending.id, "pending", "PAYMENT_ABANDONED"
    )  # what the sweeper does at the grace's end
    assert [s.action for s in await Settlement(e, gateway).settle_all()] == ["void"]
    assert await gateway.unsettled(partition, 100) == []
    counts = (await gateway.report()).counts
    assert counts["authorized"] == counts["captured"] + counts["voided"] == 6


async def test_a_capture_under_review_is_refunded_if_its_order_was_cancelled_else_finalized(
    async_engine: AsyncEngine, gateway: SimulatedGateway
) -> None:
    e = async_engine
    orders = {}
    for user in ("cancelled", "fulfilled", "still-confirmed"):
        order = await authorized(e, gateway, user)
        await e.confirm(order.id, user, "tx")
        await gateway.capture(order.id)
        await gateway.review(order.id)  # a cancellation begins ...
        orders[user] = order
    await e.cancel_order(orders["cancelled"].id, "cancelled")  # ... and its refund is never asked for
    await e.fulfil_order(orders["fulfilled"].id)  # ... or it was refused: the order shipped meanwhile

    settled = await Settlement(e, gateway, review_wait_ms=60_000).settle_all()
    assert {(s.order_id, s.action) for s in settled} == {
        (orders["cancelled"].id, "refund"),
        (orders["fulfilled"].id, "finalize"),
    }
    assert await status_of(gateway, orders["cancelled"].id) == PaymentStatus.REFUNDED
    partition = e.keys.for_sku(SKU).index
    # A confirmed order under review may still be on its way to being cancelled: it waits ...
    assert await gateway.unsettled(partition, 10) == [orders["still-confirmed"].id]
    # ... until the review is older than the wait: then the capture stands.
    settled = await Settlement(e, gateway, review_wait_ms=0).settle_all()
    assert [(s.order_id, s.action) for s in settled] == [(orders["still-confirmed"].id, "finalize")]
    assert await status_of(gateway, orders["still-confirmed"].id) == PaymentStatus.CAPTURED
    assert await gateway.unsettled(partition, 10) == []
    counts = (await gateway.report()).counts
    assert (counts["captured"], counts["refunded"]) == (3, 1)


async def test_an_authorization_under_review_that_gets_captured_stays_listed_until_the_review_ends(
    async_engine: AsyncEngine, gateway: SimulatedGateway
) -> None:
    e = async_engine
    order = await authorized(e, gateway, "alice")
    await e.confirm(order.id, "alice", "tx")
    await gateway.review(order.id)  # the shopper cancels before the checkout captured
    settled = await Settlement(e, gateway, review_wait_ms=60_000).settle_all()
    assert [s.action for s in settled] == ["capture"]
    partition = e.keys.for_sku(SKU).index
    assert await gateway.unsettled(partition, 10) == [order.id]
    await e.cancel_order(order.id, "alice")  # the cancellation lands; its refund call does not
    assert [s.action for s in await Settlement(e, gateway).settle_all()] == ["refund"]
    assert await gateway.unsettled(partition, 10) == []


async def test_a_capture_whose_order_is_gone_stays_listed_and_is_logged_for_an_operator(
    async_engine: AsyncEngine, gateway: SimulatedGateway, caplog: pytest.LogCaptureFixture
) -> None:
    e = async_engine
    missing = new_order_id(e.keys.for_sku(SKU))
    await gateway.authorize(order_id=missing, amount_cents=100, method="PAYPAL", transaction_id=None)
    await gateway.capture(missing)
    await gateway.review(missing)
    with caplog.at_level(logging.ERROR, logger="flashsale.writeback"):
        assert await Settlement(e, gateway).settle_all() == []
    logged = [r.getMessage() for r in caplog.records if "event=payment_unsettled" in r.getMessage()]
    assert len(logged) == 1
    assert missing in logged[0]
    assert await gateway.unsettled(e.keys.for_sku(SKU).index, 10) == [missing]


async def test_a_pass_pages_past_payments_it_must_leave_and_settles_the_ones_behind_them(
    async_engine: AsyncEngine, gateway: SimulatedGateway
) -> None:
    e = async_engine
    waiting = [await authorized(e, gateway, f"paying-{i}") for i in range(7)]  # listed first
    failed = []
    for i in range(5):
        order = await authorized(e, gateway, f"failed-{i}")
        await e.fail_checkout(order.id, f"failed-{i}", "PAYMENT_ERROR")
        failed.append(order)
    settled = await Settlement(e, gateway, batch=3).settle_all()
    assert sorted(s.order_id for s in settled) == sorted(o.id for o in failed)
    partition = e.keys.for_sku(SKU).index
    assert sorted(await gateway.unsettled(partition, 100)) == sorted(o.id for o in waiting)


async def test_concurrent_passes_move_each_payment_once(
    async_engine: AsyncEngine, gateway: SimulatedGateway
) -> None:
    # One worker holds a partition, but two may overlap for a moment when its lease changes hands.
    e = async_engine
    ids = []
    for i in range(20):
        order = await authorized(e, gateway, f"u{i}")
        ids.append(order.id)
        if i % 2:
            await e.confirm(order.id, f"u{i}", "tx")
        else:
            await e.fail_checkout(order.id, f"u{i}", "PAYMENT_ERROR")
    passes = await asyncio.gather(*(Settlement(e, gateway).settle_all() for _ in range(4)))
    counts = (await gateway.report()).counts
    assert (counts["captured"], counts["voided"]) == (10, 10)
    assert {s.order_id for p in passes for s in p} == set(ids)
    assert await gateway.unsettled(e.keys.for_sku(SKU).index, 100) == []


def _ledger_final(settings: Settings, order_ids: list[str]) -> dict[str, str]:
    client = redis_client(str(settings.redis_url), cluster=settings.redis_cluster)
    try:
        return {oid: str(client.hget(KEYS.for_order(oid).payment(oid), "status")) for oid in order_ids}
    finally:
        client.close()


def _prepare(settings: Settings) -> tuple[str, str]:
    """A confirmed order whose capture was never made and a failed one whose authorization was left."""

    async def prepare() -> tuple[str, str]:
        engine = AsyncEngine.from_settings(settings)
        try:
            await engine.load_sale(SaleSettings(sku=SKU, total=10, per_user_limit=1))
            gateway = SimulatedGateway(engine.redis, engine.keys)
            confirmed = await authorized(engine, gateway, "alice")
            await engine.confirm(confirmed.id, "alice", "tx")
            failed = await authorized(engine, gateway, "bob")
            await engine.fail_checkout(failed.id, "bob", "PAYMENT_ERROR")
            return confirmed.id, failed.id
        finally:
            await engine.close()

    return asyncio.run(prepare())


@pytest.mark.cluster
def test_the_worker_settles_the_payments_of_its_partitions(settings: Settings) -> None:
    confirmed, failed = _prepare(settings)
    with WorkerThread(settings, WorkerOptions(settle_interval_ms=50)) as worker:
        deadline = time.monotonic() + 20
        while _ledger_final(settings, [confirmed, failed]) != {
            confirmed: "CAPTURED",
            failed: "VOIDED",
        }:
            assert time.monotonic() < deadline, _ledger_final(settings, [confirmed, failed])
            time.sleep(0.05)
        assert worker.stats.settled == 2


def test_a_worker_with_no_settle_leaves_payments_alone(settings: Settings) -> None:
    confirmed, failed = _prepare(settings)
    with WorkerThread(settings, WorkerOptions(settle=False, settle_interval_ms=50)) as worker:
        assert worker.wait_drained(timeout_s=30)  # the worker is up and has done its other work
        time.sleep(0.3)
        assert worker.stats.settled == 0
    assert _ledger_final(settings, [confirmed, failed]) == {
        confirmed: "AUTHORIZED",
        failed: "AUTHORIZED",
    }
    assert "--no-settle" in worker_command(WorkerOptions(settle=False))
    assert "--no-settle" not in worker_command(WorkerOptions())
