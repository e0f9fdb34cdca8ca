"""The package's shape (DESIGN.md, "Layout"): no module over ~600 lines, no import cycle.

The import graph counts every ``import`` / ``from ... import`` of a ``metab_opt`` module
anywhere in a file — at the top, inside a function, under ``TYPE_CHECKING`` — because a cycle
hidden in a function-level import is still a cycle: the two modules cannot be understood, tested
or moved apart. What a submodule's import does implicitly (run its parent package's
``__init__``) is not an edge; an explicit import of the package is.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "metab_opt"
MAX_LINES = 600
# Modules allowed over MAX_LINES for now, each with the reason.
TOO_LONG_FOR_NOW: dict[str, str] = {}

Graph = dict[str, set[str]]


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` (a folder under ``root``) by dotted name."""
    return {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}


def import_graph(root: Path, package: str) -> Graph:
    """module -> the modules of ``package`` it imports, anywhere in its file."""
    modules = _modules(root, package)
    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the module's package, up level - 1
                    base = here.split(".")
                    base = base[:len(base) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the
                # package (or module) that defines the name.
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source
                           for a in node.names]
            for target in targets:
                if target == package or target.startswith(package + "."):
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]  # ``import pkg.mod.attr`` forms
                    if target in modules and target != name:
                        graph[name].add(target)
    return graph


def find_cycle(graph: Graph) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None when the graph is acyclic."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            if nxt not in done:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_no_module_is_too_long() -> None:
    long = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and rel not in TOO_LONG_FOR_NOW:
            long[rel] = n
    assert not long, f"modules over {MAX_LINES} lines (split them by job): {long}"


def test_no_import_cycle() -> None:
    graph = import_graph(ROOT, PACKAGE)
    assert len(graph) > 10 and any(graph.values())  # the walk found the package's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(("files", "cycle"), [
    # a function-level import closes the cycle
    ({"__init__.py": "", "a.py": "from pkg.b import g\n",
      "b.py": "def g():\n    from pkg import a\n    return a\n"},
     ["pkg.a", "pkg.b", "pkg.a"]),
    # through a subpackage, with a relative import and a TYPE_CHECKING one
    ({"__init__.py": "", "a.py": "import pkg.sub.c\n", "sub/__init__.py": "",
      "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n"},
     ["pkg.a", "pkg.sub.c", "pkg.a"]),
])
def test_a_planted_cycle_is_found(tmp_path: Path, files: dict[str, str],
                                  cycle: list[str]) -> None:
    root = _plant(tmp_path, files)
    assert find_cycle(import_graph(root, "pkg")) == cycle


def test_no_cycle_in_a_clean_package(tmp_path: Path) -> None:
    root = _plant(tmp_path, {"__init__.py": "from pkg.a import f\n",
                             "a.py": "from pkg import b\nfrom pkg.b import g\n",
                             "b.py": "import os\n"})
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert find_cycle(graph) is None


# What the problem side (DESIGN.md, "Layout") may import from outside its folder: the typed
# config it is built from, and the package's small leaf helpers. Never the runner (storage,
# study, objective, logbook, compare, ...) nor the sampler.
PROBLEM = f"{PACKAGE}.problem"
PROBLEM_MAY_IMPORT = {PACKAGE, f"{PACKAGE}.config", f"{PACKAGE}._config_checks",
                      f"{PACKAGE}._figure", f"{PACKAGE}._io", f"{PACKAGE}._yaml"}


def test_the_problem_side_imports_nothing_above_it() -> None:
    graph = import_graph(ROOT, PACKAGE)
    problem = {m for m in graph if m == PROBLEM or m.startswith(PROBLEM + ".")}
    assert {f"{PROBLEM}.model", f"{PROBLEM}.simulation"} <= problem  # the walk found the folder
    up = {f"{m} -> {t}" for m in problem for t in graph[m]
          if t not in problem and t not in PROBLEM_MAY_IMPORT}
    assert not up, f"the problem side imports the layers above it: {sorted(up)}"


def _imports_torch(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        if any(n == "torch" or n.startswith(("torch.", "torch_geometric")) for n in names):
            return True
    return False


def test_the_torch_free_layers_reach_no_torch_module() -> None:
    """The sampler, the logbook and the trial record import without torch: nothing they import,
    at any depth, imports torch (numpy-only problem modules such as the metrics are fine)."""
    graph = import_graph(ROOT, PACKAGE)
    paths = _modules(ROOT, PACKAGE)
    torch_mods = {m for m, p in paths.items() if _imports_torch(p)}
    assert f"{PROBLEM}.model" in torch_mods  # the scan sees torch imports
    for light in (f"{PACKAGE}.ucbtree", f"{PACKAGE}.logbook", f"{PACKAGE}.trial_record"):
        seen: set[str] = set()
        todo = [m for m in graph if m == light or m.startswith(light + ".")]
        assert todo
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        assert not seen & torch_mods, f"{light} reaches torch through {sorted(seen & torch_mods)}"
