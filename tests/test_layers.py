"""The library's layering (the README): each layer imports only the layers before it, no
module takes part in an import cycle, and the library knows nothing of the orchestration.

Every module under circuitflow/ is parsed with ``ast`` (every import, function-level ones included,
since an import moved into a function is still a dependency) and mapped to its layer through
``LAYERS``: a package's entry covers the modules inside it, a top-level module needs its own entry.
A module the map does not cover fails the test by name, so the map stays complete.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "circuitflow"

# Lowest first; a module may import modules of its own layer or of earlier ones.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # settings, I/O, numerics modes, the graph and its circuits (interchange: circuits in EAP-IG's format)
    ("foundation", ("circuitflow", "circuitflow.settings", "circuitflow.io", "circuitflow.numerics",
                    "circuitflow.graph", "circuitflow.circuit", "circuitflow.interchange")),
    ("engine", ("circuitflow.patching",)),
    ("shared", ("circuitflow.metrics", "circuitflow.ablation", "circuitflow.store", "circuitflow.store_format")),
    ("behaviors", ("circuitflow.behaviors",)),
    ("models", ("circuitflow.models", "circuitflow.planner")),  # planner: the Sokoban planner kind's environment, network, training
    ("methods", ("circuitflow.discovery", "circuitflow.evaluation")),
    ("report", ("circuitflow.report",)),
    ("stages", ("circuitflow.stages",)),
    ("api", ("circuitflow.api",)),
]  # the CLI lives with the orchestration (flows/cli.py)
# Top-level modules that are packages of their own layer: their submodules share their entry.
PACKAGES = ("circuitflow.settings", "circuitflow.patching", "circuitflow.behaviors", "circuitflow.models",
            "circuitflow.planner", "circuitflow.discovery", "circuitflow.evaluation", "circuitflow.report",
            "circuitflow.stages")

# The orchestration and its tools live above the library (flows/, tasks/).
ORCHESTRATION = ("prefect", "prefect_dask", "dvc", "mlflow", "flows", "tasks")

# Modules whose imports are not checked yet (e.g. while one is being moved onto the stage registry):
# name them here with the reason, and delete the entry once the module passes.  None at present.
PENDING: set[str] = set()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    """The index in LAYERS of ``module``, or None when the map does not cover it."""
    for index, (_, names) in enumerate(LAYERS):
        if module in names:
            return index
    owner = next((package for package in PACKAGES if module.startswith(package + ".")), None)
    return None if owner is None else layer_of(owner)


def _imports(module: str) -> list[tuple[str, int]]:
    """(imported module name, line) for every import in ``module``'s source (see ``_imports_in``)."""
    path = MODULES[module]
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return _imports_in(ast.parse(path.read_text(), filename=str(path)), here)


def _imports_in(tree: ast.AST, here: str) -> list[tuple[str, int]]:
    """(imported module name, line) for every import anywhere in ``tree``, resolved to absolute names
    from package ``here``; ``from a import b`` names ``a.b`` when that is a module of the package,
    else ``a``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in MODULES else base, node.lineno))
    return found


def _internal_graph() -> dict[str, set[str]]:
    """circuitflow module -> the circuitflow modules it imports (the nearest known module of each)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        targets = set()
        for name, _ in _imports(module):
            while name and name not in MODULES and name.startswith("circuitflow"):
                name = name.rpartition(".")[0]
            if name in MODULES and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_every_module_has_a_layer():
    unknown = sorted(module for module in MODULES if layer_of(module) is None)
    assert not unknown, f"Assign a layer to {', '.join(unknown)} in LAYERS of tests/test_layers.py."


def test_the_layer_map_names_only_existing_modules():
    named = {name for _, names in LAYERS for name in names} | set(PACKAGES)
    gone = sorted(named - set(MODULES))
    assert not gone, f"{', '.join(gone)} no longer exist: delete them from LAYERS or PACKAGES in tests/test_layers.py."


def test_pending_modules_exist():
    gone = sorted(PENDING - set(MODULES))
    assert not gone, f"{', '.join(gone)} no longer exist: delete them from PENDING in tests/test_layers.py."


def test_no_module_imports_a_higher_layer():
    graph = _internal_graph()
    wrong = []
    for module in sorted(set(MODULES) - PENDING):
        mine = layer_of(module)
        for target in sorted(graph[module]):
            theirs = layer_of(target)
            if mine is not None and theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not wrong, "Imports of a higher layer:\n" + "\n".join(wrong)


def test_no_import_cycles():
    graph = _internal_graph()
    for module in PENDING & set(graph):
        graph[module] = set()
    cycles = _cycles(graph)
    assert not cycles, "Import cycles (fix them by layering):\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_library_knows_nothing_of_the_orchestration(module):
    if module in PENDING:
        pytest.skip("pending: the lead is moving it")
    used = sorted({name for name, _ in _imports(module) if name.split(".")[0] in ORCHESTRATION})
    assert not used, f"{module} imports {', '.join(used)}: the library must not know Prefect, DVC, MLflow, flows or tasks."


def test_the_checker_sees_function_level_and_relative_imports_and_cycles():
    tree = ast.parse("def f():\n    from circuitflow.models import organisms\n    from . import kind\n")
    assert [name for name, _ in _imports_in(tree, "circuitflow.models")] == ["circuitflow.models.organisms", "circuitflow.models.kind"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
