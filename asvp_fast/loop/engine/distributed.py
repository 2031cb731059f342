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
ends the wait) and is re-raised as :class:`~..models.ranks.DistributedRunError` naming the stage.
``torchrun`` itself also stops the remaining ranks when one exits with an error. Rank 0's duties
and the failure reports are in :mod:`..models.ranks` (every layer of the loop uses them); this
module makes the process group.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from typing import Any, Iterator, Optional

from ..models.ranks import barrier

TIMEOUT_ENV = "ASVP_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


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
