"""k-center greedy, k-means++ and BADGE over row shards (``group=``), exactly as one process.

See :mod:`asvp_fast.acquisition.distributed` for the conventions. Each rank keeps r, the squared
distance of each of its rows to the nearest centre so far (-1 for rows that may not be picked),
updated per pick by the compiled ``_C.shard_fold_in`` with the CPU kernel's own distance
functions (the active instruction-set variant's, so bit for bit the single-process values;
:mod:`.sharded_math` renders the same arithmetic in NumPy for the tests and BADGE's per-row
norms). Per pick:

- k-center: one all-gather of (farthest distance, global row) pairs;
- k-means++ and BADGE (after its first pick, the largest gradient embedding: one all-gather):
  the D² draw with the kernel's uniform for the pick, walking the same float64 sums:
  three all-gathers of the pieces of sums that straddle shards (at most 31 values each), one
  maximum-reduction of the per-group sums (N / 32768 values) and three of 32 values for the walk;
- all: one broadcast of the new centre's vector (and its distance) from its owner.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _C
from . import sharded_math as sm
from .distributed import Shards, as_result


class Euclidean:
    """Squared Euclidean distances of a shard's float32 rows (the kernel's ``sq_distance``)."""

    def __init__(self, features: np.ndarray, fma: bool):
        self.x, self.fma = np.ascontiguousarray(features, dtype=np.float32), fma
        self.dense_size = features.shape[1]

    def centre(self, local: int) -> np.ndarray:
        return np.ascontiguousarray(self.x[local])

    def fold_in(self, centre: np.ndarray, r: np.ndarray, threads: int) -> None:
        _C.shard_fold_in(self.x, np.ascontiguousarray(centre, dtype=np.float32), r, threads=threads)


class Badge:
    """BADGE's gradient-embedding distances from probabilities (the kernel's ``Badge`` metric):
    per row the predicted class, |q|^2 and |h|^2; a centre is (q, h, |q|^2, |h|^2)."""

    def __init__(self, probs: np.ndarray, features: np.ndarray, fma: bool):
        self.p = np.ascontiguousarray(probs, dtype=np.float32)
        self.h = np.ascontiguousarray(features, dtype=np.float32)
        self.fma = fma
        self.C, self.d = probs.shape[1], features.shape[1]
        self.dense_size = self.C + self.d + 2
        self.y = np.argmax(probs, axis=1) if probs.shape[0] else np.empty(0, dtype=np.int64)
        q = self.p.copy()
        q[np.arange(q.shape[0]), self.y] -= np.float32(1.0)
        self.qn = sm.dots(q, q, fma) if q.shape[0] else np.empty(0, np.float32)
        self.hn = sm.dots(self.h, self.h, fma) if q.shape[0] else np.empty(0, np.float32)

    def embedding_sq_norms(self) -> np.ndarray:
        return self.qn.astype(np.float64) * self.hn.astype(np.float64)

    def centre(self, local: int) -> np.ndarray:
        q = self.p[local].copy()
        q[self.y[local]] -= np.float32(1.0)
        return np.concatenate([q, self.h[local], [self.qn[local], self.hn[local]]]).astype(np.float32)

    def fold_in(self, centre: np.ndarray, r: np.ndarray, threads: int) -> None:
        _C.shard_fold_in(self.h, np.ascontiguousarray(centre, dtype=np.float32), r, self.p, self.y,
                         np.ascontiguousarray(self.qn, dtype=np.float32), np.ascontiguousarray(self.hn, dtype=np.float32),
                         threads=threads)


class ShardState:
    """This rank's rows and distances."""

    def __init__(self, shards: Shards, metric: Any, rows: int, unavailable: np.ndarray, threads: int = 0):
        self.s, self.m, self.threads = shards, metric, threads
        self.r = np.full(rows, np.inf, dtype=np.float32)
        self.r[unavailable] = -1.0

    def fold_in(self, centre: np.ndarray) -> None:
        """r = min(r, distance to the new centre) for every row with r > 0 (the kernel skips only
        rows whose distance could not be smaller, so this is its result; rows at 0 stay 0)."""
        if self.r.size:
            self.m.fold_in(centre, self.r, self.threads)

    def candidates(self) -> int:
        return int(np.count_nonzero(self.r >= 0))

    def nth_candidate(self, j: int) -> int:
        """Global row of the j-th candidate in global row order (every rank gets the answer)."""
        counts = self.s.gather(np.array([self.candidates()], dtype=np.float64))[:, 0].astype(np.int64)
        before = np.concatenate([[0], np.cumsum(counts)])
        owner = int(np.searchsorted(before[1:], j, side="right"))
        mine = -1.0
        if owner == self.s.rank:
            mine = float(np.flatnonzero(self.r >= 0)[j - before[owner]] + self.s.offset)
        return int(self.s.max_reduce(np.array([mine]))[0])

    def take(self, row: int) -> Tuple[np.ndarray, float]:
        """Makes global ``row`` a centre: its owner marks it and sends its vector, and its
        distance to the nearest earlier centre, to all."""
        owner = self.s.owner_of(row)
        d = self.m.dense_size
        message = None
        if owner == self.s.rank:
            local = row - self.s.offset
            message = np.append(self.m.centre(local), self.r[local]).astype(np.float32)
            self.r[local] = -1.0
        message = self.s.broadcast_row(message, owner, d + 1)
        return message[:d], float(message[d])

    # -- k-center ------------------------------------------------------------------------------
    def farthest(self) -> int:
        best = np.array([-1.0, -1.0])
        if self.r.size and self.r.max() >= 0:
            local = int(np.argmax(self.r))  # the first maximum: the lowest row on ties
            best = np.array([float(self.r[local]), float(local + self.s.offset)])
        pairs = self.s.gather(best)
        top = pairs[:, 0].max()
        return int(pairs[pairs[:, 0] == top, 1].min())

    # -- k-means++ -----------------------------------------------------------------------------
    def _level_up(self, leaves: np.ndarray, lo: int, total: int) -> Tuple[np.ndarray, int]:
        """Sums of FAN_IN consecutive leaves (global leaf numbers), each formed by the rank that
        holds its first leaf; the other ranks send the leading leaves it lacks. Returns this
        rank's sums and the global number of its first one."""
        fan = sm.FAN_IN
        hi = lo + leaves.size
        head = min(leaves.size, (-lo) % fan)
        buf = np.zeros(fan + 2)
        buf[0], buf[1] = lo, head
        buf[2:2 + head] = leaves[:head]
        heads = self.s.gather(buf)
        first, end = -(-lo // fan), -(-hi // fan)
        if first >= end:
            return np.empty(0), first
        stop = min(end * fan, total)
        pieces = [leaves[first * fan - lo:]]
        for other in range(self.s.rank + 1, self.s.world):
            if heads[other, 0] < stop:
                pieces.append(heads[other, 2:2 + int(heads[other, 1])])
        return sm.serial_sums(np.concatenate(pieces)), first

    def d2_draw(self, u: float) -> int:
        """The kernel's ``d2_sample``: a D² draw with uniform u, or a uniform candidate when every
        weight is 0."""
        fan, n = sm.FAN_IN, self.s.total
        weights = sm.d2_row_weights(self.r)
        n_seg, n_blocks = -(-n // fan), -(-n // sm.SAMPLE_BLOCK)
        n_groups = -(-n_blocks // fan)
        seg, seg_lo = self._level_up(weights, self.s.offset, n)
        blk, blk_lo = self._level_up(seg, seg_lo, n_seg)
        grp, grp_lo = self._level_up(blk, blk_lo, n_blocks)
        groups = np.zeros(n_groups)
        groups[grp_lo:grp_lo + grp.size] = grp
        groups = self.s.max_reduce(groups)
        total = sm.serial_sum(groups)
        if not total > 0.0:
            return self.nth_candidate(sm.scale_to_count(u, self._global_candidates()))
        running, target = 0.0, u * total
        g, running, target = sm.d2_walk(groups, running, target)
        b0 = g * fan
        b, running, target = sm.d2_walk(self._owned(blk, blk_lo, b0, min(fan, n_blocks - b0)), running, target)
        s0 = (b0 + b) * fan
        s, running, target = sm.d2_walk(self._owned(seg, seg_lo, s0, fan), running, target)
        r0 = (s0 + s) * fan
        row, _, _ = sm.d2_walk(self._owned(weights, self.s.offset, r0, min(fan, n - r0)), running, target)
        return r0 + row

    def _owned(self, values: np.ndarray, lo: int, start: int, count: int) -> np.ndarray:
        """Entries start .. start + count of a level, from whichever ranks hold them."""
        out = np.zeros(count)
        a, b = max(start, lo), min(start + count, lo + values.size)
        if a < b:
            out[a - start:b - start] = values[a - lo:b - lo]
        return self.s.max_reduce(out)

    def _global_candidates(self) -> int:
        return int(self.s.gather(np.array([float(self.candidates())]))[:, 0].sum())


def diversity_sharded(group: Any, method: str, prepare: Any, like: Any) -> Tuple[Any, Any]:
    """(picks, each pick's squared distance to the nearest earlier centre) of k-center
    (``method="kcenter"``), k-means++ (``"kmeans_pp"``) or BADGE (``"badge"``, from
    probabilities) over the shards.

    ``prepare()`` checks this rank's arguments and returns a dict: ``features`` (float32 rows of
    the shard; BADGE also ``probs``, float32), ``labeled`` and ``excluded`` (local row indices),
    ``k``, ``seed``, ``fma`` (the active kernel variant fuses multiply-adds) and optionally
    ``threads`` (for the per-pick update; 0: all cores)."""
    shards = Shards(group)

    def check() -> Tuple[Dict[str, Any], Dict[str, Any]]:
        data = prepare()
        unavailable = np.union1d(data["labeled"], data["excluded"]).astype(np.int64)
        data["unavailable"] = unavailable
        summary = {"rows": data["features"].shape[0], "d": data["features"].shape[1], "k": data["k"],
                   "seed": data["seed"], "fma": data["fma"], "labeled": int(data["labeled"].size),
                   "available": data["features"].shape[0] - int(unavailable.size)}
        return data, summary

    data, summaries = shards.agree(check, ("k", "seed", "d", "fma"))
    k, seed = data["k"], data["seed"]
    available = sum(s["available"] for s in summaries)
    labelled = sum(s["labeled"] for s in summaries)
    if k > available:
        if available == 0 and shards.total > 0:
            raise ValueError(f"no row may be picked: all {shards.total} rows are labelled or excluded")
        raise ValueError(f"k={k} is larger than the {available} rows that may be picked "
                         f"({shards.total} rows over {shards.world} shards)")
    picks = np.empty(k, dtype=np.int64)
    radii = np.empty(k, dtype=np.float32)
    if k == 0:
        return as_result(picks, like), as_result(radii, like)
    if method == "badge":
        metric: Any = Badge(data["probs"], data["features"], data["fma"])
    else:
        metric = Euclidean(data["features"], data["fma"])
    state = ShardState(shards, metric, data["features"].shape[0], data["unavailable"], data.get("threads", 0))
    if labelled:
        _start_from_labelled(state, data["labeled"])
    for t in range(k):
        if t == 0 and method == "badge":
            row = _largest_embedding(state)
        elif t == 0 and not labelled:
            row = state.nth_candidate(sm.scale_to_count(sm.uniform01(seed, 0), available))
        elif method == "kcenter":
            row = state.farthest()
        else:
            row = state.d2_draw(sm.uniform01(seed, t))
        picks[t] = row
        centre, radii[t] = state.take(row)
        if t + 1 < k:
            state.fold_in(centre)
    return as_result(picks, like), as_result(radii, like)


def _largest_embedding(state: ShardState) -> int:
    """BADGE's first pick: the largest |g|^2 = |q|^2 |h|^2 (as float64), the lowest row on ties."""
    best = np.array([-1.0, -1.0])
    norms = np.where(state.r >= 0, state.m.embedding_sq_norms(), -1.0)
    if norms.size and norms.max() >= 0:
        local = int(np.argmax(norms))
        best = np.array([norms[local], float(local + state.s.offset)])
    pairs = state.s.gather(best)
    top = pairs[:, 0].max()
    return int(pairs[pairs[:, 0] == top, 1].min())


def _start_from_labelled(state: ShardState, labeled: np.ndarray) -> None:
    """Every candidate's distance to its nearest labelled row, the labelled rows (L x d, small)
    gathered from all ranks."""
    vectors: List[Optional[np.ndarray]] = state.s.gather_objects(np.ascontiguousarray(state.m.x[labeled]))
    for block in vectors:
        for centre in block:
            state.fold_in(centre)
