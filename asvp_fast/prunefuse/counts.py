"""Size and cost of a network: parameters, and multiply-accumulates per input item."""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers such as BatchNorm statistics excluded)."""
    return int(sum(p.numel() for p in model.parameters()))


def count_flops(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one input item.

    This is the "FLOPs" of most pruning papers (thop/ptflops count MACs); normalisation, activations
    and additions are left out. ``example_input``: a batch the model accepts (run once, eval mode,
    no gradients); the count is divided by its batch size.
    """
    total: List[int] = [0]
    batch: List[int] = [0]

    def conv_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        w = module.weight
        total[0] += output.numel() * (w.shape[1] * int(torch.tensor(w.shape[2:]).prod()))
        batch[0] = output.shape[0]

    def linear_hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        total[0] += output.numel() * module.weight.shape[1]
        batch[0] = batch[0] or output.shape[0]

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return int(total[0] // max(1, batch[0]))
