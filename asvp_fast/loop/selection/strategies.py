"""Acquisition strategies over what a selector produced (logits, an embedding, cached features).

Every strategy takes the same :class:`SelectorView` and the labelled rows and returns the new rows
to label, none of them labelled already. The kernels are the package's own (uncertainty top-k,
exact k-center greedy, BADGE, ActiveFT) in :mod:`asvp_fast.acquisition`. Add one with
:func:`register_strategy`.
"""

from __future__ import annotations

from typing import Callable, Dict

import numpy as np

from ...acquisition.activeft import activeft_select
from ...acquisition.diversity import badge, kcenter_greedy
from ...acquisition.uncertainty import select_uncertain
from .view import SelectorView


StrategyFn = Callable[[SelectorView, np.ndarray, int, int, str], np.ndarray]


def _random(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    free = np.setdiff1d(np.arange(view.n, dtype=np.int64), labelled, assume_unique=False)
    return np.random.default_rng(seed).choice(free, size=k, replace=False).astype(np.int64)


def _uncertainty(kind: str) -> StrategyFn:
    def pick(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
        return np.asarray(select_uncertain(view.need_logits(kind), k, kind, from_logits=True, exclude=labelled))  # type: ignore[arg-type]

    return pick


def _coreset(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(kcenter_greedy(view.space(space), k, labeled=labelled if labelled.size else None, seed=seed))


def _badge(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(badge(view.need_logits("badge"), view.space(space), k, from_logits=True,
                            exclude=labelled if labelled.size else None, seed=seed))


def _activeft(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(activeft_select(view.space(space), k, labeled=labelled if labelled.size else None, seed=seed))


STRATEGIES: Dict[str, StrategyFn] = {
    "random": _random,
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "least_confidence": _uncertainty("least_confidence"),
    "coreset": _coreset,
    "badge": _badge,
    "activeft": _activeft,
}


def register_strategy(name: str, fn: StrategyFn) -> None:
    """Make ``fn(view, labelled, k, seed, space) -> rows`` available as ``selection.strategy = name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a strategy name must be a non-empty string, got {name!r}")
    STRATEGIES[name] = fn


def select(strategy: str, view: SelectorView, labelled: np.ndarray, k: int, *, seed: int = 0,
           space: str = "embedding") -> np.ndarray:
    """``k`` new pool rows chosen by ``strategy`` (int64, in the strategy's pick order)."""
    try:
        fn = STRATEGIES[strategy]
    except KeyError:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {sorted(STRATEGIES)}") from None
    labelled = np.asarray(labelled, dtype=np.int64)
    free = view.n - np.unique(labelled).size
    if k > free:
        raise ValueError(f"cannot select {k} rows: only {free} of {view.n} pool rows are unlabelled")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    picks = np.asarray(fn(view, labelled, k, seed, space), dtype=np.int64)
    if picks.size != k or np.unique(picks).size != k or np.isin(picks, labelled).any():
        raise RuntimeError(f"strategy {strategy!r} returned an invalid selection")  # a bug, never bad input
    return picks
