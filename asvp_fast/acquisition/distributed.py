"""Exact selection over row shards with torch.distributed (``group=`` of the public functions).

Every rank of ``group`` holds one shard: consecutive rows of the pool, in rank order (shards may
differ in size and may be empty). Row arguments (``exclude=``, ``labeled=``) describe the
caller's own shard (a bool mask of its length or local row indices); the result is global row
numbers, the same on every rank and the same as one process on the whole pool with that seed.
Per pick only a few small collectives run (candidate pairs, 32-entry sums, one centre vector);
nothing of size N is moved.

- Uncertainty and BALD: each rank's streaming top-k (the native kernel), then all k candidates
  of every rank merged with the global rule (order of the scores the kernel ranks by, float32
  statistics or float64 BALD values, ties to the lower row).
- k-center: the farthest (distance, global row) of every rank, the largest taken with ties to the
  lower row; the owner broadcasts the centre's vector and every rank updates its distances.
- k-means++ and BADGE: the single process's draw walks a fixed hierarchy of float64 sums
  (32 rows -> 1024-row blocks -> groups of 32 blocks -> total, csrc/diversity_math.h). A sum that straddles shards is
  formed by the rank holding its first element, from the leading pieces the next ranks send, so
  every sum, and hence every draw with the same counter-based uniforms, is bit for bit the
  single-process one, whatever the shard boundaries.

The distance updates run on the host in NumPy (:mod:`.sharded_math`, bit-identical to the CPU
kernel variant in use), tens of times slower per row than the native kernel and without its
triangle-inequality pruning. A rank whose arguments are wrong makes every rank raise (the first
failing rank is named); a rank that raises or dies mid-run makes the others' next collective fail
(at the latest at the process group's timeout), reported as a RuntimeError naming the rank.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "NotImplementedError": NotImplementedError,
           "RuntimeError": RuntimeError}


def _collective(method: Callable) -> Callable:
    """A collective whose failure (a peer that raised or died mid-run, or the group's timeout)
    is reported as such, naming this rank."""

    def call(self: "Shards", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as exc:
            raise RuntimeError(f"sharded selection: a collective failed on rank {self.rank} of {self.world}; "
                               f"another rank failed, left or timed out mid-run ({exc})") from exc

    call.__doc__ = method.__doc__
    return call


class Shards:
    """The group, this rank's place in it and the shard layout."""

    def __init__(self, group: Any):
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("group= needs torch.distributed, which this torch build lacks")
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"group must be a torch.distributed ProcessGroup, got {type(group).__name__}")
        if not dist.is_initialized():
            raise RuntimeError("group= needs an initialised torch.distributed process group")
        self.torch, self.dist, self.group = torch, dist, group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.global_ranks = dist.get_process_group_ranks(group)
        self.sizes: List[int] = []
        self.offsets: List[int] = []

    # -- collectives ---------------------------------------------------------------------------
    @_collective
    def gather_objects(self, value: Any) -> List[Any]:
        out: List[Any] = [None] * self.world
        self.dist.all_gather_object(out, value, group=self.group)
        return out

    @_collective
    def gather(self, values: np.ndarray) -> np.ndarray:
        """(world, m) float64 from every rank's (m,) float64."""
        t = self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
        parts = [self.torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t, group=self.group)
        return np.stack([p.numpy() for p in parts])

    @_collective
    def max_reduce(self, values: np.ndarray) -> np.ndarray:
        """Elementwise maximum over ranks (each entry has one owner; the others send 0)."""
        t = self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).copy())
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return t.numpy()

    @_collective
    def broadcast_row(self, row: Optional[np.ndarray], owner: int, d: int) -> np.ndarray:
        t = self.torch.from_numpy(row.copy() if row is not None else np.zeros(d, dtype=np.float32))
        self.dist.broadcast(t, src=self.global_ranks[owner], group=self.group)
        return t.numpy()

    @_collective
    def broadcast_values(self, values: Optional[np.ndarray], owner: int, size: int) -> np.ndarray:
        """float64 (size,) from the rank ``owner`` (the others pass None)."""
        t = self.torch.from_numpy(values.astype(np.float64) if values is not None else np.zeros(size))
        self.dist.broadcast(t, src=self.global_ranks[owner], group=self.group)
        return t.numpy()

    # -- agreement -----------------------------------------------------------------------------
    def agree(self, prepare: Callable[[], Tuple[Any, Dict[str, Any]]], same: Tuple[str, ...]) -> Tuple[Any, List[Dict]]:
        """Runs this rank's checks; every rank raises when any rank's failed. ``prepare`` returns
        (local data, a small summary with ``rows``); the summary keys in ``same`` must agree."""
        data, summary, error, own = None, {}, None, None
        try:
            data, summary = prepare()
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, or the others hang
            error, own = (type(exc).__name__, str(exc)), exc
        gathered = self.gather_objects((error, summary))
        for rank, (err, _) in enumerate(gathered):
            if err is not None:
                kind = _ERRORS.get(err[0], RuntimeError)
                raise kind(f"rank {rank} of {self.world}: {err[1]}") from own
        summaries = [s for _, s in gathered]
        for key in same:
            values = [s[key] for s in summaries]
            if any(v != values[0] for v in values):
                raise ValueError(f"{key} must be the same on every rank, got {values}")
        self.sizes = [int(s["rows"]) for s in summaries]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64).tolist()
        return data, summaries

    @property
    def offset(self) -> int:
        return self.offsets[self.rank]

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def owner_of(self, row: int) -> int:
        return int(np.searchsorted(np.asarray(self.offsets[1:]), row, side="right"))


def refuse_group(group: Any, name: str, why: str) -> None:
    """``group=`` of a strategy with no exact sharded form yet: a clear error instead of a guess."""
    if group is not None:
        raise NotImplementedError(
            f"{name} over row shards (group=) is not implemented: {why}. Gather the pool on one rank, or use a "
            "strategy that shards exactly (select_uncertain, bald, batchbald, kcenter_greedy, kmeans_pp, badge)")


def check_group(group: Any) -> None:
    """``group=`` of a function that needs no communication (elementwise scores)."""
    if group is not None:
        Shards(group)


def as_result(values: np.ndarray, like: Any) -> Any:
    """numpy for numpy input, a torch tensor on the input's device for torch input."""
    if type(like).__module__.startswith("torch"):
        import torch

        return torch.from_numpy(values).to(like.device)
    return values


# ---------------------------------------------------------------------------------------------
# Uncertainty

def select_uncertain_sharded(group: Any, like: Any, largest_first: bool,
                             local_top: Callable[[], Tuple[int, int, int, Any, Any]],
                             score_dtype: Any = np.float32) -> Any:
    """Global top-k of a sharded pool. ``local_top()`` checks this rank's arguments, runs the
    kernel on its shard and returns (k, rows, rows that may be picked, the shard's best
    min(k, pickable) local rows, their scores); all ranks' candidates travel in the one
    all-gather that also checks the arguments. ``score_dtype``: the type the kernel ranks by
    (float32 statistics; float64 for BALD), so the merge compares exactly what it compared."""
    shards = Shards(group)

    def check() -> Tuple[Any, Dict[str, Any]]:
        k, rows, available, local, values = local_top()
        local = np.asarray(_to_numpy(local), dtype=np.int64)
        values = np.asarray(_to_numpy(values), dtype=score_dtype)
        return None, {"k": k, "rows": rows, "available": available, "local": local, "scores": values}

    _, summaries = shards.agree(check, ("k",))
    k = summaries[0]["k"]
    available = sum(s["available"] for s in summaries)
    if k > available:
        raise ValueError(f"k={k} is larger than the {available} rows that may be picked "
                         f"({shards.total} rows over {shards.world} shards)")
    scores = np.concatenate([s["scores"] for s in summaries]).astype(np.float64)
    rows = np.concatenate([s["local"] + off for s, off in zip(summaries, shards.offsets)])
    order = np.lexsort((rows, -scores if largest_first else scores))[:k]
    return as_result(rows[order].astype(np.int64), like)


def _to_numpy(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("torch"):
        return a.detach().cpu().numpy()
    return np.asarray(a)
