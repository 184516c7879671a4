"""flashsale's reservation engine: atomic Lua scripts in Redis, called through typed Python clients.

Start at ``engine.client`` (Engine, AsyncEngine); the scripts themselves are in ``lua/``.
"""

from engine.client import AsyncEngine, Engine
from engine.errors import (
    AlreadyPurchased,
    AlreadyReserved,
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
from engine.events import Counters, Event, replay
from engine.keys import Keyspace, Partition, partition_of
from engine.models import Order, OrderStatus, Reservation, ReservationStatus, Sale, SaleSettings, UserCounts
from engine.operations import EngineConfig

__all__ = [
    "AlreadyPurchased",
    "AlreadyReserved",
    "AsyncEngine",
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
    "UserCounts",
    "partition_of",
    "replay",
]
