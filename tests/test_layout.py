"""The shape of the house: no import cycle, modules one can read in a sitting, plugins behind one door."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A module one reads in a sitting (~450 lines, with a little room before a split is due).
MAX_LINES = 500
#: Format readers whose one concept is long: a validating parser read top to bottom, and the launcher layouts.
ALLOWED_LONG = frozenset({"plugins/launchers.py"})


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Every module named by an import that runs (function-level ones too), leaving out
    ``if TYPE_CHECKING:`` blocks, which only type checkers follow."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in (ROOT / "vaereg").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if target in modules and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_vaereg():
    graph = import_graph()
    assert len(graph) > 40 and "vaereg.store.registry.edit" in graph["vaereg.store.registry.read"]
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or ())


def test_every_module_reads_in_one_sitting():
    for path in [*(ROOT / "vaereg").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]:
        name = path.relative_to(ROOT).as_posix()
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES or name in ALLOWED_LONG, f"{name}: {lines} lines"


def test_plugins_know_only_the_public_face():
    for path in (ROOT / "plugins").rglob("*.py"):
        for target in _runtime_imports(ast.parse(path.read_text())):
            if target.startswith("vaereg.") or target == "vaereg":
                assert target.startswith("vaereg.hookspecs"), f"{path.name} imports {target}"
