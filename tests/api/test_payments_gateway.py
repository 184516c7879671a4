"""The simulated payment gateway (writeback/payments.py) against real Redis: every move is idempotent by
order id, concurrent calls for one order never authorize or capture twice, a voided authorization is never
captured, and the unsettled list holds exactly the payments that are not final."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from flashsale.engine.keys import Keyspace, new_order_id
from flashsale.writeback.payments import (
    DECLINING_METHOD,
    GatewayError,
    Payment,
    PaymentRefused,
    PaymentStatus,
    SimulatedGateway,
    give_back,
)
from redis.crc import key_slot

KEYS = Keyspace()


@pytest.fixture
async def gateway(redis_url: str) -> AsyncIterator[SimulatedGateway]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield SimulatedGateway(client, KEYS)
    await client.aclose()


def order(partition: int = 3) -> str:
    return new_order_id(KEYS.partition(partition))


async def authorize(
    gateway: SimulatedGateway, order_id: str, method: str = "CREDIT_CARD", tx: str | None = None
) -> Payment:
    return await gateway.authorize(order_id=order_id, amount_cents=4_999, method=method, transaction_id=tx)


def state(payment: Payment | None) -> str | None:
    return None if payment is None else payment.status


def tally(**counts: int) -> dict[str, int]:
    return {"authorized": 0, "declined": 0, "captured": 0, "voided": 0, "refunded": 0, **counts}


async def counts(gateway: SimulatedGateway) -> dict[str, int]:
    return (await gateway.report()).counts


async def test_concurrent_authorizations_of_one_order_authorize_once_and_all_get_the_first_result(
    gateway: SimulatedGateway,
) -> None:
    oid = order()
    results = await asyncio.gather(*(authorize(gateway, oid, tx=f"tx-{i}") for i in range(20)))
    assert len({r.transaction_id for r in results}) == 1
    assert {r.status for r in results} == {PaymentStatus.AUTHORIZED}
    assert (await counts(gateway))["authorized"] == 1
    assert await gateway.unsettled(3, 10) == [oid]
    # Later repeats, even with another method, get the first result too.
    again = await authorize(gateway, oid, method=DECLINING_METHOD)
    assert again == results[0]
    assert (await counts(gateway))["authorized"] == 1


async def test_a_decline_is_a_result_that_is_final_and_never_listed(gateway: SimulatedGateway) -> None:
    oid = order()
    declined = await authorize(gateway, oid, method=DECLINING_METHOD)
    assert (declined.status, declined.approved, declined.decline_reason) == (
        "DECLINED",
        False,
        "PAYMENT_DECLINED",
    )
    assert (await authorize(gateway, oid)).status == PaymentStatus.DECLINED
    assert await gateway.unsettled(3, 10) == []
    with pytest.raises(PaymentRefused):
        await gateway.capture(oid)
    assert await counts(gateway) == {
        "authorized": 0,
        "declined": 1,
        "captured": 0,
        "voided": 0,
        "refunded": 0,
    }


async def test_concurrent_captures_capture_once_and_a_capture_is_refunded_once_never_voided(
    gateway: SimulatedGateway,
) -> None:
    oid = order()
    await authorize(gateway, oid)
    captured = await asyncio.gather(*(gateway.capture(oid) for _ in range(10)))
    assert {c.status for c in captured} == {PaymentStatus.CAPTURED}
    assert await gateway.unsettled(3, 10) == []
    with pytest.raises(PaymentRefused) as refused:
        await gateway.void(oid)
    assert state(refused.value.payment) == PaymentStatus.CAPTURED
    refunds = await asyncio.gather(*(gateway.refund(oid) for _ in range(5)))
    assert {r.status for r in refunds} == {PaymentStatus.REFUNDED}
    with pytest.raises(PaymentRefused):
        await gateway.capture(oid)
    assert await counts(gateway) == {
        "authorized": 1,
        "declined": 0,
        "captured": 1,
        "voided": 0,
        "refunded": 1,
    }


async def test_a_capture_racing_a_void_lets_exactly_one_win_and_a_voided_authorization_is_never_captured(
    gateway: SimulatedGateway,
) -> None:
    for _ in range(20):
        oid = order()
        await authorize(gateway, oid)
        outcomes = await asyncio.gather(gateway.capture(oid), gateway.void(oid), return_exceptions=True)
        refused = [o for o in outcomes if isinstance(o, PaymentRefused)]
        assert len(refused) == 1, outcomes
        final = await gateway.status(oid)
        assert state(final) in (PaymentStatus.CAPTURED, PaymentStatus.VOIDED)
    c = await counts(gateway)
    assert c["captured"] + c["voided"] == c["authorized"] == 20
    assert await gateway.unsettled(3, 100) == []


async def test_moves_on_an_order_without_a_payment_are_refused_and_change_nothing(
    gateway: SimulatedGateway, redis_url: str
) -> None:
    oid = order()
    for move in (gateway.capture, gateway.void, gateway.refund, gateway.finalize):
        with pytest.raises(PaymentRefused) as refused:
            await move(oid)
        assert refused.value.payment is None
    assert await gateway.status(oid) is None
    assert await give_back(gateway, oid) is None


async def test_a_review_before_the_authorization_waits_for_it_and_keeps_a_capture_listed_until_finalized(
    gateway: SimulatedGateway,
) -> None:
    oid = order()
    assert await gateway.review(oid) is None  # the order is cancelled while its payment is on its way
    assert await gateway.status(oid) is None
    assert await gateway.unsettled(3, 10) == []
    authorized = await authorize(gateway, oid)
    assert authorized.review_since > 0
    captured = await gateway.capture(oid)
    assert captured.status == PaymentStatus.CAPTURED
    assert await gateway.unsettled(3, 10) == [oid], "a capture under review stays listed"
    with pytest.raises(PaymentRefused):
        await gateway.void(oid)
    final = await gateway.finalize(oid)
    assert final.review_since == 0
    assert await gateway.unsettled(3, 10) == []

    # A review of a capture lists it again; give_back refunds it.
    await gateway.review(oid)
    assert await gateway.unsettled(3, 10) == [oid]
    assert state(await give_back(gateway, oid)) == PaymentStatus.REFUNDED
    assert await gateway.unsettled(3, 10) == []


async def test_an_authorization_is_never_final_and_give_back_voids_it(gateway: SimulatedGateway) -> None:
    oid = order()
    await authorize(gateway, oid)
    with pytest.raises(PaymentRefused):
        await gateway.finalize(oid)
    given = await give_back(gateway, oid)
    assert state(given) == PaymentStatus.VOIDED
    assert (await give_back(gateway, oid)) == given  # again: nothing more happens
    assert (await counts(gateway))["voided"] == 1


async def test_the_test_knobs_fail_after_authorizing_or_before_a_move(gateway: SimulatedGateway) -> None:
    oid = order()
    gateway.timeouts_after_authorize = 1
    with pytest.raises(GatewayError):
        await authorize(gateway, oid)
    made = await gateway.status(oid)
    assert state(made) == PaymentStatus.AUTHORIZED  # the answer was lost, not the work
    assert (await authorize(gateway, oid)) == made
    gateway.failing = {"capture"}
    with pytest.raises(GatewayError):
        await gateway.capture(oid)
    assert (await gateway.status(oid)) == made
    gateway.failing = set()
    assert (await gateway.capture(oid)).status == PaymentStatus.CAPTURED


async def test_the_ledger_lives_in_the_slot_of_the_orders_partition(
    gateway: SimulatedGateway, redis_url: str
) -> None:
    for p in (0, 7, 15):
        oid = order(p)
        await authorize(gateway, oid)
        partition = KEYS.partition(p)
        slots = {
            key_slot(k.encode())
            for k in (partition.order(oid), partition.payment(oid), partition.payments_unsettled(),
                      partition.payment_counts(), partition.settlements())
        }  # fmt: skip
        assert len(slots) == 1


async def test_the_report_counts_every_move_and_ages_the_oldest_unsettled_payment(
    gateway: SimulatedGateway,
) -> None:
    old, young = order(2), order(2)
    await authorize(gateway, old)
    await asyncio.sleep(0.2)
    await authorize(gateway, young)
    report = await gateway.report()
    by_partition = {u.partition: u for u in report.unsettled}
    assert len(by_partition) == KEYS.partitions
    assert by_partition[2].count == 2
    assert by_partition[2].oldest_age_ms >= 200
    assert by_partition[5].count == by_partition[5].oldest_age_ms == 0
    assert await gateway.unsettled(2, 1) == [old]
    assert await gateway.unsettled(2, 1, offset=1) == [young]
