"""The id formats the OpenAPI document describes are the ones the engine mints and accepts."""

from __future__ import annotations

import re
import string
from typing import Any

import pytest
from flashsale.api.openapi import build
from flashsale.api.routes import ENDPOINTS
from flashsale.engine.errors import InvalidArgument
from flashsale.engine.keys import ENTITY_ID, Keyspace, new_order_id, new_reservation_id
from flashsale.engine.operations import identifier

SCHEMAS: dict[str, Any] = build(ENDPOINTS)["components"]["schemas"]
DOCUMENTED_RULE = re.compile(r"\[A-Za-z0-9-_\.@\]\{1,128\}")  # as the descriptions write it
MINTED = {"rsv": r"rsv_(\d+)_[0-9A-Za-z_-]{16}", "ord": r"ord_(\d+)_[0-9A-Za-z_-]{16}"}


def engine_accepts(text: str) -> bool:
    try:
        identifier(text, "id")
    except InvalidArgument:
        return False
    return True


def described(schema: str, field: str) -> dict[str, Any]:
    prop: dict[str, Any] = SCHEMAS[schema]["properties"][field]
    return next((choice for choice in prop.get("anyOf", []) if choice.get("type") == "string"), prop)


@pytest.mark.parametrize(
    ("schema", "field", "kind"),
    [
        ("ReservationBody", "id", "rsv"),
        ("ReservationBody", "orderId", "ord"),
        ("OrderBody", "id", "ord"),
        ("OrderBody", "reservationId", "rsv"),
        ("CheckoutRequest", "reservationId", "rsv"),
    ],
)
def test_reservation_and_order_ids_are_described_with_the_engines_format(
    schema: str, field: str, kind: str
) -> None:
    prop = described(schema, field)
    assert f"{kind}_<partition>_<random>" in prop["description"]
    assert "16 URL-safe base64 characters" in prop["description"]
    (example,) = prop["examples"]
    assert re.fullmatch(MINTED[kind], example)
    assert ENTITY_ID.fullmatch(example)
    keys = Keyspace()
    lookup = keys.for_reservation if kind == "rsv" else keys.for_order
    assert lookup(example).index == int(example.split("_")[1])


@pytest.mark.parametrize("index", [0, 7, 15])
def test_minted_ids_have_the_described_shape(index: int) -> None:
    partition = Keyspace().partition(index)
    for kind, mint in (("rsv", new_reservation_id), ("ord", new_order_id)):
        match = re.fullmatch(MINTED[kind], mint(partition))
        assert match is not None
        assert int(match.group(1)) == index


@pytest.mark.parametrize(
    ("schema", "field"),
    [
        ("ReservationRequest", "skuId"),
        ("Product", "skuId"),
        ("ReservationBody", "skuId"),
        ("ReservationBody", "userId"),
        ("OrderBody", "skuId"),
        ("OrderBody", "userId"),
        ("DemoTokenRequest", "user"),
    ],
)
def test_sku_and_user_ids_are_described_with_the_engines_rule(schema: str, field: str) -> None:
    found = DOCUMENTED_RULE.search(described(schema, field)["description"])
    assert found, f"{schema}.{field} does not state the id rule"
    documented = re.compile(found.group(0).replace("-_", r"\-_"))
    for text in [*string.printable, "é", "²", "٣", "Ａ", "", "a" * 128, "a" * 129, "SKU-1.b_c@d"]:
        assert bool(documented.fullmatch(text)) == engine_accepts(text), repr(text)
