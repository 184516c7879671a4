"""What a result was measured on: CPU, cores, load, versions. Results are only comparable with this."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return out.stdout.strip() or None


def describe(servers: dict[str, str] | None = None) -> dict[str, Any]:
    """The machine and software versions; ``servers`` adds the version each server reported."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "redis_py": _version("redis"),
        "hiredis": _version("hiredis"),
        "uvloop": _version("uvloop"),
        "psycopg": _version("psycopg"),
        "servers": servers or {},
        "note": "shared 2-core development machine; other engineers' test suites ran at the same time, "
        "so absolute figures are noisy: compare the ratios measured side by side in one run",
    }
