"""What every event means (engine.events), read without any server: parsing an entry, each type's effect,
the fold of a run of events, and the rows and messages the worker makes of them."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from flashsale.engine.events import LAYOUT, Event, EventType, UnknownEvent, effect, fold, parse_entry, replay
from flashsale.writeback.batch import Batch
from flashsale.writeback.messages import Topics, messages

TOPICS = Topics("reservations", "orders", "inventory")
AT = 1_796_000_000_000


def event(kind: str, *fields: Any, sku: str = "SKU-1", at: int = AT, stream_id: str | None = None) -> Event:
    """An event as the scripts write it: [type, sku, at, ...its LAYOUT]."""
    body = json.dumps([kind, sku, at, *fields])
    return parse_entry(3, stream_id or f"{at}-0", {"e": body})


SALE = ("sale_loaded", 10, "Mug", 1200, 500, 10, 2, 0, 0, 120_000, 0)
RESERVED = ("reserved", "rsv_3_a", "alice", 2, 120_000)
STARTED = ("checkout_started", "rsv_3_a", "ord_3_b", "alice", 2, 500, "CARD", AT + 30_000)
CONFIRMED = ("confirmed", "rsv_3_a", "ord_3_b", "alice", 2, "tx-1")


def test_every_type_has_a_layout_and_an_effect() -> None:
    assert set(LAYOUT) == set(EventType)
    samples = {
        "sale_loaded": SALE[1:],
        "restocked": (5, 15),
        "reserved": RESERVED[1:],
        "released": ("rsv_3_a", "alice", 2, None),
        "expired": ("rsv_3_a", "alice", 2, "ord_3_b"),
        "checkout_started": STARTED[1:],
        "checkout_failed": ("rsv_3_a", "ord_3_b", "alice", "DECLINED"),
        "checkout_cancelled": ("rsv_3_a", "ord_3_b", "alice", 2),
        "confirmed": CONFIRMED[1:],
        "order_cancelled": ("rsv_3_a", "ord_3_b", "alice", 2),
        "order_fulfilled": ("rsv_3_a", "ord_3_b", "alice"),
        "waiting_room_set": (1, 0, 50, 2, 120_000),
        "queue_admitted": (2, ["alice", "bob"]),
        "queue_closed": (7,),
        "bucket_set": (2, 4, "Mug", 1200, 500, 2, 0, 0, 120_000, 0),
        "transferred_out": ("mv_3_a", 0, 2, 5),
        "transferred_in": ("mv_3_a", 0, 2, 5),
    }
    assert set(samples) == {t.value for t in EventType}
    for kind, fields in samples.items():
        assert len(fields) == len(LAYOUT[EventType(kind)]), kind
        effect(event(kind, *fields))  # every type means something


def test_a_reserved_event_expires_at_its_time_plus_its_ttl() -> None:
    e = event(*RESERVED)
    assert (e.reservation_id, e.user, e.quantity, e.expires_at) == ("rsv_3_a", "alice", 2, AT + 120_000)
    assert e.id == f"3-{AT}-0"
    assert e.at == AT


@pytest.mark.parametrize(
    ("kind", "fields", "deltas", "user_counts"),
    [
        ("sale_loaded", SALE[1:], (10, 0, 0, 10), (0, 0)),
        ("restocked", (-3, 7), (-3, 0, 0, -3), (0, 0)),
        ("reserved", RESERVED[1:], (-2, 2, 0, 0), (2, 0)),
        ("released", ("rsv_3_a", "alice", 2, None), (2, -2, 0, 0), (-2, 0)),
        ("expired", ("rsv_3_a", "alice", 2, None), (2, -2, 0, 0), (-2, 0)),
        ("checkout_started", STARTED[1:], (0, 0, 0, 0), (0, 0)),
        ("checkout_failed", ("rsv_3_a", "ord_3_b", "alice", "DECLINED"), (0, 0, 0, 0), (0, 0)),
        ("checkout_cancelled", ("rsv_3_a", "ord_3_b", "alice", 2), (2, -2, 0, 0), (-2, 0)),
        ("confirmed", CONFIRMED[1:], (0, -2, 2, 0), (-2, 2)),
        ("order_cancelled", ("rsv_3_a", "ord_3_b", "alice", 2), (2, 0, -2, 0), (0, -2)),
        ("order_fulfilled", ("rsv_3_a", "ord_3_b", "alice"), (0, 0, 0, 0), (0, 0)),
    ],
)
def test_each_effect_moves_the_counters_and_the_users_counts_as_its_script_does(
    kind: str, fields: tuple[Any, ...], deltas: tuple[int, int, int, int], user_counts: tuple[int, int]
) -> None:
    change = effect(event(kind, *fields))
    assert (change.available, change.reserved, change.sold, change.total) == deltas
    assert (change.held, change.bought) == user_counts
    assert change.available + change.reserved + change.sold == change.total  # invariant 1 is kept


def test_an_expired_hold_with_an_order_being_paid_fails_that_order() -> None:
    change = effect(event("expired", "rsv_3_a", "alice", 2, "ord_3_b"))
    assert change.order == {"status": "FAILED", "failure_reason": "CHECKOUT_TIMEOUT", "updated_at": AT}
    assert effect(event("expired", "rsv_3_a", "alice", 2, None)).order is None


@pytest.mark.parametrize(
    "body",
    [
        '["teleported","SKU",1]',  # unknown type
        '["reserved","SKU",1,"rsv_3_a"]',  # too few fields
        '["reserved","SKU",1,"rsv_3_a","u",1,1,"extra"]',  # too many
        '{"type":"reserved"}',  # not an array
        "not json",
        '["reserved"]',
    ],
)
def test_an_entry_that_cannot_be_read_is_refused_with_its_id(body: str) -> None:
    with pytest.raises(UnknownEvent, match=f"event 3-{AT}-0 cannot be read"):
        parse_entry(3, f"{AT}-0", {"e": body})


def test_a_fold_sums_deltas_and_keeps_each_records_last_state() -> None:
    events = [
        event(*SALE, stream_id=f"{AT}-0"),
        event(*RESERVED, at=AT + 1, stream_id=f"{AT + 1}-0"),
        event(*STARTED, at=AT + 2, stream_id=f"{AT + 2}-0"),
        event(*CONFIRMED, at=AT + 3, stream_id=f"{AT + 3}-0"),
    ]
    folded = fold(events)
    c = folded.counters["SKU-1"]
    assert (c.total, c.available, c.reserved, c.sold) == (10, 8, 0, 2)
    assert folded.users[("SKU-1", "alice")] == [0, 2]
    hold = folded.reservations["rsv_3_a"]
    assert hold.created
    assert (hold.fields["status"], hold.fields["order_id"], hold.fields["pay_until"]) == (
        "CONFIRMED",
        "ord_3_b",
        None,
    )
    assert (hold.fields["created_at"], hold.fields["confirmed_at"]) == (AT + 1, AT + 3)
    order = folded.orders["ord_3_b"]
    assert order.created
    assert (order.fields["status"], order.fields["total_cents"], order.fields["transaction_id"]) == (
        "CONFIRMED",
        1000,
        "tx-1",
    )
    assert replay(events)["SKU-1"] == c


def test_a_batch_makes_one_row_per_record_with_new_ones_inserted_whole() -> None:
    earlier = event(*RESERVED, stream_id=f"{AT}-0")
    later = [
        event(*STARTED, at=AT + 2, stream_id=f"{AT + 2}-0"),
        event(
            "checkout_failed", "rsv_3_a", "ord_3_b", "alice", "DECLINED", at=AT + 3, stream_id=f"{AT + 3}-0"
        ),
    ]
    assert Batch.fold(3, [earlier]).new_reservation_rows()["reservation_id"] == ["rsv_3_a"]
    batch = Batch.fold(3, later)
    assert batch.new_reservation_rows() == {}  # the hold came in an earlier batch: an update
    changed = batch.changed_reservation_rows()
    assert changed["order_id"] == [None]
    assert changed["order_id_set"] == [True]
    assert changed["pay_until_set"] == [True]
    assert changed["status"] == [None]  # unchanged: the SQL keeps it
    orders = batch.new_order_rows()
    assert (orders["status"], orders["failure_reason"]) == (["FAILED"], ["DECLINED"])
    assert batch.inventory_rows() == {}  # nothing moved the counters
    assert batch.last_id == f"{AT + 3}-0"


def _topics(e: Event) -> list[str]:
    return [topic for topic, _ in messages(e, TOPICS)]


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        ("sale_loaded", SALE[1:], ["inventory"]),
        ("restocked", (5, 15), ["inventory"]),
        ("reserved", RESERVED[1:], ["reservations", "inventory"]),
        ("released", ("rsv_3_a", "alice", 2, None), ["reservations", "inventory"]),
        ("expired", ("rsv_3_a", "alice", 2, None), ["reservations", "inventory"]),
        ("expired", ("rsv_3_a", "alice", 2, "ord_3_b"), ["reservations", "orders", "inventory"]),
        ("checkout_started", STARTED[1:], ["orders"]),
        ("checkout_failed", ("rsv_3_a", "ord_3_b", "alice", "DECLINED"), ["orders"]),
        ("checkout_cancelled", ("rsv_3_a", "ord_3_b", "alice", 2), ["reservations", "orders", "inventory"]),
        ("confirmed", CONFIRMED[1:], ["reservations", "orders", "inventory"]),
        ("order_cancelled", ("rsv_3_a", "ord_3_b", "alice", 2), ["orders", "inventory"]),
        ("order_fulfilled", ("rsv_3_a", "ord_3_b", "alice"), ["orders"]),
    ],
)
def test_each_event_goes_to_the_topics_of_what_it_changed(
    kind: str, fields: tuple[Any, ...], expected: list[str]
) -> None:
    assert _topics(event(kind, *fields)) == expected


def test_a_message_carries_the_events_stable_id_its_status_and_its_deltas() -> None:
    bodies = {topic: msgspec.json.decode(body) for topic, body in messages(event(*CONFIRMED), TOPICS)}
    assert bodies["reservations"]["status"] == "CONFIRMED"
    assert bodies["orders"]["transaction_id"] == "tx-1"
    assert bodies["inventory"]["reserved_delta"] == -2
    assert bodies["inventory"]["sold_delta"] == 2
    assert {b["event_id"] for b in bodies.values()} == {f"3-{AT}-0"}
    assert {b["sku_id"] for b in bodies.values()} == {"SKU-1"}


def test_a_transfer_between_stock_buckets_moves_units_and_leaves_the_total_alone() -> None:
    out, into = event("transferred_out", "mv_3_a", 0, 2, 5), event("transferred_in", "mv_3_a", 0, 2, 5)
    assert (effect(out).available, effect(out).moving, effect(out).total) == (-5, 5, 0)
    assert (effect(into).available, effect(into).moving, effect(into).total) == (5, -5, 0)
    counters = replay([event(*SALE), out, into])["SKU-1"]
    assert (counters.total, counters.available, counters.moving) == (10, 10, 0)
    # A bucket's settings copy creates the product only when missing, with no units of its own.
    copy = effect(event("bucket_set", 2, 4, "Mug", 1200, 500, 2, 0, 0, 120_000, 0))
    assert copy.product is None
    assert copy.product_if_missing is not None
    assert copy.product_if_missing["total"] == 0
    inventory = [m for t, m in messages(out, TOPICS) if t == "inventory"]
    assert json.loads(inventory[0])["moving_delta"] == 5


def test_a_reserved_event_carries_its_id_without_what_its_stream_says() -> None:
    short = event("reserved", "AbCdEfGhIjKlMnOp", "alice", 1, 1000)  # as lua/reserve.lua writes it
    assert short.reservation_id == "rsv_3_AbCdEfGhIjKlMnOp"
    whole = event("reserved", "rsv_3_AbCdEfGhIjKlMnOp", "alice", 1, 1000)  # streams written before
    assert whole.reservation_id == "rsv_3_AbCdEfGhIjKlMnOp"
    chance = event("reserved", "rsv_AbCdEfGhIjKl", "alice", 1, 1000)  # a random part that starts so
    assert chance.reservation_id == "rsv_3_rsv_AbCdEfGhIjKl"
