"""``flashsale worker``: runs the write-behind worker until SIGTERM; ``flashsale worker lag``: its lag."""

from __future__ import annotations

import click
import redis

from flashsale.engine.settings import Settings, redact_url


def _client(settings: Settings) -> redis.Redis | redis.cluster.RedisCluster:
    """The engine's kind of client for FLASHSALE_REDIS_URL (a cluster's with FLASHSALE_REDIS_CLUSTER)."""
    from flashsale.engine.client import redis_client

    if not settings.redis_url:
        raise click.ClickException("FLASHSALE_REDIS_URL is not set")
    try:
        return redis_client(settings.redis_url, cluster=settings.redis_cluster, max_connections=4)
    except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as error:
        where = redact_url(settings.redis_url)
        raise click.ClickException(f"cannot reach Redis at {where}: {error}") from None


@click.group(invoke_without_command=True)
@click.option("--worker-id", default=None, help="Name in leases and logs (default: host-pid-random).")
@click.option("--no-sweep", is_flag=True, help="Do not run the reservation expiry sweeper.")
@click.option("--no-settle", is_flag=True, help="Do not run payment settlement (capture, void, refund).")
@click.option("--no-admit", is_flag=True, help="Do not admit shoppers from the sales' waiting rooms.")
@click.option("--no-trim", is_flag=True, help="Keep the streams whole (no XTRIM) e.g. to replay them later.")
@click.option("--batch-size", type=click.IntRange(1, 100_000), default=None, help="Events per batch.")
@click.option("--lease-ms", type=click.IntRange(500, 600_000), default=None, help="Partition lease length.")
@click.pass_context
def worker(
    ctx: click.Context,
    worker_id: str | None,
    no_sweep: bool,
    no_settle: bool,
    no_admit: bool,
    no_trim: bool,
    batch_size: int | None,
    lease_ms: int | None,
) -> None:
    """Drain the Redis streams into PostgreSQL and Kafka (needs FLASHSALE_REDIS_URL, _DATABASE_URL and
    _KAFKA_BOOTSTRAP). Several workers split the partitions; stop with SIGTERM or Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from flashsale.writeback.worker import WorkerOptions, run_until_signalled

    settings: Settings = ctx.obj
    options = WorkerOptions(
        worker_id=worker_id,
        sweep=not no_sweep,
        settle=not no_settle,
        admit=not no_admit,
        trim=not no_trim,
        batch_size=batch_size,
        lease_ms=lease_ms,
    )
    try:
        run_until_signalled(settings, options)
    except ValueError as error:
        raise click.ClickException(str(error)) from None


@worker.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of a table.")
@click.pass_obj
def lag(settings: Settings, as_json: bool) -> None:
    """Events not yet in PostgreSQL and Kafka, per partition, the age of the oldest, and the Redis node
    serving each partition (NODE DOWN: it did not answer; its partitions wait for it)."""
    import msgspec

    from flashsale.writeback.lag import nodes_down, read_lag, total_lag

    client = _client(settings)
    try:
        lags = read_lag(client, settings.keyspace())
    except redis.RedisError as error:
        raise click.ClickException(f"cannot read lag from Redis: {error}") from None
    finally:
        client.close()
    total, down = total_lag(lags), nodes_down(lags)
    if as_json:
        document = {
            "partitions": lags,
            "pending": total.pending,
            "oldest_age_ms": total.oldest_age_ms,
            "nodes_down": down,
        }
        click.echo(msgspec.json.encode(document))
        return
    node_width = max((len(row.node) for row in lags), default=4)
    click.echo(
        f"{'partition':>9} {'pending':>9} {'oldest ms':>10}  {'node':<{node_width}}  {'owner':<28} "
        "applied / published"
    )
    for row in lags:
        if row.node_down:
            click.echo(
                f"{row.partition:>9} {'NODE DOWN':>9} {'-':>10}  {row.node:<{node_width}}  {'-':<28} -"
            )
            continue
        click.echo(
            f"{row.partition:>9} {row.pending:>9} {row.oldest_age_ms:>10}  {row.node:<{node_width}}  "
            f"{row.owner or '-':<28} {row.applied_id} / {row.published_id}"
        )
    click.echo(f"{'total':>9} {total.pending:>9} {total.oldest_age_ms:>10}")
    for node in down:
        held_back = [str(row.partition) for row in lags if row.node == node]
        error = next(row.node_error for row in lags if row.node == node)
        click.echo(
            f"NODE DOWN {node}: partitions {','.join(held_back)} wait for it (pending unknown): {error}"
        )
    for row in lags:
        if row.stalled_event is not None:
            where = f"STALLED partition {row.partition}: {row.stalled_sink}"
            click.echo(
                f"{where} cannot take event {row.stalled_event}: {row.stalled_error}\n"
                f"  fix the cause, then: flashsale worker resume {row.partition}"
            )


@worker.command()
@click.argument("partitions", nargs=-1, type=click.IntRange(min=0))
@click.option("--all", "every", is_flag=True, help="Every stalled partition.")
@click.pass_obj
def resume(settings: Settings, partitions: tuple[int, ...], every: bool) -> None:
    """Let the worker retry partitions it stopped (see `flashsale worker lag`), once the cause is fixed.

    A partition stops on an event a sink can never take (PostgreSQL refusing a value, an event this worker
    cannot read) or when Redis lost events PostgreSQL has; README: What can be lost, in which failure.
    """
    from flashsale.writeback.lag import read_lag
    from flashsale.writeback.stalls import clear_fields

    if not partitions and not every:
        raise click.UsageError("name the partitions to resume, or --all")
    keyspace = settings.keyspace()
    client = _client(settings)
    try:
        stalled = {row.partition for row in read_lag(client, keyspace) if row.stalled_event is not None}
        chosen = stalled if every else set(partitions)
        unknown = sorted(p for p in chosen if p >= keyspace.partitions)
        if unknown:
            raise click.ClickException(f"no partition {unknown[0]}: there are {keyspace.partitions}")
        for p in sorted(chosen):
            if p not in stalled:
                click.echo(f"partition {p} is not stalled")
                continue
            client.hdel(keyspace.partition(p).writeback_progress(), *clear_fields())
            click.echo(f"partition {p} resumed: the worker holding it retries now")
    except redis.RedisError as error:
        raise click.ClickException(f"cannot reach Redis: {error}") from None
    finally:
        client.close()
