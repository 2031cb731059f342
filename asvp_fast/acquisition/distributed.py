"""Exact selection over row shards with torch.distributed (``group=`` of the public functions).

Every rank of ``group`` holds one shard: consecutive rows of the pool, in rank order (shards may
differ in size and may be empty). Row arguments (``exclude=``, ``labeled=``) describe the
caller's own shard (a bool mask of its length or local row indices); the result is global row
numbers, the same on every rank and the same as one process on the whole pool with that seed.

Two routes, by what the strategy needs to see at once.

**Sharded: nothing of size N moves** (uncertainty, BALD, BatchBALD, k-center, k-means++, BADGE).
Per pick only a few small collectives run (candidate pairs, 32-entry sums, one centre vector):

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

The per-pick distance updates run in the compiled ``_C.shard_fold_in`` on each rank's shard (the
CPU kernel's own distance functions for the active instruction-set variant, so bit for bit the
single-process values; see :mod:`.sharded_diversity`; :mod:`.sharded_math` keeps a NumPy rendering
for the tests), without the kernel's triangle-inequality pruning.

**Gathered: the whole pool moves to rank 0** (TypiClust, ProbCover, ActiveFT, and Cluster-Margin's
clustering :func:`~.cluster_margin.hac_clusters`). Their k-means and in-cluster k-NN, δ-ball
graph, hierarchical clustering or centroid optimisation couple every row with every other, so no
exact form works on a shard alone. Each rank checks its own arguments and converts its shard
to the row-wise working copy the strategy reads anyway (float32 features; L2-normalised float32
rows for ActiveFT), :meth:`Shards.gather_to_root` moves those rows and the shard's
labelled-row mask to rank 0 (``dist.gather`` in chunks, padded to the longest shard), rank 0
runs the unchanged single-process selection on the concatenated pool, and
:meth:`Shards.share_from_root` broadcasts the picked global rows. Rank 0 therefore needs the
memory of one process on the whole pool (N x d float32 plus the strategy's own working set), and
the other ranks wait in the broadcast while it works: the process group's timeout must exceed
that single-process run time. Cluster-Margin's margin candidates use the sharded uncertainty
route; given ``clustering=`` (this rank's slice, as :func:`hac_clusters` with a group returns it)
it moves nothing of size N either.

Tensors handed to collectives live on the CPU for gloo (or a mixed gloo/NCCL default group) and
on the rank's current CUDA device for an NCCL-only group (:attr:`Shards.device`) in the gathered
route. A rank whose arguments are wrong makes every rank raise (the first failing rank is named);
so does an error of rank 0 while it runs a gathered strategy; a rank that raises or dies mid-run
makes the others' next collective fail (at the latest at the process group's timeout), reported as
a RuntimeError naming the rank.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

# The kinds of error that travel between ranks (by name), most specific first: a subclass
# (e.g. ActiveFT's LossNotFiniteError, a ValueError) travels as the first kind it is.
_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "MemoryError": MemoryError,
           "NotImplementedError": NotImplementedError, "RuntimeError": RuntimeError}

#: Bytes of one rank's rows per ``dist.gather`` round of the gathered route (rank 0 receives
#: world x this much per round, next to the pool it fills).
GATHER_CHUNK_BYTES = 16 << 20


def _portable(exc: BaseException) -> Tuple[str, str]:
    """(kind name, message) of an exception, the kind one that every rank can raise again."""
    for name, kind in _ERRORS.items():
        if isinstance(exc, kind):
            return name, str(exc)
    return type(exc).__name__, str(exc)


def _raise_for(rank: int, world: int, error: Tuple[str, str], own: Optional[BaseException]) -> None:
    kind = _ERRORS.get(error[0], RuntimeError)
    raise kind(f"rank {rank} of {world}: {error[1]}") from own


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
        self.dist.all_gather_object(out, value, group=self.group)  # torch stages objects on the current GPU under NCCL
        return out

    @_collective
    def gather(self, values: np.ndarray) -> np.ndarray:
        """(world, m) float64 from every rank's (m,) float64."""
        t = self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(self.device)
        parts = [self.torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(parts, t, group=self.group)
        return np.stack([p.cpu().numpy() for p in parts])

    @_collective
    def max_reduce(self, values: np.ndarray) -> np.ndarray:
        """Elementwise maximum over ranks (each entry has one owner; the others send 0)."""
        t = self.torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64).copy()).to(self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return t.cpu().numpy()

    @_collective
    def broadcast_row(self, row: Optional[np.ndarray], owner: int, d: int) -> np.ndarray:
        t = self.torch.from_numpy(row.copy() if row is not None else np.zeros(d, dtype=np.float32)).to(self.device)
        self.dist.broadcast(t, src=self.global_ranks[owner], group=self.group)
        return t.cpu().numpy()

    @_collective
    def broadcast_values(self, values: Optional[np.ndarray], owner: int, size: int) -> np.ndarray:
        """float64 (size,) from the rank ``owner`` (the others pass None)."""
        t = self.torch.from_numpy(values.astype(np.float64) if values is not None else np.zeros(size)).to(self.device)
        self.dist.broadcast(t, src=self.global_ranks[owner], group=self.group)
        return t.cpu().numpy()

    # -- agreement -----------------------------------------------------------------------------
    def agree(self, prepare: Callable[[], Tuple[Any, Dict[str, Any]]], same: Tuple[str, ...]) -> Tuple[Any, List[Dict]]:
        """Runs this rank's checks; every rank raises when any rank's failed. ``prepare`` returns
        (local data, a small summary with ``rows``); the summary keys in ``same`` must agree."""
        data, summary, error, own = None, {}, None, None
        try:
            data, summary = prepare()
        except Exception as exc:  # noqa: BLE001 - every rank must learn of it, or the others hang
            error, own = _portable(exc), exc
        gathered = self.gather_objects((error, summary))
        for rank, (err, _) in enumerate(gathered):
            if err is not None:
                _raise_for(rank, self.world, err, own)
        summaries = [s for _, s in gathered]
        same_on_every_rank(summaries, same)
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

    # -- the gathered route: the pool on rank 0, its answer to every rank ------------------------
    @property
    def device(self) -> Any:
        """Where this group's collectives take tensors: the current CUDA device when NCCL is its
        only backend, else the CPU (gloo, MPI, or a default group that holds both)."""
        backend = str(self.dist.get_backend(self.group)).lower()
        if "nccl" in backend and "gloo" not in backend:
            return self.torch.device("cuda", self.torch.cuda.current_device())
        return self.torch.device("cpu")

    @property
    def root(self) -> int:
        """Global rank of the group's rank 0, which runs the gathered strategies."""
        return int(self.global_ranks[0])

    @_collective
    def broadcast_object(self, value: Any) -> Any:
        """A small picklable value from rank 0 (the others pass anything)."""
        box = [value]
        self.dist.broadcast_object_list(box, src=self.root, group=self.group, device=self.device)
        return box[0]

    def gather_to_root(self, arrays: Sequence[np.ndarray]) -> Optional[List[np.ndarray]]:
        """Every rank's rows of each array (the same dtype and row shape on every rank; row counts
        as agreed by :meth:`agree`), concatenated in rank order, on rank 0; None on the others.

        Rank 0 allocates the pool first and tells every rank whether it could, so a pool too large
        for it is a MemoryError on every rank rather than a hang."""
        layouts = [(np.asarray(a).dtype.str, tuple(np.asarray(a).shape[1:])) for a in arrays]
        seen = self.gather_objects(layouts)
        if any(other != seen[0] for other in seen):
            raise ValueError(f"the shards' arrays differ in dtype or row shape across ranks: {seen}")
        pool, error, own = None, None, None
        if self.rank == 0:
            try:
                pool = [np.empty((self.total,) + shape, dtype=np.dtype(dt)) for dt, shape in layouts]
            except MemoryError as exc:  # the others must hear of it, or they wait in the gather
                error, own = _portable(exc), exc
        error = self.broadcast_object(error)
        if error is not None:
            _raise_for(0, self.world, error, own)
        for i, a in enumerate(arrays):
            self._gather_rows(_row_bytes(np.asarray(a)), None if pool is None else _row_bytes(pool[i]))
        return pool

    @_collective
    def _gather_rows(self, local: np.ndarray, out: Optional[np.ndarray]) -> None:
        """(rows, width) uint8 of every rank into ``out`` on rank 0, in rounds of at most
        :data:`GATHER_CHUNK_BYTES` per rank: every rank sends the same padded block size, as
        ``dist.gather`` wants, without padding the whole shard to the longest one."""
        width, longest = local.shape[1], max(self.sizes)
        if width == 0:
            return
        step = max(1, GATHER_CHUNK_BYTES // width)
        for start in range(0, longest, step):
            self._gather_block(local, out, start, min(step, longest - start))

    def _gather_block(self, local: np.ndarray, out: Optional[np.ndarray], start: int, rows: int) -> None:
        torch = self.torch
        send = torch.zeros((rows, local.shape[1]), dtype=torch.uint8, device=self.device)
        mine = local[start:start + rows]
        if mine.shape[0]:
            send[:mine.shape[0]] = torch.from_numpy(np.ascontiguousarray(mine)).to(self.device)
        received = [torch.empty_like(send) for _ in range(self.world)] if self.rank == 0 else None
        self.dist.gather(send, gather_list=received, dst=self.root, group=self.group)
        if out is None or received is None:
            return
        for rank, block in enumerate(received):
            count = min(rows, max(0, self.sizes[rank] - start))
            if count:
                at = self.offsets[rank] + start
                out[at:at + count] = block[:count].cpu().numpy()

    def share_from_root(self, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """Rank 0 runs ``compute()`` (int64 values; the other ranks never call it) and every rank
        returns its result, or raises its error (named as rank 0's) instead."""
        result, error, own = None, None, None
        if self.rank == 0:
            try:
                result = np.ascontiguousarray(compute(), dtype=np.int64)
            except Exception as exc:  # noqa: BLE001 - the other ranks wait for this answer
                error, own = _portable(exc), exc
        error, size = self.broadcast_object((error, None if result is None else result.size))
        if error is not None:
            _raise_for(0, self.world, error, own)
        return self._broadcast_int64(result, int(size))

    @_collective
    def _broadcast_int64(self, values: Optional[np.ndarray], size: int) -> np.ndarray:
        if size == 0:
            return np.empty(0, dtype=np.int64)
        torch = self.torch
        if values is not None:
            t = torch.from_numpy(values.reshape(-1)).to(self.device)
        else:
            t = torch.empty(size, dtype=torch.int64, device=self.device)
        self.dist.broadcast(t, src=self.root, group=self.group)
        return t.cpu().numpy().copy()


def same_on_every_rank(summaries: List[Dict[str, Any]], keys: Tuple[str, ...]) -> None:
    """Every rank's summary holds the same value under each key (else the same error on all)."""
    for key in keys:
        values = [s[key] for s in summaries]
        if any(v != values[0] for v in values):
            raise ValueError(f"{key} must be the same on every rank, got {values}")


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


def _row_bytes(a: np.ndarray) -> np.ndarray:
    """A (rows, bytes per row) uint8 view of a C-contiguous array (a copy only if it is not)."""
    a = np.ascontiguousarray(a)
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64))).view(np.uint8)


# ---------------------------------------------------------------------------------------------
# The gathered route (TypiClust, ProbCover, ActiveFT, Cluster-Margin's clustering)

class ShardInput(NamedTuple):
    """What one rank contributes to a gathered selection (see :func:`select_on_root`)."""

    rows: np.ndarray  # (rows, d) the row-wise working copy the strategy reads (float32)
    blocked: np.ndarray  # (rows,) bool: labelled/excluded rows of this shard
    agreed: Dict[str, Any]  # "k" and every option that changes the result: equal on every rank
    select: Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # (pool, blocked global rows, k) -> picks


def run_on_root(shards: Shards, arrays: Sequence[np.ndarray], compute: Callable[..., np.ndarray]) -> np.ndarray:
    """``compute(*pool)`` on rank 0, where ``pool`` holds every rank's rows of ``arrays``
    concatenated in rank order; its int64 result on every rank. ``shards`` must have agreed the
    row counts (:meth:`Shards.agree`) with ``rows`` = the arrays' length."""
    pool = shards.gather_to_root(arrays)
    return shards.share_from_root(lambda: compute(*pool))


def select_on_root(group: Any, like: Any, prepare: Callable[[], ShardInput]) -> Any:
    """A selection whose algorithm needs the whole pool at once, over shards: ``prepare()``
    checks this rank's arguments and converts its rows (every rank raises when one fails, or when
    ``agreed`` differs), the budget is checked against the rows every rank may give, and rank 0
    runs its own ``select`` on the gathered pool; every rank returns those global rows."""
    shards = Shards(group)

    def check() -> Tuple[ShardInput, Dict[str, Any]]:
        shard = prepare()
        summary = dict(shard.agreed, rows=shard.rows.shape[0], d=shard.rows.shape[1],
                       available=int(shard.rows.shape[0] - np.count_nonzero(shard.blocked)))
        return shard, summary

    shard, summaries = shards.agree(check, ("d",))
    same_on_every_rank(summaries, tuple(shard.agreed))
    k = int(summaries[0]["k"])
    check_budget(shards, k, sum(s["available"] for s in summaries))
    if k == 0:
        return as_result(np.empty(0, dtype=np.int64), like)
    picks = run_on_root(shards, [shard.rows, shard.blocked],
                        lambda pool, blocked: shard.select(pool, np.flatnonzero(blocked), k))
    return as_result(picks, like)


def check_budget(shards: Shards, k: int, available: int) -> None:
    """k may not exceed the rows that every rank together may give (the same error on all)."""
    if k > available:
        raise ValueError(f"k={k} is larger than the {available} rows that may be picked "
                         f"({shards.total} rows over {shards.world} shards)")


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
