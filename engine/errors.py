"""Refusals of the engine. Each stable error code of the Lua scripts is one exception class."""

from __future__ import annotations

import re


class FlashSaleError(Exception):
    """A refusal with a stable code (``OUT_OF_STOCK``, ...) and a sentence for people."""

    code = "FLASHSALE_ERROR"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code

    def __reduce__(self) -> tuple[type[FlashSaleError], tuple[str]]:
        return (type(self), (self.message,))


class OutOfStock(FlashSaleError):
    code = "OUT_OF_STOCK"


class AlreadyReserved(FlashSaleError):
    code = "ALREADY_RESERVED"


class AlreadyPurchased(FlashSaleError):
    code = "ALREADY_PURCHASED"


class SaleNotActive(FlashSaleError):
    code = "SALE_NOT_ACTIVE"


class NotFound(FlashSaleError):
    code = "NOT_FOUND"


class ReservationExpired(FlashSaleError):
    code = "RESERVATION_EXPIRED"


class InvalidState(FlashSaleError):
    code = "INVALID_STATE"


class InvalidQuantity(FlashSaleError):
    code = "INVALID_QUANTITY"


class InvalidArgument(FlashSaleError):
    code = "INVALID_ARGUMENT"


class Forbidden(FlashSaleError):
    code = "FORBIDDEN"


class CheckoutInProgress(FlashSaleError):
    code = "CHECKOUT_IN_PROGRESS"


class BacklogFull(FlashSaleError):
    """The partition's write-behind backlog reached its budget: nothing was written; try again later."""

    code = "BACKLOG_FULL"


class NotAdmitted(FlashSaleError):
    """The sale has a waiting room and the user holds no live admission to it."""

    code = "NOT_ADMITTED"


class RateLimited(FlashSaleError):
    """Over the user's request rate (in Redis, shared by every API process); ``retry_after_ms`` says when
    the next request is allowed."""

    code = "RATE_LIMITED"

    @property
    def retry_after_ms(self) -> int:
        match = _RETRY_IN.search(self.message)
        return int(match.group(1)) if match else 1000


class NoWaitingRoom(FlashSaleError):
    """The sale exists but has no waiting room."""

    code = "NO_WAITING_ROOM"


class QueueClosed(FlashSaleError):
    """The waiting room takes nobody now: the SKU sold out or the sale ended."""

    code = "QUEUE_CLOSED"


class QueueNotOpen(FlashSaleError):
    """The waiting room does not take joiners yet (before its opening time)."""

    code = "QUEUE_NOT_OPEN"


class NotInQueue(FlashSaleError):
    """The user has no place in the SKU's waiting room."""

    code = "NOT_IN_QUEUE"


class NotReplicated(FlashSaleError):
    """WAIT mode (FLASHSALE_REDIS_WAIT_REPLICAS): the call ran on the master, but fewer replicas than asked
    confirmed its change within FLASHSALE_REDIS_WAIT_TIMEOUT_MS, so it is not acknowledged: it may be lost
    if the master fails now, or it may stay. Retrying with the same idempotency key returns the first
    answer once replicated. Raised by the clients, never by a script."""

    code = "NOT_REPLICATED"


class TransferLate(FlashSaleError):
    """A stock-bucket transfer's deposit came past its deadline: the sweeper finishes it (engine/buckets.py).
    Handled inside the engine; never an answer to a shopper."""

    code = "TRANSFER_LATE"


_RETRY_IN = re.compile(r"in (\d+) ms")

ERRORS_BY_CODE: dict[str, type[FlashSaleError]] = {
    cls.code: cls
    for cls in (
        OutOfStock,
        AlreadyReserved,
        AlreadyPurchased,
        SaleNotActive,
        NotFound,
        ReservationExpired,
        InvalidState,
        InvalidQuantity,
        InvalidArgument,
        Forbidden,
        CheckoutInProgress,
        BacklogFull,
        NotAdmitted,
        RateLimited,
        NoWaitingRoom,
        QueueClosed,
        QueueNotOpen,
        NotInQueue,
        TransferLate,
    )
}


def from_reply(message: str) -> FlashSaleError | None:
    """The engine error a script's error reply stands for ("OUT_OF_STOCK sku X has 0 units left"), if any."""
    code, _, text = message.partition(" ")
    cls = ERRORS_BY_CODE.get(code)
    return cls(text) if cls else None
