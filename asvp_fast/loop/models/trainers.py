"""Trainers of the target model: fine-tuning (FT) and linear probing then fine-tuning (LP-FT).

A :class:`Trainer` turns a :class:`TrainJob` (a fresh pre-trained backbone factory, the labelled
rows and their labels) into a trained :class:`~.classifier.Classifier`. Trainers are registered by
name (``training.mode`` in configs names one); knowledge distillation or AFT's feature prior plug
in as further trainers through :func:`register_trainer`.

The model is the backbone plus a linear head, trained with SGD (momentum 0.9) and separate
learning rates for the head and the backbone (ASVP paper, appendix A), with a cosine schedule.
LP-FT (Kumar et al. 2022) first fits the head alone on frozen features, then fine-tunes
everything from that head; the linear-probe stage reads the feature cache when the backbone is
the one the cache was built with, so it costs seconds, not epochs of backbone passes.
Each training starts from the pre-trained weights and is deterministic for a seed.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, Subset

from ...core.devices import torch_device
from ...core.progress import task_bar
from .backbones.base import Backbone
from .classifier import Classifier
from .data_parallel import data_parallel, global_rows_and_finite
from .ranks import rank_and_world, rank_part
from .seeding import seeded_torch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the learning rates are too high for this model and data."""


log = logging.getLogger("asvp_fast")

# Linear-probe logits beyond this are a head that fine-tuning cannot recover from: its gradients
# wreck the backbone (seen: EfficientNet-Lite0 features of norm ~60 with lp_lr 0.5 → chance level).
_LP_LOGIT_WARN = 1000.0


def _check_loss(loss: torch.Tensor, stage: str, epoch: int, lr_fields: str) -> None:
    if not bool(torch.isfinite(loss)):
        raise TrainingDiverged(f"{stage} diverged in epoch {epoch + 1}: the loss is {float(loss.detach())}; "
                               f"lower {lr_fields} in the [training] config")


@dataclass(frozen=True)
class TrainConfig:
    """Target-model training; defaults follow the paper's CIFAR settings scaled to short runs."""

    # metadata: the ranges a config is checked against (engine/schema.py); "machine": not part of
    # the resume digest (a run may continue on another machine with other values)
    mode: str = field(default="ft", metadata={"choices": lambda: TRAINERS, "what": "training mode"})
    epochs: int = field(default=10, metadata={"ge": 0})
    head_lr: float = field(default=0.1, metadata={"gt": 0})
    backbone_lr: float = field(default=0.01, metadata={"ge": 0})  # 0: the backbone stays as pre-trained
    weight_decay: float = field(default=0.0, metadata={"ge": 0})
    momentum: float = field(default=0.9, metadata={"ge": 0, "lt": 1})
    batch_size: int = field(default=128, metadata={"ge": 1})
    lp_epochs: int = field(default=10, metadata={"ge": 0})
    lp_lr: float = field(default=0.5, metadata={"gt": 0})
    eval_batch_size: int = field(default=512, metadata={"ge": 1, "machine": True})
    amp: bool = True
    frozen: Tuple[str, ...] = field(default_factory=tuple)
    num_workers: int = field(default=0, metadata={"ge": 0, "le": 1024, "machine": True})
    device: str = field(default="auto", metadata={"device": True, "machine": True})
    # MC dropout on the target model (BALD/BatchBALD in standard AL): dropout on the penultimate
    # features before the head while fine-tuning, and `mc_samples` stochastic head passes at
    # selection. 0 (the default) adds no dropout: training is exactly as without these fields.
    head_dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1, "omit_default": True})
    mc_samples: int = field(default=20, metadata={"ge": 2, "omit_default": True})
    # AFT / KD (mode "aft" | "kd", models/prior_trainers.py): the pre-trained models (teacher ids,
    # models/teachers.py) whose cached features the prior pulls the penultimate features toward,
    # the prior's weight beta, the learning rate (Adam) of AFT's scales s / KD's linear map, whether
    # AFT learns s (rho = sigmoid(s)) and its kernel. Unused by the other modes.
    teachers: Tuple[str, ...] = field(default=(), metadata={"omit_default": True})
    beta: float = field(default=10.0, metadata={"ge": 0, "omit_default": True})
    prior_lr: float = field(default=0.01, metadata={"gt": 0, "omit_default": True})
    learn_scales: bool = field(default=True, metadata={"omit_default": True})
    kernel: str = field(default="linear", metadata={"choices": ("linear", "rbf"), "what": "AFT kernel",
                                                     "omit_default": True})

    def __post_init__(self) -> None:
        if self.mode not in TRAINERS:
            raise ValueError(f"training mode must be one of {sorted(TRAINERS)}, got {self.mode!r}")
        if not (isinstance(self.beta, (int, float)) and math.isfinite(self.beta) and self.beta >= 0):
            raise ValueError(f"training.beta (the weight of the AFT/KD prior) must be a finite number >= 0, got {self.beta!r}")


class _Labelled(Dataset):  # type: ignore[type-arg]
    """Pool items of the labelled rows, paired with their labels."""

    def __init__(self, pool: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        self.pool, self.rows, self.labels = pool, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tuple[Any, int]:
        return self.pool[int(self.rows[i])], int(self.labels[i])


class NoSingletonBatches(Sampler):  # type: ignore[type-arg]
    """Batches of ``batch_size`` indices from ``sampler`` in its order; a trailing batch of fewer than
    ``min_last`` indices (default 2) is merged into the previous batch: BatchNorm layers cannot train
    on one row, and in data-parallel training (``min_last`` = the number of ranks) every rank needs
    a row of every batch."""

    def __init__(self, sampler: Any, batch_size: int, min_last: int = 2) -> None:
        self.sampler, self.batch_size, self.min_last = sampler, int(batch_size), max(2, int(min_last))

    def __iter__(self) -> Any:
        batch: List[int] = []
        pending: Optional[List[int]] = None
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                if pending is not None:
                    yield pending
                pending, batch = batch, []
        if 0 < len(batch) < self.min_last and pending is not None:
            pending = pending + batch
            batch = []
        if pending is not None:
            yield pending
        if batch:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest >= self.min_last or (rest > 0 and full == 0) else 0)


class RankParts(Sampler):  # type: ignore[type-arg]
    """This rank's consecutive part of each global batch of ``batches`` (data-parallel training:
    every rank draws the same global batches from the same seeded generator)."""

    def __init__(self, batches: Any, group: Any) -> None:
        self.batches, self.group = batches, group

    def __iter__(self) -> Any:
        for batch in self.batches:
            yield rank_part(batch, self.group)

    def __len__(self) -> int:
        return len(self.batches)


class _CollateWithLabels:
    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: List[Tuple[Any, int]]) -> Tuple[Any, torch.Tensor]:
        return self.collate([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


class PositionedRows(Dataset):  # type: ignore[type-arg]
    """(item, label, position in ``rows``) of the labelled rows: trainers that bring per-row extras
    (a teacher's features or logits, aligned with ``rows``) find them by the position."""

    def __init__(self, pool: Any, rows: np.ndarray, labels: np.ndarray) -> None:
        self.pool, self.rows, self.labels = pool, rows, labels

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Tuple[Any, int, int]:
        return self.pool[int(self.rows[i])], int(self.labels[i]), i


class CollateWithPositions:
    """Batches of :class:`PositionedRows` items: (collated items, labels, positions)."""

    def __init__(self, collate: Any) -> None:
        self.collate = collate

    def __call__(self, items: List[Tuple[Any, int, int]]) -> Tuple[Any, torch.Tensor, torch.Tensor]:
        return (self.collate([x for x, _, _ in items]), torch.tensor([y for _, y, _ in items], dtype=torch.int64),
                torch.tensor([i for _, _, i in items], dtype=torch.int64))


@dataclass
class TrainJob:
    """Everything a trainer needs: fresh pre-trained weights, the data and the labelled rows.

    ``lp_features``: the cached pre-trained features of the pool (a linear probe reads them instead
    of running the backbone); ``seed`` makes the training deterministic.
    """

    make_backbone: Callable[[], Backbone]
    pool: Any
    collate: Any
    rows: np.ndarray
    labels: np.ndarray
    num_classes: int
    config: TrainConfig
    seed: int
    lp_features: Optional[np.ndarray] = None
    progress: Optional[bool] = None
    # AFT/KD: the teachers' features of the whole pool (rows = pool rows), e.g. a
    # storage.teachers.ConcatenatedFeatures; None for trainers that need none
    teacher_features: Optional[Any] = None
    # a torch.distributed process group: fine-tune data-parallel (DDP), every rank passing the
    # same job and getting the same model (see data_parallel); None: one process
    group: Any = None


class Trainer(ABC):
    """Trains the target model of a round (see :func:`register_trainer`). ``needs_teachers``: the
    trainer reads ``job.teacher_features`` (the engine then extracts ``training.teachers``)."""

    needs_teachers: bool = False
    # trains data-parallel when the job has a process group (see TrainJob.group)
    data_parallel: bool = False

    @abstractmethod
    def train(self, job: TrainJob) -> Classifier:
        """A :class:`Classifier` trained on ``job.rows``; deterministic for ``job.seed``."""


class FineTune(Trainer):
    """FT: backbone and head trained together (SGD, separate learning rates, cosine schedule)."""

    data_parallel = True

    def train(self, job: TrainJob) -> Classifier:
        return _train(job, linear_probe_first=False)


class LinearProbeThenFineTune(Trainer):
    """LP-FT (Kumar et al. 2022): the head fitted alone on frozen features, then FT from it. The
    linear probe is a small convex fit on cached features: every rank runs it whole (identically)."""

    data_parallel = True

    def train(self, job: TrainJob) -> Classifier:
        return _train(job, linear_probe_first=True)


TRAINERS: Dict[str, Callable[[], Trainer]] = {"ft": FineTune, "lp-ft": LinearProbeThenFineTune}


def register_trainer(name: str, factory: Callable[[], Trainer]) -> None:
    """Make a trainer available as ``training.mode = name`` (and as a method's ``training``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a trainer name must be a non-empty string, got {name!r}")
    TRAINERS[name] = factory


def needs_teachers(name: str) -> bool:
    """Whether the trainer ``name`` reads teachers' features (AFT, KD)."""
    return bool(getattr(TRAINERS.get(name), "needs_teachers", False))


def make_trainer(name: str) -> Trainer:
    try:
        return TRAINERS[name]()
    except KeyError:
        raise ValueError(f"unknown training mode {name!r}; registered: {sorted(TRAINERS)}") from None


def train_classifier(
    make_backbone: Any,
    pool: Any,
    collate: Any,
    rows: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    config: TrainConfig,
    *,
    seed: int,
    lp_features: Optional[np.ndarray] = None,
    progress: Optional[bool] = None,
    teacher_features: Optional[Any] = None,
    group: Any = None,
) -> Classifier:
    """Train backbone + head on the labelled ``rows`` of ``pool`` with the trainer ``config.mode``
    (data-parallel over ``group``'s ranks when one is given: FT and LP-FT)."""
    trainer = make_trainer(config.mode)
    if group is not None and not getattr(trainer, "data_parallel", False):
        raise ValueError(f"training mode {config.mode!r} does not train data-parallel (under torchrun); "
                         f"the ones that do: {sorted(n for n, f in TRAINERS.items() if getattr(f, 'data_parallel', False))}")
    job = TrainJob(make_backbone, pool, collate, np.asarray(rows, dtype=np.int64), np.asarray(labels, dtype=np.int64),
                   num_classes, config, seed, lp_features, progress, teacher_features, group)
    return trainer.train(job)


def _train(job: TrainJob, *, linear_probe_first: bool) -> Classifier:
    config, rows, labels, seed = job.config, job.rows, job.labels, job.seed
    if rows.size == 0:
        raise ValueError("cannot train on an empty labelled set")
    dev = torch_device(config.device)
    # The global RNG is seeded inside a fork: the head's initialisation and the backbone's dropout
    # are reproducible, and the caller's RNG state is left as it was.
    with seeded_torch(seed):
        model = Classifier(job.make_backbone(), job.num_classes, head_dropout=config.head_dropout).to(dev)
        for name, p in model.backbone.named_parameters():
            # backbone_lr = 0 freezes the backbone outright: no gradients are computed for it
            p.requires_grad_(config.backbone_lr > 0 and not any(name.startswith(f) for f in config.frozen))
        if linear_probe_first:
            feats = (job.lp_features[rows] if job.lp_features is not None
                     else _live_features(model.backbone, job.pool, job.collate, rows, config, dev))
            _linear_probe(model.head, np.asarray(feats, dtype=np.float32), labels, config, seed=seed, device=dev)
        _fine_tune(model, job.pool, job.collate, rows, labels, config, seed=seed, device=dev, progress=job.progress,
                   group=job.group)
    return model.eval()


def _linear_probe(head: nn.Linear, feats: np.ndarray, labels: np.ndarray, config: TrainConfig, *, seed: int,
                  device: torch.device) -> None:
    x = torch.from_numpy(feats).to(device)
    y = torch.from_numpy(labels).to(device)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    opt = torch.optim.SGD(head.parameters(), lr=config.lp_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps = config.lp_epochs * math.ceil(len(y) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    for epoch in range(config.lp_epochs):
        perm = torch.randperm(len(y), generator=gen).to(device)
        for s in range(0, len(y), config.batch_size):
            b = perm[s : s + config.batch_size]
            loss = nn.functional.cross_entropy(head(x[b]), y[b])
            _check_loss(loss, "the linear probe (LP-FT)", epoch, "training.lp_lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        largest = float(head(x).abs().max())
    if largest > _LP_LOGIT_WARN:
        log.warning("the linear probe (LP-FT) ends with logits up to %.0f on features of mean norm %.1f: fine-tuning "
                    "from such a head usually collapses; lower training.lp_lr (now %g) roughly in proportion to the "
                    "squared feature norm", largest, float(x.norm(dim=1).mean()), config.lp_lr)


def _fine_tune(model: Classifier, pool: Any, collate: Any, rows: np.ndarray, labels: np.ndarray, config: TrainConfig,
               *, seed: int, device: torch.device, progress: Optional[bool], group: Any = None) -> None:
    if config.epochs <= 0:
        return
    world = rank_and_world(group)[1]
    if len(rows) < world:
        raise ValueError(f"data-parallel fine-tuning on {world} ranks needs at least {world} labelled rows, got {len(rows)}")
    head_params = list(model.head.parameters())
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": config.head_lr}]
    if backbone_params:
        groups.append({"params": backbone_params, "lr": config.backbone_lr})
    opt = torch.optim.SGD(groups, lr=config.head_lr, momentum=config.momentum, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(int(seed) + 2)
    data = _Labelled(pool, rows, labels)
    # The same shuffled batches as DataLoader(shuffle=True, generator=gen), except that a last batch of
    # one row joins the one before: BatchNorm cannot train on a single row. Data-parallel: every rank
    # draws these same global batches and trains on its part of each (a last batch with fewer rows
    # than ranks joins the one before too).
    batches: Any = NoSingletonBatches(RandomSampler(data, generator=gen), config.batch_size, min_last=world)
    if group is not None:
        batches = RankParts(batches, group)
    loader = DataLoader(data, batch_sampler=batches, generator=gen, collate_fn=_CollateWithLabels(collate),
                        num_workers=config.num_workers, pin_memory=device.type == "cuda")
    steps = config.epochs * len(loader)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    bar: Any = task_bar(steps, "fine-tune", progress, unit="step")
    model.train()
    with data_parallel(model, group, device) as net:
        _fine_tune_epochs(net, model.backbone, loader, opt, sched, scaler, config, device, use_amp, bar, group)
    if bar is not None:
        bar.close()
    model.eval()


def _fine_tune_epochs(net: nn.Module, backbone: Backbone, loader: Any, opt: Any, sched: Any, scaler: Any,
                      config: TrainConfig, device: torch.device, use_amp: bool, bar: Any, group: Any) -> None:
    world = rank_and_world(group)[1]
    for epoch in range(config.epochs):
        for batch, y in loader:
            y = y.to(device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=use_amp):
                out = net(backbone.to_device(batch, device))
                if group is None:
                    loss = nn.functional.cross_entropy(out, y)
                else:
                    loss = nn.functional.cross_entropy(out, y, reduction="sum")
            if group is not None:  # scaled so that DDP's average over ranks is the global batch's mean loss
                rows, finite = global_rows_and_finite(len(y), loss, group, device)
                loss = loss * (world / rows)
                if not finite and not use_amp:  # every rank raises together, none waits in a collective
                    loss = loss * float("nan")
            if not use_amp:  # with AMP the scaler skips steps whose gradients overflow
                _check_loss(loss, "fine-tuning", epoch, "training.head_lr / training.backbone_lr")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if bar is not None:
                bar.update(1)


@torch.inference_mode()
def _live_features(backbone: Backbone, pool: Any, collate: Any, rows: np.ndarray, config: TrainConfig,
                   device: torch.device) -> np.ndarray:
    backbone.eval()
    loader = DataLoader(Subset(pool, rows.tolist()), batch_size=config.eval_batch_size, shuffle=False,
                        collate_fn=collate, num_workers=config.num_workers)
    return torch.cat([backbone(backbone.to_device(b, device)).float().cpu() for b in loader]).numpy()


