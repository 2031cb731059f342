"""The loop on several processes (``torchrun``): the process group, rank 0's duties, clear failures.

Under ``torchrun --nproc-per-node N -m asvp_fast run CONFIG -o DIR`` every rank runs the same
loop on the same config and state; they differ only in the rows they own:

* feature extraction: each rank extracts its consecutive shard of the pool into a sharded cache
  (:mod:`..storage.sharded_cache`); rank 0 writes the whole's manifest once all are finished;
* training: the proxy and the target model train data-parallel (DDP, global BatchNorm; see
  :mod:`..models.data_parallel`), so every rank holds the same model;
* selection: each rank computes the selector's outputs for its own shard only, and the strategies
  select with the exact ``group=`` kernels (the picks of one process on the whole pool);
* labels and state: only rank 0 asks the oracle and writes ``state.json`` (atomically); the
  answers, or the error, reach every rank by broadcast, so all ranks stop together;
* evaluation: each rank predicts its shard of the test set; the correct counts are summed.

The run directory must be on a filesystem every rank sees (one machine, or a shared filesystem
across nodes): the ranks read the labelled rows' features from each other's shards. The state
holds nothing about the number of ranks, so a run resumes with any number of them.

A rank that fails raises its own error; the others' next collective then fails (gloo reports the
closed connection at once; otherwise the group's timeout, ``ASVP_DIST_TIMEOUT_S``, default 1800 s,
ends the wait) and is re-raised as :class:`DistributedRunError` naming the stage. ``torchrun``
itself also stops the remaining ranks when one exits with an error.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Callable, Iterator, List, Optional, TypeVar

from ..models.data_parallel import rank_and_world

T = TypeVar("T")

TIMEOUT_ENV = "ASVP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


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
    timeout) or from our own sharded selection's wrapper, rather than from the computation."""
    import torch.distributed as dist

    backend_error = getattr(dist, "DistBackendError", None)
    if backend_error is not None and isinstance(exc, backend_error):
        return True
    text = str(exc)
    return any(s in text for s in ("Connection closed by peer", "Connection reset", "Timed out", "timed out",
                                   "collective failed", "NCCL", "Gloo", "gloo", "Broken pipe"))


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


def timeout_from_env() -> datetime.timedelta:
    """The process group's timeout: ``ASVP_DIST_TIMEOUT_S`` seconds (default 1800)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def launched_world_size() -> int:
    """The number of processes ``torchrun`` (or any launcher setting ``WORLD_SIZE``) started; 1 otherwise."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return max(1, int(raw))
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an integer, got {raw!r}") from None


@contextlib.contextmanager
def process_group_from_env(*, backend: Optional[str] = None) -> Iterator[Any]:
    """For the command line: the default process group when launched by ``torchrun`` with more
    than one process (None otherwise), destroyed on exit.

    ``backend``: None picks ``"cpu:gloo,cuda:nccl"`` when CUDA is available (NCCL for the models'
    and shards' CUDA tensors, gloo for host values, so a config that keeps some work on the CPU
    still runs), else gloo. With CUDA, each process uses the GPU of its ``LOCAL_RANK`` (this is the
    process's own entry point, where choosing the device belongs; library functions never change it).
    """
    if launched_world_size() == 1:
        yield None
        return
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run on one process or install a build with it")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend or ("cpu:gloo,cuda:nccl" if use_cuda else "gloo"), timeout=timeout_from_env())
    try:
        yield dist.group.WORLD
        barrier(dist.group.WORLD, "finishing the run")  # every rank leaves together, none mid-collective
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()
