"""``flashsale serve``: the HTTP API and storefront under uvicorn (uvloop + httptools, with the read
deadlines and connection cap of ``flashsale.api.server``)."""

from __future__ import annotations

import os
import shutil
import tempfile

import click

from flashsale.engine.settings import Settings


@click.command()
@click.option("--host", default=None, help="Address to listen on (default: FLASHSALE_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default: FLASHSALE_PORT or 8000).")
@click.option("--workers", type=int, default=None, help="Worker processes (default: FLASHSALE_WORKERS or 1).")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
@click.option(
    "--payment-delay-ms", type=float, default=None, help="Make the simulated payment gateway this slow."
)
@click.pass_obj
def serve(
    settings: Settings,
    host: str | None,
    port: int | None,
    workers: int | None,
    access_log: bool,
    payment_delay_ms: float | None,
) -> None:
    """Serve the API under /api/v1, health and metrics, and the storefront at /."""
    import uvicorn

    from flashsale.api.server import uvicorn_options

    if not settings.redis_url:
        raise click.ClickException(
            "FLASHSALE_REDIS_URL is not set: `flashsale serve` needs a running Redis "
            "(or use `flashsale up`, which starts one)."
        )
    if not settings.jwt_secret:
        raise click.ClickException("FLASHSALE_JWT_SECRET is not set: the API could not verify bearer tokens.")
    workers = workers or settings.workers
    # Each worker builds its app from the environment (api.app:app_from_env), so options travel there.
    if payment_delay_ms is not None:
        os.environ["FLASHSALE_PAYMENT_DELAY_MS"] = str(payment_delay_ms)
    metrics_dir = None
    if workers > 1:
        # Workers are separate processes: their counters meet in files that /metrics sums up.
        metrics_dir = tempfile.mkdtemp(prefix="flashsale-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "flashsale.api.app:app_from_env",
            factory=True,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            access_log=access_log,
            log_level=settings.log_level.lower(),
            # httptools with deadlines on reading a request and a cap on connections (api/server.py)
            **uvicorn_options(settings),
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
