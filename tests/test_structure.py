"""The layout docs/architecture.md describes: layers that import only downwards and no import
cycle among the project's modules (imports inside functions included), no module over 450
lines, no function over 60."""

from __future__ import annotations

import ast
from pathlib import Path

from imgclf.config import PROJECT_ROOT

SOURCE = PROJECT_ROOT / "src"


def modules() -> dict[str, Path]:
    found = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project's modules ``path`` imports, anywhere in it (lazy imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} & set(known)
            found |= {f"{node.module}.{a.name}" for a in node.names} & set(known)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), plus self-imports."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1 or node in graph[node]:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_itself_back_through_others():
    known = modules()
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # the check can fail


def test_modules_and_functions_stay_small():
    too_long = []
    for name, path in modules().items():
        lines = path.read_text().count("\n")
        if lines > 450:
            too_long.append(f"{name}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert too_long == []


def fixed_sleeps(source: str) -> list[int]:
    """Lines of ``time.sleep`` calls outside a loop: a test waits on a condition with a
    deadline (a ``while``/``for`` that polls), never for a fixed time."""
    tree = ast.parse(source)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        called = getattr(node, "func", None)
        if isinstance(called, ast.Attribute) and called.attr == "sleep":
            ancestor = parents.get(node)
            while ancestor is not None and not isinstance(ancestor, ast.While | ast.For):
                ancestor = parents.get(ancestor)
            if ancestor is None:
                found.append(node.lineno)
    return found


def test_tests_wait_on_conditions_not_fixed_sleeps():
    tests = PROJECT_ROOT / "tests"
    found = {p.name: fixed_sleeps(p.read_text()) for p in sorted(tests.glob("*.py"))}
    assert {name: lines for name, lines in found.items() if lines} == {}
    assert fixed_sleeps("import time\ntime.sleep(2)\n") == [2]  # the check can fail
    assert fixed_sleeps("while True:\n    time.sleep(0.1)\n") == []


#: The layers, lowest first: a module imports only from its own layer or those below it (lazy
#: imports inside functions included), so that, e.g., the data layer never reaches for the model
#: or the loop, and nothing in ``imgclf`` reaches for the service.
LAYERS = [
    {"imgclf.config", "imgclf.files", "imgclf.runs"},  # runs: the run folder's files
    {"imgclf.data"},
    {"imgclf.model"},
    {"imgclf.figures", "imgclf.reports"},
    {"imgclf.store"},
    {"imgclf.pipeline"},
    {"imgclf.loop"},
    {"imgclf.cli"},
    {"serve", "dashboard"},
    {"devkit"},
]


def layer_of(module: str) -> int | None:
    for level, names in enumerate(LAYERS):
        if any(module == name or module.startswith(f"{name}.") for name in names):
            return level
    return None


def test_every_module_imports_only_from_its_layer_or_below():
    known = modules()
    unplaced = [name for name in known if name != "imgclf" and layer_of(name) is None]
    assert unplaced == [], f"place these modules in LAYERS: {unplaced}"
    upward = []
    for name, path in known.items():
        level = layer_of(name)
        for imported in imports(path, known):
            other = layer_of(imported)
            if level is not None and other is not None and other > level:
                upward.append(f"{name} imports {imported} (layer {other} above {level})")
    assert upward == []
