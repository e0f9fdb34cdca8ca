"""metab_opt.ucbtree stands alone: optuna, numpy and the standard library only, no import cycle,
small modules, and it runs from a copy under another name (as an OptunaHub package would)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import metab_opt.ucbtree as ucbtree

PACKAGE = Path(ucbtree.__file__).resolve().parent
MODULES = sorted(PACKAGE.glob("*.py"))
ALLOWED = {"optuna", "numpy"} | set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[int, int, str]]:
    """Every import of a module, at any depth (function-level ones too): (lineno, level,
    module), one entry per imported name for ``from . import x``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, 0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level and not node.module:
                out += [(node.lineno, node.level, alias.name) for alias in node.names]
            else:
                out.append((node.lineno, node.level, node.module or ""))
    return out


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_imports_only_optuna_numpy_and_the_standard_library(path: Path) -> None:
    for lineno, level, module in _imports(path):
        if level:
            continue  # inside the package
        if path.name == "example.py" and module.startswith("metab_opt.ucbtree"):
            continue  # the example imports the package as its reader would
        assert module.split(".")[0] in ALLOWED, f"{path.name}:{lineno}: imports {module}"


def test_no_import_cycle_inside_the_package() -> None:
    graph: dict[str, set[str]] = {}
    for path in MODULES:
        graph[path.stem] = {module.split(".")[0] or "__init__"
                            for _, level, module in _imports(path) if level}
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join([*trail, name])}"
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            if dep != "__init__":  # a submodule import runs the package's __init__ first
                visit(dep, [*trail, name])
        state[name] = 2

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_over_600_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 600


def test_every_exported_name_resolves() -> None:
    for name in ucbtree.__all__:
        assert getattr(ucbtree, name) is not None, name
    assert set(ucbtree.__all__) <= set(dir(ucbtree))
    with pytest.raises(AttributeError):
        ucbtree.no_such_name  # noqa: B018


def test_the_knobs_load_without_optuna() -> None:
    code = ("import sys; from metab_opt.ucbtree import Knob, Roles; import metab_opt.config; "
            "sys.exit('optuna' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


RUN_COPY = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    import ucb_copy

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"x": FloatDistribution(-5.0, 5.0), "n": IntDistribution(1, 64, log=True),
             "seed": IntDistribution(0, 1000)}
    roles = ucb_copy.Roles(seed="seed", spread=("x",))
    for direction, sign in (("maximize", -1.0), ("minimize", 1.0)):
        sampler = ucb_copy.UCBSampler(search_space=space, roles=roles, seed=0)
        study = optuna.create_study(direction=direction, sampler=sampler)
        study.optimize(lambda t: sign * ((t.suggest_float("x", -5.0, 5.0) - 1.0) ** 2
                                         + t.suggest_int("n", 1, 64, log=True) / 64
                                         + t.suggest_int("seed", 0, 1000) * 0.0),
                       n_trials=30)
        assert len({t.user_attrs["strategy"] for t in study.trials}) >= 3
    bad = [m for m in sys.modules if m.split(".")[0] in ("metab_opt", "torch")]
    assert not bad, bad
    print("ok")
""")


def test_a_copy_under_another_name_runs_without_metab_opt(tmp_path: Path) -> None:
    shutil.copytree(PACKAGE, tmp_path / "ucb_copy",
                    ignore=shutil.ignore_patterns("__pycache__", "example.py"))
    run = subprocess.run([sys.executable, "-c", RUN_COPY, str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
