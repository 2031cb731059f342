"""Where a process stands in a distributed run, and how ranks agree (``group=None``: one process).

The loop under ``torchrun`` passes one process group down to the trainers, the selectors, the
caches and the methods; they use these helpers:

* :func:`rank_and_world`, :func:`shard_range` (the rows this rank owns: consecutive ranges in
  rank order, the layout of every ``group=`` selection function and of the sharded feature
  caches) and :func:`rank_part` (this rank's part of a global mini-batch);
* :func:`is_root`, :func:`from_root` (rank 0 decides or does, every rank gets the result or its
  error) and :func:`barrier`;
* :func:`stage`: a collective that fails because another rank failed, left or timed out is
  reported as :class:`DistributedRunError` naming what this rank was doing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np
import torch

T = TypeVar("T")

__all__ = ["DistributedRunError", "barrier", "from_root", "is_root", "rank_and_world", "rank_part", "shard_range",
           "stage"]


def rank_and_world(group: Any) -> Tuple[int, int]:
    """(this process's rank in ``group``, the group's size); (0, 1) without a group."""
    if group is None:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), dist.get_world_size(group)


def shard_range(n: int, group: Any) -> Tuple[int, int]:
    """The rows [lo, hi) of an ``n``-row pool this rank owns: consecutive, in rank order, sizes
    differing by at most one (the layout of the ``group=`` selection functions)."""
    rank, world = rank_and_world(group)
    return rank * n // world, (rank + 1) * n // world


def rank_part(batch: "torch.Tensor | np.ndarray | List[int]", group: Any) -> Any:
    """This rank's consecutive part of a global mini-batch (all of it without a group)."""
    if group is None:
        return batch
    lo, hi = shard_range(len(batch), group)
    return batch[lo:hi]


class DistributedRunError(RuntimeError):
    """A collective of the distributed loop failed: another rank failed, left or timed out."""


def is_root(group: Any) -> bool:
    """Rank 0 (or a single process): the rank that talks to the oracle and writes the state."""
    return rank_and_world(group)[0] == 0


@contextlib.contextmanager
def stage(group: Any, what: str) -> Iterator[None]:
    """Collectives inside report a failed peer as :class:`DistributedRunError` naming ``what``."""
    if group is None:
        yield
        return
    try:
        yield
    except DistributedRunError:
        raise
    except RuntimeError as exc:
        if not _is_collective_failure(exc):
            raise
        rank, world = rank_and_world(group)
        raise DistributedRunError(f"rank {rank} of {world}: {what} stopped because another rank failed, left or "
                                  f"timed out (see that rank's error; {exc})") from exc


def _is_collective_failure(exc: BaseException) -> bool:
    """Whether a RuntimeError came from torch.distributed (a peer closed its connection, a
    timeout) or from our own sharded selection's wrapper, rather than from the computation: its
    type, or a frame of torch.distributed / DDP in its traceback (the backends' messages vary), or
    the sharded selection's own wording."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    if "collective failed" in str(exc):  # acquisition.distributed's report of a failed peer
        return True
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "torch/distributed/" in name or name.endswith("torch/nn/parallel/distributed.py"):
            return True
        tb = tb.tb_next
    return False


def barrier(group: Any, what: str) -> None:
    """Wait for every rank (no-op without a group)."""
    if group is None:
        return
    import torch.distributed as dist

    with stage(group, what):
        dist.barrier(group=group)


def from_root(group: Any, what: str, compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0 only, its result on every rank. If it raises on rank 0, every rank
    raises that exception (re-created from its type and message), so no rank is left waiting."""
    if group is None:
        return compute()
    import torch.distributed as dist

    box: List[Any] = [None]
    failure: Optional[BaseException] = None
    if is_root(group):
        try:
            box[0] = ("ok", compute())
        except Exception as exc:  # shipped to every rank, then raised everywhere below
            failure = exc
            box[0] = ("error", _portable(exc))
    with stage(group, what):
        dist.broadcast_object_list(box, src=_root_rank(group), group=group)
    kind, value = box[0]
    if kind == "error":
        raise failure if failure is not None else value
    return value  # type: ignore[no-any-return]


def _root_rank(group: Any) -> int:
    """The global rank of the group's rank 0 (broadcast takes global ranks)."""
    import torch.distributed as dist

    return int(dist.get_global_rank(group, 0))


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the other ranks raise a copy of it), else a
    :class:`DistributedRunError` carrying its type and message."""
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return DistributedRunError(f"rank 0 failed: {type(exc).__name__}: {exc}")
