"""The server's own ceiling: ``redis-benchmark`` running a script by EVALSHA, pipelined, no Python involved.

redis-benchmark is Debian's ``redis-tools`` package. When it is missing and we are root on a Debian-like
machine it is installed with apt-get; otherwise the scenario says how to install it and goes on without it.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from typing import Any

from flashsale.bench.servers import server_cpu
from flashsale.bench.stats import us_per_call

INSTALL_HINT = "install it with: sudo apt-get install redis-tools"


def find_redis_benchmark() -> str | None:
    found = shutil.which("redis-benchmark")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-benchmark not found: installing Debian's redis-tools with apt-get", file=sys.stderr)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-tools"], check=False, stdout=subprocess.DEVNULL
        )
        return shutil.which("redis-benchmark")
    return None


def redis_benchmark(
    binary: str,
    url: str,
    command: list[str],
    *,
    requests: int,
    clients: int,
    pipeline: int,
    keyspace: int = 10**9,
) -> dict[str, Any]:
    """Runs one command line under redis-benchmark; ``__rand_int__`` in it becomes a fresh random number
    per call (independently at each occurrence). Returns its rate and latency figures, and the server's
    CPU µs per call (whole process and main thread, from INFO cpu around the run)."""
    args = [
        binary,
        "-u",
        url,
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-r",
        str(keyspace),
        "--csv",
        *command,
    ]
    before = server_cpu(url)
    out = subprocess.run(args, capture_output=True, text=True, check=False, timeout=600)
    cpu = server_cpu(url) - before
    rows = list(csv.reader(io.StringIO(out.stdout)))
    if out.returncode != 0 or len(rows) < 2 or out.stderr.strip().startswith("Error"):
        raise RuntimeError(f"redis-benchmark failed ({out.returncode}): {out.stderr.strip()[:300]}")
    header, values = rows[0], rows[-1]
    figures = dict(zip(header, values, strict=True))
    return {
        "requests": requests,
        "clients": clients,
        "pipeline": pipeline,
        "rate_per_s": float(figures["rps"]),
        "p50_ms": float(figures["p50_latency_ms"]),
        "p99_ms": float(figures["p99_latency_ms"]),
        "errors_reported": "Error" in out.stderr,
        "redis_us_per_call": round(us_per_call(cpu.total, requests), 2),
        "redis_main_thread_us_per_call": round(us_per_call(cpu.main_thread, requests), 2),
    }
