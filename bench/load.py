"""The load loop: N concurrent asyncio clients sharing a budget of attempts, each one timed.

Every attempt is one call of ``attempt(i)`` (i is unique, so each attempt can be its own user); a client
starts its next attempt as soon as its previous one answered (a closed loop, like people pressing "buy").
An attempt's outcome is ``"ok"`` or the engine's error code; anything else is counted by exception type.
Given a Redis URL, the run also reads what it cost the server (INFO cpu before and after): with the client
process's own CPU time, each side's CPU microseconds per call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flashsale.bench.servers import ServerCpu, server_cpu
from flashsale.bench.stats import Latencies, us_per_call
from flashsale.engine import AsyncEngine, EngineConfig

T = TypeVar("T")

Attempt = Callable[[int], Awaitable[object]]


@dataclass
class LoadResult:
    clients: int
    attempts: int
    seconds: float
    client_cpu_s: float
    outcomes: Counter[str] = field(default_factory=Counter)
    latencies: Latencies = field(default_factory=Latencies)
    # What the run cost the Redis server (whole process, main thread), when drive() was given its URL.
    redis_cpu: ServerCpu | None = None

    @property
    def rate(self) -> float:
        return self.attempts / self.seconds if self.seconds else 0.0

    @property
    def successes(self) -> int:
        return self.outcomes.get("ok", 0)

    @property
    def client_us(self) -> float:
        """The client process's CPU microseconds per call."""
        return us_per_call(self.client_cpu_s, self.attempts)

    @property
    def redis_us(self) -> float:
        """The Redis server's CPU microseconds per call (0.0 when not measured)."""
        return us_per_call(self.redis_cpu.total if self.redis_cpu else 0.0, self.attempts)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "clients": self.clients,
            "attempts": self.attempts,
            "seconds": round(self.seconds, 3),
            "attempts_per_s": round(self.rate, 1),
            "client_cpu_s": round(self.client_cpu_s, 2),
            "client_us_per_call": round(self.client_us, 2),
            "outcomes": dict(self.outcomes),
            "latency": self.latencies.summary(),
        }
        if self.redis_cpu is not None:
            out["redis_cpu_s"] = round(self.redis_cpu.total, 3)
            out["redis_main_thread_cpu_s"] = round(self.redis_cpu.main_thread, 3)
            out["redis_us_per_call"] = round(self.redis_us, 2)
            out["redis_main_thread_us_per_call"] = round(
                us_per_call(self.redis_cpu.main_thread, self.attempts), 2
            )
        return out


async def drive(
    clients: int, attempts: int, attempt: Attempt, *, max_seconds: float, redis_url: str | None = None
) -> LoadResult:
    """Runs ``attempts`` attempts over ``clients`` concurrent clients, or fewer if ``max_seconds`` passes;
    with ``redis_url``, also what they cost that Redis server in CPU."""
    numbers = itertools.count()
    latencies = Latencies()
    outcomes: Counter[str] = Counter()
    deadline = time.perf_counter() + max_seconds
    clock = time.perf_counter_ns

    async def client() -> None:
        for i in numbers:
            if i >= attempts or time.perf_counter() > deadline:
                return
            start = clock()
            try:
                await attempt(i)
                outcome = "ok"
            except Exception as error:  # every refusal is an outcome to count, not a failure of the run
                outcome = getattr(error, "code", None) or f"error:{type(error).__name__}"
            latencies.add(clock() - start)
            outcomes[outcome] += 1

    server_before = server_cpu(redis_url) if redis_url else None
    cpu = time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - started
    client_cpu = time.process_time() - cpu
    server = server_cpu(redis_url) - server_before if redis_url and server_before else None
    return LoadResult(clients, len(latencies), seconds, client_cpu, outcomes, latencies, server)


def async_engine(
    url: str, max_batch: int = 256, max_inflight: int = 4, config: EngineConfig | None = None
) -> AsyncEngine:
    """The asyncio engine as an application would build it, with the auto-pipeline's knobs exposed."""
    # from_url builds the client exactly as the engine wants it (no redis-py retries, decoded replies);
    # its own pipeline has sent nothing, so building a second engine on that client costs nothing.
    client = AsyncEngine.from_url(url, max_connections=64).redis
    return AsyncEngine(client, config, max_batch=max_batch, max_inflight=max_inflight)


async def warm_up(engine: AsyncEngine, clients: int, sku: str) -> None:
    """Opens the connections and wakes the code paths before the clock starts (no-op calls: no state)."""
    await drive(clients, max(2 * clients, 2000), lambda i: engine.noop(sku), max_seconds=10)


def run(coroutine: Coroutine[Any, Any, T], loop: str) -> T:
    """Runs a scenario on the chosen event loop ("uvloop" as uvicorn runs the API, or plain "asyncio")."""
    if loop == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)
