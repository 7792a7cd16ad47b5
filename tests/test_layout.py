"""The package layout's rule: a package imports only packages below it, and no module imports a cycle."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import w2e

#: Bottom to top. A package may import itself and anything before it, never anything after it.
LAYERS = ("formats", "inputs", "engine", "models", "where", "editor", "attention", "viz", "publish", "worlds",
          "bench", "app", "cli")
PACKAGE_ROOT = Path(w2e.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path) -> set[str]:
    """Every w2e module ``name`` imports (at any depth of the file, type-checking blocks included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("w2e")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("w2e"):
                found.add(module)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


IMPORTS = {name: _imports(name, path) for name, path in _modules().items()}


@pytest.mark.parametrize("name", sorted(n for n in IMPORTS if _layer(n) is not None))
def test_no_import_runs_back_up(name):
    own = _layer(name)
    upward = sorted(m for m in IMPORTS[name] if (_layer(m) or -1) > own)
    assert not upward, f"{name} ({LAYERS[own]}) imports higher packages: {upward}"


def test_every_module_sits_in_a_layer():
    top_level = sorted(n for n in IMPORTS if _layer(n) is None and n not in ("w2e", "w2e.__main__"))
    assert not top_level, f"modules outside the layered packages: {top_level}"


def test_no_module_import_cycle():
    graph = {name: {m for m in imports if m in IMPORTS and m != name} for name, imports in IMPORTS.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return trail + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, trail + [node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            pytest.fail("import cycle: " + " -> ".join(cycle))
