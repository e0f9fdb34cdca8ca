"""Shared fixtures. Nothing here imports torch: the sampler and logbook tests run without it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from metab_opt.config import Config, load_config

# The dashboard tests' study and server (test_dashboard.py, test_browser.py), as a plugin so
# that test modules take them as fixtures without importing them.
pytest_plugins = ["_dashboard_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_cfg() -> Config:
    """configs/tiny.yaml as it is (do not mutate: build a new one with ``tiny_config``)."""
    return load_config(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., Config]:
    """``tiny_config({"training.seed": 1})``: tiny.yaml with ``section.key`` overrides."""

    def make(overrides: Mapping[str, Any] | None = None) -> Config:
        return load_config(TINY_CONFIG, overrides=dict(overrides or {}))

    return make


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private dataset cache for the session (never the repository's studies/data)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def tiny_dataset(tiny_cfg: Config, tiny_data_root: Path) -> Any:
    """The tiny regime's dataset, built once per session. Shared: tests must not mutate it."""
    from metab_opt.problem.simulation import load_or_build

    return load_or_build(tiny_cfg.simulation, tiny_data_root)[0]
