"""What every figure of the package shares: an Agg canvas without pyplot, the PNG writer."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "PathLike", "color", "new_figure", "save"]

DPI = 100

PathLike = str | Path


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI, format="png")
    fig.clear()
    return out


def color(i: int) -> str:
    """The i-th colour of matplotlib's default cycle."""
    return f"C{i % 10}"
