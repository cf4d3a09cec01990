"""The package's import graph has no cycle, counting every import (module level, inside functions,
under TYPE_CHECKING): a cycle hidden in a function is still a cycle in the design.

Importing ``slimtorch.a.b`` first runs ``slimtorch/a/__init__.py``, so that package is an edge too. A package
``__init__``'s own ``if TYPE_CHECKING:`` block is the one thing left out: Python never runs it (it only names the
lazily exported objects for type checkers)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "slimtorch"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:  # the module a dotted import name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        never_run = _type_checking_nodes(tree) if path.name == "__init__.py" else set()
        for node in ast.walk(tree):
            if id(node) in never_run:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.split(".")[0] == "slimtorch" else None
                if target is None:
                    continue
                parts = target.split(".")
                # the target and every package Python runs on the way to it (slimtorch.a for slimtorch.a.b.c)
                for reached in {target, *(".".join(parts[:i]) for i in range(2, len(parts)))}:
                    # a module may import its own parent package's submodules; the root package is not an edge
                    if reached != mod and reached != "slimtorch" and not mod.startswith(reached + "."):
                        edges[mod].add(reached)
    return edges


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            for inner in ast.walk(node)}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_a_cycle_through_a_parent_package_init_is_found():
    # slimtorch.x.a imports slimtorch.y.b; slimtorch/y/__init__ (run first) imports slimtorch.x.c
    assert _cycle({"x.a": {"y", "y.b"}, "y": {"x", "x.c"}, "x": set(), "x.c": set(), "y.b": set()}) is None
    assert _cycle({"x.a": {"y"}, "y": {"x.a"}}) == ["x.a", "y", "x.a"]


def test_the_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def function_level_imports() -> list[str]:
    """``module:line`` of each slimtorch import made inside a function (a deferred import of a slimtorch module)."""
    out = set()
    for mod, path in _modules().items():
        for func in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "slimtorch" \
                        or isinstance(node, ast.Import) and any(a.name.split(".")[0] == "slimtorch" for a in node.names):
                    out.add(f"{mod}:{node.lineno}")
    return sorted(out)


# A ceiling, lowered as deferred imports go: one only dodging a cycle should become a module-level import.
MAX_FUNCTION_LEVEL_IMPORTS = 35


def test_function_level_imports_do_not_creep_back():
    found = function_level_imports()
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, found
