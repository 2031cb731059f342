"""Training and scoring a given network on pool rows: PruneFuse's selector and fused target model.

The built-in trainers (:mod:`.trainers`) build their model from a fresh backbone; PruneFuse
trains networks it made itself (a pruned copy, a fused dense one), so :func:`fit` takes the model.
The recipe is that of the FT trainer — SGD with momentum, the head and the backbone at their own
learning rates (``training.head_lr`` / ``backbone_lr``; ``training.frozen`` prefixes stay fixed),
weight decay, a cosine schedule over ``epochs`` — so a PruneFuse target model and a baseline's differ only in their initialisation and
loss. With ``teacher`` logits the loss is :func:`asvp_fast.prunefuse.kd_loss`.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, Subset

from ...core.devices import torch_device
from ...prunefuse import kd_loss
from .classifier import Classifier
from .seeding import seeded_torch
from .data_parallel import data_parallel, global_rows_and_finite
from .ranks import rank_and_world
from .trainers import CollateWithPositions, NoSingletonBatches, PositionedRows, RankParts, TrainConfig, TrainingDiverged


def fit(model: Classifier, pool: Any, collate: Any, rows: np.ndarray, labels: np.ndarray, config: TrainConfig, *,
        seed: int, epochs: Optional[int] = None, teacher: Optional[np.ndarray] = None, kd_weight: float = 0.5,
        kd_temperature: float = 4.0, group: Any = None) -> Classifier:
    """Train ``model`` (in place) on ``rows`` of ``pool``; deterministic for ``seed`` on CPU.

    ``epochs``: None for ``config.epochs``; ``teacher``: (len(rows), C) logits to distil from;
    ``group``: train data-parallel over its ranks (every rank passes the same arguments and gets
    the same model; see :mod:`.data_parallel`).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise ValueError("cannot train on an empty labelled set")
    world = rank_and_world(group)[1]
    if rows.size < world:
        raise ValueError(f"data-parallel training on {world} ranks needs at least {world} labelled rows, got {rows.size}")
    epochs = config.epochs if epochs is None else int(epochs)
    dev = torch_device(config.device)
    model.to(dev)
    if epochs <= 0:
        return model.eval()
    teacher_t = torch.from_numpy(np.asarray(teacher, dtype=np.float32)).to(dev) if teacher is not None else None
    with seeded_torch(seed):
        groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
        trainable = []
        for name, p in model.backbone.named_parameters():  # training.frozen prefixes, as in the FT trainer
            p.requires_grad_(config.backbone_lr > 0 and not any(name.startswith(f) for f in config.frozen))
            if p.requires_grad:
                trainable.append(p)
        if trainable:
            groups.append({"params": trainable, "lr": config.backbone_lr})
        opt = torch.optim.SGD(groups, lr=config.head_lr, momentum=config.momentum, weight_decay=config.weight_decay)
        gen = torch.Generator().manual_seed(int(seed) + 2)
        data = PositionedRows(pool, rows, np.asarray(labels, dtype=np.int64))
        # data-parallel: every rank draws the same global batches (each holding a row per rank)
        batches: Any = NoSingletonBatches(RandomSampler(data, generator=gen), config.batch_size, min_last=world)
        if group is not None:
            batches = RankParts(batches, group)
        loader = DataLoader(data, batch_sampler=batches, collate_fn=CollateWithPositions(collate),
                            num_workers=config.num_workers)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * len(loader)))
        model.train()
        with data_parallel(model, group, dev) as net:
            for epoch in range(epochs):
                for batch, y, pos in loader:
                    loss = _batch_loss(net(model.backbone.to_device(batch, dev)), y.to(dev), pos, teacher_t,
                                       kd_weight, kd_temperature, group)
                    if not bool(torch.isfinite(loss)):
                        raise TrainingDiverged(f"training diverged in epoch {epoch + 1}: the loss is {float(loss)}; lower "
                                               "training.head_lr / training.backbone_lr in the [training] config")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
    return model.eval()


def _batch_loss(logits: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, teacher: Optional[torch.Tensor],
                kd_weight: float, kd_temperature: float, group: Any) -> torch.Tensor:
    """The batch's loss (cross-entropy, or distillation from ``teacher``'s logits at ``pos``): its
    mean; data-parallel, this rank's sum scaled so that DDP's average over ranks is the global
    batch's mean (NaN on every rank when any rank's is not finite, so all stop together)."""
    if teacher is not None:
        loss = kd_loss(logits, teacher[pos.to(logits.device)], y, weight=kd_weight, temperature=kd_temperature)
    else:
        loss = nn.functional.cross_entropy(logits, y)
    if group is None:
        return loss
    rows, finite = global_rows_and_finite(len(y), loss, group, logits.device)
    scaled = loss * (len(y) * rank_and_world(group)[1] / rows)
    return scaled if finite else scaled * float("nan")


@torch.inference_mode()
def outputs(model: Classifier, dataset: Any, collate: Any, config: TrainConfig,
            rows: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(logits (N, C), penultimate features (N, D)) float32 of ``dataset`` (or its ``rows``), eval mode."""
    dev = next(model.parameters()).device
    data = dataset if rows is None else Subset(dataset, [int(r) for r in rows])
    loader = DataLoader(data, batch_size=config.eval_batch_size, shuffle=False, collate_fn=collate,
                        num_workers=config.num_workers)
    model.eval()
    logits, feats = [], []
    for batch in loader:
        f = model.backbone(model.backbone.to_device(batch, dev)).float()
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    if not feats:
        return np.empty((0, model.head.out_features), np.float32), np.empty((0, model.head.in_features), np.float32)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy()


@torch.no_grad()
def recalibrate_batchnorm(model: Classifier, dataset: Any, collate: Any, config: TrainConfig, rows: np.ndarray) -> Classifier:
    """Re-estimate every BatchNorm's running statistics from ``rows`` of ``dataset`` (no labels, no
    gradients): a cumulative average over one pass in train mode, then eval mode again.

    Pruning or fusing a trained network changes what each BatchNorm sees (a channel loses or
    regains inputs), while its statistics stay those of the other network; with a slow momentum
    (EfficientNet's 0.01) training does not repair them in a few epochs, and the eval-mode network
    is then far off (seen: chance accuracy on the pre-trained Fashion-MNIST case)."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    if not norms or len(rows) == 0:
        return model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the pass
    dev = next(model.parameters()).device
    loader = DataLoader(Subset(dataset, [int(r) for r in rows]), batch_size=config.eval_batch_size, shuffle=False,
                        collate_fn=collate, num_workers=config.num_workers)
    model.train()
    for batch in loader:
        model.backbone(model.backbone.to_device(batch, dev))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()
