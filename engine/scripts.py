"""Loads the Lua scripts (package data ``flashsale.lua``), resolves their includes, knows each one's SHA1.

A line ``--@include name`` stands for ``includes/name.lua`` (or, for ``bounds``, for the Lua that
``engine.bounds`` generates, so the limits live in one place). Each fragment includes what it uses itself, so
no script has to list fragments in the right order: the loader puts every fragment once, before the first
code that includes it (depth first), the way BullMQ's loader does. A missing or circular include is an
error that names the whole chain (``reserve -> holds -> clock``).

Scripts are loaded into Redis once and called by EVALSHA; a NOSCRIPT reply (Redis restarted, or SCRIPT
FLUSH) makes the caller load them again and retry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

from . import bounds

_INCLUDE = re.compile(r"^[ \t]*--@include[ \t]+(\S+)[ \t]*$", re.MULTILINE)

# Every script the clients and the worker call, by file name (lua/<name>.lua).
SCRIPT_NAMES = (
    "load_sale",
    "reserve",
    "reserve_many",
    "begin_checkout",
    "confirm",
    "fail_checkout",
    "release",
    "expire",
    "cancel_order",
    "fulfil_order",
    "restock",
    "noop",
    "lease_renew",
    "lease_release",
    "set_waiting_room",
    "queue_join",
    "queue_status",
    "queue_admit",
    "bucket_stock",
    "transfer_out",
    "transfer_in",
    "transfer_done",
    "transfers_due",
    "transfer_pending",
)


# Includes made from Python rather than read from a file: the one place their values live.
GENERATED = {"bounds": bounds.as_lua, "queue_wait_buckets": bounds.queue_wait_buckets_lua}


class ScriptError(RuntimeError):
    """A script could not be assembled: a missing file, a missing or circular include."""


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def lua_dir() -> Traversable:
    """Where the scripts are: ``lua/`` in a checkout, ``flashsale/lua`` inside the installed wheel."""
    return files("flashsale.lua")


def _read(path: Traversable, chain: list[str]) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ScriptError(f"include {chain[-1]!r} not found: {' -> '.join(chain)}") from None


def _resolve(source: str, directory: Traversable, chain: list[str], done: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in chain:
            raise ScriptError(f"circular include: {' -> '.join([*chain, name])}")
        if name in done:
            return ""
        if name in GENERATED:
            text = GENERATED[name]()
        else:
            path = directory / "includes" / f"{name}.lua"
            text = _resolve(_read(path, [*chain, name]), directory, [*chain, name], done)
        done.add(name)
        return text

    return _INCLUDE.sub(include, source)


def assemble(name: str, directory: Traversable | None = None) -> str:
    """One script's source with its includes resolved."""
    directory = directory or lua_dir()
    try:
        source = (directory / f"{name}.lua").read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise ScriptError(f"no script {name}.lua in {directory}") from None
    return _resolve(source, directory, [name], set())


def load_scripts(directory: Traversable | None = None) -> dict[str, Script]:
    """Every script by name, includes resolved."""
    scripts = {}
    for name in SCRIPT_NAMES:
        source = assemble(name, directory)
        scripts[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts
