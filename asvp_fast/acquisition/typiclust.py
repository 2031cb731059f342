"""TypiClust (Hacohen, Dekel & Weinshall, ICML 2022): typical points of the largest uncovered
clusters, for the low-budget regime.

1. k-means (faiss) of the features into |L| + k clusters (at most ``max_clusters``);
2. typicality of a row = 1 / (mean Euclidean distance to its K nearest neighbours + 1e-5), the
   neighbours taken inside its cluster (faiss exact k-NN, as in the authors' code);
3. k times: among the clusters of more than ``min_cluster_size`` rows (all clusters when none is
   that large), the one holding the fewest labelled or picked rows, the largest first, gives its
   most typical row not labelled or picked yet (ties to the lower row).

Differences from the authors' code: distances are Euclidean (their faiss search returns squared
distances, whose mean ranks rows slightly differently); k-means is faiss's rather than sklearn's.

Cost: k-means O(iterations x N x (|L| + k) x d); typicality only for the clusters that give a pick,
O(s^2 d) for a cluster of s rows (exact k-NN inside it); memory: a float32 copy of the features.

Over row shards (``group=``) the pool is gathered on rank 0: the k-means and the in-cluster k-NN
span every row, so each rank sends its float32 rows and labelled-row mask there, rank 0 runs the
single-process selection and broadcasts the picks (:func:`.distributed.select_on_root`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from ..core.checks import parse_int, parse_seed
from .strategy_inputs import as_array, check_float, common, feature_matrix, gathered_shard_input, like_input
from .distributed import ShardInput, select_on_root

__all__ = ["typiclust", "typicality", "kmeans_labels", "DEFAULT_NEIGHBOURS", "MIN_CLUSTER_SIZE"]

#: K of the typicality (the paper's 20).
DEFAULT_NEIGHBOURS = 20
#: Clusters of at most this many rows are passed over while larger ones are left (the authors' 5).
MIN_CLUSTER_SIZE = 5
#: k-means iterations.
KMEANS_ITERATIONS = 20


def kmeans_labels(x: np.ndarray, clusters: int, seed: int, iterations: int = KMEANS_ITERATIONS) -> np.ndarray:
    """faiss k-means of the float32 rows ``x`` into ``clusters`` clusters: each row's cluster (int64)."""
    import faiss

    n, d = x.shape
    if clusters >= n:
        return np.arange(n, dtype=np.int64)
    if clusters <= 1:
        return np.zeros(n, dtype=np.int64)
    km = faiss.Kmeans(d, clusters, niter=iterations, seed=int(seed % (2**31 - 1)), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // clusters)))
    km.train(x)
    _, assigned = km.index.search(x, 1)
    return assigned[:, 0].astype(np.int64)


def typicality(x: np.ndarray, neighbours: int = DEFAULT_NEIGHBOURS) -> np.ndarray:
    """1 / (mean distance to the ``neighbours`` nearest other rows + 1e-5) of every row of ``x`` (float64);
    fewer neighbours when ``x`` has fewer rows, 0 for a single row."""
    import faiss

    n = x.shape[0]
    kk = min(neighbours, n - 1)
    if kk < 1:
        return np.zeros(n)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    distances, _ = index.search(np.ascontiguousarray(x, dtype=np.float32), kk + 1)
    # the row itself comes first at distance 0 (or a duplicate of it, also at 0)
    mean = np.sqrt(np.maximum(distances[:, 1:].astype(np.float64), 0.0)).mean(axis=1)
    return 1.0 / (mean + 1e-5)  # type: ignore[no-any-return]


def typiclust(
    features: Any,
    k: int,
    *,
    labeled: Any = None,
    seed: int = 0,
    neighbours: int = DEFAULT_NEIGHBOURS,
    max_clusters: Optional[int] = None,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    device: Any = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """``k`` rows picked by TypiClust, in pick order (int64 following the input's library).

    Args:
        features: (N, d) float16/bfloat16/float32/float64; numpy, memmap or torch (any device).
        k: rows to pick; at most the unlabelled rows.
        labeled: labelled rows (mask or indices): they count as covering their clusters and are
            never picked.
        seed: k-means initialisation.
        neighbours: K of the typicality.
        max_clusters: cap on |L| + k clusters (None: no cap; the authors cap at 500 for large
            budgets, and a cluster then gives several picks).
        min_cluster_size: clusters of at most this many rows are used only when no larger one is.
        device, threads, progress: the contract's; k-means and k-NN run in faiss on the CPU.
        group: a torch.distributed process group, or None. With a group, ``features`` is this
            rank's shard (ranks hold consecutive rows in rank order; shards may be empty),
            ``labeled`` is local to it, and the result is global row numbers, the same on every
            rank and equal to one process's picks on the whole pool. The shards' float32 rows are
            **gathered on rank 0**, which runs the selection (it needs memory for N x d float32
            and the single-process working set; the other ranks wait, so the group's timeout
            must exceed the run) and broadcasts the picks: the k-means and the in-cluster k-NN
            span the whole pool (select_uncertain, bald, batchbald, kcenter_greedy, kmeans_pp
            and badge shard without moving anything of size N). Options must be equal on every
            rank (else every rank raises).
    """
    if group is not None:
        options = (seed, neighbours, max_clusters, min_cluster_size, device, threads, progress)
        return select_on_root(group, features, lambda: _shard_input(features, k, labeled, *options))
    features = as_array(features, "features")
    n, _ = check_float(features, "features", 2, "N rows x d features")
    call = common(features, n, k, labeled, "labeled", device=device, threads=threads, progress=progress,
                  of="features")
    options = _options(seed, neighbours, max_clusters, min_cluster_size)
    x = feature_matrix(features)
    if call.k == 0:
        return like_input(np.empty(0, dtype=np.int64), features)
    with call.limits():
        picks = _select(x, call.rows, call.k, **options)
    return like_input(picks, features)


def _options(seed: Any, neighbours: Any, max_clusters: Any, min_cluster_size: Any) -> Dict[str, Any]:
    """The parsed options that shape the picks (keyword arguments of :func:`_select`)."""
    return {"seed": parse_seed(seed), "neighbours": parse_int(neighbours, "neighbours", minimum=1),
            "cap": None if max_clusters is None else parse_int(max_clusters, "max_clusters", minimum=1),
            "min_size": parse_int(min_cluster_size, "min_cluster_size", minimum=0)}


def _select(x: np.ndarray, labelled: np.ndarray, k: int, *, seed: int, neighbours: int, cap: Optional[int],
            min_size: int) -> np.ndarray:
    """TypiClust on the checked float32 pool ``x`` (both routes run exactly this)."""
    clusters = labelled.size + k if cap is None else min(cap, labelled.size + k)
    labels = kmeans_labels(x, clusters, seed)
    return _pick(x, labels, labelled, k, neighbours, min_size)


def _shard_input(features: Any, k: Any, labeled: Any, seed: Any, neighbours: Any, max_clusters: Any,
                 min_cluster_size: Any, device: Any, threads: Any, progress: Any) -> ShardInput:
    """This rank's checked arguments and float32 rows; rank 0 selects under its own thread limits."""
    return gathered_shard_input(features, k, labeled, lambda: _options(seed, neighbours, max_clusters, min_cluster_size),
                                _select, device=device, threads=threads, progress=progress)


def _pick(x: np.ndarray, labels: np.ndarray, labelled: np.ndarray, k: int, neighbours: int,
          min_size: int) -> np.ndarray:
    n_clusters = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=n_clusters)
    taken = np.zeros(labels.size, dtype=bool)
    taken[labelled] = True
    covered = np.bincount(labels[labelled], minlength=n_clusters).astype(np.int64)
    free = sizes - covered
    typical: Dict[int, np.ndarray] = {}
    members: Dict[int, np.ndarray] = {}
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        usable = free > 0
        large = usable & (sizes > min_size)
        candidates = np.flatnonzero(large if large.any() else usable)
        # fewest labelled/picked first, then the largest, then the lower cluster id
        order = np.lexsort((candidates, -sizes[candidates], covered[candidates]))
        cluster = int(candidates[order[0]])
        if cluster not in typical:
            members[cluster] = np.flatnonzero(labels == cluster)
            typical[cluster] = typicality(x[members[cluster]], neighbours)
        rows = members[cluster]
        score = np.where(taken[rows], -np.inf, typical[cluster])
        row = int(rows[int(np.argmax(score))])  # rows are ascending: ties go to the lower row
        picks[i] = row
        taken[row] = True
        covered[cluster] += 1
        free[cluster] -= 1
    return picks
