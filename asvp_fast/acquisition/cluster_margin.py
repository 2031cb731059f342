"""Cluster-Margin (Citovsky et al., NeurIPS 2021): margin candidates spread over clusters of a
fixed embedding.

1. Once per pool: an average-linkage hierarchical clustering of the embedding, cut into
   ``clusters`` flat clusters (:func:`hac_clusters`). Exact (scipy, O(N^2) memory and time) up to
   :data:`EXACT_HAC_MAX` rows; beyond, it is **approximate**: faiss k-means into
   :data:`MICRO_CLUSTERS` micro-clusters, average linkage of their centroids, and every row takes
   its micro-cluster's cluster. The result is an int64 label per row to pass back as
   ``clustering=`` in later rounds (the loop caches it per embedding fingerprint).
2. Each round: the ``candidates`` rows of smallest margin (default 10 k; the compiled margin
   top-k), grouped by cluster; clusters are visited from the smallest (fewest candidates; ties to
   the lower cluster label) in round-robin, each giving one random candidate (``seed``) per visit,
   until k rows are picked.

Cost per round after the clustering: one margin scan O(N C) + O(candidates).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ..core.checks import is_torch_tensor, parse_flag, parse_int, parse_seed
from .strategy_inputs import as_array, check_float, common, feature_matrix, like_input
from .typiclust import kmeans_labels
from .uncertainty import select_uncertain
from .distributed import refuse_group

__all__ = ["cluster_margin", "hac_clusters", "EXACT_HAC_MAX", "MICRO_CLUSTERS", "CANDIDATE_FACTOR"]

#: Largest pool clustered exactly (scipy average linkage, N(N-1)/2 float64 distances: 64 MB at 4000).
EXACT_HAC_MAX = 4000
#: Micro-clusters of the approximate clustering beyond :data:`EXACT_HAC_MAX`.
MICRO_CLUSTERS = 2000
#: Default candidates: this many times k (the paper's k_m = 10 k_t... up to the free rows).
CANDIDATE_FACTOR = 10


def default_clusters(n: int) -> int:
    """ceil(sqrt(N)) clusters when none are asked for."""
    return max(1, int(np.ceil(np.sqrt(n))))


def hac_clusters(features: Any, clusters: Optional[int] = None, *, seed: int = 0,
                 threads: Optional[int] = None) -> np.ndarray:
    """Average-linkage clusters of the rows (int64 labels (N,) in [0, clusters)); see the module docstring."""
    from scipy.cluster.hierarchy import fcluster, linkage

    from ..core.checks import parse_threads
    from ..core.threads import limit_threads

    features = as_array(features, "features")
    n, _ = check_float(features, "features", 2, "N rows x d features")
    wanted = default_clusters(n) if clusters is None else parse_int(clusters, "clusters", minimum=1)
    seed = parse_seed(seed)
    n_threads = parse_threads(threads)
    x = feature_matrix(features)
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    with limit_threads(n_threads, ("faiss", "blas")):
        if n <= EXACT_HAC_MAX:
            points, assign = x.astype(np.float64), np.arange(n)
        else:
            assign = kmeans_labels(x, MICRO_CLUSTERS, seed)
            counts = np.bincount(assign, minlength=MICRO_CLUSTERS)
            sums = np.zeros((MICRO_CLUSTERS, x.shape[1]))
            np.add.at(sums, assign, x.astype(np.float64))
            used = np.flatnonzero(counts)
            points = sums[used] / counts[used, None]
            remap = np.full(MICRO_CLUSTERS, -1)
            remap[used] = np.arange(used.size)
            assign = remap[assign]
        if points.shape[0] == 1:
            return np.zeros(n, dtype=np.int64)
        tree = linkage(points, method="average", metric="euclidean")
        flat = fcluster(tree, t=min(wanted, points.shape[0]), criterion="maxclust").astype(np.int64) - 1
    return flat[assign]  # type: ignore[no-any-return]


def cluster_margin(
    x: Any,
    features: Any,
    k: int,
    *,
    from_logits: bool = False,
    exclude: Any = None,
    candidates: Optional[int] = None,
    clusters: Optional[int] = None,
    clustering: Any = None,
    seed: int = 0,
    validate: bool = True,
    device: Any = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """``k`` rows by Cluster-Margin, in pick order (int64 following x's library).

    Args:
        x: N x C probabilities (or logits with ``from_logits``), as for :func:`asvp_fast.scores`.
        features: N x d embedding to cluster (ignored when ``clustering`` is given; may be None then).
        k: rows to pick.
        exclude: rows that may not be picked (already labelled).
        candidates: margin candidates (default 10 k, at most the rows not excluded; at least k).
        clusters: flat clusters of the hierarchy (default ceil(sqrt(N))).
        clustering: labels from :func:`hac_clusters` (or any int labels (N,)) to reuse.
        seed: the random candidate a cluster gives on each visit.
        validate, device, threads, progress: as for :func:`asvp_fast.select_uncertain`.
    """
    refuse_group(group, "cluster_margin", "its clustering spans the whole pool")
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    x = as_array(x, "x")
    n, _ = check_float(x, "x", 2, "N rows x C classes")
    call = common(x, n, k, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    seed = parse_seed(seed)
    free = n - call.rows.size
    wanted = min(free, CANDIDATE_FACTOR * call.k) if candidates is None else parse_int(candidates, "candidates",
                                                                                          minimum=0)
    if wanted < call.k or wanted > free:
        raise ValueError(f"candidates={wanted} must lie between k={call.k} and the {free} rows that may be picked")
    if clustering is not None:
        labels = np.asarray(clustering.detach().cpu().numpy() if is_torch_tensor(clustering) else clustering)
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"clustering must be integer labels of shape ({n},), got {labels.dtype} {labels.shape}")
    else:
        if features is None:
            raise TypeError("features must be a feature matrix when no clustering is given")
        f = as_array(features, "features")
        if f.shape[0] != n:
            raise ValueError(f"features have {f.shape[0]} rows but x has {n}")
        labels = hac_clusters(f, clusters, seed=seed, threads=threads)
    margins = select_uncertain(x, wanted, "margin", from_logits=from_logits,
                               exclude=call.rows if call.rows.size else None, validate=validate,
                               threads=threads, device=device)
    rows = np.asarray(margins.detach().cpu().numpy() if is_torch_tensor(margins) else margins, dtype=np.int64)
    if call.k == 0:
        return like_input(np.empty(0, dtype=np.int64), x)
    return like_input(round_robin(rows, labels[rows], call.k, np.random.default_rng(seed)), x)


def round_robin(rows: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` of ``rows``: clusters from the smallest, one random row of each per visit."""
    values, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.lexsort((values, counts))
    queues = []
    for c in order:
        members = rows[inverse == c]
        queues.append(list(rng.permutation(members)))
    picks = []
    while len(picks) < k:
        for queue in queues:
            if queue and len(picks) < k:
                picks.append(int(queue.pop()))
    return np.asarray(picks, dtype=np.int64)
