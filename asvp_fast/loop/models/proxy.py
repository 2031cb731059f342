"""The MLP proxy of SVPp/ASVP: a small classifier trained on cached features.

Architecture and defaults follow the ASVP paper (section 6.1, appendix A): Linear → BatchNorm →
ReLU → Linear with the hidden width equal to the feature dimension, SGD with momentum 0.9,
50 epochs, learning rate 0.01, no weight decay, batch 2048 for training and 16384 for inference.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ...core.arrays import chunked_rows
from ...core.devices import torch_device
from ...core.progress import task_bar
from .mc_dropout import block_generator, keep_masks, mask_blocks
from .data_parallel import data_parallel
from .ranks import rank_and_world, rank_part
from .seeding import seeded_torch


@dataclass(frozen=True)
class ProxyConfig:
    # metadata: the ranges a config is checked against (engine/schema.py); "machine": not part of
    # the resume digest (a run may continue on another machine with other values)
    epochs: int = field(default=50, metadata={"ge": 1})
    lr: float = field(default=0.01, metadata={"gt": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    batch_size: int = field(default=2048, metadata={"ge": 2})  # BatchNorm needs two rows
    inference_batch_size: int = field(default=16384, metadata={"ge": 1, "machine": True})
    hidden: Optional[int] = field(default=None, metadata={"ge": 1})  # None: the feature dimension, as in the paper
    device: str = field(default="auto", metadata={"device": True, "machine": True})
    # MC dropout (BALD, BatchBALD): dropout rate after the hidden layer, used in training and in the
    # `mc_samples` stochastic passes at selection. 0 (the default) leaves the proxy exactly as in the
    # paper. "omit_default": left out of the resume digest at its default (runs from before stay resumable).
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1, "omit_default": True})
    mc_samples: int = field(default=20, metadata={"ge": 2, "omit_default": True})


class MLPProxy(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, hidden: Optional[int] = None, dropout: float = 0.0) -> None:
        super().__init__()
        width = hidden or in_dim
        layers = [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU()]
        if dropout > 0:  # parameter-free, appended last: the state dict keys are those without dropout
            layers.append(nn.Dropout(dropout))
        self.embed = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.dropout = float(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def train_proxy(features: np.ndarray, labelled: np.ndarray, labels: np.ndarray, num_classes: int,
                config: ProxyConfig = ProxyConfig(), *, seed: int = 0, progress: Optional[bool] = False,
                group: Any = None) -> MLPProxy:
    """Train the proxy on the cached features of the labelled rows (deterministic for a seed).

    ``group``: a ``torch.distributed`` process group to train data-parallel (every rank passes the
    same rows and seed and gets the same model; see :mod:`.data_parallel`)."""
    labelled = np.asarray(labelled, dtype=np.int64)
    if labelled.size < 2:
        raise ValueError(f"the proxy needs at least 2 labelled rows to train (BatchNorm), got {labelled.size}")
    dev = torch_device(config.device)
    order = np.argsort(labelled, kind="stable")  # sorted reads are faster on memmaps
    x = torch.from_numpy(np.asarray(features[labelled[order]], dtype=np.float32)).to(dev)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)[order], device=dev)
    gen = torch.Generator().manual_seed(int(seed))
    with seeded_torch(seed):  # the layer initialisation, without touching the caller's RNG
        model = MLPProxy(x.shape[1], num_classes, config.hidden, config.dropout).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    model.train()
    bar: Any = task_bar(config.epochs, "proxy", progress, unit="epoch")
    # dropout draws from torch's global generator: seeded and forked, so the training is reproducible
    # and the caller's RNG untouched (without dropout nothing draws from it)
    with seeded_torch(seed + 1) if config.dropout > 0 else contextlib.nullcontext():
        with data_parallel(model, group, dev) as net:
            _epochs(net, opt, x, y, gen, config, bar, group)
    if bar is not None:
        bar.close()
    return model.eval()


def _epochs(model: nn.Module, opt: Any, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, config: ProxyConfig,
            bar: Any, group: Any = None) -> None:
    dev = x.device
    world = rank_and_world(group)[1]
    for _ in range(config.epochs):
        perm = torch.randperm(x.shape[0], generator=gen).to(dev)
        for batch in _batches(perm, config.batch_size):
            if group is None:
                loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            else:  # this rank's part of the global batch, scaled so DDP's average is its mean loss
                part = rank_part(batch, group)
                loss = nn.functional.cross_entropy(model(x[part]), y[part], reduction="sum") * (world / len(batch))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if bar is not None:
            bar.update(1)


def _batches(perm: torch.Tensor, size: int) -> Any:
    """Mini-batches of ``perm``; a trailing batch of one row joins the previous one (BatchNorm)."""
    n = perm.shape[0]
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    for i, s in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else n
        yield perm[s:end]


@torch.inference_mode()
def proxy_outputs(model: MLPProxy, features: np.ndarray, *, hidden: bool = True,
                  hidden_out: Optional[np.ndarray] = None, batch_size: int = 16384) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Logits (N, C) float32 and, when ``hidden``, the hidden embedding (N, width) float16.

    The pool is read chunk by chunk, so a memmap larger than RAM is fine; pass ``hidden_out``
    (e.g. a float16 memmap) to keep the embedding out of memory too.
    """
    dev = next(model.parameters()).device
    n = features.shape[0]
    width = model.head.in_features
    logits = np.empty((n, model.head.out_features), dtype=np.float32)
    emb = None
    if hidden:
        emb = hidden_out if hidden_out is not None else np.empty((n, width), dtype=np.float16)
    for rows in chunked_rows(n, features.shape[1], target_bytes=batch_size * features.shape[1] * 4):
        # a copy (np.array): memmap rows are read-only, and torch warns on non-writable arrays
        x = torch.from_numpy(np.array(features[rows], dtype=np.float32)).to(dev)
        h = model.embed(x)
        logits[rows] = model.head(h).float().cpu().numpy()
        if emb is not None:
            emb[rows] = h.cpu().numpy().astype(emb.dtype, copy=False)
    return logits, emb


@torch.inference_mode()
def proxy_mc_logits(model: MLPProxy, features: np.ndarray, samples: int, *, seed: int = 0, batch_size: int = 16384,
                    out: Optional[np.ndarray] = None, row_offset: int = 0) -> np.ndarray:
    """MC-dropout logits (samples, N, C) float32: ``samples`` stochastic passes of the head with dropout
    on the hidden layer (rate ``model.dropout``; BatchNorm in eval mode). The hidden layer is computed
    once per block of rows; the dropout masks are drawn per block of global rows from generators
    seeded with ``seed`` (:mod:`.mc_dropout`): deterministic for a seed, the same for a row whichever
    rows around it are computed (``row_offset``: the global row of ``features``' first row, for a
    rank's shard), and the global RNG is not used. ``out``: e.g. a float32 memmap of that shape."""
    if model.dropout <= 0:
        raise ValueError("MC dropout needs a proxy trained with dropout > 0 ([proxy] dropout)")
    dev = next(model.parameters()).device
    n = features.shape[0]
    classes = model.head.out_features
    result = out if out is not None else np.empty((samples, n, classes), dtype=np.float32)
    keep = 1.0 - model.dropout
    deterministic = nn.Sequential(*[m for m in model.embed if not isinstance(m, nn.Dropout)])
    for block, lo, hi, a, b in mask_blocks(n, row_offset):
        h = deterministic(torch.from_numpy(np.array(features[lo:hi], dtype=np.float32)).to(dev))
        gen = block_generator(seed, block, dev)
        for t, mask in enumerate(keep_masks(gen, samples, h.shape[1], (a, b), keep, dev)):
            result[t, lo:hi] = model.head(h * mask / keep).float().cpu().numpy()
    return result
