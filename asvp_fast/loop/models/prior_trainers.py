"""AFT and KD trainers of the target model (``training.mode = "aft"`` / ``"kd"``, or a method's
``training = "aft"``): fine-tuning as :class:`~.trainers.FineTune` does (SGD, head and backbone
learning rates, cosine schedule, the same batches), plus β times a prior on the backbone's output
φ, the penultimate features the linear head reads:

* ``aft``: :class:`asvp_fast.transfer.AFTPrior` between φ and the teachers' cached features ψ of the
  batch's rows (``training.teachers``), with its scales s learned by Adam at ``training.prior_lr``
  (``learn_scales``, ``kernel``);
* ``kd``: :class:`asvp_fast.transfer.FeatureRegressionKD`, a linear map from φ to ψ fitted by MSE
  (Adam at ``prior_lr``).

With β = 0 both train exactly the model FT trains. The teachers' features of the labelled rows are
gathered once per training from the multi-model cache (``job.teacher_features``, pool rows).
Data-parallel (``job.group``) the prior is computed on the global batch (see :func:`_step_loss`).
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ...core.devices import torch_device
from ...core.progress import task_bar
from ...transfer.aft import AFTPrior, FeatureRegressionKD
from .classifier import Classifier
from .data_parallel import data_parallel, gather_rows, global_rows_and_finite
from .ranks import rank_and_world
from .seeding import seeded_torch
from .trainers import (CollateWithPositions, NoSingletonBatches, PositionedRows, RankParts, Trainer, TrainingDiverged,
                       TrainJob, register_trainer)


def labelled_teacher_features(job: TrainJob, mode: str) -> np.ndarray:
    """The teachers' features of ``job.rows`` as float32, after checking them (clear errors)."""
    feats = job.teacher_features
    if feats is None:
        raise ValueError(f"training mode {mode!r} needs the teachers' features: list the pre-trained models in "
                         "training.teachers (e.g. teachers = [\"efficientnet-lite2\"])")
    n_pool = len(job.pool)
    if getattr(feats, "ndim", 2) != 2 or len(feats) != n_pool:
        raise ValueError(f"the teachers' features have {len(feats)} rows but the pool has {n_pool}: they must be "
                         "features of the same pool, row for row (shape "
                         f"{tuple(getattr(feats, 'shape', ()))})")
    out = np.asarray(feats[job.rows], dtype=np.float32)
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
        raise ValueError(f"the teachers' features of pool row {int(job.rows[int(np.argmax(bad))])} are NaN or infinite")
    return out


def make_prior(mode: str, student_dim: int, teacher_dim: int, config: Any) -> nn.Module:
    if mode == "aft":
        return AFTPrior(teacher_dim, learn_scales=bool(config.learn_scales), kernel=config.kernel)
    return FeatureRegressionKD(student_dim, teacher_dim)


def train_with_prior(job: TrainJob, mode: str) -> Tuple[Classifier, nn.Module]:
    """The target model trained with the ``mode`` prior (``"aft"`` or ``"kd"``), and the prior
    (AFT: its ``.rho`` are the learned feature weights)."""
    config, rows, seed = job.config, job.rows, job.seed
    if rows.size == 0:
        raise ValueError("cannot train on an empty labelled set")
    if rows.size < 2:
        raise ValueError(f"training mode {mode!r} compares examples within a batch and needs at least 2 labelled rows, "
                         f"got {rows.size}")
    if not (math.isfinite(config.beta) and config.beta >= 0):
        raise ValueError(f"training.beta must be a finite number >= 0, got {config.beta!r}")
    teacher = labelled_teacher_features(job, mode)
    dev = torch_device(config.device)
    with seeded_torch(seed):
        model = Classifier(job.make_backbone(), job.num_classes, head_dropout=config.head_dropout).to(dev)
        for name, p in model.backbone.named_parameters():
            p.requires_grad_(config.backbone_lr > 0 and not any(name.startswith(f) for f in config.frozen))
        with seeded_torch(seed + 3):  # its own RNG: the model's dropout draws stay those of FT
            prior = make_prior(mode, int(model.backbone.feature_dim), int(teacher.shape[1]), config).to(dev)
        _fit(model, prior, torch.from_numpy(teacher).to(dev), job, mode, dev)
    return model.eval(), prior.eval()


class _Student(nn.Module):
    """The model as one module returning (φ, logits), with the head's dropout: what DDP wraps."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        phi = model.backbone(batch).float()
        dropped = nn.functional.dropout(phi, model.head_dropout, training=True) if model.head_dropout > 0 else phi
        return phi, model.head(dropped)


def _fit(model: Classifier, prior: nn.Module, teacher: torch.Tensor, job: TrainJob, mode: str, device: torch.device) -> None:
    config = job.config
    if config.epochs <= 0:
        return
    group, world = job.group, rank_and_world(job.group)[1]
    if len(job.rows) < world:
        raise ValueError(f"data-parallel training on {world} ranks needs at least {world} labelled rows, got {len(job.rows)}")
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": config.backbone_lr})
    opt = torch.optim.SGD(groups, lr=config.head_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    prior_params = [p for p in prior.parameters() if p.requires_grad]
    prior_opt: Optional[torch.optim.Optimizer] = torch.optim.Adam(prior_params, lr=config.prior_lr) if prior_params else None
    # exactly FineTune's batches: the same generator, sampler and DataLoader draws (data-parallel:
    # every rank draws them and trains on its part)
    gen = torch.Generator().manual_seed(int(job.seed) + 2)
    data = PositionedRows(job.pool, job.rows, job.labels)
    batches: Any = NoSingletonBatches(RandomSampler(data, generator=gen), config.batch_size, min_last=world)
    if group is not None:
        batches = RankParts(batches, group)
    loader = DataLoader(data, batch_sampler=batches, generator=gen, collate_fn=CollateWithPositions(job.collate),
                        num_workers=config.num_workers, pin_memory=device.type == "cuda")
    steps = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    bar: Any = task_bar(steps, mode, job.progress, unit="step")
    student = _Student(model)
    model.train()
    with data_parallel(student, group, device) as net:
        for epoch in range(config.epochs):
            for batch, y, index in loader:
                loss = _step_loss(net, model, prior, teacher, batch, y, index, config, group, device, use_amp)
                if not use_amp and not bool(torch.isfinite(loss)):
                    raise TrainingDiverged(f"{mode.upper()} training diverged in epoch {epoch + 1}: the loss is "
                                           f"{float(loss.detach())}; lower training.head_lr / backbone_lr / beta")
                opt.zero_grad(set_to_none=True)
                if prior_opt is not None:
                    prior_opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if group is not None:  # every rank's identical prior loss was scaled by the rank count
                    for p in prior_params:
                        if p.grad is not None:
                            p.grad.div_(world)
                scaler.step(opt)
                if prior_opt is not None and config.beta > 0:
                    scaler.step(prior_opt)
                scaler.update()
                sched.step()
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


def _step_loss(net: nn.Module, model: Classifier, prior: nn.Module, teacher: torch.Tensor, batch: Any, y: torch.Tensor,
               index: torch.Tensor, config: Any, group: Any, device: torch.device, use_amp: bool) -> torch.Tensor:
    """The batch's task loss plus β · the prior.

    Data-parallel: the task loss is this rank's sum scaled so that DDP's average is the global
    batch's mean; the prior compares the rows of the *global* batch (AFT's kernels span it), so
    every rank gathers φ (its own rows keep their gradient) and the teachers' rows, computes the
    same prior, and scales it by the rank count (DDP divides by it; the prior's own parameters,
    outside DDP, are scaled back after the backward pass)."""
    world = rank_and_world(group)[1]
    with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
        phi, logits = net(model.backbone.to_device(batch, device))
        y = y.to(device)
        task = nn.functional.cross_entropy(logits, y, reduction="mean" if group is None else "sum")
    if group is not None:
        rows, finite = global_rows_and_finite(len(y), task, group, device)
        task = task * (world / rows) if finite else task * float("nan")
    if not config.beta > 0:
        return task
    phi_all = gather_rows(phi, group)
    index_all = gather_rows(index.to(device), group)
    return task + config.beta * world * prior(phi_all, teacher[index_all])


class AFTTrainer(Trainer):
    """AFT: fine-tuning plus β · the adaptive feature-transfer prior toward ``training.teachers``."""

    needs_teachers = True
    data_parallel = True

    def train(self, job: TrainJob) -> Classifier:
        return train_with_prior(job, "aft")[0]


class KDTrainer(Trainer):
    """KD (feature regression): fine-tuning plus β · MSE of a linear map from φ to the teachers' features."""

    needs_teachers = True
    data_parallel = True

    def train(self, job: TrainJob) -> Classifier:
        return train_with_prior(job, "kd")[0]


register_trainer("aft", AFTTrainer)
register_trainer("kd", KDTrainer)
