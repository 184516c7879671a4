"""The built wheel works on its own: built from this checkout, installed into a fresh virtual environment,
and run from a folder outside the repository, it loads its Lua scripts, migrates PostgreSQL and serves a
reservation through the API. Nothing of the checkout is on that environment's path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs inside the fresh environment, from an empty folder: every step through the installed package.
SMOKE = textwrap.dedent(
    """
    import json, os, socket, subprocess, sys, time, urllib.request
    from pathlib import Path

    import flashsale
    from flashsale.engine import Engine, SaleSettings
    from flashsale.launcher import PostgresServer, RedisServer, free_port, wait_for_port

    report = {"package": str(Path(flashsale.__file__).parent)}
    bin_dir = Path(sys.executable).parent
    with RedisServer() as redis_server, PostgresServer() as pg:
        env = {**os.environ, "FLASHSALE_REDIS_URL": redis_server.url, "FLASHSALE_DATABASE_URL": pg.url,
               "FLASHSALE_JWT_SECRET": "wheel-smoke-secret-of-32-bytes-at-least"}
        migrate = subprocess.run([bin_dir / "flashsale", "db", "migrate"], env=env, capture_output=True,
                                 text=True, timeout=120)
        report["migrate"] = [migrate.returncode, migrate.stdout + migrate.stderr]
        engine = Engine.from_url(redis_server.url)
        engine.load_scripts()
        engine.load_sale(SaleSettings(sku="WHEEL-1", total=3, flash_price_cents=999))
        report["scripts"] = len(engine.scripts)
        token = subprocess.run([bin_dir / "flashsale", "token", "alice"], env=env, capture_output=True,
                               text=True, timeout=60, check=True).stdout.strip()
        port = free_port()
        api = subprocess.Popen([bin_dir / "flashsale", "serve", "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port(port, 60, api)
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/v1/reservations", method="POST",
                data=json.dumps({"skuId": "WHEEL-1", "quantity": 1}).encode(),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                report["reserve"] = [response.status, json.load(response)]
        finally:
            api.terminate()
            api.wait(30)
        report["available"] = engine.get_sale("WHEEL-1").available
        engine.close()
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel built from this checkout (and its embedded-servers extra)."""
    work = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(work), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = work.glob("flashsale-*.whl")
    # No pip of its own (ensurepip took ~6 s): this environment's pip installs into it (--python).
    venv.create(work / "venv", with_pip=False)
    python = work / "venv" / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", f"{wheel}[embedded]"],
        check=True,
        timeout=600,
        cwd=work,
    )
    return python


def test_the_wheel_installs_and_serves_a_reservation_from_outside_the_repository(
    installed: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLASHSALE_", "PYTHON"))}
    result = subprocess.run(
        [str(installed), "-c", SMOKE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(report["package"]).is_relative_to(installed.parent.parent), "imported from the checkout"
    assert report["migrate"][0] == 0, report["migrate"][1]
    assert report["scripts"] >= 11
    status, body = report["reserve"]
    assert status == 201
    assert body["skuId"] == "WHEEL-1"
    assert body["status"] == "RESERVED"
    assert report["available"] == 2


def test_the_wheel_claims_no_generic_top_level_names(installed: Path, tmp_path: Path) -> None:
    for name in ("engine", "api", "writeback", "bench"):
        result = subprocess.run(
            [str(installed), "-c", f"import {name}"], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0, f"the wheel installs a top-level {name!r}"
        assert "ModuleNotFoundError" in result.stderr
