"""flashsale's reservation engine: atomic Lua scripts in Redis, called through typed Python clients.

Start at ``engine.client`` (Engine, AsyncEngine); the scripts themselves are in ``lua/``.

Names are imported when first used (PEP 562), so a process that needs only the settings or the key layout
(``flashsale token``, ``flashsale --help``) does not pay for the Redis client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import AsyncEngine, Engine
    from .errors import (
        AlreadyPurchased,
        AlreadyReserved,
        BacklogFull,
        CheckoutInProgress,
        FlashSaleError,
        Forbidden,
        InvalidArgument,
        InvalidQuantity,
        InvalidState,
        NotFound,
        OutOfStock,
        ReservationExpired,
        SaleNotActive,
    )
    from .events import Counters, Event, replay
    from .keys import Keyspace, Partition, partition_of
    from .models import Order, OrderStatus, Reservation, ReservationStatus, Sale, SaleSettings, UserCounts
    from .settings import EngineConfig, Settings

__all__ = [
    "AlreadyPurchased",
    "AlreadyReserved",
    "AsyncEngine",
    "BacklogFull",
    "CheckoutInProgress",
    "Counters",
    "Engine",
    "EngineConfig",
    "Event",
    "FlashSaleError",
    "Forbidden",
    "InvalidArgument",
    "InvalidQuantity",
    "InvalidState",
    "Keyspace",
    "NotFound",
    "Order",
    "OrderStatus",
    "OutOfStock",
    "Partition",
    "Reservation",
    "ReservationExpired",
    "ReservationStatus",
    "Sale",
    "SaleNotActive",
    "SaleSettings",
    "Settings",
    "UserCounts",
    "partition_of",
    "replay",
]

_WHERE = {
    "AsyncEngine": "client",
    "Engine": "client",
    "Counters": "events",
    "Event": "events",
    "replay": "events",
    "Keyspace": "keys",
    "Partition": "keys",
    "partition_of": "keys",
    "Order": "models",
    "OrderStatus": "models",
    "Reservation": "models",
    "ReservationStatus": "models",
    "Sale": "models",
    "SaleSettings": "models",
    "UserCounts": "models",
    "EngineConfig": "settings",
    "Settings": "settings",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name, "errors" if name in __all__ else None)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
