"""The layout's rules (README, "Layout"), checked on the source: one package per stage, and

* no import cycle between the modules of ``sdd/``;
* the packages import only what the map allows (:data:`MAY_IMPORT`, the README's table);
* no module of ``sdd/`` or ``flows/`` is over :data:`MAX_LINES` lines;
* ``sdd/`` imports neither Prefect nor ``flows/``, and ``sdd plots`` (a DVC stage) not torch.

Imports are read with :mod:`ast`, every ``import`` and ``from … import`` of a file, relative ones
resolved, **those inside functions included**: a lazy import still ties two modules together, and a
cycle hidden in a function body is still a cycle. Left out are only the imports under
``if TYPE_CHECKING:``, which never run (a type annotation naming a class is not a dependency).
Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so those are edges too,
except a module's own parent packages (Python is already importing them when it gets there).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500

#: What each package of ``sdd/`` may import from the others (the README's map). The cross-cutting
#: modules at the top (``sdd.errors``, ``sdd.layout``, ``sdd.storage``, ``sdd.progress``,
#: ``sdd.provenance``, ``sdd.models``, ``sdd.tokens``, ``sdd.plots``) are listed like packages.
MAY_IMPORT: dict[str, set[str]] = {
    "sdd.errors": set(),
    "sdd.progress": set(),
    "sdd.provenance": set(),
    "sdd.config": {"sdd.errors"},
    "sdd.storage": {"sdd.errors"},
    "sdd.layout": {"sdd.errors"},
    "sdd.models": {"sdd.errors", "sdd.toy"},
    "sdd.toy": {"sdd.config", "sdd.errors"},
    "sdd.tokens": {"sdd.errors", "sdd.models"},
    "sdd.prompts": {"sdd.config", "sdd.storage", "sdd.toy"},
    "sdd.erasure": {"sdd.config", "sdd.errors", "sdd.layout", "sdd.models", "sdd.prompts", "sdd.storage", "sdd.tokens"},
    "sdd.evaluation": {"sdd.config", "sdd.errors", "sdd.layout", "sdd.models", "sdd.progress", "sdd.prompts",
                       "sdd.storage", "sdd.toy"},
    "sdd.redteam": {"sdd.config", "sdd.evaluation", "sdd.layout", "sdd.models", "sdd.plots", "sdd.progress",
                    "sdd.prompts", "sdd.storage", "sdd.tokens", "sdd.toy"},
    "sdd.registry": {"sdd.config", "sdd.errors", "sdd.evaluation", "sdd.layout", "sdd.models", "sdd.prompts",
                     "sdd.provenance", "sdd.redteam"},
    "sdd.plots": {"sdd.layout", "sdd.storage"},
    "sdd.stack": {"sdd.config", "sdd.errors"},
    "sdd.cli": {"sdd.config", "sdd.erasure", "sdd.errors", "sdd.evaluation", "sdd.layout", "sdd.models", "sdd.plots",
                "sdd.prompts", "sdd.redteam", "sdd.registry", "sdd.stack", "sdd.storage", "sdd.toy"},
}



def sources(*packages: str, root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` below ``root/<package>``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path, module: str) -> list[str]:
    """Every module name ``path`` imports (``from X import y`` gives X and X.y), skipping ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found.append(source)
            found.extend(f"{source}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``modules`` it imports, with the packages that importing them runs."""
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_packages = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if path.name == "__init__.py":
            own_packages.add(module)
        edges = set()
        for name in imported_names(path, module):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # a.b.c runs a, a.b and a.b.c
                target = ".".join(parts[:i])
                if target in modules and target not in own_packages and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> … -> a``) per strongly connected component with more than one module."""
    return [_a_cycle_in(graph, component) for component in tangles(graph)]


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module: the modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return components


def _a_cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                todo.append(w)
    raise AssertionError(f"no cycle through {start}")  # a strongly connected component always has one


def package_of(module: str) -> str:
    """The entry of :data:`MAY_IMPORT` a module belongs to: ``sdd.x`` of ``sdd.x.y.z``."""
    return ".".join(module.split(".")[:2])


# --- the rules -----------------------------------------------------------------------------------


def test_no_import_cycle_in_sdd():
    graph = import_graph(sources("sdd"))
    found = tangles(graph)
    cycles = [_a_cycle_in(graph, c) for c in found]
    assert not cycles, "import cycles in sdd/:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_packages_import_only_what_the_layout_allows():
    graph = import_graph(sources("sdd"))
    assert set(MAY_IMPORT) == {package_of(m) for m in graph if m != "sdd"}, "a package is missing from MAY_IMPORT"
    wrong = sorted({f"{module} imports {target} ({package_of(target)} is not in MAY_IMPORT['{package_of(module)}'])"
                    for module, targets in graph.items() if module != "sdd" for target in targets
                    if target != "sdd" and package_of(target) != package_of(module)
                    and package_of(target) not in MAY_IMPORT[package_of(module)]})
    assert not wrong, "\n".join(wrong)


def test_no_module_over_500_lines():
    too_long = {str(p.relative_to(ROOT)): n for p in sources("sdd", "flows").values()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not too_long, f"over {MAX_LINES} lines: {too_long}"


def test_sdd_imports_neither_prefect_nor_flows():
    found = sorted({f"{module} imports {name}" for module, path in sources("sdd").items()
                    for name in imported_names(path, module) if name.split(".")[0] in ("prefect", "flows")})
    assert not found, "sdd/ must not import Prefect or flows/:\n" + "\n".join(found)


def test_sdd_plots_runs_without_torch():
    """The ``plots`` stage of dvc.yaml renders two PNGs: the CLI and :mod:`sdd.plots` load no torch."""
    code = "import sys; from sdd.cli import app; import sdd.plots; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- the checker finds what it should, and only that ----------------------------------------------


@pytest.mark.parametrize(("files", "cycle"), [
    ({"a.py": "import pkg.b\n", "b.py": "from pkg import a\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    ({"a.py": "from .b import x\n", "b.py": "def f():\n    from . import a\n"}, ["pkg.a", "pkg.b", "pkg.a"]),
    ({"a.py": "from pkg.sub.c import x\n", "sub/__init__.py": "from pkg.a import y\n", "sub/c.py": ""},
     ["pkg.a", "pkg.sub", "pkg.a"]),
    ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n",
      "b.py": "from pkg.a import x\n"}, None),
    ({"__init__.py": "from pkg.a import x\n", "a.py": "from pkg.b import y\n", "b.py": ""}, None),
])
def test_the_cycle_check_sees_lazy_relative_and_package_imports_but_not_type_checking_ones(tmp_path, files, cycle):
    for name, text in {"__init__.py": "", **files}.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    cycles = find_cycles(import_graph(sources("pkg", root=tmp_path)))
    assert cycles == ([cycle] if cycle else [])
