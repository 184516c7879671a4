"""Configuration, on the ground floor: ``EngineConfig`` (what the engine needs, plain values) and
``Settings``, the one typed settings object of every process, read from the environment (prefix
``FLASHSALE_``) when asked, never at import.

Every default is written once, here. A URL left unset means "embedded": ``flashsale up`` starts that server
itself (see ``flashsale.launcher``). compose.yaml sets the same variable names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from .keys import Keyspace

PREFIX = "FLASHSALE_"

PARTITIONS = 16
KEY_PREFIX = "fs"
IDEMPOTENCY_TTL_MS = 24 * 3600 * 1000
PAYMENT_GRACE_MS = 30_000
LAZY_EXPIRY_BOUND = 16
# Redis memory the write-behind backlog (events not yet in PostgreSQL and Kafka) may use, all partitions
# together; reserve refuses (503 BACKLOG_FULL) at the budget. EVENT_BYTES is the measured cost of one
# unapplied event in the stream (bench/results/memory.md), rounded up.
BACKLOG_BUDGET_MB = 2048
EVENT_BYTES = 128
# WAIT mode's bound on how long a reply waits for its replicas (FLASHSALE_REDIS_WAIT_TIMEOUT_MS).
WAIT_TIMEOUT_MS = 1000
# At most this many plain reserves of one SKU that an asyncio client has at the same moment go to Redis
# as one script call (engine/coalescing.py, lua/reserve_many.lua); 1 = each on its own.
COALESCE_RESERVES = 64
MAX_COALESCED = 1000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """What the engine needs to know: the key layout and the timings it passes to the scripts."""

    partitions: int = PARTITIONS
    prefix: str = KEY_PREFIX
    idempotency_ttl_ms: int = IDEMPOTENCY_TTL_MS
    payment_grace_ms: int = PAYMENT_GRACE_MS
    lazy_expiry_bound: int = LAZY_EXPIRY_BOUND
    backlog_budget_mb: int = BACKLOG_BUDGET_MB
    # WAIT mode: a script call is acknowledged only once this many replicas have its change (WAIT after
    # each pipeline of writes); 0 = off. Fewer within the timeout: NotReplicated.
    wait_replicas: int = 0
    wait_timeout_ms: int = WAIT_TIMEOUT_MS
    # Plain reserves of one SKU at the same moment, coalesced into one script call of at most this many
    # (AsyncEngine only; off in WAIT mode); 1 = off.
    coalesce_reserves: int = COALESCE_RESERVES

    def __post_init__(self) -> None:
        if self.wait_replicas < 0 or (self.wait_replicas > 0 and self.wait_timeout_ms < 1):
            raise ValueError("wait_replicas must be >= 0, and wait_timeout_ms >= 1 when it is on")
        if not 1 <= self.coalesce_reserves <= MAX_COALESCED:
            raise ValueError(f"coalesce_reserves must be 1..{MAX_COALESCED}")

    @property
    def wait(self) -> tuple[int, int] | None:
        """(replicas, timeout ms) of WAIT mode, or None when it is off."""
        return (self.wait_replicas, self.wait_timeout_ms) if self.wait_replicas > 0 else None

    @property
    def backlog_limit_events(self) -> int:
        """Unapplied events one partition's stream may hold before reserve refuses."""
        return max(1, self.backlog_budget_mb * 1024 * 1024 // EVENT_BYTES // self.partitions)


class Settings(msgspec.Struct, kw_only=True, frozen=True):
    # Servers; None = start an embedded one (flashsale up) or fail with a clear message (other commands).
    redis_url: str | None = None
    # FLASHSALE_REDIS_CLUSTER=1: redis_url is a node of a Redis Cluster (any node: clients learn the rest),
    # or several, comma-separated, for a process that starts while one of them is down.
    redis_cluster: bool = False
    database_url: str | None = None
    kafka_bootstrap: str | None = None
    data_dir: Path | None = None

    # Engine
    partitions: int = PARTITIONS
    key_prefix: str = KEY_PREFIX
    idempotency_ttl_ms: int = IDEMPOTENCY_TTL_MS
    payment_grace_ms: int = PAYMENT_GRACE_MS
    lazy_expiry_bound: int = LAZY_EXPIRY_BOUND
    backlog_budget_mb: int = BACKLOG_BUDGET_MB
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 10.0
    # WAIT mode (Redis with replicas): a change is acknowledged only once this many replicas have it; 0 = off.
    redis_wait_replicas: int = 0
    redis_wait_timeout_ms: int = WAIT_TIMEOUT_MS
    coalesce_reserves: int = COALESCE_RESERVES

    # HTTP API
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    jwt_secret: str | None = None
    jwt_issuer: str = "flashsale"
    max_body_bytes: int = 16 * 1024
    user_rate_limit_per_s: float = 20.0
    user_rate_burst: int = 40
    # Demo only: POST /api/v1/demo/token hands a shopper token to anyone who names a user. `flashsale up`
    # turns it on for the storefront's "sign in as"; never in production (compose.yaml leaves it off).
    demo_sign_in: bool = False
    payment_delay_ms: float = 0.0  # how slow the simulated payment gateway answers (demos, load tests)
    # Slow clients (flashsale.api.server): the request head must arrive within this of the connection or
    # the request starting, the body within this of the head; then the connection is cut.
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    # Open connections (and requests in flight) per API process; a request beyond them is answered 503.
    http_max_connections: int = 2048
    # How long an API process may answer OUT_OF_STOCK from memory after reserve refused a SKU as sold out
    # (api/soldout.py): the bound on a false "sold out" if a stock-back message is lost. 0 = always ask Redis.
    soldout_ttl_ms: int = 1000

    # Kafka topics (names and partition counts as in the design document)
    topic_reservations: str = "flash-sale-reservations"
    topic_reservations_partitions: int = 10
    topic_inventory: str = "flash-sale-inventory-updates"
    topic_inventory_partitions: int = 10
    topic_orders: str = "flash-sale-orders"
    topic_orders_partitions: int = 5

    # Write-behind worker
    worker_batch_size: int = 1000
    worker_lease_ms: int = 5_000
    sweep_interval_ms: int = 250
    sweep_batch: int = 500

    log_level: str = "INFO"

    def __post_init__(self) -> None:
        if self.redis_url and "," in self.redis_url and not self.redis_cluster:
            raise ValueError(SEVERAL_NODES_NEED_A_CLUSTER)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``FLASHSALE_*`` variables (e.g. FLASHSALE_REDIS_URL), then explicit overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in cls.__struct_fields__:
            raw = env.get(PREFIX + field.upper())
            if raw is not None and raw != "":
                values[field] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return msgspec.convert(values, cls, strict=False)
        except msgspec.ValidationError as error:
            raise ValueError(f"bad setting: {error}") from None

    def keyspace(self) -> Keyspace:
        """The key layout these settings name."""
        from .keys import Keyspace  # keys reads this module's defaults

        return Keyspace(self.partitions, self.key_prefix)

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            partitions=self.partitions,
            prefix=self.key_prefix,
            idempotency_ttl_ms=self.idempotency_ttl_ms,
            payment_grace_ms=self.payment_grace_ms,
            lazy_expiry_bound=self.lazy_expiry_bound,
            backlog_budget_mb=self.backlog_budget_mb,
            wait_replicas=self.redis_wait_replicas,
            wait_timeout_ms=self.redis_wait_timeout_ms,
            coalesce_reserves=self.coalesce_reserves,
        )

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, to hand to a child process."""
        env = {}
        for field in self.__struct_fields__:
            value = getattr(self, field)
            if value is not None:
                env[PREFIX + field.upper()] = str(value)
        return env


# FLASHSALE_REDIS_URL may name several nodes (comma-separated) of a Redis Cluster only (engine.client).
SEVERAL_NODES_NEED_A_CLUSTER = (
    "FLASHSALE_REDIS_URL names several nodes, which only a Redis Cluster takes "
    "(set FLASHSALE_REDIS_CLUSTER=1), or give one URL"
)


def redact_url(url: str | None) -> str:
    """A URL fit for the terminal: the password (if any) replaced by ***; each of a comma-separated list
    (a Redis Cluster's startup nodes)."""
    if url is None:
        return "(not set)"
    if "," in url:
        return ",".join(redact_url(part) for part in url.split(","))
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    credentials, host = rest.rsplit("@", 1)
    if ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}@{host}"
