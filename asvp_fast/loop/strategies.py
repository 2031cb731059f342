"""Acquisition strategies over what a selector produced (logits, an embedding, cached features).

Every strategy takes the same :class:`SelectorView` and the labelled rows and returns the new rows
to label, none of them labelled already. The kernels are the package's own (uncertainty top-k,
exact k-center greedy, BADGE); ActiveFT lives in :mod:`.activeft`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from .. import badge, kcenter_greedy, select_uncertain


@dataclass
class SelectorView:
    """What a selector exposes about the pool (rows in pool order).

    ``logits`` (N, C): the selector's class scores; ``embedding`` (N, h): its penultimate features
    (the proxy's hidden layer, or the fine-tuned backbone's features); ``features`` (N, d): the
    cached pre-trained features.
    """

    n: int
    logits: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None

    def space(self, name: str) -> np.ndarray:
        """The embedding that diversity strategies work in: ``"embedding"`` or ``"features"``."""
        arr = self.embedding if name == "embedding" else self.features if name == "features" else None
        if name not in ("embedding", "features"):
            raise ValueError(f"embedding space must be 'embedding' or 'features', got {name!r}")
        if arr is None:
            raise ValueError(f"this selector provides no {name!r} for a diversity strategy")
        return arr

    def need_logits(self, strategy: str) -> np.ndarray:
        if self.logits is None:
            raise ValueError(f"strategy {strategy!r} needs class scores, and this selector provides none")
        return self.logits


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
    from .activeft import activeft_select

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
