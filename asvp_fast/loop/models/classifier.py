"""The target model: a backbone plus a linear head, and what is done with a trained one
(predict the test set, score cached features with its head)."""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ...core.progress import task_bar
from .backbones.base import Backbone
from .mc_dropout import block_generator, keep_masks, mask_blocks


class Classifier(nn.Module):
    """Backbone + linear head; ``forward`` returns logits. ``head_dropout`` > 0 drops penultimate
    features before the head while training (and in MC-dropout passes, :func:`head_mc_logits`)."""

    def __init__(self, backbone: Backbone, num_classes: int, head_dropout: float = 0.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        self.head_dropout = float(head_dropout)

    def forward(self, batch: Any) -> torch.Tensor:
        features = self.backbone(batch).float()
        if self.head_dropout > 0:  # nothing is drawn without it: results stay those of a plain head
            features = nn.functional.dropout(features, self.head_dropout, training=self.training)
        return self.head(features)



@torch.inference_mode()
def predict(model: Classifier, dataset: Any, collate: Any, config: Any,
            lengths: "Optional[Sequence[int] | np.ndarray]" = None, progress: Optional[bool] = None) -> np.ndarray:
    """Predicted classes of every item of ``dataset`` (length-sorted batches when lengths are given).

    ``config``: a :class:`~.trainers.TrainConfig` (its ``eval_batch_size``, ``num_workers``, ``amp``).
    """
    dev = next(model.parameters()).device
    n = len(dataset)
    order = np.argsort(np.asarray(lengths), kind="stable") if lengths is not None else np.arange(n)
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=config.eval_batch_size, shuffle=False,
                        collate_fn=collate, num_workers=config.num_workers)
    out = np.empty(n, dtype=np.int64)
    done = 0
    bar: Any = task_bar(n, "evaluate", progress, unit="item")
    model.eval()
    for batch in loader:
        with torch.autocast("cuda", dtype=torch.float16, enabled=config.amp and dev.type == "cuda"):
            pred = model(model.backbone.to_device(batch, dev)).argmax(dim=1).cpu().numpy()
        out[order[done : done + len(pred)]] = pred
        done += len(pred)
        if bar is not None:
            bar.update(len(pred))
    if bar is not None:
        bar.close()
    return out


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    labels = np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    return float((pred == labels).mean()) if labels.size else float("nan")


def head_logits(head: nn.Linear, features: np.ndarray, chunk_rows: int = 65536) -> np.ndarray:
    """The linear head applied to cached features, chunk by chunk (memmaps larger than RAM)."""
    w = head.weight.detach().float().cpu()
    b = head.bias.detach().float().cpu()
    out = np.empty((features.shape[0], w.shape[0]), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, features.shape[0], chunk_rows):
            x = torch.from_numpy(np.asarray(features[s : s + chunk_rows], dtype=np.float32))
            out[s : s + chunk_rows] = torch.addmm(b, x, w.t()).numpy()
    return out


def clone_backbone(model: Classifier) -> Backbone:
    """A detached copy of a trained backbone (e.g. to extract refreshed features)."""
    return copy.deepcopy(model.backbone).eval()


def head_mc_logits(head: nn.Linear, features: np.ndarray, rate: float, samples: int, *, seed: int = 0,
                   row_offset: int = 0) -> np.ndarray:
    """MC-dropout logits (samples, N, C) float32 of a linear head over cached features: each pass
    drops features with probability ``rate`` (scaled by 1/(1 - rate), as in training). The masks are
    drawn per block of global rows from generators seeded with ``seed`` (:mod:`.mc_dropout`), so
    the samples are deterministic, a row's samples do not depend on the rows around it
    (``row_offset``: the global row of ``features``' first row, for a rank's shard), and the global
    RNG is not used. Features are read block by block (memmaps larger than RAM)."""
    if not 0 < rate < 1:
        raise ValueError(f"MC dropout needs a rate in (0, 1), got {rate!r} (set training.head_dropout)")
    if samples < 2:
        raise ValueError(f"MC dropout needs at least 2 samples, got {samples!r}")
    w = head.weight.detach().float().cpu()
    b = head.bias.detach().float().cpu()
    out = np.empty((samples, features.shape[0], w.shape[0]), dtype=np.float32)
    keep = 1.0 - rate
    cpu = torch.device("cpu")
    with torch.inference_mode():
        for block, lo, hi, first, last in mask_blocks(features.shape[0], row_offset):
            x = torch.from_numpy(np.array(features[lo:hi], dtype=np.float32))
            gen = block_generator(seed, block, cpu)
            for t, mask in enumerate(keep_masks(gen, samples, x.shape[1], (first, last), keep, cpu)):
                out[t, lo:hi] = torch.addmm(b, x * mask / keep, w.t()).numpy()
    return out
