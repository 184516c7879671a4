"""``flashsale reconcile``: compare Redis, PostgreSQL and the unapplied stream; repair on request.

The logic lives in flashsale.reconcile; this file parses options, shows progress, prints and asks.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click
import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from flashsale import reconcile as rc
from flashsale.commands.sale import table_console
from flashsale.engine import Engine
from flashsale.engine.settings import Settings, redact_url


class CannotRun(click.ClickException):
    """Reconciliation could not run at all (exit 2, distinct from drift found)."""

    exit_code = 2


# Below this many units of work the check is instant: no bar.
PROGRESS_THRESHOLD = 2_000


@contextmanager
def _progress(console: Console, enabled: bool) -> Iterator[rc.Progress]:
    if not enabled:
        yield rc.no_progress
        return
    bar = Progress(
        TextColumn("[bold]reading {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            if phase != "partitions" and total < PROGRESS_THRESHOLD:
                return
            if not bar.live.is_started:
                bar.start()
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def _counts(c: object) -> str:
    if c is None:
        return "—"
    return "/".join(str(getattr(c, n)) for n in rc.COUNTERS)


def _room(view: rc.SkuView) -> str:
    """A waiting room as Redis has it: on/off, admitted/sent away, in line now (--json: PostgreSQL's too)."""
    room = view.room_redis
    if room is None:
        return "missing" if view.has_room else "—"
    state = "on" if room["on"] else "off" if room["on"] is not None else "?"
    return f"{state} {room['admitted']}/{room['sent_away']}/{view.line}"


def _table(report: rc.Report, *, show_nodes: bool) -> Table:
    table = Table(
        title="Redis ↔ PostgreSQL ↔ unapplied events (total/available/reserved/sold)", title_justify="left"
    )
    table.add_column("SKU", no_wrap=True)
    if show_nodes:
        table.add_column("node", no_wrap=True)
    table.add_column("Redis", justify="right")
    table.add_column("PostgreSQL", justify="right")
    table.add_column("unapplied Δ", justify="right")
    table.add_column("events", justify="right")
    table.add_column("holds", justify="right")
    rooms = any(view.has_room for view in report.skus)
    if rooms:
        table.add_column("waiting room: admitted/ sent away/ line", justify="right")
    table.add_column("drift", justify="right")
    for view in report.skus:
        delta = view.unapplied
        table.add_row(
            view.sku,
            *([view.node or "?"] if show_nodes else []),
            _counts(view.redis),
            _counts(view.postgres),
            "/".join(f"{getattr(delta, n):+d}" for n in rc.COUNTERS),
            str(view.unapplied_events),
            str(view.holds),
            *([_room(view)] if rooms else []),
            "[green]0[/]" if not view.drift else f"[red]{view.drift}[/]",
        )
    return table


def _unreadable_lines(report: rc.Report) -> list[str]:
    return [
        f"Redis node {u.node} could not be read ({u.error}): partitions "
        f"{', '.join(map(str, u.partitions))} were not checked"
        for u in report.unreadable
    ]


def _drift_table(report: rc.Report) -> Table:
    table = Table(title="Drift", title_justify="left", title_style="bold red")
    for column in ("SKU", "check", "where", "expected", "actual"):
        table.add_column(column, overflow="fold")
    for d in report.drifts:
        table.add_row(d.sku, d.check, d.where, d.expected, d.actual)
    return table


def _run_check(engine: Engine, database_url: str, console: Console, show_progress: bool) -> rc.Snapshot:
    with _progress(console, show_progress) as progress:
        return rc.snapshot(engine, database_url, progress)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for machines).")
@click.option(
    "--repair",
    type=click.Choice(["redis-from-postgres", "postgres-from-stream"]),
    default=None,
    help="redis-from-postgres: rebuild Redis's sale state from PostgreSQL plus the unapplied stream events "
    "(after losing Redis). postgres-from-stream: rewrite PostgreSQL to the applied prefix of the log, "
    "i.e. Redis's state minus the unapplied events (after PostgreSQL drifted). "
    "Stop the API and worker first.",
)
@click.option("--yes", is_flag=True, help="Repair without asking.")
@click.pass_obj
def reconcile(settings: Settings, as_json: bool, repair: str | None, yes: bool) -> None:
    """Check every SKU: Redis's counters, PostgreSQL's rows and the not-yet-applied stream events.

    Checks that PostgreSQL + the unapplied events == Redis for every SKU's counters and settings, every
    waiting room's settings and counts (admitted, sent away), every user's counts and every reservation
    and order Redis must hold (open ones, and ended ones within the retention period); that counts add up
    and are never negative, open holds add up to `reserved` (and in PostgreSQL counted orders to `sold`),
    and no user is past the per-user limit, in both stores; and in Redis that nobody is both in a waiting
    room's line and admitted, everyone in line has a join time, and no more admissions are recorded than
    counted. Exits 0 when nothing drifted, 1 when something did (after a repair: when drift remains), 2
    when it could not run.

    On a Redis Cluster (FLASHSALE_REDIS_CLUSTER=1) each partition is read on its master and the table
    names each SKU's node; a node that does not answer is named with its partitions, the others are still
    checked, nothing is repaired, and the exit code is 2 (--json: "complete": false, "unreadable_nodes").
    """
    if not settings.redis_url:
        raise CannotRun("FLASHSALE_REDIS_URL is not set: point it at the Redis to check")
    if not settings.database_url:
        raise CannotRun("FLASHSALE_DATABASE_URL is not set: point it at the PostgreSQL to check")
    console = table_console(stderr=as_json)
    try:
        engine = Engine.from_settings(settings, max_connections=8)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        raise CannotRun(f"cannot reach Redis at {redact_url(settings.redis_url)}: {error}") from None
    try:
        snap = _run_check(engine, settings.database_url, console, show_progress=not as_json)
        report = rc.check(snap)
        if repair is not None and report.complete:
            report = _repair(engine, settings, snap, report, repair, yes, console)
    except rc.ReconcileError as error:
        raise CannotRun(str(error)) from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as error:
        raise CannotRun(f"cannot reach Redis at {redact_url(settings.redis_url)}: {error}") from None
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
        if not report.complete:
            for line in _unreadable_lines(report):
                click.echo(f"Error: {line}", err=True)
            sys.exit(2)
    else:
        console.print(_table(report, show_nodes=len(report.nodes) > 1))
        if not report.complete:
            if report.drifts:
                console.print(_drift_table(report))
            for line in _unreadable_lines(report):
                console.print(f"[red]{line}[/]", highlight=False, soft_wrap=True)
            raise CannotRun(
                f"{len(report.unreadable)} Redis node(s) could not be read: "
                f"{', '.join(u.node for u in report.unreadable)}"
                + ("; nothing was repaired" if repair is not None else "")
            )
        if report.ok:
            console.print(
                f"[green]No drift[/] across {len(report.skus)} SKU(s); "
                f"{report.unapplied_events} event(s) not yet applied to PostgreSQL."
            )
        else:
            console.print(_drift_table(report))
            console.print(
                f"[red]{len(report.drifts)} drift finding(s).[/] "
                "See `flashsale reconcile --help` for the two repair directions."
            )
    sys.exit(0 if report.ok else 1)


def _lease_owners(engine: Engine) -> list[str]:
    """The workers holding a partition's lease (a GET per partition, each routed to its node)."""
    pipe = engine.redis.pipeline(transaction=False)
    for p in engine.keys.all():
        pipe.get(p.writeback_lease())
    return sorted({str(owner) for owner in pipe.execute() if owner})


def _repair(
    engine: Engine,
    settings: Settings,
    snap: rc.Snapshot,
    report: rc.Report,
    direction: str,
    yes: bool,
    console: Console,
) -> rc.Report:
    assert settings.database_url is not None
    owners = _lease_owners(engine)
    if owners:
        raise click.ClickException(
            f"write-behind worker(s) {', '.join(owners)} hold partition leases: stop them (and the API) "
            "before a repair, which must not race live changes"
        )
    plan: rc.RedisPlan | rc.PostgresPlan
    if direction == "redis-from-postgres":
        plan = rc.plan_redis_from_postgres(snap)
        target = "Redis"
    else:
        plan = rc.plan_postgres_from_stream(snap)
        target = "PostgreSQL"
    lines = plan.describe()
    console.print(
        f"[bold]Repair {direction}[/] ({len(report.drifts)} drift finding(s) before) will change {target}:"
    )
    for line in lines:
        console.print(f"  • {line}", highlight=False)
    if not lines:
        console.print("  nothing to change")
        return report
    if not yes and not click.confirm(f"Apply these changes to {target}?", default=False, err=True):
        raise click.ClickException("repair cancelled; nothing was changed")
    if isinstance(plan, rc.RedisPlan):
        rc.apply_redis_plan(engine, plan, snap)
    else:
        rc.apply_postgres_plan(engine, settings.database_url, plan, snap)
    console.print(f"[green]Repaired {target}.[/] Checking again…")
    return rc.reconcile(engine, settings.database_url)
