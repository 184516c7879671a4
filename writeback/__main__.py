"""``python -m flashsale.writeback [options]``: one write-behind worker until SIGTERM.

Settings come from FLASHSALE_* variables.

The same worker as ``flashsale worker``, started without the CLI: ``spawn_worker`` runs this, so a worker
process loads the engine and the write-behind code and nothing above them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from flashsale.engine.settings import Settings
from flashsale.writeback.worker import WorkerOptions, run_until_signalled


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flashsale.writeback", description=__doc__)
    parser.add_argument("--worker-id", default=None, help="name in leases and logs")
    parser.add_argument("--no-sweep", action="store_true", help="do not run the expiry sweeper")
    parser.add_argument("--no-settle", action="store_true", help="do not run payment settlement")
    parser.add_argument("--no-trim", action="store_true", help="keep the streams whole")
    parser.add_argument("--no-admit", action="store_true", help="do not run the waiting rooms' admitter")
    parser.add_argument("--batch-size", type=int, default=None, help="events per batch")
    parser.add_argument("--lease-ms", type=int, default=None, help="partition lease length")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as error:
        sys.exit(f"python -m flashsale.writeback: {error}")
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    options = WorkerOptions(
        worker_id=args.worker_id,
        sweep=not args.no_sweep,
        settle=not args.no_settle,
        trim=not args.no_trim,
        admit=not args.no_admit,
        batch_size=args.batch_size,
        lease_ms=args.lease_ms,
    )
    try:
        run_until_signalled(settings, options)
    except ValueError as error:
        sys.exit(f"python -m flashsale.writeback: {error}")


if __name__ == "__main__":
    main()
