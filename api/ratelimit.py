"""A per-user token bucket: ``rate`` requests per second on average, bursts of up to ``burst``.

In-process on purpose: the check costs no Redis round trip on the hot path. The caveat: each worker
process keeps its own buckets, so with N workers a user may reach up to N times the rate. The engine's
per-user limit, not this, is what keeps a sale fair; this only sheds abusive clients early. (A limit that
must be exact across machines belongs in the load balancer or in Redis.)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict

from flashsale.api.errors import ApiError


class UserRateLimiter:
    def __init__(self, rate_per_s: float, burst: int, *, users: int = 100_000) -> None:
        self.rate = rate_per_s
        self.burst = float(max(burst, 1))
        self._users = users
        # user -> (tokens left, monotonic time of the last refill); least recently seen first.
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, user: str) -> bool:
        """Spends one token of the user's bucket, or refuses with 429 and when to come back. True when
        this process has seen the user lately (their bucket was here): the calls that check the shared
        rate in Redis do so only then (api.context.Api.rate)."""
        if self.rate <= 0:
            return False
        now = time.monotonic()
        bucket = self._buckets.pop(user, None)
        seen = bucket is not None
        tokens, last = bucket or (self.burst, now)
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            wait = math.ceil((1.0 - tokens) / self.rate)
            raise ApiError(
                429,
                "RATE_LIMITED",
                f"too many requests; at most {self.rate:g} per second (bursts of {self.burst:g})",
                headers={"Retry-After": str(max(wait, 1))},
            )
        self._buckets[user] = (tokens - 1.0, now)
        if len(self._buckets) > self._users:
            # A user unseen for a while would have a full bucket anyway: forgetting them changes nothing.
            self._buckets.popitem(last=False)
        return seen
