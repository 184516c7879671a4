"""What every handler works with: one ``Api`` per app, built by ``api.app`` at startup."""

from __future__ import annotations

from dataclasses import dataclass

from flashsale.api.auth import Authenticator
from flashsale.api.checkout import Checkout
from flashsale.api.coalescing import SingleFlight
from flashsale.api.metrics import ApiMetrics
from flashsale.api.ratelimit import UserRateLimiter
from flashsale.api.soldout import SoldOutFlags
from flashsale.engine import AsyncEngine
from flashsale.engine.operations import RateLimit
from flashsale.engine.settings import Settings
from flashsale.writeback.payments import PaymentGateway


@dataclass
class Api:
    """What handlers use: one per app."""

    settings: Settings
    engine: AsyncEngine
    auth: Authenticator
    limiter: UserRateLimiter  # the first line, in this process
    # The per-user rate kept in Redis, checked by the scripts of the busiest calls, from a user's second
    # request to this process on (Call.shared_rate): it costs Redis ~4 µs a call (a key per active user),
    # and most shoppers of a flash sale press once. A user spraying W processes gets at most W requests
    # past it (one per process, until the process forgets them), then the shared rate holds.
    rate: RateLimit | None
    metrics: ApiMetrics
    gateway: PaymentGateway
    checkout: Checkout
    reads: SingleFlight
    openapi: bytes
    soldout: SoldOutFlags
