"""Loads the Lua scripts of ``lua/``, resolves their includes, and knows each one's SHA1.

A line ``--@include name`` in a script is replaced by ``lua/includes/name.lua`` (each at most once),
the way BullMQ's loader does it. Scripts are loaded into Redis once and called by EVALSHA; a NOSCRIPT
reply (Redis restarted or SCRIPT FLUSH) makes the caller load them again and retry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

LUA_DIR = Path(__file__).resolve().parent.parent / "lua"
_INCLUDE = re.compile(r"^--@include\s+(\w+)\s*$", re.MULTILINE)

SCRIPT_NAMES = (
    "load_sale",
    "reserve",
    "begin_checkout",
    "confirm",
    "fail_checkout",
    "release",
    "expire",
    "cancel_order",
    "fulfil_order",
    "restock",
    "noop",
)


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str


def _resolve(source: str, lua_dir: Path, seen: set[str]) -> str:
    def include(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in seen:
            return ""
        seen.add(name)
        return _resolve((lua_dir / "includes" / f"{name}.lua").read_text(), lua_dir, seen)

    return _INCLUDE.sub(include, source)


def load_scripts(lua_dir: Path = LUA_DIR) -> dict[str, Script]:
    """Every script by name, includes resolved."""
    scripts = {}
    for name in SCRIPT_NAMES:
        source = _resolve((lua_dir / f"{name}.lua").read_text(), lua_dir, set())
        scripts[name] = Script(name, source, hashlib.sha1(source.encode()).hexdigest())
    return scripts
