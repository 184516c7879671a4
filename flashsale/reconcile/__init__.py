"""Reconciliation: Redis, PostgreSQL and the not-yet-applied stream events, checked against each other.

The stream is the log (ARCHITECTURE.md, invariants 4-5): Redis's state is the effect of the whole log,
PostgreSQL's the effect of its applied prefix (``stream_offsets``), so Redis == PostgreSQL + the unapplied
events, for counters, settings, user counts and every record Redis must hold. One module per job:

    state            the shared record shapes and the retention window
    snapshot         reading both stores at one consistent cut
    target           PostgreSQL carried forward through the unapplied events (what Redis must hold)
    checks           every invariant -> a Report of Drift
    redis_repair     rebuild Redis from PostgreSQL + the unapplied events
    postgres_repair  rewrite PostgreSQL to the applied prefix of the log

Each repair is planned first (a list of changes to show) and applied only when asked.
"""

from __future__ import annotations

from flashsale.engine import Engine

from .checks import Drift, Report, SkuView, check
from .postgres_repair import PostgresPlan, apply_postgres_plan, plan_postgres_from_stream
from .redis_repair import RedisPlan, apply_redis_plan, plan_redis_from_postgres, raise_stream_floors
from .snapshot import Progress, ReconcileError, no_progress, snapshot
from .state import COUNTERS, Snapshot, UnreadableNode


def reconcile(engine: Engine, database_url: str, progress: Progress = no_progress) -> Report:
    return check(snapshot(engine, database_url, progress))


__all__ = [
    "COUNTERS",
    "Drift",
    "PostgresPlan",
    "Progress",
    "ReconcileError",
    "RedisPlan",
    "Report",
    "SkuView",
    "Snapshot",
    "UnreadableNode",
    "apply_postgres_plan",
    "apply_redis_plan",
    "check",
    "no_progress",
    "plan_postgres_from_stream",
    "plan_redis_from_postgres",
    "raise_stream_floors",
    "reconcile",
    "snapshot",
]
