"""The house's shape, read from the code's own imports (every import, also those inside functions):

- no import circle between modules of app/;
- no arrow from a lower layer to a higher one (DESIGN.md's order, lowest first, below);
- nothing in app/runtime imports a domain (app/services, app/realtime, app/graphql, app/http);
- each GraphQL module app/graphql/types/<domain>.py has its use cases in a wing of the same name;
- no module over 500 lines and no function over 60.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"

# Lowest first. A module may import its own layer and any layer below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("app.errors", "app.inputs", "app.settings", "app.logs", "app.ids", "app.stopping"),
    ("app.db",),
    ("app.models",),
    ("app.auth",),
    ("app.tenancy",),
    ("app.access",),
    ("app.runtime",),
    ("app.services",),
    ("app.realtime",),
    ("app.graphql",),
    ("app.http",),
    ("app.main", "app.cli", "app.entry", "app.commands"),
]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in APP.rglob("*.py")}


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The app modules that `path` imports (a `from package import module` names the module)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    if module == "app":
        return 0
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (and to DESIGN.md's order)")


def _cycles(graph: dict[str, set[str]]) -> Iterator[list[str]]:
    """Each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> Iterator[list[str]]:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                yield from visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                yield sorted(component)

    for v in sorted(graph):
        if v not in index:
            yield from visit(v)


def test_no_module_of_app_is_part_of_an_import_circle() -> None:
    assert list(_cycles(_graph())) == []


def test_no_module_imports_a_higher_layer() -> None:
    upward = sorted(f"{m} → {d}" for m, deps in _graph().items() for d in deps if _layer(d) > _layer(m))
    assert upward == []


def test_the_runtime_floor_imports_no_domain() -> None:
    domains = ("app.services", "app.realtime", "app.graphql", "app.http")
    found = sorted(f"{m} → {d}" for m, deps in _graph().items() if m.startswith("app.runtime")
                   for d in deps if d.startswith(domains))
    assert found == []


def test_every_graphql_module_pairs_with_a_wing_of_its_name() -> None:
    """types/<domain>.py ↔ services/<domain>/ (a package) or a services module named <domain>."""
    services = APP / "services"
    wings = {p.name for p in services.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in services.rglob("*.py")} | {p.stem for p in (APP / "realtime").rglob("*.py")}
    unpaired = sorted(p.stem for p in (APP / "graphql" / "types").glob("*.py")
                      if p.stem != "__init__" and p.stem not in wings and p.stem not in modules
                      and not (APP / p.stem).is_dir())
    assert unpaired == []


def test_no_module_over_500_lines_and_no_function_over_60() -> None:
    long_modules = sorted(f"{p.relative_to(APP)} ({n})" for p in APP.rglob("*.py")
                          if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES)
    long_functions = sorted(
        f"{p.relative_to(APP)}:{node.lineno} {node.name} ({length})"
        for p in APP.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (length := (node.end_lineno or node.lineno) - node.lineno + 1) > MAX_FUNCTION_LINES)
    assert (long_modules, long_functions) == ([], [])
