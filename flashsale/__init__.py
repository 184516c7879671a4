"""flashsale: a Redis-first reservation engine for flash sales.

Every layer imports under this one name: ``flashsale.engine`` (keys, scripts, clients, events, settings:
the ground floor) ← ``flashsale.writeback`` ← ``flashsale.api`` ← the CLI (this package:
``flashsale.cli``, ``flashsale.commands``, the launcher, ``up``, reconcile) ← ``flashsale.bench``. Lua
scripts and SQL are package data (``flashsale.lua``, ``flashsale.sql``).

In a checkout the layers keep their own top-level folders (engine/, api/, writeback/, bench/, lua/, sql/)
so the tree tells the architecture; the built wheel puts the same folders inside this package
(pyproject.toml's ``sources``). The line below makes the checkout import the same way the wheel does.
"""

from pathlib import Path

_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "engine" / "__init__.py").is_file() and (_checkout / "lua" / "reserve.lua").is_file():
    __path__.append(str(_checkout))
