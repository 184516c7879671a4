"""The layers and who may import whom (README, Architecture): a lower layer never imports a higher one.

    engine  ←  writeback  ←  api  ←  the CLI (flashsale/)  ←  bench

Every import of every module is read from its source (``ast``, nothing is executed), imports under
``if TYPE_CHECKING:`` and inside functions included: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ORDER = ["engine", "writeback", "api", "cli", "bench"]
FOLDERS = {"engine": "engine", "writeback": "writeback", "api": "api", "cli": "flashsale", "bench": "bench"}
# The names each layer's folder imports as (flashsale.<layer>; the CLI is the rest of flashsale).
SUBPACKAGES = {"engine", "writeback", "api", "bench", "lua", "sql"}


def layer_of_module(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "flashsale":
        return None
    if len(parts) > 1 and parts[1] in SUBPACKAGES:
        return {"lua": "engine", "sql": "writeback"}.get(parts[1], parts[1])
    return "cli"


def imports(path: Path, package: str) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in the file; relative imports resolved against ``package``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return found


def modules(layer: str) -> list[tuple[Path, str]]:
    folder = ROOT / FOLDERS[layer]
    prefix = "flashsale" if layer == "cli" else f"flashsale.{layer}"
    # (file, the package its relative imports start from)
    return [
        (path, ".".join([prefix, *path.relative_to(folder).parent.parts]))
        for path in sorted(folder.rglob("*.py"))
    ]


def violations() -> list[str]:
    found = []
    for layer in ORDER:
        rank = ORDER.index(layer)
        for path, package in modules(layer):
            for line, module in imports(path, package):
                top = module.split(".")[0]
                if top in {"engine", "api", "writeback", "bench"}:
                    found.append(
                        f"{path.relative_to(ROOT)}:{line} imports {module!r}: use flashsale.{module}"
                    )
                    continue
                target = layer_of_module(module)
                if target is not None and ORDER.index(target) > rank:
                    found.append(f"{path.relative_to(ROOT)}:{line} ({layer}) imports {module} ({target})")
    return found


def test_no_layer_imports_a_higher_one() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("source", "package", "expected"),
    [
        ("from flashsale.api.app import create_app\n", "flashsale.writeback", "flashsale.api.app"),
        ("from .keys import Keyspace\n", "flashsale.engine", "flashsale.engine.keys"),
        ("from . import errors\n", "flashsale.engine", "flashsale.engine"),
    ],
)
def test_imports_are_read_with_relative_ones_resolved(
    tmp_path: Path, source: str, package: str, expected: str
) -> None:
    path = tmp_path / "module.py"
    path.write_text(source)
    assert imports(path, package) == [(1, expected)]


def test_the_check_catches_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself can fail: a writeback module importing the API is reported."""
    fake = tmp_path / "writeback"
    fake.mkdir()
    (fake / "oops.py").write_text("def f():\n    from flashsale.api.app import create_app\n")
    for layer in ("engine", "api", "flashsale", "bench"):
        (tmp_path / layer).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert violations() == ["writeback/oops.py:2 (writeback) imports flashsale.api.app (api)"]
