"""db/ depends on the standard library and aiosqlite only."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DB = Path(__file__).resolve().parents[2] / "db"


def test_db_imports_only_stdlib_and_aiosqlite() -> None:
    allowed = set(sys.stdlib_module_names) | {"aiosqlite", "db", "__future__"}
    found: dict[str, set[str]] = {}
    for path in sorted(DB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.name)
    assert "aiosqlite" in found  # the walk sees real imports
    forbidden = {name: files for name, files in found.items() if name not in allowed}
    assert not forbidden, f"db/ must not import {forbidden}"
