"""The import arrows of DESIGN.md: bot -> generation, bot -> db, nothing else.

Walks every .py file under bot/, generation/ and db/ with ast (imports inside functions count
too) and fails naming the file, the line and the import that crosses a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "generation", "db")
# Only generation/ may touch the machine-learning stack; only bot/ may touch Discord.
ML = {"torch", "torchvision", "open_clip", "diffusers", "taming", "kornia", "transformers", "timm"}
DISCORD = {"discord"}
FORBIDDEN: dict[str, set[str]] = {
    "bot": ML,
    "db": ML | DISCORD | {"bot", "generation"},
    "generation": DISCORD | {"bot", "db"},
}


def imported_roots(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value.split(".")[0]))
    return found


def violations() -> list[str]:
    problems = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for line, root in imported_roots(tree):
                if root in FORBIDDEN[package]:
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {root}")
    return problems


def test_no_layer_is_crossed() -> None:
    assert all((ROOT / p).is_dir() for p in PACKAGES)
    assert violations() == []


def test_the_walker_sees_imports_anywhere(tmp_path) -> None:
    # The check itself can fail: a function-level import and an importlib call are found.
    source = "def f():\n    import torch.nn\n    from discord import ui\nimportlib.import_module('db.x')\n"
    assert sorted(imported_roots(ast.parse(source))) == [(2, "torch"), (3, "discord"), (4, "db")]
