"""The import arrows of DESIGN.md: bot -> generation, bot -> db, nothing else.

Walks every .py file under bot/, generation/, db/ and toyworld/ with ast (imports inside
functions count too) and fails naming the file, the line and the import that crosses a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bot", "generation", "db", "toyworld")
# Only generation/ may touch the machine-learning stack; only bot/ may touch Discord.
ML = {"torch", "torchvision", "open_clip", "diffusers", "taming", "kornia", "transformers", "timm"}
DISCORD = {"discord"}
FORBIDDEN: dict[str, set[str]] = {
    "bot": ML,
    "db": ML | DISCORD | {"bot", "generation"},
    "generation": DISCORD | {"bot", "db", "toyworld"},
    # The toy world is benchmark and development tooling, like generation/train: it may use the
    # ML stack and generation's loaders, never Discord or the bot's database; nothing in
    # generation depends on it.
    "toyworld": DISCORD | {"bot", "db"},
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


# ---------------------------------------------------------------------------- import circles


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an import in ``tree`` may load: ``from a.b import c`` gives a.b and
    a.b.c (c may be a module); relative imports are made absolute. Imports inside functions
    and under TYPE_CHECKING count: they are arrows too."""
    names: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names |= {source} | {f"{source}.{alias.name}" for alias in node.names}
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (nearest existing module of each name)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for name in imported_modules(tree, module, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_inside_a_package() -> None:
    found = circles(import_graph())
    assert [sorted(group) for group in found] == [], "import circles (arrows must run one way)"


def test_the_circle_finder_finds_circles() -> None:
    # a -> b -> c -> a is one circle, d -> a is not part of it, e imports itself only.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert circles(graph) == [{"a", "b", "c"}]
    source = "from . import x\nfrom .y import z\nif TYPE_CHECKING:\n    from p.q import r\n"
    names = imported_modules(ast.parse(source), "p.sub.mod", is_package=False)
    assert names == {"p.sub", "p.sub.x", "p.sub.y", "p.sub.y.z", "p.q", "p.q.r"}
