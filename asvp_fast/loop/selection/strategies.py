"""Acquisition strategies over what a selector produced (logits, an embedding, cached features).

Every strategy takes the same :class:`SelectorView` and the labelled rows and returns the new rows
to label, none of them labelled already. The kernels are the package's own (uncertainty top-k,
exact k-center greedy, BADGE, ActiveFT) in :mod:`asvp_fast.acquisition`. Add one with
:func:`register_strategy`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Dict, Optional

import numpy as np

from ...acquisition.activeft import activeft_select
from ...acquisition.bald import bald
from ...acquisition.batchbald import batchbald
from ...acquisition.cluster_margin import cluster_margin, hac_clusters
from ...acquisition.probcover import probcover
from ...acquisition.typiclust import typiclust
from ...acquisition.diversity import badge, kcenter_greedy
from ...acquisition.uncertainty import select_uncertain
from ..models.ranks import rank_and_world
from .view import SelectorView


StrategyFn = Callable[[SelectorView, np.ndarray, int, int, str], np.ndarray]

# Strategies that select in an embedding (the selector's hidden layer, or the features): a proxy
# computes its hidden embedding only for these.
EMBEDDING_STRATEGIES = ("coreset", "badge", "activeft", "typiclust", "probcover")


def _random(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    free = np.setdiff1d(np.arange(view.n, dtype=np.int64), labelled, assume_unique=False)
    return np.random.default_rng(seed).choice(free, size=k, replace=False).astype(np.int64)


# In a distributed run (``view.group``) the view's arrays are this rank's shard: the labelled rows
# are passed as the shard's local indices (``view.local``) and the kernels' ``group=`` merges the
# ranks' candidates into the one process's picks (global rows). "Labelled rows or none" is decided
# from the global set, so every rank makes the same choice.

def _labelled_or_none(view: SelectorView, labelled: np.ndarray) -> Optional[np.ndarray]:
    return view.local(labelled) if labelled.size else None


def _uncertainty(kind: str) -> StrategyFn:
    def pick(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
        return np.asarray(select_uncertain(view.need_logits(kind), k, kind, from_logits=True,  # type: ignore[arg-type]
                                           exclude=view.local(labelled), group=view.group))

    return pick


def _coreset(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(kcenter_greedy(view.space(space), k, labeled=_labelled_or_none(view, labelled), seed=seed,
                                     group=view.group))


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float64 arithmetic, float32 result): one function of each row alone, so a
    rank's shard gets exactly the probabilities one process computes for those rows."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _badge(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    # probabilities, not from_logits: the same per-row softmax on one process and on shards
    return np.asarray(badge(softmax_rows(view.need_logits("badge")), view.space(space), k,
                            exclude=_labelled_or_none(view, labelled), seed=seed, group=view.group))


def _activeft(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(activeft_select(view.space(space), k, labeled=_labelled_or_none(view, labelled), seed=seed,
                                      group=view.group))


def _bald(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(bald(view.need_mc_logits("bald"), k, from_logits=True, exclude=view.local(labelled),
                           group=view.group))


def _batchbald(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    # the greedy scores the rows of largest BALD only: max(10 k, 1000) of them (the budget, see batchbald)
    free = view.n - np.unique(labelled).size
    return np.asarray(batchbald(view.need_mc_logits("batchbald"), k, from_logits=True, exclude=view.local(labelled),
                                seed=seed, candidates=min(free, max(10 * k, 1000)), group=view.group))


def _typiclust(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    return np.asarray(typiclust(view.space(space), k, labeled=_labelled_or_none(view, labelled), seed=seed,
                                group=view.group))


def _probcover(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    # the purity rule's pseudo-labels: as many k-means clusters as the selector has classes
    classes = view.logits.shape[1] if view.logits is not None and view.logits.shape[1] >= 2 else 10
    return np.asarray(probcover(view.space(space), k, labeled=_labelled_or_none(view, labelled), seed=seed,
                                pseudo_classes=classes, group=view.group))


# Cluster-Margin's clustering, computed once per embedding and reused across rounds (the paper
# clusters a fixed embedding once): keyed by a fingerprint of the array, the few most recent kept.
_CLUSTERINGS: "OrderedDict[str, np.ndarray]" = OrderedDict()
_CLUSTERINGS_KEPT = 4


def fingerprint(array: np.ndarray) -> str:
    """A digest of an array's shape, dtype and 64 evenly spaced rows (cheap on a memmap)."""
    digest = hashlib.sha256(str((array.shape, np.dtype(array.dtype).str)).encode())
    for row in np.linspace(0, max(0, array.shape[0] - 1), num=min(64, array.shape[0]), dtype=np.int64):
        digest.update(np.ascontiguousarray(array[int(row)]).tobytes())
    return digest.hexdigest()


def pool_clustering(embedding: np.ndarray, seed: int = 0, group: Any = None) -> np.ndarray:
    """:func:`hac_clusters` of ``embedding``, cached in memory by :func:`fingerprint` (with a group:
    this rank's slice of the whole pool's clustering, ``embedding`` being its shard)."""
    rank, world = rank_and_world(group)
    key = f"{fingerprint(embedding)}:{seed}:{rank}/{world}"
    if key not in _CLUSTERINGS:
        _CLUSTERINGS[key] = hac_clusters(embedding, seed=seed, group=group)
        while len(_CLUSTERINGS) > _CLUSTERINGS_KEPT:
            _CLUSTERINGS.popitem(last=False)
    _CLUSTERINGS.move_to_end(key)
    return _CLUSTERINGS[key]


def _cluster_margin(view: SelectorView, labelled: np.ndarray, k: int, seed: int, space: str) -> np.ndarray:
    # the fixed pre-trained features when the selector has them (clustered once for the whole run),
    # else the selection space
    embedding = view.features if view.features is not None else view.space(space)
    return np.asarray(cluster_margin(view.need_logits("cluster_margin"), None, k, from_logits=True,
                                     exclude=_labelled_or_none(view, labelled), seed=seed,
                                     clustering=pool_clustering(embedding, group=view.group), group=view.group))


STRATEGIES: Dict[str, StrategyFn] = {
    "random": _random,
    "margin": _uncertainty("margin"),
    "entropy": _uncertainty("entropy"),
    "least_confidence": _uncertainty("least_confidence"),
    "coreset": _coreset,
    "badge": _badge,
    "activeft": _activeft,
    "bald": _bald,
    "batchbald": _batchbald,
    "typiclust": _typiclust,
    "probcover": _probcover,
    "cluster_margin": _cluster_margin,
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
