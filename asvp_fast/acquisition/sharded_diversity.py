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

CUDA shards (torch tensors on a CUDA device, with a module built with CUDA): the rows (in their
stored type), the probabilities and r (float32) stay on the device, and ``_C.shard_fold_in`` runs
the CUDA engine's own distance (csrc/diversity.cu: the same lanes, chunk order, fused
multiply-adds and butterfly as its update kernel; BADGE's per-row |q|^2, |h|^2 and class from
``_C.shard_badge_norms``, its prepare kernel's arithmetic), so the picks are those of one process
running the CUDA kernel on the whole pool (for k-center with labelled rows, up to the caveat of
the host path: every labelled row is folded in, where one process measures each row against the
labelled row a GEMM search found nearest). Only the small values above cross to the host, per pick: the owner's centre
(d floats, or C + d + 2) and its distance, the farthest (distance, row), and for the D² draw
the at most 31 leading leaves of each level, the group sums (N / 32768) and the 32-entry levels
of the walk. The row weights, segment sums (N / 32) and block sums (N / 1024) are formed on the
device with the same serial float64 additions (:func:`.sharded_math.serial_sums`: elementwise
IEEE additions, correctly rounded on either side), so the draw is bit for bit the one the host
hierarchy, and the CUDA choose kernel, make. Collectives still carry host (NumPy) values, so the
group needs a backend for CPU tensors (gloo, or ``"cpu:gloo,cuda:nccl"`` with NCCL).
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


def _padded8(n: int) -> int:
    return (n + 7) // 8 * 8


def _capsule(t: Any) -> Any:
    import torch.utils.dlpack

    return torch.utils.dlpack.to_dlpack(t)


def _stream(device: Any) -> int:
    import torch

    return int(torch.cuda.current_stream(device).cuda_stream)


def _fold_in_kernel(*arrays: Any) -> None:
    """``_C.shard_fold_in`` on the tensors' device, on the current stream (the tests put the host
    rendering of the kernel in its place to run the CUDA metrics on the CPU)."""
    _C.shard_fold_in(*[_capsule(a) for a in arrays], stream=_stream(arrays[0].device))


def _norms_kernel(*arrays: Any) -> None:
    """``_C.shard_badge_norms`` (probs, features -> y, qn, hn) on the current stream."""
    _C.shard_badge_norms(*[_capsule(a) for a in arrays], stream=_stream(arrays[0].device))


class EuclideanCuda:
    """Squared Euclidean distances of a shard's rows on a CUDA device, by the CUDA engine's
    arithmetic. The rows keep their stored type (float16, bfloat16, float32 or float64: the
    kernel's lane map depends on it, as the run's does). The centre travels as d float32 values
    and is placed in the kernel's dense layout (padded with zeros to a multiple of 8) in a
    buffer on the device."""

    def __init__(self, features: Any):
        import torch

        self.torch, self.x = torch, features
        self.dense_size = features.shape[1]
        self.buf = torch.zeros(_padded8(self.dense_size), dtype=torch.float32, device=features.device)

    def centre(self, local: int) -> np.ndarray:
        return self.x[local].float().cpu().numpy()  # the kernel converts to float32 alike

    def rows(self, local: np.ndarray) -> np.ndarray:
        return self.x[self.torch.from_numpy(local).to(self.x.device)].float().cpu().numpy()

    def fold_in(self, centre: np.ndarray, r: Any, threads: int) -> None:
        self.buf[:self.dense_size].copy_(self.torch.from_numpy(np.ascontiguousarray(centre, dtype=np.float32)))
        self.kernel(self.x, self.buf, r)

    kernel = staticmethod(_fold_in_kernel)


class BadgeCuda:
    """BADGE from probabilities on a CUDA device: y, |q|^2 and |h|^2 per row by the CUDA
    engine's prepare arithmetic, distances by its update kernel's. The centre travels as
    (q, h, |q|^2, |h|^2) and is laid out as q | h padded to multiples of 8 on the device."""

    def __init__(self, probs: Any, features: Any):
        import torch

        self.torch, self.p, self.h = torch, probs, features
        m, self.C = probs.shape
        self.d = features.shape[1]
        self.dense_size = self.C + self.d + 2
        dev = features.device
        self.y = torch.empty(m, dtype=torch.int64, device=dev)
        self.qn = torch.empty(m, dtype=torch.float32, device=dev)
        self.hn = torch.empty(m, dtype=torch.float32, device=dev)
        self.norms_kernel(self.p, self.h, self.y, self.qn, self.hn)
        self.cp, self.dp = _padded8(self.C), _padded8(self.d)
        self.buf = torch.zeros(self.cp + self.dp + 2, dtype=torch.float32, device=dev)

    def embedding_sq_norms(self) -> Any:
        return self.qn.double() * self.hn.double()  # exact: 24-bit by 24-bit products

    def centre(self, local: int) -> np.ndarray:
        q = self.p[local].clone()
        q[self.y[local]] -= 1.0  # float32 p - 1, as the kernel's predicted_q
        norms = self.torch.stack([self.qn[local], self.hn[local]])
        return self.torch.cat([q, self.h[local].float(), norms]).cpu().numpy()

    def fold_in(self, centre: np.ndarray, r: Any, threads: int) -> None:
        c = self.torch.from_numpy(np.ascontiguousarray(centre, dtype=np.float32))
        C, d, cp, dp = self.C, self.d, self.cp, self.dp
        self.buf[:C].copy_(c[:C])
        self.buf[cp:cp + d].copy_(c[C:C + d])
        self.buf[cp + dp:].copy_(c[C + d:])
        self.kernel(self.h, self.buf, r, self.p, self.y, self.qn, self.hn)

    kernel = staticmethod(_fold_in_kernel)
    norms_kernel = staticmethod(_norms_kernel)


def _host(values: Any) -> np.ndarray:
    """A (small) slice as NumPy: a device tensor is copied to the host."""
    return values if isinstance(values, np.ndarray) else values.cpu().numpy()


def _first_max(values: Any) -> Tuple[float, int]:
    """(largest value, its first position) of a non-empty NumPy array or tensor."""
    if isinstance(values, np.ndarray):
        local = int(np.argmax(values))
        return float(values[local]), local
    top = values.max()
    return float(top), int((values == top).nonzero()[0, 0])


def _where_candidate(r: Any) -> Any:
    """Local rows with r >= 0, in order."""
    if isinstance(r, np.ndarray):
        return np.flatnonzero(r >= 0)
    return (r >= 0).nonzero()[:, 0]


def _d2_weights(r: Any) -> Any:
    if isinstance(r, np.ndarray):
        return sm.d2_row_weights(r)
    return r.double().where(r > 0, 0.0)


class ShardState:
    """This rank's rows and distances."""

    def __init__(self, shards: Shards, metric: Any, rows: int, unavailable: np.ndarray, threads: int = 0,
                 device: Any = None):
        self.s, self.m, self.threads = shards, metric, threads
        r = np.full(rows, np.inf, dtype=np.float32)
        r[unavailable] = -1.0
        self.r: Any = r
        if device is not None:  # r lives with the rows (a float32 tensor on their CUDA device)
            import torch

            self.r = torch.from_numpy(r).to(device)

    def fold_in(self, centre: np.ndarray) -> None:
        """r = min(r, distance to the new centre) for every row with r > 0 (the kernel skips only
        rows whose distance could not be smaller, so this is its result; rows at 0 stay 0)."""
        if len(self.r):
            self.m.fold_in(centre, self.r, self.threads)

    def candidates(self) -> int:
        return int((self.r >= 0).sum())

    def nth_candidate(self, j: int) -> int:
        """Global row of the j-th candidate in global row order (every rank gets the answer)."""
        counts = self.s.gather(np.array([self.candidates()], dtype=np.float64))[:, 0].astype(np.int64)
        before = np.concatenate([[0], np.cumsum(counts)])
        owner = int(np.searchsorted(before[1:], j, side="right"))
        mine = -1.0
        if owner == self.s.rank:
            mine = float(int(_where_candidate(self.r)[int(j - before[owner])]) + self.s.offset)
        return int(self.s.max_reduce(np.array([mine]))[0])

    def take(self, row: int) -> Tuple[np.ndarray, float]:
        """Makes global ``row`` a centre: its owner marks it and sends its vector, and its
        distance to the nearest earlier centre, to all."""
        owner = self.s.owner_of(row)
        d = self.m.dense_size
        message = None
        if owner == self.s.rank:
            local = row - self.s.offset
            message = np.append(self.m.centre(local), float(self.r[local])).astype(np.float32)
            self.r[local] = -1.0
        message = self.s.broadcast_row(message, owner, d + 1)
        return message[:d], float(message[d])

    # -- k-center ------------------------------------------------------------------------------
    def farthest(self) -> int:
        best = np.array([-1.0, -1.0])
        if len(self.r):
            top, local = _first_max(self.r)  # the first maximum: the lowest row on ties
            if top >= 0:
                best = np.array([top, float(local + self.s.offset)])
        pairs = self.s.gather(best)
        top = pairs[:, 0].max()
        return int(pairs[pairs[:, 0] == top, 1].min())

    # -- k-means++ -----------------------------------------------------------------------------
    def _level_up(self, leaves: np.ndarray, lo: int, total: int) -> Tuple[np.ndarray, int]:
        """Sums of FAN_IN consecutive leaves (global leaf numbers), each formed by the rank that
        holds its first leaf; the other ranks send the leading leaves it lacks. Returns this
        rank's sums and the global number of its first one."""
        fan = sm.FAN_IN
        hi = lo + len(leaves)
        head = min(len(leaves), (-lo) % fan)
        buf = np.zeros(fan + 2)
        buf[0], buf[1] = lo, head
        buf[2:2 + head] = _host(leaves[:head])
        heads = self.s.gather(buf)
        first, end = -(-lo // fan), -(-hi // fan)
        if first >= end:
            return leaves[:0], first
        stop = min(end * fan, total)
        pieces = [leaves[first * fan - lo:]]
        for other in range(self.s.rank + 1, self.s.world):
            if heads[other, 0] < stop:
                pieces.append(heads[other, 2:2 + int(heads[other, 1])])
        return sm.serial_sums(self._concatenate(pieces)), first

    @staticmethod
    def _concatenate(pieces: List[Any]) -> Any:
        """This rank's leaves (NumPy or a device tensor) and the host pieces the next ranks sent."""
        if isinstance(pieces[0], np.ndarray):
            return np.concatenate(pieces)
        import torch

        rest = [torch.from_numpy(p).to(pieces[0].device) for p in pieces[1:]]
        return torch.cat([pieces[0], *rest])

    def d2_draw(self, u: float) -> int:
        """The kernel's ``d2_sample``: a D² draw with uniform u, or a uniform candidate when every
        weight is 0."""
        fan, n = sm.FAN_IN, self.s.total
        weights = _d2_weights(self.r)
        n_seg, n_blocks = -(-n // fan), -(-n // sm.SAMPLE_BLOCK)
        n_groups = -(-n_blocks // fan)
        seg, seg_lo = self._level_up(weights, self.s.offset, n)
        blk, blk_lo = self._level_up(seg, seg_lo, n_seg)
        grp, grp_lo = self._level_up(blk, blk_lo, n_blocks)
        groups = np.zeros(n_groups)
        groups[grp_lo:grp_lo + len(grp)] = _host(grp)
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
        a, b = max(start, lo), min(start + count, lo + len(values))
        if a < b:
            out[a - start:b - start] = _host(values[a - lo:b - lo])
        return self.s.max_reduce(out)

    def _global_candidates(self) -> int:
        return int(self.s.gather(np.array([float(self.candidates())]))[:, 0].sum())


def diversity_sharded(group: Any, method: str, prepare: Any, like: Any) -> Tuple[Any, Any]:
    """(picks, each pick's squared distance to the nearest earlier centre) of k-center
    (``method="kcenter"``), k-means++ (``"kmeans_pp"``) or BADGE (``"badge"``, from
    probabilities) over the shards.

    ``prepare()`` checks this rank's arguments and returns a dict: ``features`` (float32 rows of
    the shard, or the caller's CUDA tensor itself when the CUDA update will read it; BADGE also
    ``probs``, float32, on the same side), ``labeled`` and ``excluded`` (local row indices),
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
    device = _cuda_device(data, like)
    state = ShardState(shards, _metric(method, data, device, like), data["features"].shape[0], data["unavailable"],
                       data.get("threads", 0), device)
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


def _cuda_device(data: Dict[str, Any], like: Any) -> Any:
    """The CUDA device the shard is computed on, or None for the host path: the device of the
    rows ``prepare`` returned when they are a CUDA tensor, else of the caller's ``features``
    when that is one. Needs a module built with CUDA; without one, CUDA input keeps the host
    path (the CPU engine's picks)."""
    if not _C.build_info().get("cuda_compiled", False):
        return None
    for candidate in (data["features"], like):
        if type(candidate).__module__.startswith("torch") and candidate.is_cuda:
            return candidate.device
    return None


_KERNEL_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _on_device(values: Any, device: Any, keep_dtype: bool = False) -> Any:
    """A contiguous copy (or the tensor itself) on ``device``: float32, or with ``keep_dtype`` a
    tensor's own float type when the kernels read it (the features: the run reads them so)."""
    import torch

    t = values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values))
    dtype = t.dtype if keep_dtype and str(t.dtype).replace("torch.", "") in _KERNEL_DTYPES else torch.float32
    return t.detach().to(device=device, dtype=dtype).contiguous()


def _metric(method: str, data: Dict[str, Any], device: Any, like: Any = None) -> Any:
    if device is not None:
        # The caller's CUDA features as they are (no host round trip, the run's lane map),
        # else the float32 rows prepare() returned.
        on_cuda = type(like).__module__.startswith("torch") and like.is_cuda
        features = _on_device(like if on_cuda else data["features"], device, keep_dtype=True)
        return BadgeCuda(_on_device(data["probs"], device), features) if method == "badge" else EuclideanCuda(features)
    if method == "badge":
        return Badge(data["probs"], data["features"], data["fma"])
    return Euclidean(data["features"], data["fma"])


def _largest_embedding(state: ShardState) -> int:
    """BADGE's first pick: the largest |g|^2 = |q|^2 |h|^2 (as float64), the lowest row on ties."""
    best = np.array([-1.0, -1.0])
    sq = state.m.embedding_sq_norms()
    if len(sq):
        norms = np.where(state.r >= 0, sq, -1.0) if isinstance(sq, np.ndarray) else sq.where(state.r >= 0, -1.0)
        top, local = _first_max(norms)
        if top >= 0:
            best = np.array([top, float(local + state.s.offset)])
    pairs = state.s.gather(best)
    top = pairs[:, 0].max()
    return int(pairs[pairs[:, 0] == top, 1].min())


def _start_from_labelled(state: ShardState, labeled: np.ndarray) -> None:
    """Every candidate's distance to its nearest labelled row, the labelled rows (L x d, small)
    gathered from all ranks."""
    mine = state.m.rows(labeled) if hasattr(state.m, "rows") else np.ascontiguousarray(state.m.x[labeled])
    vectors: List[Optional[np.ndarray]] = state.s.gather_objects(mine)
    for block in vectors:
        for centre in block:
            state.fold_in(centre)
