"""Pure layers stay pure: wire/, crypto/ and proto/ never import I/O, clocks or randomness."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "hamachi"
FORBIDDEN = {"asyncio", "socket", "time", "random", "pytun", "sqlite3", "select", "threading",
             "subprocess", "os", "selectors", "psycopg"}
PURE = ["wire", "crypto", "proto"]
# One-way imports: a layer may import only the layers to its right.
ORDER = ["cli", "roles", "io", "proto", "crypto", "wire"]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


@pytest.mark.parametrize("path", [p for layer in PURE for p in _modules(layer)], ids=lambda p: str(p.relative_to(PKG)))
def test_pure_layers_import_no_io(path):
    bad = {n for n in _imports(path) if n.split(".")[0] in FORBIDDEN}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


@pytest.mark.parametrize("layer", ORDER)
def test_imports_point_one_way(layer):
    allowed = set(ORDER[ORDER.index(layer) + 1 :]) | {layer, "store" if layer in ("roles", "io", "proto") else ""}
    for path in _modules(layer):
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "hamachi" or len(parts) < 2:
                continue
            target = parts[1]
            if target in ("config", "exitcodes", "__init__"):
                continue  # settings and exit codes are shared leaf modules
            if target in ORDER or target == "store":
                assert target in allowed, f"{path.relative_to(PKG)} imports hamachi.{target}"


def test_forbidden_import_is_caught(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("import time\nfrom asyncio import sleep\n")
    assert {"time", "asyncio"} <= _imports(bad)
