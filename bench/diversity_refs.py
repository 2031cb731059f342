"""Reference diversity-sampling implementations for the diversity benchmark.

These functions reproduce, in plain Python/NumPy/SciPy/torch, the *styles* of the k-center
greedy (core-set) and BADGE k-means++ selection found in public active-learning libraries
(google/active-learning, LabelBench, the BADGE reference code), so that our compiled kernels
can be compared against them on the same data. They were written for this project; they
follow those libraries' algorithms and cost profiles, not their code.

Also here: chunked synthetic-data generators (in memory or as memmaps) and a brute-force
checker of the k-center greedy invariant. Every selector returns an int64 array of picks
in order. scipy, scikit-learn and torch are optional: each is imported only inside the functions that use it.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Iterator, Optional, Tuple

import numpy as np
if TYPE_CHECKING:  # torch is optional for the benchmark: imported where used
    import torch

# Within-cluster standard deviation relative to the N(0, 1) centres. A point lies about
# 0.7*sqrt(d) from its centre while centres are about 1.41*sqrt(d) apart, so each cluster's
# shell reaches roughly halfway to its neighbours: separated, but touching.
_SPREAD = 0.7
# Rows generated per chunk are chosen so a float32 chunk is ~16 MiB whatever d is; keeping
# it a function of d only makes the data identical for the in-memory and memmap variants.
_CHUNK_ELEMS = 1 << 22


def _clustered_chunks(n: int, d: int, clusters: int, seed: int, spread: float = _SPREAD) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (start row, float32 chunk) of the Gaussian mixture, in row order."""
    rng = np.random.default_rng(seed)
    # Dirichlet(1) proportions give uneven cluster sizes (some large, some tiny).
    props = rng.dirichlet(np.ones(clusters))
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    step = max(1, _CHUNK_ELEMS // max(d, 1))
    for s in range(0, n, step):
        rows = min(step, n - s)
        labels = rng.choice(clusters, size=rows, p=props)
        yield s, rng.standard_normal((rows, d), dtype=np.float32) * np.float32(spread) + centres[labels]


def _reopen_readonly(mm: np.memmap) -> np.memmap:
    """Flush a freshly written memmap and reopen its file read-only (mode "r")."""
    mm.flush()
    assert mm.filename is not None  # always set for a memmap opened from a path
    return np.memmap(mm.filename, dtype=mm.dtype, mode="r", shape=mm.shape)


def make_clustered(n: int, d: int, *, clusters: int = 100, dtype=np.float32, seed: int = 0,
                   spread: float = _SPREAD) -> np.ndarray:
    """N x d Gaussian mixture (centres ~ N(0, I), points = centre + N(0, 0.7^2 I)), chunked:
    peak memory is the output plus one ~16 MiB float32 chunk."""
    out = np.empty((n, d), dtype=dtype)
    for s, chunk in _clustered_chunks(n, d, clusters, seed, spread):
        out[s:s + len(chunk)] = chunk
    return out


def make_clustered_memmap(path: str, n: int, d: int, *, clusters: int = 100, dtype=np.float16,
                          seed: int = 0, spread: float = _SPREAD) -> np.memmap:
    """Same data as make_clustered, written chunk by chunk to `path`; returned opened read-only."""
    mm = np.memmap(path, dtype=dtype, mode="w+", shape=(n, d))
    for s, chunk in _clustered_chunks(n, d, clusters, seed, spread):
        mm[s:s + len(chunk)] = chunk
    return _reopen_readonly(mm)


def _badge_chunks(n: int, c: int, d: int, seed: int,
                  spread: float = _SPREAD) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """Yield (start, float64 probabilities, float32 features) chunks."""
    rng = np.random.default_rng([seed, 1])  # independent of the feature stream
    w = rng.standard_normal((d, c), dtype=np.float32) / np.float32(np.sqrt(d))
    for s, feats in _clustered_chunks(n, d, 100, seed, spread):
        # Per-row inverse temperature, log-uniform in [0.5, 8]: near-uniform to confident rows.
        scale = np.exp(rng.uniform(np.log(0.5), np.log(8.0), size=len(feats)))
        logits = (feats @ w).astype(np.float64) * scale[:, None]
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)  # renormalised in float64, before any cast
        yield s, p, feats


def _fill_badge(probs: np.ndarray, feats: np.ndarray, seed: int, spread: float = _SPREAD) -> None:
    (n, c), d = probs.shape, feats.shape[1]
    for s, p, h in _badge_chunks(n, c, d, seed, spread):
        probs[s:s + len(p)] = p
        feats[s:s + len(h)] = h


def make_badge_inputs(n: int, c: int, d: int, *, seed: int = 0, dtype=np.float32,
                      spread: float = _SPREAD) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities N x C, features N x d): softmax of a random linear map of clustered features."""
    probs, feats = np.empty((n, c), dtype=dtype), np.empty((n, d), dtype=dtype)
    _fill_badge(probs, feats, seed, spread)
    return probs, feats


def make_badge_memmaps(dir: str, n: int, c: int, d: int, *, seed: int = 0, dtype=np.float16,
                       spread: float = _SPREAD) -> Tuple[np.memmap, np.memmap]:
    """Same data as make_badge_inputs, as read-only memmaps dir/probs.bin and dir/features.bin."""
    os.makedirs(dir, exist_ok=True)
    probs = np.memmap(os.path.join(dir, "probs.bin"), dtype=dtype, mode="w+", shape=(n, c))
    feats = np.memmap(os.path.join(dir, "features.bin"), dtype=dtype, mode="w+", shape=(n, d))
    _fill_badge(probs, feats, seed, spread)
    return _reopen_readonly(probs), _reopen_readonly(feats)


def _labeled_array(labeled: Optional[np.ndarray]) -> np.ndarray:
    return np.empty(0, np.int64) if labeled is None else np.asarray(labeled, dtype=np.int64).ravel()


# ----------------------------------------------------------------------------- k-center greedy

def kcenter_sklearn_style(x: np.ndarray, k: int, first: int,
                          labeled: Optional[np.ndarray] = None) -> np.ndarray:
    """google/active-learning / LabelBench k-center greedy: pairwise_distances per new centre.

    Distances are non-squared Euclidean (argmax is unchanged). The originals rely on a chosen
    row's distance becoming 0; we set it to -inf so float rounding can never re-pick it.
    Note sklearn converts non-float32 input (e.g. float16) to float64 on every call.
    """
    from sklearn.metrics import pairwise_distances

    def update_distances(min_d: Optional[np.ndarray], centers: np.ndarray) -> np.ndarray:
        dist = pairwise_distances(x, x[centers], metric="euclidean").min(axis=1, keepdims=True)
        return dist if min_d is None else np.minimum(min_d, dist)

    lab = _labeled_array(labeled)
    min_d: Optional[np.ndarray] = None
    # Blocks of labelled centres bound the N x L matrix the original builds in one go.
    for b in range(0, lab.size, 1024):
        min_d = update_distances(min_d, lab[b:b + 1024])
    if min_d is not None:
        min_d[lab] = -np.inf
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        picks[t] = int(first) if min_d is None else int(np.argmax(min_d))
        min_d = update_distances(min_d, picks[t:t + 1])
        min_d[picks[t]] = -np.inf
    return picks


def _f32_chunk(x: np.ndarray, s: int, e: int) -> np.ndarray:
    # Converts one row block at a time so float16 input is never doubled in memory.
    return np.asarray(x[s:e], dtype=np.float32)


def _sq_norms_f32(x: np.ndarray, chunk_rows: int) -> np.ndarray:
    chunks = (_f32_chunk(x, s, s + chunk_rows) for s in range(0, x.shape[0], chunk_rows))
    return np.concatenate([np.einsum("ij,ij->i", xc, xc) for xc in chunks] or [np.empty(0, np.float32)])


def kcenter_numpy_incremental(x: np.ndarray, k: int, first: int, labeled: Optional[np.ndarray] = None,
                              chunk_rows: int = 65536) -> np.ndarray:
    """Vectorised incremental k-center greedy in float32: one GEMV per pick, chunked over rows.
    min squared distance = min(|x|^2 + |c|^2 - 2 x.c); picked/labelled rows are held at -inf."""
    n = x.shape[0]
    lab = _labeled_array(labeled)
    sq = _sq_norms_f32(x, chunk_rows)
    min_d = np.full(n, np.inf, dtype=np.float32)
    if lab.size:
        for b in range(0, lab.size, 64):  # 64 centres at a time keeps chunk x block temps small
            cb = lab[b:b + 64]
            xl = _f32_chunk(x[cb], 0, len(cb))
            for s in range(0, n, chunk_rows):
                xc = _f32_chunk(x, s, s + chunk_rows)
                dist = sq[s:s + len(xc), None] + sq[None, cb] - 2.0 * (xc @ xl.T)
                np.minimum(min_d[s:s + len(xc)], dist.min(axis=1), out=min_d[s:s + len(xc)])
        min_d[lab] = -np.inf
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        ind = int(first) if (t == 0 and not lab.size) else int(np.argmax(min_d))
        picks[t] = ind
        c = _f32_chunk(x, ind, ind + 1)[0]
        for s in range(0, n, chunk_rows):
            xc = _f32_chunk(x, s, s + chunk_rows)
            dist = sq[s:s + len(xc)] + sq[ind] - 2.0 * (xc @ c)
            np.minimum(min_d[s:s + len(xc)], dist, out=min_d[s:s + len(xc)])
        min_d[ind] = -np.inf
    return picks


def _torch_f32_chunk(x: np.ndarray, s: int, e: int) -> "torch.Tensor":
    import torch

    a = np.ascontiguousarray(x[s:e])
    with warnings.catch_warnings():
        # Read-only memmaps trigger a "not writable" warning; we never write through it.
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(a)
    return t.float()  # no copy for float32; float16 is converted by torch, chunk by chunk


def kcenter_torch_incremental(x: np.ndarray, k: int, first: int, labeled: Optional[np.ndarray] = None,
                              chunk_rows: int = 65536) -> np.ndarray:
    """Same algorithm as kcenter_numpy_incremental with torch CPU ops (addmv per chunk), float32."""
    import torch

    n = x.shape[0]
    lab = _labeled_array(labeled)
    sq = torch.from_numpy(_sq_norms_f32(x, chunk_rows))  # same float32 norms as the NumPy path
    min_d = torch.full((n,), float("inf"), dtype=torch.float32)
    if lab.size:
        for b in range(0, lab.size, 64):
            cb = torch.from_numpy(lab[b:b + 64])
            xl = _torch_f32_chunk(x[lab[b:b + 64]], 0, len(cb))
            for s in range(0, n, chunk_rows):
                xc = _torch_f32_chunk(x, s, s + chunk_rows)
                dist = torch.addmm(sq[s:s + len(xc), None] + sq[cb][None, :], xc, xl.T, alpha=-2.0)
                view = min_d[s:s + len(xc)]
                torch.minimum(view, dist.min(dim=1).values, out=view)
        min_d[torch.from_numpy(lab)] = float("-inf")
    picks = np.empty(k, dtype=np.int64)
    for t in range(k):
        ind = int(first) if (t == 0 and not lab.size) else int(torch.argmax(min_d))
        picks[t] = ind
        c = _torch_f32_chunk(x, ind, ind + 1)[0]
        for s in range(0, n, chunk_rows):
            xc = _torch_f32_chunk(x, s, s + chunk_rows)
            dist = torch.addmv(sq[s:s + len(xc)] + sq[ind], xc, c, alpha=-2.0)
            view = min_d[s:s + len(xc)]
            torch.minimum(view, dist, out=view)
        min_d[ind] = float("-inf")
    return picks


# ----------------------------------------------------------------------------------- BADGE

def _residuals_f64(p: np.ndarray) -> np.ndarray:
    """q = p - onehot(argmax p) in float64: BADGE's last-layer gradient factor."""
    q = np.array(p, dtype=np.float64)
    q[np.arange(len(q)), q.argmax(axis=1)] -= 1.0
    return q


def badge_labelbench_style(probs: np.ndarray, features: np.ndarray, k: int, seed: int = 0,
                           chunk_rows: int = 65536) -> np.ndarray:
    """LabelBench / BADGE-reference k-means++ on the factorised gradient embedding g = q (x) h.

    Float64 throughout, as those libraries compute. |g_i - g_c|^2 =
    |q_i|^2|h_i|^2 + |q_c|^2|h_c|^2 - 2 (q_i.q_c)(h_i.h_c). First pick is argmax |g|^2; each
    later pick is drawn from a scipy rv_discrete rebuilt every step (the slow anchor style).
    """
    from scipy.stats import rv_discrete

    n = probs.shape[0]
    rng = np.random.default_rng(seed)
    norms = np.empty(n)  # |g_i|^2 = |q_i|^2 |h_i|^2
    for s in range(0, n, chunk_rows):
        q, h = _residuals_f64(probs[s:s + chunk_rows]), np.asarray(features[s:s + chunk_rows], np.float64)
        norms[s:s + len(q)] = np.einsum("ij,ij->i", q, q) * np.einsum("ij,ij->i", h, h)
    d2 = np.full(n, np.inf)
    picked = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    ind = int(np.argmax(norms))
    for t in range(k):
        picks[t] = ind
        picked[ind] = True
        if t == k - 1:
            break
        qc, hc = _residuals_f64(probs[ind:ind + 1])[0], np.asarray(features[ind], np.float64)
        for s in range(0, n, chunk_rows):
            q, h = _residuals_f64(probs[s:s + chunk_rows]), np.asarray(features[s:s + chunk_rows], np.float64)
            dist = norms[s:s + len(q)] + norms[ind] - 2.0 * (q @ qc) * (h @ hc)
            np.minimum(d2[s:s + len(q)], dist, out=d2[s:s + len(q)])
        np.maximum(d2, 0.0, out=d2)  # cancellation can leave tiny negatives
        d2[picked] = 0.0  # chosen rows get probability 0
        total = d2.sum()
        if total <= 0.0:  # every remaining row coincides with a centre: take any unpicked one
            ind = int(np.flatnonzero(~picked)[0])
            continue
        dist_rv = rv_discrete(values=(np.arange(n), d2 / total))
        ind = int(dist_rv.rvs(random_state=rng))
    return picks


def materialised_bytes(n: int, c: int, d: int) -> int:
    """Bytes of the explicit float32 N x (C*d) gradient embedding, for reporting without allocating."""
    return n * c * d * 4


def badge_materialised(probs: np.ndarray, features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Explicit gradient embedding G (float32, N x C*d) seeded with sklearn.cluster.kmeans_plusplus.

    Caveat: sklearn picks its first centre uniformly at random and uses greedy local trials
    (2 + log k candidates per step), so its picks differ from BADGE's argmax-norm start.
    """
    from sklearn.cluster import kmeans_plusplus

    q = np.array(probs, dtype=np.float32)
    q[np.arange(len(q)), q.argmax(axis=1)] -= 1.0
    h = np.asarray(features, dtype=np.float32)
    g = (q[:, :, None] * h[:, None, :]).reshape(len(q), -1)
    _, indices = kmeans_plusplus(g, k, random_state=seed)
    return np.asarray(indices, dtype=np.int64)


# --------------------------------------------------------------------------------- checking

def brute_force_greedy_check(x: np.ndarray, picks: np.ndarray, labeled: Optional[np.ndarray] = None,
                             chunk_rows: int = 4096) -> float:
    """Largest violation of the k-center greedy invariant (Euclidean, float64, exact differences).

    At each step t (from the first that has a centre), the chosen row's distance to its nearest
    earlier centre (labelled rows or picks[:t]) must equal the maximum over the remaining
    candidates. Returns max(best - chosen) over steps; 0.0 means exactly greedy. Small N only.
    """
    n = x.shape[0]
    lab = _labeled_array(labeled)
    min_d = np.full(n, np.inf)
    taken = np.zeros(n, dtype=bool)

    def add_centre(i: int) -> None:
        c = np.asarray(x[i], dtype=np.float64)
        for s in range(0, n, chunk_rows):
            diff = np.asarray(x[s:s + chunk_rows], dtype=np.float64) - c
            np.minimum(min_d[s:s + len(diff)], np.sqrt(np.einsum("ij,ij->i", diff, diff)),
                       out=min_d[s:s + len(diff)])
        taken[i] = True

    for i in lab:
        add_centre(int(i))
    worst = 0.0
    for p in np.asarray(picks, dtype=np.int64):
        if taken.any() and not taken.all():
            best = float(min_d[~taken].max())
            chosen = float(min_d[p])  # 0 if p was already a centre: flagged as a violation
            worst = max(worst, best - chosen)
        add_centre(int(p))
    return worst
