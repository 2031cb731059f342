"""Data-parallel training and row shards over a ``torch.distributed`` process group.

The loop under ``torchrun`` passes one process group (``group=``, None for a single process)
down to the trainers, the selectors and the caches. This module holds what they share:

* each rank's part of a global mini-batch (:func:`.ranks.rank_part`): every rank draws the same
  global batches from the same seeded generator, as one process would, and trains on its part;
* :class:`GroupBatchNorm` and :func:`data_parallel`: the model wrapped in
  ``DistributedDataParallel`` with its BatchNorm layers normalising over the *global* batch
  (statistics all-reduced, differentiably), so a step on W ranks is the step one process takes
  on the whole batch, up to the order of floating-point sums. torch's own ``SyncBatchNorm`` needs
  CUDA tensors; this one runs on gloo (CPU) and NCCL alike, and empty parts (a batch smaller than
  the group) take part in the collectives with zero rows.

Loss scaling: DDP averages gradients over ranks, so a rank's loss is
``world * (sum of its rows' losses) / (rows in the global batch)``; the average is then the
gradient of the global batch's mean loss, exactly what one process computes.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional, Tuple

import torch
from torch import nn

__all__ = ["GroupBatchNorm", "data_parallel", "gather_rows", "global_rows_and_finite", "sum_over_ranks"]


def global_rows_and_finite(local_rows: int, local_loss: torch.Tensor, group: Any, device: torch.device) -> Tuple[int, bool]:
    """(rows of the global batch, whether every rank's loss is finite): one small all-reduce, so
    that all ranks scale by the same count and all stop together when one diverges."""
    import torch.distributed as dist

    bad = 0.0 if bool(torch.isfinite(local_loss.detach())) else 1.0
    t = torch.tensor([float(local_rows), bad], dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return int(t[0].item()), bool(t[1].item() == 0)


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) with its gradient: the backward of a sum over ranks is the sum over ranks
    of the gradients (each rank's loss depends on every rank's statistics)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        import torch.distributed as dist

        out = grad.clone()
        dist.all_reduce(out, group=ctx.group)
        return out, None


class _GatherRows(torch.autograd.Function):
    """Every rank's rows, concatenated in rank order (parts may differ in size). The backward
    returns this rank's slice of the gradient of *its own* loss: every rank computes the same
    batch-level loss from the gathered rows, so each rank's rows get that loss's gradient once."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        world = dist.get_world_size(group)
        sizes = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
        dist.all_gather(all_sizes, sizes, group=group)
        counts = [int(c.item()) for c in all_sizes]
        padded = x.new_zeros((max(counts),) + tuple(x.shape[1:]))
        padded[:x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.contiguous(), group=group)
        rank = dist.get_rank(group)
        ctx.lo, ctx.hi = sum(counts[:rank]), sum(counts[:rank + 1])
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad[ctx.lo:ctx.hi], None


def gather_rows(x: torch.Tensor, group: Any) -> torch.Tensor:
    """The global batch's rows from every rank's part (``x`` itself without a group), with the
    gradient of this rank's loss flowing back to its own part (see :class:`_GatherRows`)."""
    return x if group is None else _GatherRows.apply(x, group)  # type: ignore[no-any-return]


def sum_over_ranks(x: torch.Tensor, group: Any) -> torch.Tensor:
    """``x`` summed over the ranks of ``group``, differentiably."""
    return _SumOverRanks.apply(x, group)  # type: ignore[no-any-return]


class GroupBatchNorm(nn.Module):
    """A BatchNorm layer (1d/2d/3d) normalising over the global batch of a process group.

    Wraps the original layer and uses its parameters and buffers, so unwrapping it after training
    (:func:`data_parallel` does) leaves an ordinary ``BatchNorm`` with the trained values. In
    training mode the per-channel mean and (biased) variance come from two differentiable
    all-reduces (sums, then squared deviations: the two-pass formula, as stable as one process's);
    running statistics are updated with the unbiased variance and the layer's momentum, as
    ``nn.BatchNorm`` does. In eval mode it is the wrapped layer.
    """

    def __init__(self, bn: nn.Module, group: Any) -> None:
        super().__init__()
        self.bn, self.group = bn, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not bn.training:
            return bn(x)
        x = x.float()  # statistics in float32, as BatchNorm computes them under autocast
        dims = [d for d in range(x.dim()) if d != 1]
        count = torch.tensor(float(x.numel() // max(1, x.shape[1])), dtype=x.dtype, device=x.device)
        sums = sum_over_ranks(torch.cat([x.sum(dim=dims), count.reshape(1)]), self.group)
        total = sums[-1]
        if float(total.detach()) < 2:  # the same on every rank: all raise together
            raise ValueError(f"BatchNorm needs more than one value per channel in a training batch, got {int(total)}")
        mean = sums[:-1] / total
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.reshape(shape)
        var = sum_over_ranks((centred * centred).sum(dim=dims), self.group) / total
        if bn.track_running_stats:
            self._update_running(mean.detach(), var.detach(), float(total.detach()))
        y = centred * torch.rsqrt(var + bn.eps).reshape(shape)
        if bn.affine:
            y = y * bn.weight.reshape(shape) + bn.bias.reshape(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, total: float) -> None:
        bn = self.bn
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
        unbiased = var * (total / (total - 1))
        bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)


_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _swap_batchnorms(module: nn.Module, group: Any) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BATCHNORMS):
            setattr(module, name, GroupBatchNorm(child, group))
        else:
            _swap_batchnorms(child, group)


def _restore_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, GroupBatchNorm):
            setattr(module, name, child.bn)
        else:
            _restore_batchnorms(child)


def _no_buffer_sync() -> dict:
    """DDP's option not to broadcast buffers in every forward pass: BatchNorm's running statistics
    are identical on every rank already (computed from the global batch). Newer torch names it
    ``forward_sync_buffers``; older only knows ``broadcast_buffers``."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


@contextlib.contextmanager
def data_parallel(model: nn.Module, group: Any, device: torch.device) -> Iterator[nn.Module]:
    """The module to train: ``model`` itself without a group; else ``model`` with its BatchNorm
    layers made global (:class:`GroupBatchNorm`) inside ``DistributedDataParallel``. On exit the
    layers are plain BatchNorm again and ``model`` holds the trained weights (identical on every
    rank: DDP starts from rank 0's and applies the same averaged gradients everywhere)."""
    if group is None:
        yield model
        return
    from torch.nn.parallel import DistributedDataParallel

    _swap_batchnorms(model, group)
    try:
        device_ids: Optional[List[int]] = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        # static_graph: the same parameters take part in every step, and some never do (e.g. a
        # Hugging Face encoder's pooler, or a frozen layer); DDP then skips them without searching
        # the autograd graph every step, as find_unused_parameters would
        yield DistributedDataParallel(model, device_ids=device_ids, process_group=group, static_graph=True,
                                      **_no_buffer_sync())
    finally:
        _restore_batchnorms(model)
