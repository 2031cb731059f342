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

Over row shards (``group=``): the margin candidates come from the sharded
:func:`~.uncertainty.select_uncertain` (nothing of size N moves); the clustering spans the whole
pool, so :func:`hac_clusters` with a group gathers the shards' float32 rows on rank 0, clusters
them there as one process would and gives every rank its own slice of the labels. That slice is
what ``clustering=`` takes with a group, so a caller that keeps it (as the loop does) moves the
embedding once; the candidates' labels then travel from their owners (a few per candidate), and
every rank runs the same seeded round-robin.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor, parse_count, parse_flag, parse_int, parse_seed, parse_threads
from .strategy_inputs import as_array, check_float, common, feature_matrix, like_input
from .typiclust import kmeans_labels
from .uncertainty import select_uncertain
from .distributed import Shards, check_budget, run_on_root

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
                 threads: Optional[int] = None, group: Any = None) -> np.ndarray:
    """Average-linkage clusters of the rows (int64 labels (N,) in [0, clusters)); see the module docstring.

    With ``group`` (a torch.distributed process group), ``features`` is this rank's shard
    (consecutive rows in rank order; shards may be empty) and the result is **this rank's slice**
    of the labels (int64, one per row of the shard): the whole pool's clustering, ids included,
    exactly as one process computes it with that seed (``clusters=None`` means ceil(sqrt(N)) of
    the whole pool). The clustering spans the pool, so the shards' float32 rows are **gathered
    on rank 0**, which clusters them and broadcasts the N labels; rank 0 needs the single-process
    memory (N x d float32, plus the O(N^2) exact linkage up to :data:`EXACT_HAC_MAX` rows), unlike
    select_uncertain, bald, batchbald, kcenter_greedy, kmeans_pp and badge, which move nothing of
    size N. Pass the slice back to :func:`cluster_margin` as ``clustering=`` with the same group,
    so later rounds move nothing of size N.
    """
    if group is not None:
        return _hac_clusters_sharded(features, clusters, seed, threads, group)
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


def _hac_clusters_sharded(features: Any, clusters: Any, seed: Any, threads: Any, group: Any) -> np.ndarray:
    """This rank's slice of :func:`hac_clusters` of the whole pool (rows gathered on rank 0)."""
    shards = Shards(group)

    def check() -> Tuple[np.ndarray, Dict[str, Any]]:
        f = as_array(features, "features")
        n, d = check_float(f, "features", 2, "N rows x d features")
        wanted = None if clusters is None else parse_int(clusters, "clusters", minimum=1)
        summary = {"rows": n, "d": d, "clusters": wanted, "seed": parse_seed(seed)}
        parse_threads(threads)
        return feature_matrix(f), summary

    x, summaries = shards.agree(check, ("d", "clusters", "seed"))
    wanted, same_seed = summaries[0]["clusters"], summaries[0]["seed"]
    labels = run_on_root(shards, [x], lambda pool: hac_clusters(pool, wanted, seed=same_seed, threads=threads))
    return labels[shards.offset:shards.offset + x.shape[0]]


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
        group: a torch.distributed process group, or None. With a group, ``x`` and ``features``
            are this rank's shard (consecutive rows in rank order; shards may be empty),
            ``exclude`` is local to it, ``clustering`` is this rank's slice of the whole pool's
            labels (what :func:`hac_clusters` returns with the same group), and the result is
            global row numbers, the same on every rank and equal to one process's picks on the
            whole pool. The margin candidates are found shard by shard (nothing of size N
            moves); without ``clustering`` the embedding is **gathered on rank 0** to cluster it
            (:func:`hac_clusters`). Options must be equal on every rank (else every rank raises).
    """
    if group is not None:
        return _cluster_margin_sharded(x, features, k, from_logits=from_logits, exclude=exclude,
                                       candidates=candidates, clusters=clusters, clustering=clustering, seed=seed,
                                       validate=validate, device=device, threads=threads, progress=progress,
                                       group=group)
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    x = as_array(x, "x")
    n, _ = check_float(x, "x", 2, "N rows x C classes")
    call = common(x, n, k, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    seed = parse_seed(seed)
    free = n - call.rows.size
    wanted = _candidate_count(call.k, free, None if candidates is None else parse_int(candidates, "candidates",
                                                                                      minimum=0))
    if clustering is not None:
        labels = _given_labels(clustering, n)
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


def _given_labels(clustering: Any, n: int, whose: str = "") -> np.ndarray:
    """``clustering=`` as a NumPy array of n integer labels (``whose`` says which rows, in messages)."""
    labels = np.asarray(clustering.detach().cpu().numpy() if is_torch_tensor(clustering) else clustering)
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"clustering must be integer labels of shape ({n},){whose}, got {labels.dtype} "
                         f"{labels.shape}")
    return labels


def _candidate_count(k: int, free: int, candidates: Optional[int]) -> int:
    """The margin candidates: 10 k by default (at most the free rows), between k and the free rows."""
    wanted = min(free, CANDIDATE_FACTOR * k) if candidates is None else candidates
    if wanted < k or wanted > free:
        raise ValueError(f"candidates={wanted} must lie between k={k} and the {free} rows that may be picked")
    return wanted


def _cluster_margin_sharded(x: Any, features: Any, k: Any, *, from_logits: Any, exclude: Any, candidates: Any,
                            clusters: Any, clustering: Any, seed: Any, validate: Any, device: Any, threads: Any,
                            progress: Any, group: Any) -> Any:
    """Cluster-Margin over shards: sharded margin candidates, labels from this rank's slice of
    the clustering (given, or :func:`hac_clusters` with the group), the same round-robin on
    every rank."""
    shards = Shards(group)

    def check() -> Tuple[Tuple[Any, np.ndarray, Optional[np.ndarray]], Dict[str, Any]]:
        logits, checked = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
        scores = as_array(x, "x")
        n, _ = check_float(scores, "x", 2, "N rows x C classes")
        count = parse_count(k)
        call = common(scores, n, 0, exclude, "exclude", device=device, threads=threads, progress=progress,
                      of="x")
        wanted = None if candidates is None else parse_int(candidates, "candidates", minimum=0)
        labels = None if clustering is None else _given_labels(clustering, n, " (this rank's slice)")
        if clustering is None and features is None:
            raise TypeError("features must be a feature matrix when no clustering is given")
        if clustering is None and as_array(features, "features").shape[0] != n:
            raise ValueError(f"features have {as_array(features, 'features').shape[0]} rows but x has {n}")
        summary = {"rows": n, "k": count, "seed": parse_seed(seed), "candidates": wanted,
                   "clustered": clustering is not None, "free": n - call.rows.size,
                   "from_logits": logits, "validate": checked}
        return (scores, call.rows, labels), summary

    (scores, excluded, labels), summaries = shards.agree(
        check, ("k", "seed", "candidates", "clustered", "from_logits", "validate"))
    first = summaries[0]
    count, same_seed = first["k"], first["seed"]
    free = sum(s["free"] for s in summaries)
    check_budget(shards, count, free)
    wanted = _candidate_count(count, free, first["candidates"])
    if count == 0:
        return like_input(np.empty(0, dtype=np.int64), scores)
    if labels is None:
        labels = hac_clusters(features, clusters, seed=same_seed, threads=threads, group=group)
    margins = select_uncertain(scores, wanted, "margin", from_logits=first["from_logits"],
                               exclude=excluded if excluded.size else None, validate=first["validate"],
                               threads=threads, device=device, group=group)
    rows = np.asarray(margins.detach().cpu().numpy() if is_torch_tensor(margins) else margins, dtype=np.int64)
    picks = round_robin(rows, _labels_of(shards, rows, labels), count, np.random.default_rng(same_seed))
    return like_input(picks, scores)


def _labels_of(shards: Shards, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The clustering labels of global ``rows``, each sent by the rank that holds it."""
    def owned(rank: int) -> np.ndarray:
        return (rows >= shards.offsets[rank]) & (rows < shards.offsets[rank + 1])

    parts = shards.gather_objects(labels[rows[owned(shards.rank)] - shards.offset])
    out = np.empty(rows.size, dtype=np.result_type(*parts))
    for rank, part in enumerate(parts):
        out[owned(rank)] = part
    return out


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
