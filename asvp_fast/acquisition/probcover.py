"""ProbCover (Yehuda, Dekel, Hacohen & Weinshall, NeurIPS 2022): greedy maximum coverage of
δ-balls, for the low-budget regime.

A row covers every row closer than δ (Euclidean, strictly, itself included). The labelled rows'
balls are covered from the start; each pick is the row whose ball holds the most uncovered rows
(ties to the lower row), after which those rows are covered. When everything is covered, the
remaining picks are drawn uniformly at random with ``seed`` (as in the authors' code).

* The δ-ball graph comes from a faiss range search, in blocks of query rows, stored as CSR with
  int32 row numbers (and its transpose, for the updates); it is never an N x N matrix. A graph
  past ``max_edges`` edges (δ too large for the pool) is a ValueError saying so, before it grows
  further.
* The out-degrees (uncovered rows in each ball) are updated incrementally: when rows become
  covered, every ball containing them loses one, through the transposed graph; so the whole greedy
  costs O(E + k N) after the graph (E edges).
* δ, when not given, follows the paper's purity rule: k-means pseudo-labels (``pseudo_classes``
  clusters), a ball is pure when all rows in it share its centre's pseudo-label, and δ is the
  largest radius for which at least ``purity`` (0.95) of the balls are pure. A ball around row i
  is pure exactly when δ <= r_i, the distance to the nearest row of another pseudo-label, so δ is
  a quantile of r (exact, where the paper scans a grid); r is measured on a sample of at most
  :data:`PURITY_SAMPLE` rows (O(sample x N x d)).

Cost: range search O(N^2 d) time in faiss (exact, blocked), O(E) memory.

Over row shards (``group=``) the pool is gathered on rank 0: the δ-ball graph links rows across
shards (and the purity rule's k-means spans them), so each rank sends its float32 rows and
labelled-row mask there, rank 0 runs the single-process selection and broadcasts the picks
(:func:`.distributed.select_on_root`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..core.checks import parse_int, parse_positive_real, parse_real, parse_seed
from .strategy_inputs import as_array, check_float, common, feature_matrix, gathered_shard_input, like_input
from .typiclust import kmeans_labels
from .distributed import ShardInput, select_on_root

__all__ = ["probcover", "purity_delta", "ball_graph", "greedy_coverage", "DEFAULT_PURITY", "PURITY_SAMPLE",
           "DEFAULT_MAX_EDGES"]

DEFAULT_PURITY = 0.95
#: Rows whose nearest other-pseudo-label distance is measured for the purity rule.
PURITY_SAMPLE = 20_000
#: Largest δ-ball graph built (edges; 12 bytes each with the transpose).
DEFAULT_MAX_EDGES = 200_000_000
_QUERY_BLOCK = 4096


def purity_delta(x: np.ndarray, pseudo_classes: int, purity: float, seed: int) -> float:
    """The largest δ with at least ``purity`` of the δ-balls pure under k-means pseudo-labels."""
    import faiss

    n = x.shape[0]
    labels = kmeans_labels(x, pseudo_classes, seed)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, PURITY_SAMPLE), replace=False))
    nearest_other = np.full(sample.size, np.inf)
    for c in np.unique(labels):
        inside = np.flatnonzero(labels == c)
        queries = sample[labels[sample] != c]
        if queries.size == 0:
            continue
        index = faiss.IndexFlatL2(x.shape[1])
        index.add(x[inside])
        dist, _ = index.search(x[queries], 1)
        where = np.searchsorted(sample, queries)
        nearest_other[where] = np.minimum(nearest_other[where], np.sqrt(np.maximum(dist[:, 0], 0.0)))
    ordered = np.sort(nearest_other)
    delta = float(ordered[sample.size - math.ceil(purity * sample.size)])
    if not delta > 0:
        raise ValueError("the purity rule gives delta = 0 (rows of different pseudo-labels coincide); pass delta > 0")
    if not math.isfinite(delta):  # one pseudo-class: every ball is pure, any radius would do
        raise ValueError("the purity rule cannot choose delta: the k-means pseudo-labels form a single class; "
                         "pass delta or more pseudo_classes")
    return delta


def ball_graph(x: np.ndarray, delta: float, max_edges: int) -> Tuple[np.ndarray, np.ndarray]:
    """CSR (indptr int64 (N+1), indices int32) of the rows closer than ``delta`` to each row."""
    import faiss

    n, d = x.shape
    index = faiss.IndexFlatL2(d)
    index.add(x)
    radius = min(delta * delta, 3.0e38)  # faiss compares squared distances
    indptr = np.zeros(n + 1, dtype=np.int64)
    parts = []
    edges = 0
    for start in range(0, n, _QUERY_BLOCK):
        stop = min(n, start + _QUERY_BLOCK)
        lims, _, found = index.range_search(x[start:stop], radius)
        lims = lims.astype(np.int64)
        edges += int(lims[-1])
        if edges > max_edges:
            raise ValueError(f"the delta-ball graph has more than max_edges={max_edges} edges already after "
                             f"{stop} of {n} rows (delta={delta:g} is large for this pool); pass a smaller delta "
                             "or a larger max_edges")
        indptr[start + 1:stop + 1] = indptr[start] + lims[1:]
        # faiss returns each ball's rows unordered; sort them within each ball for reproducibility
        owner = np.repeat(np.arange(stop - start), np.diff(lims))
        parts.append(found[np.lexsort((found, owner))].astype(np.int32))
    indices = np.concatenate(parts) if parts else np.empty(0, np.int32)
    return indptr, indices


def _gather(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The concatenated CSR rows ``rows`` (vectorised)."""
    lengths = indptr[rows + 1] - indptr[rows]
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.repeat(indptr[rows] - (np.cumsum(lengths) - lengths), lengths)
    return indices[offsets + np.arange(total)].astype(np.int64)  # type: ignore[no-any-return]


def greedy_coverage(indptr: np.ndarray, indices: np.ndarray, labelled: np.ndarray, k: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Greedy max coverage over the CSR graph (see the module docstring)."""
    n = indptr.size - 1
    owners = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    order = np.argsort(indices, kind="stable")  # the transpose: which balls contain each row
    t_indptr = np.zeros(n + 1, dtype=np.int64)
    t_indptr[1:] = np.cumsum(np.bincount(indices, minlength=n))
    t_indices = owners[order].astype(np.int32)
    del owners, order
    covered = np.zeros(n, dtype=bool)
    blocked = np.zeros(n, dtype=bool)
    blocked[labelled] = True
    degree = np.diff(indptr).astype(np.int64)

    def cover(rows: np.ndarray) -> None:
        new = np.unique(_gather(indptr, indices, rows))
        new = new[~covered[new]]
        covered[new] = True
        np.subtract.at(degree, _gather(t_indptr, t_indices, new), 1)

    cover(labelled)
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        score = np.where(blocked, -1, degree)
        best = int(np.argmax(score))  # first maximum: ties to the lower row
        if score[best] <= 0:  # everything is covered: the rest at random
            free = np.flatnonzero(~blocked)
            picks[i:] = rng.choice(free, size=k - i, replace=False)
            break
        picks[i] = best
        blocked[best] = True
        cover(np.array([best], dtype=np.int64))
    return picks


def probcover(
    features: Any,
    k: int,
    *,
    delta: Optional[float] = None,
    labeled: Any = None,
    seed: int = 0,
    pseudo_classes: int = 10,
    purity: float = DEFAULT_PURITY,
    max_edges: int = DEFAULT_MAX_EDGES,
    device: Any = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """``k`` rows picked by ProbCover, in pick order (int64 following the input's library).

    Args:
        features: (N, d) float16/bfloat16/float32/float64; numpy, memmap or torch (any device).
        k: rows to pick; at most the unlabelled rows.
        delta: the ball radius (> 0; Euclidean). None: the purity rule (module docstring).
        labeled: labelled rows (mask or indices): their balls start covered; never picked.
        seed: k-means of the purity rule, its row sample, and the random picks once all is covered.
        pseudo_classes: k-means clusters of the purity rule (the number of classes, in the paper).
        purity: the fraction of pure balls the purity rule asks for, in (0, 1].
        max_edges: the largest δ-ball graph to build.
        device, threads, progress: the contract's; faiss runs on the CPU.
        group: a torch.distributed process group, or None. With a group, ``features`` is this
            rank's shard (ranks hold consecutive rows in rank order; shards may be empty),
            ``labeled`` is local to it, and the result is global row numbers, the same on every
            rank and equal to one process's picks on the whole pool. The shards' float32 rows are
            **gathered on rank 0**, which builds the graph and runs the greedy coverage (it needs
            memory for N x d float32 and the graph; the other ranks wait, so the group's timeout
            must exceed the run) and broadcasts the picks: the δ-ball graph links rows across
            shards (select_uncertain, bald, batchbald, kcenter_greedy, kmeans_pp and badge shard
            without moving anything of size N). Options must be equal on every rank (else every
            rank raises); an error of rank 0's run (e.g. ``max_edges``) is raised on every rank.

    Raises:
        ValueError: delta <= 0 (or the purity rule giving 0), a graph past ``max_edges``, and the
            contract's errors.
    """
    if group is not None:
        options = (delta, seed, pseudo_classes, purity, max_edges, device, threads, progress)
        return select_on_root(group, features, lambda: _shard_input(features, k, labeled, *options))
    features = as_array(features, "features")
    n, _ = check_float(features, "features", 2, "N rows x d features")
    call = common(features, n, k, labeled, "labeled", device=device, threads=threads, progress=progress,
                  of="features")
    options = _options(delta, seed, pseudo_classes, purity, max_edges)
    x = feature_matrix(features)
    if call.k == 0:
        return like_input(np.empty(0, dtype=np.int64), features)
    with call.limits():
        picks = _select(x, call.rows, call.k, **options)
    return like_input(picks, features)


def _options(delta: Any, seed: Any, pseudo_classes: Any, purity: Any, max_edges: Any) -> Dict[str, Any]:
    """The parsed options that shape the picks (keyword arguments of :func:`_select`)."""
    return {"seed": parse_seed(seed), "radius": None if delta is None else parse_positive_real(delta, "delta"),
            "classes": parse_int(pseudo_classes, "pseudo_classes", minimum=2),
            "purity": parse_real(purity, "purity", positive=True, maximum=1.0),
            "edges": parse_int(max_edges, "max_edges", minimum=1)}


def _select(x: np.ndarray, labelled: np.ndarray, k: int, *, seed: int, radius: Optional[float], classes: int,
            purity: float, edges: int) -> np.ndarray:
    """ProbCover on the checked float32 pool ``x`` (both routes run exactly this)."""
    if radius is None:
        radius = purity_delta(x, min(classes, x.shape[0]), purity, seed)
    indptr, indices = ball_graph(x, radius, edges)
    return greedy_coverage(indptr, indices, labelled, k, np.random.default_rng(seed))


def _shard_input(features: Any, k: Any, labeled: Any, delta: Any, seed: Any, pseudo_classes: Any, purity: Any,
                 max_edges: Any, device: Any, threads: Any, progress: Any) -> ShardInput:
    """This rank's checked arguments and float32 rows; rank 0 selects under its own thread limits."""
    return gathered_shard_input(features, k, labeled, lambda: _options(delta, seed, pseudo_classes, purity, max_edges),
                                _select, device=device, threads=threads, progress=progress)
