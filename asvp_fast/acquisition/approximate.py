"""APPROXIMATE two-round diversity selection over row shards: GreeDi k-center and k-means|| seeding.

Everything else that takes ``group=`` (:mod:`.distributed`) returns exactly one process's picks,
at the price of a few collectives per pick (k rounds for k-center and k-means++). The two
functions here do NOT: they give up exactness for a fixed number of collective rounds that does
not grow with k, which pays off with many ranks or slow collectives (several hosts, high latency).
With ``group=None`` they run the same steps in one process (every collective is the identity).

- :func:`kcenter_greedi` (Mirzasoleiman et al. 2013): exact greedy k-center on each shard, then
  exact greedy over the union of the shards' candidates. Two rounds, O(W·m·d + L·d) traffic.
- :func:`kmeans_parallel` (Bahmani et al. 2012, "Scalable k-means++"): R rounds of independent
  oversampling by D², then weighted k-means++ over the sampled candidates. 2R + 5 collectives.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..core.arrays import as_operand, check_float_matrix
from ..core.checks import (
    is_torch_tensor,
    parse_count,
    parse_int,
    parse_real,
    parse_rows,
    parse_seed,
    parse_threads,
)
from ..core.threads import limit_threads
from .distributed import Shards, as_result, check_budget
from .diversity import kcenter_greedy

__all__ = ["kcenter_greedi", "kmeans_parallel"]


class _OneProcess:
    """What the selections use of :class:`.distributed.Shards`, for ``group=None``: one rank
    holding the whole pool, so every collective hands back this rank's own value."""

    rank, world = 0, 1

    def __init__(self) -> None:
        self.offsets = [0, 0]

    def agree(self, prepare: Callable[[], Tuple[Any, Dict[str, Any]]], same: Tuple[str, ...]) -> Tuple[Any, List]:
        data, summary = prepare()  # one summary agrees with itself: ``same`` has nothing to check
        self.offsets = [0, int(summary["rows"])]
        return data, [summary]

    def gather_objects(self, value: Any) -> List[Any]:
        return [value]

    def share_from_root(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        return np.ascontiguousarray(compute(), dtype=np.int64)

    @property
    def offset(self) -> int:
        return 0

    @property
    def total(self) -> int:
        return self.offsets[-1]


def _shards(group: Any) -> Any:
    return _OneProcess() if group is None else Shards(group)


def _host_rows(features: Any, rows: np.ndarray, dtype: Any) -> np.ndarray:
    """Rows ``rows`` of a shard on the host as ``dtype`` (a memmap reads only those rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    if is_torch_tensor(features):
        import torch

        index = torch.as_tensor(rows, device=features.device)
        return features.detach().index_select(0, index).to(torch.float64).cpu().numpy().astype(dtype)
    return np.asarray(features[rows], dtype=dtype)


def _host_block(features: Any, lo: int, hi: int) -> np.ndarray:
    """Rows lo..hi-1 of a shard as host float64 (exact for every accepted dtype)."""
    if is_torch_tensor(features):
        import torch

        return features[lo:hi].detach().to(torch.float64).cpu().numpy()
    return np.asarray(features[lo:hi], dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# GreeDi k-center

def kcenter_greedi(
    features: Any,
    k: int,
    *,
    labeled: Any = None,
    seed: int = 0,
    candidates_per_rank: Optional[int] = None,
    device: str = "auto",
    threads: Optional[int] = None,
    group: Any = None,
) -> Any:
    """APPROXIMATE greedy k-center over row shards in two rounds (GreeDi; Mirzasoleiman et al. 2013).

    **Not** the picks of :func:`~.diversity.kcenter_greedy` on the whole pool (except with one
    shard). Round 1: every rank runs exact greedy k-center on its own shard, its own labelled
    rows as centres, and picks ``m = candidates_per_rank`` candidates (fewer if its shard has
    fewer unlabelled rows). Round 2: the candidates' and every labelled row's vectors (float32)
    go to rank 0, which runs exact greedy k-center over the candidates (ordered by global row),
    the labelled vectors as centres, and broadcasts the k picks. With no labelled rows round 2's
    first pick is drawn uniformly among the candidates with ``seed``. One shard (``group=None``
    or a group of one) is exact greedy: its first k round-1 picks.

    Guarantee: with no labelled rows and ``m >= k`` the covering radius (largest distance of a row
    to its nearest pick) is at most 4 x the optimal k-center radius (Malkomes et al. 2015), where
    exact greedy's is at most 2 x; with labelled rows no bound is proved (round 1 sees only the
    shard's own labelled rows).

    When to use it: many ranks or slow collectives, where exact greedy's k all-gathers and k
    broadcasts cost more than shipping W x m + L vectors once. Communication: one all-gather
    of the arguments with the candidates (W·m·d + L·d float32 to every rank), then rank 0's
    broadcast of its outcome and the k picks.

    Args:
        features, k, labeled, seed, device, threads: as for :func:`~.diversity.kcenter_greedy`.
            ``labeled`` is local to this rank's shard (a bool mask or indices).
        candidates_per_rank: m, candidates of each rank in round 1 (None: k). At least 1; the
            ranks' candidates together must number at least k.
        group: a torch.distributed process group (``features`` is then this rank's shard,
            consecutive rows in rank order) or None for one process.

    Returns:
        int64 (k,) global row indices in pick order, the same on every rank: numpy for
        numpy/memmap input, a torch tensor on the input's device for torch input.

    Raises:
        ValueError / TypeError: as :func:`~.diversity.kcenter_greedy`, and for a bad
            ``candidates_per_rank`` or too few candidates; with a group, on every rank at once.
    """
    shards = _shards(group)

    def prepare() -> Tuple[None, Dict[str, Any]]:
        return None, _greedi_round_one(features, k, labeled, seed, candidates_per_rank, device, threads)

    _, summaries = shards.agree(prepare, ("k", "m", "seed", "d"))
    first = summaries[0]
    count = int(first["k"])
    check_budget(shards, count, sum(s["available"] for s in summaries))
    found = sum(s["candidates"].size for s in summaries)
    if found < count:  # every rank sees the same summaries, so every rank raises this
        raise ValueError(f"the ranks found {found} round-one candidates, fewer than k={count}: "
                         f"raise candidates_per_rank (now {first['m']})")
    if count == 0:
        return as_result(np.empty(0, dtype=np.int64), features)
    if shards.world == 1:  # greedy's first k picks do not depend on how many more follow
        return as_result(summaries[0]["candidates"][:count].astype(np.int64), features)
    picks = shards.share_from_root(lambda: _greedi_round_two(summaries, shards.offsets, count, device, threads))
    return as_result(picks, features)


def _greedi_round_one(features: Any, k: Any, labeled: Any, seed: Any, m: Any, device: Any,
                      threads: Any) -> Dict[str, Any]:
    """This rank's checks and round 1: its candidates (local rows, pick order) and vectors, and
    its labelled rows' vectors, in the summary that the argument check gathers anyway."""
    op = as_operand(features, "features")
    n, d = check_float_matrix(op, "features", columns="d")
    count, seed64 = parse_count(k), parse_seed(seed)
    per_rank = count if m is None else parse_int(m, "candidates_per_rank", minimum=1)
    lab = np.empty(0, dtype=np.int64) if labeled is None else parse_rows(labeled, n, "labeled", unique=True,
                                                                         of="features")
    available = n - lab.size
    wanted = min(per_rank, available) if count else 0
    local = kcenter_greedy(features, wanted, labeled=lab if lab.size else None, seed=seed64, device=device,
                           threads=threads)
    local = np.asarray(local.cpu() if is_torch_tensor(local) else local, dtype=np.int64)
    return {"k": count, "m": per_rank, "seed": seed64, "d": d, "rows": n, "available": available,
            "candidates": local, "vectors": _host_rows(features, local, np.float32),
            "labelled": _host_rows(features, lab, np.float32)}


def _greedi_round_two(summaries: List[Dict[str, Any]], offsets: List[int], k: int, device: Any,
                      threads: Any) -> np.ndarray:
    """Exact greedy over the union of the candidates (labelled vectors as centres), on rank 0."""
    rows = np.concatenate([s["candidates"] + off for s, off in zip(summaries, offsets)])
    vectors = np.concatenate([s["vectors"] for s in summaries])
    labelled = np.concatenate([s["labelled"] for s in summaries])
    order = np.argsort(rows, kind="stable")  # ties of the greedy step then go to the lower global row
    rows, vectors = rows[order], vectors[order]
    pool = np.concatenate([vectors, labelled])
    centres = np.arange(rows.size, pool.shape[0])
    chosen = kcenter_greedy(pool, k, labeled=centres if centres.size else None, seed=summaries[0]["seed"],
                            device=device, threads=threads)
    return rows[np.asarray(chosen.cpu() if is_torch_tensor(chosen) else chosen)]


# ---------------------------------------------------------------------------------------------
# k-means|| seeding

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _uniforms(seed: int, stream: int, rows: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) keyed by (seed, stream, global row) (SplitMix64): a row's draw does not
    depend on which rank holds it, so the shard layout cannot change the picks."""
    base = np.uint64((seed * 0xD1B54A32D192ED03 + (stream + 1) * _GOLDEN) & _MASK64)
    z = np.asarray(rows, dtype=np.uint64) * np.uint64(_GOLDEN) + base  # array arithmetic wraps mod 2^64
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def _exact_sum(values: np.ndarray) -> int:
    """The exact sum of finite non-negative float64 values, in units of 2**-1126 (an int).

    float64 sums depend on the order of the terms, hence on the shard layout; integers do not.
    Each value is m·2**(e-53) with m a 53-bit integer; m's two 26-bit halves are summed per
    exponent, exactly in float64 while fewer than 2**26 terms share a chunk."""
    total = 0
    for start in range(0, values.size, 1 << 24):
        mantissa, exponent = np.frexp(values[start:start + (1 << 24)])
        ints = (mantissa * 2.0 ** 53).astype(np.int64)
        exps, where = np.unique(exponent, return_inverse=True)
        high = np.bincount(where, weights=(ints >> 26).astype(np.float64), minlength=exps.size)
        low = np.bincount(where, weights=(ints & ((1 << 26) - 1)).astype(np.float64), minlength=exps.size)
        for e, h, lo in zip(exps.tolist(), high.tolist(), low.tolist()):
            total += ((int(h) << 26) + int(lo)) << (e + 1073)
    return total


class _Pool:
    """One shard's rows for k-means||: each kept row's squared distance to its nearest candidate
    so far (float64) and that candidate's number. Distances come from GEMM on blocks of a fixed
    size aligned to global rows (a shard's partial block is padded), so every row sees the same
    arithmetic as in one process on the whole pool."""

    def __init__(self, features: Any, n: int, d: int, keep: np.ndarray, threads: int):
        self.features, self.n, self.d, self.keep, self.threads = features, n, d, keep, threads
        self.block = max(64, min(4096, (1 << 22) // d))  # a function of d alone: the same on every rank
        self.offset = 0
        self.d2 = np.full(n, np.inf)
        self.nearest = np.full(n, -1, dtype=np.int64)
        self.taken = np.zeros(n, dtype=bool)

    def blocks(self):
        """(local lo, local hi, position of row lo in its global block, that block as float64)."""
        size, buffer = self.block, np.zeros((self.block, self.d))
        for g in range((self.offset // size) * size, self.offset + self.n, size):
            lo, hi = max(g, self.offset) - self.offset, min(g + size, self.offset + self.n) - self.offset
            if hi > lo:
                at = lo + self.offset - g
                if hi - lo < size:  # a shard's partial block: the other rows are not ours
                    buffer.fill(0.0)
                buffer[at:at + hi - lo] = _host_block(self.features, lo, hi)
                yield lo, hi, at, buffer

    def first_bad_row(self) -> Optional[int]:
        """The first kept row that is not finite, or whose distances could overflow float64."""
        for lo, hi, at, buffer in self.blocks():
            rows = buffer[at:at + hi - lo]
            with np.errstate(over="ignore", invalid="ignore"):
                finite = np.isfinite(rows).all(axis=1) & np.isfinite(4.0 * (rows * rows).sum(axis=1))
            bad = np.flatnonzero(self.keep[lo:hi] & ~finite)
            if bad.size:
                return lo + int(bad[0])
        return None

    def fold_in(self, centres: np.ndarray, first: int, rows: np.ndarray) -> None:
        """Candidates ``first``, ``first+1``, ... (vectors ``centres``, global ``rows``): a row
        moves to one only when strictly nearer, so ties stay with the earlier candidate."""
        norms = (centres * centres).sum(axis=1)
        for lo, hi, at, buffer in self.blocks():
            with np.errstate(over="ignore", invalid="ignore"):  # excluded rows may hold NaN or Inf
                d2 = (buffer * buffer).sum(axis=1)[:, None] + norms[None, :] - 2.0 * (buffer @ centres.T)
            d2 = np.maximum(d2[at:at + hi - lo], 0.0)
            best = np.argmin(d2, axis=1)
            value = d2[np.arange(hi - lo), best]
            closer = value < self.d2[lo:hi]
            self.d2[lo:hi][closer] = value[closer]
            self.nearest[lo:hi][closer] = best[closer] + first
        mine = (rows >= self.offset) & (rows < self.offset + self.n)
        local = rows[mine] - self.offset  # a candidate is its own nearest at distance 0
        self.d2[local], self.nearest[local], self.taken[local] = 0.0, np.flatnonzero(mine) + first, True


def kmeans_parallel(
    features: Any,
    k: int,
    *,
    seed: int = 0,
    exclude: Any = None,
    rounds: int = 5,
    oversampling: Optional[float] = None,
    device: str = "auto",
    threads: Optional[int] = None,
    group: Any = None,
) -> Any:
    """APPROXIMATE k-means++ seeding in a few rounds (k-means||; Bahmani et al. 2012).

    **Not** the picks of :func:`~.diversity.kmeans_pp` (a different random process). The first
    candidate is uniform among the rows that may be picked; then ``rounds`` times every row is
    taken as a candidate independently with probability min(1, ℓ·D²/φ) (D²: squared distance to
    the nearest candidate so far, φ: its sum over every row, ℓ = ``oversampling``); each candidate
    is weighted by the rows nearest to it, and weighted k-means++ over the candidates (on rank 0,
    seeded) picks k of them. If fewer than k candidates come out, all of them are picked and the
    rest are the other rows farthest from the candidates (ties by a seeded per-row key).

    Guarantee: with ℓ = Θ(k) and O(log ψ) rounds (ψ: the cost after the first candidate; 5 were
    enough in the paper's experiments) the expected k-means cost of the picks is O(log k) x the
    optimum, like k-means++ (Bahmani et al., Theorem 1 with k-means++ reclustering); nothing
    tighter, and no equality with :func:`kmeans_pp`.

    When to use it: many ranks or slow collectives: 2·rounds + 5 collectives whatever k, against
    a few per pick for exact k-means++ over shards. Traffic: per round one all-gather of an exact
    integer (φ) and of the sampled rows (about ℓ vectors in all), then the candidates' counts.

    Every draw uses uniforms keyed by (seed, round, global row), and φ is summed exactly, so the
    picks do not depend on the shard layout: ``group=None`` and any number of ranks give the same
    picks (given the same BLAS and thread count, whose GEMM sees the same blocks either way).

    Args:
        features, k, seed, threads: as for :func:`~.diversity.kmeans_pp` (CPU only: float64 GEMM
            on host blocks of the shard; ``threads`` limits numpy's BLAS through threadpoolctl).
        exclude: rows that may not be picked (local to the shard): a bool mask or indices. They
            are neither centres nor weighed, and may hold NaN.
        rounds: R >= 1, the oversampling rounds.
        device: ``"auto"`` or ``"cpu"``: it computes on the host either way (a CUDA tensor is read
            block by block); naming a CUDA device raises NotImplementedError.
        oversampling: ℓ > 0, the expected candidates per round (None: 2k).
        group: a torch.distributed process group (``features`` is then this rank's shard) or None.

    Returns:
        int64 (k,) global row indices in pick order, the same on every rank: numpy for
        numpy/memmap input, a torch tensor on the input's device for torch input.

    Raises:
        ValueError / TypeError: a bad argument (named), a kept row with NaN/Inf, k larger than the
            rows that may be picked; with a group, on every rank at once.
    """
    shards = _shards(group)
    pool, summaries = shards.agree(lambda: _kmeans_parallel_checks(features, k, seed, exclude, rounds, oversampling,
                                                                   device, threads),
                                   ("k", "seed", "rounds", "oversampling", "d"))
    settings = summaries[0]
    count = int(settings["k"])
    check_budget(shards, count, sum(s["available"] for s in summaries))
    if count == 0:
        return as_result(np.empty(0, dtype=np.int64), features)
    pool.offset = shards.offset
    with limit_threads(pool.threads, ("blas",)):
        picks = _oversample_and_pick(shards, pool, count, settings)
    return as_result(picks, features)


def _kmeans_parallel_checks(features: Any, k: Any, seed: Any, exclude: Any, rounds: Any, oversampling: Any,
                            device: Any, threads: Any) -> Tuple[_Pool, Dict[str, Any]]:
    if not isinstance(device, str):
        raise TypeError(f"device must be a string ('auto' or 'cpu'), got {type(device).__name__}")
    if device not in ("auto", "cpu"):
        raise NotImplementedError(f"kmeans_parallel computes on the host CPU only (device='auto' or 'cpu'), "
                                  f"got device={device!r}")
    op = as_operand(features, "features")
    n, d = check_float_matrix(op, "features", columns="d")
    count, seed64 = parse_count(k), parse_seed(seed)
    rounds = parse_int(rounds, "rounds", minimum=1)
    ell = 2.0 * count if oversampling is None else parse_real(oversampling, "oversampling", positive=True)
    keep = np.ones(n, dtype=bool)
    if exclude is not None:
        keep[parse_rows(exclude, n, "exclude", of="features")] = False
    pool = _Pool(features, n, d, keep, parse_threads(threads))
    bad = pool.first_bad_row()
    if bad is not None:
        raise ValueError(f"row {bad} of this rank's features contains NaN or Inf (or values whose squares "
                         "overflow float64)")
    return pool, {"k": count, "seed": seed64, "rounds": rounds, "oversampling": ell, "d": d, "rows": n,
                  "available": int(np.count_nonzero(keep))}


def _oversample_and_pick(shards: Any, pool: _Pool, k: int, settings: Dict[str, Any]) -> np.ndarray:
    seed, ell = settings["seed"], settings["oversampling"]
    rows_here = pool.offset + np.arange(pool.n, dtype=np.int64)
    offers = shards.gather_objects(_first_offer(pool, rows_here, seed))
    _, row, vector = min((o for o in offers if o[1] >= 0), key=lambda o: o[:2])
    rows, vectors = [np.array([row], dtype=np.int64)], [vector]
    pool.fold_in(vector, 0, rows[0])
    for r in range(1, settings["rounds"] + 1):
        phi = sum(shards.gather_objects(_exact_sum(pool.d2[pool.keep]))) / 2 ** 1126
        if phi == 0.0:  # every kept row is a candidate or coincides with one
            break
        chosen = np.flatnonzero(pool.keep & (_uniforms(seed, r, rows_here) < ell * pool.d2 / phi))
        sampled = shards.gather_objects((rows_here[chosen], _host_rows(pool.features, chosen, np.float64)))
        new_rows = np.concatenate([s[0] for s in sampled])  # rank order = global row order
        if new_rows.size:
            pool.fold_in(np.concatenate([s[1] for s in sampled]), sum(v.size for v in rows), new_rows)
            rows.append(new_rows)
            vectors.append(np.concatenate([s[1] for s in sampled]))
    candidates = np.concatenate(rows)
    counts = np.bincount(pool.nearest[pool.keep], minlength=candidates.size)
    extra = _farthest_rows(pool, rows_here, seed, settings["rounds"] + 1, k - candidates.size)
    parts = shards.gather_objects((counts, extra))
    weights = np.sum([p[0] for p in parts], axis=0)
    extra = _merge_farthest([p[1] for p in parts], k - candidates.size)
    centres = np.concatenate(vectors)
    return shards.share_from_root(lambda: np.concatenate(
        [candidates[_weighted_kmeans_pp(centres, weights, min(k, candidates.size), seed)], extra]))


def _first_offer(pool: _Pool, rows_here: np.ndarray, seed: int) -> Tuple[float, int, Optional[np.ndarray]]:
    """This rank's bid for the first candidate, (key, global row, vector): the kept row of smallest
    key wins over all ranks, which is a uniform draw among the kept rows whatever the layout."""
    keys = np.where(pool.keep, _uniforms(seed, 0, rows_here), np.inf)
    at = int(np.argmin(keys)) if pool.n else -1
    if at < 0 or not pool.keep[at]:
        return np.inf, -1, None
    return float(keys[at]), int(rows_here[at]), _host_rows(pool.features, [at], np.float64)


def _farthest_rows(pool: _Pool, rows_here: np.ndarray, seed: int, stream: int, need: int) -> np.ndarray:
    """This rank's best ``need`` top-up rows as (D², key, global row) columns: kept rows that are
    not candidates, farthest from the candidates first, ties by a seeded per-row key."""
    if need <= 0:
        return np.empty((0, 3))
    free = np.flatnonzero(pool.keep & ~pool.taken)
    keys = _uniforms(seed, stream, rows_here[free])
    order = np.lexsort((keys, -pool.d2[free]))[:need]
    return np.stack([pool.d2[free][order], keys[order], rows_here[free][order].astype(np.float64)], axis=1)


def _merge_farthest(offers: List[np.ndarray], need: int) -> np.ndarray:
    if need <= 0:
        return np.empty(0, dtype=np.int64)
    table = np.concatenate(offers)
    order = np.lexsort((table[:, 2], table[:, 1], -table[:, 0]))[:need]
    return table[order, 2].astype(np.int64)


def _weighted_kmeans_pp(points: np.ndarray, weights: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ over weighted points (first pick ∝ weight, then ∝ weight·D²), numpy's seeded
    generator; uniform among the unpicked points when none of them has a positive weight·D²."""
    rng = np.random.default_rng([seed, 0x6B6D7C7C])
    weights = weights.astype(np.float64)
    free = np.ones(points.shape[0], dtype=bool)
    d2 = np.ones(points.shape[0])  # the first pick is by weight alone
    picks = []
    for _ in range(k):
        mass = np.where(free, weights * d2, 0.0)
        if not mass.sum() > 0:
            mass = free.astype(np.float64)
        cumulative = np.cumsum(mass)
        i = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        picks.append(i)
        free[i] = False
        distance = ((points - points[i]) ** 2).sum(axis=1)
        d2 = distance if len(picks) == 1 else np.minimum(d2, distance)
    return np.asarray(picks, dtype=np.int64)
