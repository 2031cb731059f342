"""Figures through matplotlib's object API: no pyplot state and no backend switching, so library
code never changes a notebook's or an application's plotting setup."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

Series = Tuple[str, Sequence[float], Sequence[float]]


def new_figure(figsize: Tuple[float, float]) -> Any:
    """A matplotlib ``Figure`` detached from pyplot (saved with ``fig.savefig``, freed by the GC)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def line_figure(path: Path, ylabel: str, series: List[Series], diagonal: Optional[float] = None) -> Path:
    """One line per (name, x, y) against the labelled samples; ``diagonal`` draws y = x up to it."""
    fig = new_figure((6, 4))
    ax = fig.subplots()
    for name, x, y in series:
        ax.plot(x, y, marker="o", label=name)
    if diagonal is not None:
        ax.plot([0, diagonal], [0, diagonal], color="grey", linestyle=":", label="no saving")
    ax.set_xlabel("labelled samples")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path
