"""Layers point down: the import graph of `seekserve/`, read from the source, has no import that
points up (README "How a request flows" names the layers), and nothing but the wiring asks
which kind of chat backend it holds."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "seekserve"
HTTP_AND_WIRING = ("seekserve.api", "seekserve.app", "seekserve.services", "seekserve.cli",
                   "seekserve.server", "seekserve.__main__")
# Layer -> modules it must not import (a module or anything under it).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "chat": (*HTTP_AND_WIRING, "seekserve.tenancy"),
    "engines": (*HTTP_AND_WIRING, "seekserve.chat", "seekserve.tenancy", "seekserve.files"),
    "tenancy": (*HTTP_AND_WIRING, "seekserve.chat", "seekserve.files"),
    "files": (*HTTP_AND_WIRING, "seekserve.chat"),
}
BACKEND_TYPES = ("LocalChat", "PassthroughChat", "PreparedChat", "RemoteChat")


def modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(p for p in parts if p != "__init__"), path


def imports(path: Path) -> Iterator[str]:
    """Every seekserve module `path` imports (at module level or inside functions)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        yield from (n for n in names if n == "seekserve" or n.startswith("seekserve."))


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read_at_all() -> None:
    found = dict(modules())
    assert "seekserve.api.pipeline" in found and "seekserve.protocol.neutral" in found
    assert "seekserve.protocol.neutral" in set(imports(found["seekserve.chat.local"]))


def test_protocol_imports_nothing_else_of_seekserve() -> None:
    bad = [(name, target) for name, path in modules() if under(name, "seekserve.protocol")
           for target in imports(path) if not under(target, "seekserve.protocol")]
    assert bad == []


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    bad = [(name, target) for name, path in modules() if under(name, f"seekserve.{layer}")
           for target in imports(path)
           if any(under(target, forbidden) for forbidden in FORBIDDEN[layer])]
    assert bad == []


def test_no_code_asks_which_chat_backend_it_holds() -> None:
    """The backend of a model is chosen once, when the app is built (services.py)."""
    pattern = re.compile(r"isinstance\([^)]*\b(" + "|".join(BACKEND_TYPES) + r")\b")
    bad = [name for name, path in modules()
           if name != "seekserve.services" and pattern.search(path.read_text(encoding="utf-8"))]
    assert bad == []
