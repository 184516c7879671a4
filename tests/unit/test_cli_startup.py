"""What makes `flashsale --help` and `flashsale token` start fast: they import no server client.

Speed itself is measured (README, the CLI section), not asserted; what is asserted is the property behind
it, in a fresh interpreter: after the command ran, none of the heavy clients is in ``sys.modules``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("redis", "psycopg", "confluent_kafka", "starlette", "uvicorn")

# Runs the CLI's main as the console script does, then reports which top-level packages were imported.
PROBE = """
import json, sys
from flashsale.cli import main
try:
    main(sys.argv[1:], prog_name="flashsale")
except SystemExit as exit:
    code = exit.code
else:
    code = 0
loaded = sorted({name.partition(".")[0] for name in sys.modules})
print("\\n" + json.dumps({"exit": code, "modules": loaded}))
"""


def imported_by(*args: str) -> tuple[int | None, set[str]]:
    """(exit code, top-level packages imported) of ``flashsale ARGS`` in a fresh interpreter."""
    env = {"FLASHSALE_JWT_SECRET": "0123456789abcdef0123456789abcdef", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["exit"], set(report["modules"])


@pytest.mark.parametrize("args", [("--help",), ("token", "alice"), ("token", "ops", "--admin")])
def test_help_and_token_import_no_server_client(args: tuple[str, ...]) -> None:
    code, modules = imported_by(*args)
    assert code in (0, None)
    assert "click" in modules  # the probe saw the CLI run
    assert modules.isdisjoint(HEAVY), sorted(modules & set(HEAVY))


def test_the_probe_sees_a_command_that_does_import_redis() -> None:
    """The check can fail: `sale --help` loads the sale command, which imports the Redis client."""
    code, modules = imported_by("sale", "--help")
    assert code in (0, None)
    assert "redis" in modules
