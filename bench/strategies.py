"""Strategies benchmark: BALD, BatchBALD, TypiClust, ProbCover and Cluster-Margin against reference
implementations written in the style of the public libraries (issue 17), in one run.

References (written here from the papers and the libraries' published designs, no code copied):

* BALD, baal / small-text style: the whole (T, N, C) float64 probability tensor materialised, the
  entropies in NumPy, a full ``argsort``;
* BatchBALD, loop-per-candidate style (the paper's and BatchBALD ports' greedy step): for every
  pick, a Python loop over the candidates, each computing its joint entropy over the exact joint
  of the picks so far;
* TypiClust, scikit-learn style (the authors' code): ``sklearn.cluster.KMeans`` (``MiniBatchKMeans``
  past 50 clusters) and ``sklearn.neighbors.NearestNeighbors`` inside the chosen clusters;
* ProbCover, scikit-activeml style: a dense N x N distance matrix (``pairwise_distances``), the
  boolean adjacency ``D < delta``, and a full N x N coverage count per pick;
* Cluster-Margin: ``sklearn.cluster.AgglomerativeClustering(linkage="average")`` on the whole pool
  (its N x N distance matrix), margins from a NumPy sort.

Ours: BALD is the compiled kernel (``csrc/bald_cpu.cpp``: each row's T x C values read once in
their stored dtype, one vector loop of double-precision exp/log polynomials, a streaming top-k);
BatchBALD, TypiClust, ProbCover and Cluster-Margin are NumPy + faiss.

Where a reference cannot run at a size, the row says "not run" with the memory it would need,
computed, not attempted. Timings: the best of two runs for asvp_fast, a single run for the
references; 'peak extra MB' is anonymous resident memory
above the level before the call (the input excluded); 'same picks' is the overlap with ours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

import asvp_fast as af
from asvp_fast.acquisition.cluster_margin import hac_clusters
from asvp_fast.core.threads import limit_threads
from measure import PeakAnonymousMemory

# A reference is not attempted when the memory it needs exceeds this (bytes).
REFERENCE_LIMIT = 8 << 30


# --- references -------------------------------------------------------------------------------------

def ref_bald(p: np.ndarray, k: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = p.mean(axis=0)
        h_mean = -np.nansum(mean * np.log(mean), axis=1)
        h_each = -np.nansum(p * np.log(p), axis=2).mean(axis=0)
    return np.argsort(-(h_mean - h_each), kind="stable")[:k]


def ref_batchbald(p: np.ndarray, k: int) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    t, n, c = p.shape
    cond = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0).sum(axis=2).mean(axis=0)
    joint = np.ones((t, 1))  # (T, configurations) of the picks so far
    picks: List[int] = []
    for _ in range(k):
        best, best_score = -1, -np.inf
        for j in range(n):  # the loop over candidates
            if j in picks:
                continue
            q = (joint[:, :, None] * p[:, j, None, :]).mean(axis=0)
            h = -np.where(q > 0, q * np.log(np.where(q > 0, q, 1)), 0).sum()
            score = h - cond[j]
            if score > best_score:
                best, best_score = j, score
        picks.append(best)
        joint = (joint[:, :, None] * p[:, best, None, :]).reshape(t, -1)
    return np.asarray(picks)


def ref_typiclust(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.neighbors import NearestNeighbors

    clusters = k
    km = (KMeans(clusters, n_init=1, random_state=seed) if clusters <= 50
          else MiniBatchKMeans(clusters, n_init=1, random_state=seed, batch_size=4096))
    labels = km.fit_predict(x)
    sizes = np.bincount(labels, minlength=clusters)
    counts = np.zeros(clusters)
    picks = []
    for _ in range(k):
        order = np.lexsort((-sizes, counts))
        cluster = order[0]
        rows = np.flatnonzero(labels == cluster)
        kk = min(20, rows.size - 1)
        if kk >= 1:
            dist, _ = NearestNeighbors(n_neighbors=kk + 1).fit(x[rows]).kneighbors(x[rows])
            typ = 1 / (dist[:, 1:].mean(axis=1) + 1e-5)
        else:
            typ = np.zeros(rows.size)
        typ[np.isin(rows, picks)] = -np.inf
        picks.append(int(rows[np.argmax(typ)]))
        counts[cluster] += 1
    return np.asarray(picks)


def ref_probcover(x: np.ndarray, k: int, delta: float) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    adjacency = pairwise_distances(x) < delta
    covered = np.zeros(x.shape[0], dtype=bool)
    picks = []
    for _ in range(k):
        coverage = (adjacency & ~covered).sum(axis=1)
        best = int(np.argmax(coverage))
        picks.append(best)
        covered |= adjacency[best]
    return np.asarray(picks)


def ref_cluster_margin(p: np.ndarray, x: np.ndarray, k: int, clusters: int, seed: int = 0) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    labels = AgglomerativeClustering(n_clusters=clusters, linkage="average").fit_predict(x)
    top2 = -np.sort(-p, axis=1)[:, :2]
    candidates = np.argsort(top2[:, 0] - top2[:, 1], kind="stable")[:10 * k]
    rng = np.random.default_rng(seed)
    groups = sorted((list(rng.permutation(candidates[labels[candidates] == c])) for c in np.unique(labels[candidates])),
                    key=len)
    picks: List[int] = []
    while len(picks) < k:
        for g in groups:
            if g and len(picks) < k:
                picks.append(int(g.pop()))
    return np.asarray(picks)


# --- cases --------------------------------------------------------------------------------------------

@dataclass
class Case:
    name: str
    ours: Callable[[], Any]
    reference: Optional[Callable[[], Any]]
    reference_name: str
    reference_bytes: int  # what the reference needs (its dominant allocation)
    ordered: bool = True  # compare picks as sets (False) or exactly


def _mc(t: int, n: int, c: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, c)) * 2 + 0.8 * rng.standard_normal((t, n, c))
    p = np.exp(logits - logits.max(axis=2, keepdims=True))
    return (p / p.sum(axis=2, keepdims=True)).astype(np.float32)


def _features(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((50, d)).astype(np.float32)
    return centres[rng.integers(0, 50, n)] + 0.5 * rng.standard_normal((n, d)).astype(np.float32)


def cases(quick: bool) -> List[Case]:
    out: List[Case] = []
    # BALD
    t, n, c, k = (20, 100_000, 10, 100) if quick else (20, 1_000_000, 10, 1000)
    p = _mc(t, n, c)
    out.append(Case(f"BALD T={t} N={n:,} C={c}, k={k}", lambda p=p, k=k: af.bald(p, k),
                    lambda p=p, k=k: ref_bald(p, k), "baal-style NumPy", p.size * 8 * 3))
    # BatchBALD (exact joint: C^(k-1) configurations at the last pick stay under the default 1000)
    t, n, c, k = (20, 2_000, 10, 4) if quick else (20, 20_000, 10, 4)
    pb = _mc(t, n, c, seed=1)
    out.append(Case(f"BatchBALD T={t} N={n:,} C={c}, k={k} (exact)", lambda p=pb, k=k: af.batchbald(p, k),
                    lambda p=pb, k=k: ref_batchbald(p, k), "loop per candidate", pb.size * 8))
    # TypiClust
    n, d, k = (20_000, 64, 20) if quick else (200_000, 384, 100)
    x = _features(n, d)
    out.append(Case(f"TypiClust {n:,} x {d}, k={k}", lambda x=x, k=k: af.typiclust(x, k),
                    lambda x=x, k=k: ref_typiclust(x, k), "sklearn KMeans + NearestNeighbors", x.nbytes * 2,
                    ordered=False))
    # ProbCover (a fixed delta, so both build the same graph)
    for n, d, k, run_ref in ((5_000, 32, 50, True), (50_000, 32, 50, False), (200_000, 384, 100, False)) if quick \
            else ((20_000, 64, 100, True), (200_000, 384, 100, False)):
        xp = _features(n, d, seed=2)
        delta = float(np.sqrt(d) * 0.5)
        ours: Callable[[], Any] = (lambda x=xp, k=k, delta=delta: af.probcover(x, k, delta=delta))
        out.append(Case(f"ProbCover {n:,} x {d}, k={k}, delta={delta:.2f}",
                        ours if (run_ref or not quick or n <= 50_000) else _skip,
                        (lambda x=xp, k=k, delta=delta: ref_probcover(x, k, delta)) if run_ref else None,
                        "scikit-activeml style (dense N x N)", n * n * 9))
    # Cluster-Margin (exact HAC on both sides)
    n, d, c, k = (3_000, 32, 10, 30) if quick else (4_000, 64, 10, 40)
    xc = _features(n, d, seed=3)
    pc = _mc(2, n, c, seed=3)[0]
    clusters = int(np.ceil(np.sqrt(n)))
    out.append(Case(f"Cluster-Margin {n:,} x {d}, k={k}", lambda p=pc, x=xc, k=k: af.cluster_margin(p, x, k),
                    lambda p=pc, x=xc, k=k: ref_cluster_margin(p, x, k, clusters), "sklearn AgglomerativeClustering",
                    n * n * 8, ordered=False))
    clustering = hac_clusters(xc, clusters)  # the first round's, kept
    out.append(Case(f"Cluster-Margin {n:,} x {d}, k={k}, a later round (clustering reused)",
                    lambda p=pc, k=k, c=clustering: af.cluster_margin(p, None, k, clustering=c),
                    lambda p=pc, x=xc, k=k: ref_cluster_margin(p, x, k, clusters), "sklearn AgglomerativeClustering",
                    n * n * 8, ordered=False))
    n = 200_000
    big: Callable[[], Any] = _skip
    if not quick:  # the micro-cluster path of the clustering (past exact HAC)
        xb, pbig = _features(n, 384, seed=4), _mc(2, n, 10, seed=4)[0]
        big = (lambda p=pbig, x=xb: af.cluster_margin(p, x, 100))
    out.append(Case(f"Cluster-Margin {n:,} x 384, k=100", big, None, "sklearn AgglomerativeClustering", n * n * 8,
                    ordered=False))
    return out


def _skip() -> None:
    return None


def _timed(fn: Callable[[], Any]) -> Tuple[float, float, Any]:
    with PeakAnonymousMemory() as mem:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return seconds, mem.peak_extra / 2**20, result


def _gb(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.0f} MB"


def run_suite(quick: bool, threads: int = 0, log: Callable[[str], None] = print) -> str:
    rows = ["| case | asvp_fast s | asvp_fast peak extra MB | reference | reference s | reference peak extra MB | "
            "speed-up | same picks |", "|---|---:|---:|---|---:|---:|---:|---:|"]
    with limit_threads(threads, ("torch", "faiss", "blas")):  # 0: all cores, for ours and the references
        for case in cases(quick):
            rows.append(_row(case, log))
    return "\n".join(rows)


def _row(case: Case, log: Callable[[str], None]) -> str:
    log(f"strategies: {case.name}")
    ours_cell = ("not run here (quick)", "")
    ours_s = None
    picks = None
    if case.ours is not _skip:  # best of two (the first call pays imports and faiss/BLAS warm-up)
        ours_s, ours_mb, picks = min(_timed(case.ours), _timed(case.ours), key=lambda r: r[0])
        ours_cell = (f"{ours_s:.3f}", f"{ours_mb:.0f}")
    if case.reference is None or case.reference_bytes > REFERENCE_LIMIT:
        ref_cells = [f"not run: would need {_gb(case.reference_bytes)}", "", ""]
        speed, same = "", ""
    else:
        ref_s, ref_mb, ref_picks = _timed(case.reference)
        ref_cells = [f"{ref_s:.3f}", f"{ref_mb:.0f}", ""]
        speed = f"{ref_s / ours_s:.1f}x" if ours_s else ""
        mine = np.asarray(picks).tolist()
        theirs = np.asarray(ref_picks).tolist()
        same = (f"{sum(a == b for a, b in zip(mine, theirs))}/{len(mine)} in order" if case.ordered
                else f"{len(set(mine) & set(theirs))}/{len(mine)}")
    return (f"| {case.name} | {ours_cell[0]} | {ours_cell[1]} | {case.reference_name} | "
            f"{ref_cells[0]} | {ref_cells[1]} | {speed} | {same} |")
