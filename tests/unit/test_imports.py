"""The package's import graph: no cycles between `cdc` modules, and `cdc` never imports `tests`.

Module-level imports (including those under `if TYPE_CHECKING:`) must form no cycle. Imports
inside functions are allowed, being deferred, but they are listed so a reader sees them.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cdc"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = here.split(".") if is_package else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    # `from cdc.x import y` names module cdc.x.y when y is a submodule, else cdc.x.
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level imports, imports inside functions) of one module, as dotted names."""
    here, is_package = module_name(path), path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    deferred: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    deferred.update(_imported(inner, here, is_package))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = set(_imported(node, here, is_package))
            if not names <= deferred:
                top.update(names)
    return top, deferred


def graph() -> tuple[dict[str, set[str]], dict[str, set[str]], dict[str, set[str]]]:
    """Module-level edges and deferred edges between cdc modules, and every import seen."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    deferred: dict[str, set[str]] = {}
    seen: dict[str, set[str]] = {}
    for name, path in files.items():
        top, inner = imports(path)
        edges[name] = {m for m in top if m in files and m != name}
        deferred[name] = {m for m in inner if m in files and m != name} - edges[name]
        seen[name] = top | inner
    return edges, deferred, seen


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_between_cdc_modules() -> None:
    edges, deferred, _ = graph()
    assert cycles(edges) == []
    # Deferred imports are allowed (they break no start-up order) but reported here.
    for module, targets in sorted(deferred.items()):
        for target in sorted(targets):
            print(f"deferred import: {module} -> {target}")


def test_cdc_never_imports_tests() -> None:
    _, _, seen = graph()
    offenders = {
        module: sorted(n for n in names if n == "tests" or n.startswith("tests."))
        for module, names in seen.items()
    }
    assert {m: n for m, n in offenders.items() if n} == {}


# What a package must not import (ARCHITECTURE.md's code map), at module level or deferred.
FORBIDDEN = {
    "cdc.replication": ("cdc.pipeline", "cdc.apply", "cdc.sink", "cdc.source", "cdc.embedding"),
    "cdc.embedding": ("cdc.replication", "cdc.pipeline", "cdc.apply", "cdc.sink", "cdc.source"),
    "cdc.sink": ("cdc.pipeline", "cdc.apply", "cdc.embedding.openai_compat"),
}
# The operator commands and the CLI stand apart: only the CLI, `__main__` and the documented
# Python search API (`cdc.search`) import them.
COMMAND_USERS = ("cdc.cli", "cdc.__main__", "cdc.search", "cdc.commands")


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_packages_import_only_what_the_layout_allows() -> None:
    edges, deferred, _ = graph()
    wrong = []
    for module in sorted(edges):
        targets = edges[module] | deferred[module]
        for package, forbidden in FORBIDDEN.items():
            if _under(module, package):
                wrong += [(module, t) for t in targets for f in forbidden if _under(t, f)]
        if not any(_under(module, user) for user in COMMAND_USERS):
            wrong += [(module, t) for t in targets if _under(t, "cdc.commands") or t == "cdc.cli"]
    assert sorted(wrong) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
