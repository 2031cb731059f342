"""The pool side of ActiveFT (:mod:`.activeft`): the checks of the pool's shape and labelled rows,
the rows as a validated, L2-normalised float32 working copy, and the final step that gives every
optimised centroid a distinct nearest row.

Both work on NumPy arrays without autograd; the optimisation of the centroids in between lives
in :mod:`.activeft`.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from ..core.checks import is_torch_tensor, parse_rows

# Source rows are converted and normalised in blocks of about this many float64 bytes, so a
# float16 memmap never needs a second full-size temporary.
NORMALISE_CHUNK_BYTES = 64 << 20
# Similarity tiles and gathered feature blocks hold at most this many elements (16 MB float32).
TILE_ELEMENTS = 1 << 22
# Candidates per centroid in the first nearest-sample search of the final assignment.
INITIAL_CANDIDATES = 16


def rows_per_tile(columns: int) -> int:
    """Rows of a (rows x columns) float32 tile of at most :data:`TILE_ELEMENTS` elements."""
    return max(1, TILE_ELEMENTS // max(1, columns))


# --------------------------------------------------------------------------------------------
# Argument checks of the pool (ActiveFT's own, looser than the float-only strategy inputs)
# --------------------------------------------------------------------------------------------


def feature_shape(features: Any) -> Tuple[int, int]:
    """(N, d) of a 2-D numeric array or tensor; rejects other ndims and non-numeric dtypes."""
    if is_torch_tensor(features):
        if features.dtype == torch.bool or features.is_complex():
            raise TypeError(f"features must be real numbers, got a tensor of {features.dtype}")
        shape = tuple(features.shape)
    else:
        arr = features if isinstance(features, np.ndarray) else np.asarray(features)
        if not numeric_dtype(arr.dtype):
            raise TypeError(f"features must be real numbers, got dtype {arr.dtype}")
        shape = arr.shape
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D (N, d), got {len(shape)}-D with shape {shape}")
    if shape[1] == 0 and shape[0] > 0:
        raise ValueError("features have 0 columns: rows without components cannot be normalised")
    return int(shape[0]), int(shape[1])


def numeric_dtype(dtype: np.dtype) -> bool:
    # bfloat16 from ml_dtypes has kind 'V'; accept it by name.
    return dtype.kind in "fiu" or dtype.name == "bfloat16"


def labelled_rows(labeled: Any, n: int) -> np.ndarray:
    """Sorted int64 indices of the labelled rows, from an index array or a bool mask."""
    if labeled is None:
        return np.empty(0, dtype=np.int64)
    # the same checks (and messages) as the diversity kernels' `labeled`
    return np.sort(parse_rows(labeled, n, "labeled", unique=True, of="features"))


# --------------------------------------------------------------------------------------------
# Working copy: validated, normalised float32
# --------------------------------------------------------------------------------------------


def available_memory() -> Optional[int]:
    """Bytes the kernel reports as available (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _row_block(features: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as float64 (exact for every supported input dtype)."""
    if is_torch_tensor(features):
        block: np.ndarray = features[start:stop].detach().to(device="cpu", dtype=torch.float64).numpy()
        return block
    return np.asarray(features[start:stop], dtype=np.float64)


def normalised_float32(features: Any) -> np.ndarray:
    """L2-normalised float32 copy of the rows, built block by block.

    Each block is widened to float64 first: the check for NaN/Inf, the norm and the division
    then behave the same for every input dtype, so a float16 memmap and the float32 array of
    the same values give bit-identical copies (and picks).
    """
    if not is_torch_tensor(features) and not isinstance(features, np.ndarray):
        features = np.asarray(features)
    n, d = int(features.shape[0]), int(features.shape[1])
    needed = n * d * 4
    available = available_memory()
    if available is not None and needed > available:
        raise MemoryError(
            f"ActiveFT needs a float32 working copy of the features ({needed / 2**30:.2f} GiB for "
            f"{n} x {d}) but only {available / 2**30:.2f} GiB of memory is available; reduce the "
            "pool or the feature dimension"
        )
    out = np.empty((n, d), dtype=np.float32)
    step = max(1, NORMALISE_CHUNK_BYTES // max(1, d * 8))
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = _row_block(features, start, stop)
        _check_finite(block, start)
        out[start:stop] = _normalise_block(block, start)
    return out


def _normalise_block(block: np.ndarray, offset: int) -> np.ndarray:
    """Finite float64 rows divided by their Euclidean norms; a row of zeros is an error.

    The plain x / sqrt(sum x^2) serves every ordinary row (so their copies stay bit-identical
    to earlier releases); rows whose squared norm leaves the float64 range (entries beyond
    ~1e154 or below ~1e-154) are divided by their largest magnitude first.
    """
    with np.errstate(over="ignore"):  # an overflowing row is caught just below
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    odd = ~((norms > 0) & np.isfinite(norms))
    if not odd.any():
        return block / norms[:, None]
    scale = np.abs(block[odd]).max(axis=1)
    if not (scale > 0).all():
        row = offset + int(np.flatnonzero(odd)[np.argmin(scale > 0)])
        raise ValueError(f"features row {row} has zero norm and cannot be L2-normalised; drop it from the pool")
    scaled = block[odd] / scale[:, None]
    result = block / np.where(odd, 1.0, norms)[:, None]
    result[odd] = scaled / np.sqrt(np.einsum("ij,ij->i", scaled, scaled))[:, None]
    return result


def _check_finite(block: np.ndarray, offset: int) -> None:
    bad_rows = ~np.isfinite(block).all(axis=1)
    if bad_rows.any():
        row = offset + int(np.argmax(bad_rows))
        raise ValueError(f"features row {row} contains NaN or Inf")


# --------------------------------------------------------------------------------------------
# Final assignment: each centroid to a distinct nearest row
# --------------------------------------------------------------------------------------------


def top_candidates(queries: np.ndarray, x: np.ndarray, m: int, backend: str) -> Tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest inner products of every query with the rows of ``x``.

    Each row of the result is ordered by decreasing similarity, equal similarities by
    increasing row index. Exact search: every row outside a query's list has a similarity no
    larger than the list's last one.
    """
    if backend == "faiss":
        import faiss

        sims, ids = faiss.knn(np.ascontiguousarray(queries), x, m, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        sims, ids = _torch_top_candidates(queries, x, m)
    order = np.lexsort((ids, -sims), axis=1)
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _torch_top_candidates(queries: np.ndarray, x: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fallback without faiss: tiled matmul over the rows, merging a running top-m."""
    q = torch.from_numpy(np.ascontiguousarray(queries))
    xt = torch.from_numpy(x)
    best_s = torch.full((q.shape[0], 0), -math.inf)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    step = max(m, rows_per_tile(q.shape[0]))
    for start in range(0, xt.shape[0], step):
        stop = min(xt.shape[0], start + step)
        sims = q @ xt[start:stop].T
        ids = torch.arange(start, stop).expand(q.shape[0], -1)
        cat_s = torch.cat([best_s, sims], dim=1)
        cat_i = torch.cat([best_i, ids], dim=1)
        keep = min(m, cat_s.shape[1])
        best_s, pos = cat_s.topk(keep, dim=1)
        best_i = cat_i.gather(1, pos)
    return best_s.numpy(), best_i.numpy()


def _default_backend() -> str:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss"


class _Candidates:
    """Per-centroid candidate lists, grown on demand."""

    def __init__(self, sims: np.ndarray, ids: np.ndarray, n_rows: int) -> None:
        self.sims: List[np.ndarray] = list(sims)
        self.ids: List[np.ndarray] = list(ids)
        self.size = np.full(sims.shape[0], sims.shape[1], dtype=np.int64)
        self.n_rows = n_rows

    def replace(self, centroids: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> None:
        for row, c in enumerate(centroids):
            self.sims[c], self.ids[c] = sims[row], ids[row]
            self.size[c] = sims.shape[1]

    def choose(self, c: int, taken: np.ndarray) -> int:
        """Centroid c's best untaken row (highest similarity, then lowest index), or -1 if its
        list cannot prove which row that is."""
        ids = self.ids[c]
        free = ~taken[ids]
        if not free.any():
            return -1
        j = int(np.argmax(free))
        complete = self.size[c] >= self.n_rows
        # At the list's last similarity value, a row outside the list may tie with a lower index.
        if not complete and self.sims[c][j] <= self.sims[c][-1]:
            return -1
        return int(ids[j])


def unique_nearest_assignment(x: np.ndarray, centroids: np.ndarray, excluded: Optional[np.ndarray] = None, *,
                               initial_candidates: int = INITIAL_CANDIDATES,
                               backend: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Give every centroid a distinct nearest row by inner product, greedily.

    The rule (what a brute-force scan computes): centroids are taken in decreasing order of
    their largest similarity to any row (ties: lower centroid index first); each takes, among the
    rows not yet taken and not ``excluded``, the one of highest similarity (ties: lower row
    index).

    The fast path finds the top ``m`` rows of every centroid in one exact search (faiss, or a
    tiled torch matmul), runs the greedy pass over those lists, and when a centroid's list is
    exhausted -- every candidate taken, or the first free one ties with the list's last value,
    so a row outside the list might come first -- searches again with a doubled ``m``, only for
    that centroid and for the later ones that a look-ahead pass finds would be stuck too, then
    resumes at that centroid. The result is exactly the brute-force rule's.

    Complexity: the first search costs O(k N d) multiply-adds (one BLAS product) plus
    O(k N log m) for the top-m selection and O(k m) memory; the greedy pass is O(k m). A search
    round for the u stuck centroids costs O(u N d); with few collisions there are none or a few
    small ones. Worst case (e.g. all rows identical) m doubles up to N: O(log N) rounds. The
    reference implementation instead sorts the whole pool for every centroid, O(k N log N)
    time and O(k N) memory per slice.

    Parameters
    ----------
    x : (N, d) float32, C-contiguous
    centroids : (k, d) float32, k <= number of rows not excluded
    excluded : (N,) bool, optional
        Rows that may not be assigned.
    initial_candidates : int
        ``m`` of the first search.
    backend : {"faiss", "torch"}, optional
        Default: faiss when importable.

    Returns
    -------
    assigned : (k,) int64
        ``assigned[c]`` is the row of centroid ``c``.
    order : (k,) int64
        The centroids in the order they were served.
    """
    backend = backend or _default_backend()
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    n, k = x.shape[0], centroids.shape[0]
    taken = np.zeros(n, dtype=bool) if excluded is None else np.array(excluded, dtype=bool, copy=True)
    if k > n - int(taken.sum()):
        raise ValueError(f"cannot assign {k} centroids to {n - int(taken.sum())} available rows")
    if not (np.isfinite(centroids).all() and np.isfinite(x).all()):
        # NaN similarities compare false both ways and would break the exhaustion test.
        raise ValueError("rows and centroids must be finite")
    assigned = np.full(k, -1, dtype=np.int64)
    if k == 0:
        return assigned, np.empty(0, dtype=np.int64)

    m = min(n, max(1, initial_candidates))
    sims, ids = top_candidates(centroids, x, m, backend)
    order = np.lexsort((np.arange(k), -sims[:, 0]))
    candidates = _Candidates(sims, ids, n)

    pos = 0
    while True:
        pos = _greedy_pass(order, pos, candidates, taken, assigned)
        if pos == k:
            return assigned, order.astype(np.int64)
        stuck = _stuck_after(order, pos, candidates, taken)
        m = min(n, 2 * int(candidates.size[stuck].max()))
        new_sims, new_ids = top_candidates(centroids[stuck], x, m, backend)
        candidates.replace(stuck, new_sims, new_ids)


def _greedy_pass(order: np.ndarray, pos: int, candidates: _Candidates, taken: np.ndarray,
                 assigned: np.ndarray) -> int:
    """Serve centroids from ``order[pos]`` on; return the position of the first stuck one."""
    while pos < order.shape[0]:
        c = int(order[pos])
        row = candidates.choose(c, taken)
        if row < 0:
            break
        taken[row] = True
        assigned[c] = row
        pos += 1
    return pos


def _stuck_after(order: np.ndarray, pos: int, candidates: _Candidates, taken: np.ndarray) -> np.ndarray:
    """The stuck centroid ``order[pos]`` plus the later ones that would get stuck too.

    Look-ahead: continue the pass as if the stuck centroid took nothing, marking rows taken
    tentatively (undone before returning), so one search round serves many stuck centroids.
    """
    stuck = [int(order[pos])]
    marked = []
    for c in order[pos + 1:]:
        row = candidates.choose(int(c), taken)
        if row < 0:
            stuck.append(int(c))
        else:
            taken[row] = True
            marked.append(row)
    taken[marked] = False
    return np.asarray(stuck, dtype=np.int64)
