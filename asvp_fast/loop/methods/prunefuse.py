"""PruneFuse (Kousar et al., arXiv 2501.01118) and SVP with a small network of the target's family.

``prunefuse``: the randomly initialised target network θ (backbone + head) is pruned by the L2
norm of its channels at ``ratio`` (:func:`asvp_fast.prunefuse.prune`). Each round the pruned
network θp is trained on the labels so far and selects with the configured strategy (its logits,
or its penultimate features for k-center/BADGE). The round's target model is θ with the trained
θp fused into the positions of the channels it kept (:func:`~asvp_fast.prunefuse.fuse`; every
other weight keeps its initial value), trained with cross-entropy plus distillation from θp's
logits (``kd``, weight ``kd_weight``, temperature ``kd_temperature``). Options::

    {method = "prunefuse", ratio = 0.5}                          # V1 (the paper's default ratio)
    {method = "prunefuse", name = "pf:v2", version = 2, tsync = 1}
    {method = "prunefuse", name = "pf:no-fuse", fuse = false}    # the dense model from its random init
    {method = "prunefuse", name = "pf:no-kd", kd = false}

V2: after every ``tsync``-th round (rounds 0, tsync, 2·tsync, ...) the *trained fused* network is
pruned again (by its trained channels' norms) to initialise the next selectors, and it is the
dense network later rounds fuse into. The selector of round r (trained on the labels before r)
and the target model of round r (fusing a selector trained on round r's labels) are thus both
trained from the latest base synced before round r.

State (resumable): trained selectors (``selector-<digest>.pt``), V2's synced networks
(``sync-r<round>.pt``) and the index maps (``index-map-*.json``) are written atomically into
``work/prunefuse-<name>/``; everything else follows from seeds, so a resumed run equals an
uninterrupted one. Round info records the selector's parameters, multiply-accumulates per item
and seconds (``selector_train_s`` counts each selector training once, wherever it happened;
``fusion_selector_train_s``, inside ``train_s``, a selector trained by the target's trainer).

``standard-continued``: standard AL whose target model continues from the previous round's (the
paper's baseline for V2).

``svp-net``: SVP (Coleman et al. 2020) with a proxy of the target's family — a CIFAR-style ResNet
of ``depth`` (8 by default) trained from its random init every round; the target model is
trained as usual (``training.mode``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ...core.checks import parse_int, parse_real
from ...core.devices import torch_device
from ...prunefuse import KD_TEMPERATURE, KD_WEIGHT, IndexMap, check_ratio, count_flops, count_params, fuse, prune
from ..models.backbones.resnet_cifar import DEPTHS, ResNetCIFAR
from ..models import prunable  # noqa: F401  (traceable forwards of the pre-trained backbones)
from ..models.classifier import Classifier
from ..models.netfit import fit, outputs, recalibrate_batchnorm
from ..models.ranks import barrier, from_root, is_root
from ..models.seeding import seeded_torch
from ..models.trainers import Trainer, TrainJob, register_trainer
from ..selection.pruned import NetworkSelector
from ..selection.strategies import STRATEGIES, select
from .base import Method, MethodContext, MethodSpec, derive_seed
from .standard import StandardMethod


@dataclass(frozen=True)
class PruneFuseOptions:
    """See the module docstring. ``selector_epochs``: the selector's epochs (None: ``training.epochs``);
    ``strategy``: None for the config's ``selection.strategy``; ``bn_recalibration``: re-estimate the
    BatchNorm statistics of every pruned, trained or fused network on this many pool images (a
    seeded subset, inputs only; 0: off, the paper's method). Needed for pre-trained networks whose
    BatchNorm momentum is slow (EfficientNet-Lite0), where the pruned and the fused networks
    otherwise predict at chance."""

    ratio: float = field(default=0.5, metadata={"gt": 0, "lt": 1})
    version: int = field(default=1, metadata={"choices": (1, 2), "what": "PruneFuse version"})
    tsync: int = field(default=1, metadata={"ge": 1})
    kd: bool = True
    fuse: bool = True
    kd_weight: float = field(default=KD_WEIGHT, metadata={"ge": 0, "le": 1})
    kd_temperature: float = field(default=KD_TEMPERATURE, metadata={"gt": 0})
    selector_epochs: Optional[int] = field(default=None, metadata={"ge": 0})
    strategy: Optional[str] = field(default=None, metadata={"choices": lambda: STRATEGIES, "what": "strategy"})
    bn_recalibration: int = field(default=0, metadata={"ge": 0})

    def __post_init__(self) -> None:  # the same rules when built from Python, not a config
        ratio = check_ratio(self.ratio)
        if ratio == 0:
            raise ValueError("ratio must be > 0 for the prunefuse method (0 prunes nothing: use method 'standard')")
        if self.version not in (1, 2) or isinstance(self.version, bool):
            raise ValueError(f"version must be 1 or 2, got {self.version!r}")
        parse_int(self.tsync, "tsync", minimum=1)
        parse_real(self.kd_weight, "kd_weight", minimum=0.0, maximum=1.0)
        parse_real(self.kd_temperature, "kd_temperature", positive=True)
        if self.selector_epochs is not None:
            parse_int(self.selector_epochs, "selector_epochs")


@dataclass
class Base:
    """The dense network later rounds fuse into, its pruned copy and the index map between them."""

    round: int  # -1: the random initialisation; else the V2 sync round
    dense: Classifier
    selector_init: Classifier
    index_map: IndexMap


def atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_on_root(group: Any, obj: Any, path: Path) -> None:
    """``obj`` saved atomically by rank 0 (every rank holds the same weights); the others wait until
    it is on disk, so any rank may read it next."""
    if is_root(group):
        atomic_torch_save(obj, path)
    barrier(group, f"saving {path.name}")


def bound(ref: "weakref.ReferenceType[Any]", name: str) -> Any:
    """The method a per-run trainer belongs to (the trainer is registered as ``name``)."""
    method = ref()
    if method is None:
        raise RuntimeError(f"training mode {name!r} belonged to a run that has ended; it serves that run only")
    return method


def example_batch(ctx: MethodContext) -> Any:
    pool = ctx.case.pool
    return ctx.case.collate([pool[i] for i in range(min(2, len(pool)))])


class PruneFuseMethod(Method):
    """A pruned copy of the target network selects; its trained weights initialise the target model.
    Under torchrun the selector and the fused network train data-parallel, each rank scores its
    shard, and rank 0 alone writes the saved networks (the others read them)."""

    Options: Any = PruneFuseOptions
    distributed = True

    def __init__(self, spec: MethodSpec, ctx: MethodContext) -> None:
        super().__init__(spec, ctx)
        # V2 needs every round's trained fused network (the engine then trains each round)
        self.trains_every_round = self.options.version == 2
        self.trainer_name = f"prunefuse[{self.slug}]"
        # a trainer bound to this method (by a weak reference: a finished run's models are freed)
        me, name = weakref.ref(self), self.trainer_name
        register_trainer(name, lambda: FusedTrainer(bound(me, name)))
        self.bases: Dict[int, Base] = {}
        self.selectors: Dict[str, Tuple[Classifier, float]] = {}
        self._example: Any = None

    @property
    def strategy(self) -> str:
        return self.options.strategy or self.ctx.config.selection.strategy

    @property
    def dir(self) -> Path:
        path = self.ctx.work_dir / f"prunefuse-{self.slug}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def training_mode(self) -> str:
        return self.spec.training or self.trainer_name

    def example(self) -> Any:
        if self._example is None:
            self._example = example_batch(self.ctx)
        return self._example

    # -- bases: the random init (V1) and V2's synced networks ---------------------------------
    def dense_init(self) -> Classifier:
        with seeded_torch(derive_seed(self.ctx.config.seed, "prunefuse-init")):
            return Classifier(self.ctx.fresh_backbone(), self.ctx.case.num_classes).eval()  # type: ignore[attr-defined]

    def sync_round(self, r: int) -> int:
        """The V2 sync that round ``r`` builds on: the last round s < r with s % tsync == 0 (-1: none)."""
        if self.options.version != 2 or r < 1:
            return -1
        return ((r - 1) // self.options.tsync) * self.options.tsync

    def base_at(self, s: int) -> Base:
        if s not in self.bases:
            dense = self.dense_init()
            if s >= 0:
                path = self.dir / f"sync-r{s:03d}.pt"
                if not path.exists():
                    raise RuntimeError(f"{path} is missing: the trained fused network of round {s} is needed by V2")
                dense.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            small, imap = prune(dense, self.options.ratio, self.example())
            small.backbone.feature_dim = small.head.in_features
            small.backbone.backbone_id = f"{dense.backbone.backbone_id}-pruned{self.options.ratio:g}-r{s}"
            self.recalibrate(small)
            if is_root(self.ctx.group):
                imap.save(self.dir / (f"index-map-r{s:03d}.json" if s >= 0 else "index-map-init.json"))
            self.bases[s] = Base(s, dense, small.eval(), imap)
        return self.bases[s]

    def recalibrate(self, model: Classifier) -> Classifier:
        """BatchNorm statistics from ``bn_recalibration`` seeded pool images (no-op when 0)."""
        n = min(self.options.bn_recalibration, self.ctx.n_pool)
        if n <= 0:
            return model
        rows = np.random.default_rng(derive_seed(self.ctx.config.seed, "prunefuse-bn")).permutation(self.ctx.n_pool)[:n]
        return recalibrate_batchnorm(model, self.ctx.case.pool, self.ctx.case.collate, self.ctx.config.training,
                                     np.sort(rows))

    def on_trained(self, round_: int, model: Classifier) -> None:
        if self.options.version == 2 and round_ % self.options.tsync == 0:
            save_on_root(self.ctx.group, model.state_dict(), self.dir / f"sync-r{round_:03d}.pt")
            self.bases.pop(round_, None)

    # -- selectors trained on a labelled set (cached in memory and on disk) ---------------------
    def trained_selector(self, rows: np.ndarray, base: Base) -> Tuple[Classifier, float, bool]:
        """(the selector trained on ``rows`` from ``base``, its training seconds, trained just now)."""
        rows = np.asarray(rows, dtype=np.int64)
        digest = hashlib.blake2b(rows.tobytes() + str(base.round).encode(), digest_size=10).hexdigest()
        if digest in self.selectors:
            model, seconds = self.selectors[digest]
            return model, seconds, False
        path = self.dir / f"selector-{digest}.pt"
        group = self.ctx.group  # every rank must take the same branch: rank 0's view of the file decides
        if from_root(group, "looking for a saved PruneFuse selector", path.exists):
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = copy.deepcopy(base.selector_init)
            model.load_state_dict(saved["state"])
            model.to(torch_device(self.ctx.config.training.device))
            seconds, fresh = float(saved["train_s"]), False
        else:
            selector = NetworkSelector(base.selector_init, self.ctx.case.pool, self.ctx.case.collate,
                                       self.ctx.config.training, epochs=self.options.selector_epochs, group=group,
                                       data_parallel=self.ctx.config.distributed.target == "ddp")
            seed = derive_seed(self.ctx.config.seed, "prunefuse-selector", base.round, len(rows))
            seconds = selector.train(rows, self.ctx.state.labels_of(rows), seed=seed)
            assert selector.trained is not None
            model, fresh = self.recalibrate(selector.trained), True
            save_on_root(group, {"state": model.state_dict(), "train_s": seconds, "n": int(len(rows))}, path)
        model.eval()
        self.selectors = {digest: (model, seconds)}  # one at a time: V1 reuses it for the next selection
        return model, seconds, fresh

    def cost_info(self, base: Base) -> Dict[str, Any]:
        x = self.example()
        return {"ratio": self.options.ratio, "base_round": base.round,
                "selector_params": count_params(base.selector_init), "dense_params": count_params(base.dense),
                "selector_flops": count_flops(base.selector_init, x), "dense_flops": count_flops(base.dense, x)}

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        base = self.base_at(self.sync_round(round_))
        model, seconds, fresh = self.trained_selector(labelled, base)
        selector = NetworkSelector(base.selector_init, ctx.case.pool, ctx.case.collate, ctx.config.training,
                                   trained=model, features=ctx.pool_features_or_none, group=ctx.group)
        view, timing = selector.view(labelled, ctx.state.labels_of(labelled), seed=self.strategy_seed(round_))
        space = ctx.config.selection.space if ctx.pool_features_or_none is not None else "embedding"
        rows = select(self.strategy, view, labelled, k, seed=self.strategy_seed(round_), space=space)
        info = self.cost_info(base)
        info.update(selector_train_s=round(seconds, 3) if fresh else 0.0, selector_trained_s=round(seconds, 3),
                    selector_infer_s=timing["selector_infer_s"])
        if ctx.config.oracle.kind == "label-studio":
            info["hints"] = view.hints(rows)
        return rows, info


class FusedTrainer(Trainer):
    """The target model of a PruneFuse round: fuse the trained selector into the base, then train
    with cross-entropy (+ distillation from the selector's logits)."""

    data_parallel = True

    def __init__(self, method: PruneFuseMethod) -> None:
        self.method = method

    def train(self, job: TrainJob) -> Classifier:
        m, opts = self.method, self.method.options
        rounds = m.ctx.state.method(m.name).rounds
        base = m.base_at(m.sync_round(len(rounds) - 1))
        selector, seconds, fresh = m.trained_selector(job.rows, base)
        dense = copy.deepcopy(base.dense)
        start = time.perf_counter()
        if opts.fuse:
            m.recalibrate(fuse(dense, selector, base.index_map))
        teacher = outputs(selector, job.pool, job.collate, job.config, rows=job.rows)[0] if opts.kd else None
        fit(dense, job.pool, job.collate, job.rows, job.labels, job.config, seed=job.seed, teacher=teacher,
            kd_weight=opts.kd_weight, kd_temperature=opts.kd_temperature, group=job.group)
        m.recalibrate(dense)
        if rounds:
            rounds[-1].info.update(fusion_selector_train_s=round(seconds, 3) if fresh else 0.0,
                                   target_train_s=round(time.perf_counter() - start, 3), fused=bool(opts.fuse),
                                   kd=bool(opts.kd))
        return dense


# -- SVP with a small network of the target's family -------------------------------------------------
@dataclass(frozen=True)
class SVPNetOptions:
    """``depth``/``width`` of the proxy ResNet (width None: the target's); ``selector_epochs`` as
    for PruneFuse; ``strategy``: None for the config's."""

    depth: int = field(default=8, metadata={"choices": DEPTHS, "what": "ResNet depth"})
    width: Optional[int] = field(default=None, metadata={"ge": 1})
    selector_epochs: Optional[int] = field(default=None, metadata={"ge": 0})
    strategy: Optional[str] = field(default=None, metadata={"choices": lambda: STRATEGIES, "what": "strategy"})


class SVPNetMethod(Method):
    """SVP: a smaller CIFAR-style ResNet, trained from its random init each round, selects."""

    Options: Any = SVPNetOptions
    distributed = True

    def proxy_init(self) -> Classifier:
        target = self.ctx.fresh_backbone()  # type: ignore[attr-defined]
        if not isinstance(target, ResNetCIFAR):
            raise ValueError(f"method {self.name!r} (svp-net) needs a CIFAR-style ResNet target, e.g. data.case = "
                             f"'fashion-mnist-scratch'; this case's backbone is {type(target).__name__}")
        seed = derive_seed(self.ctx.config.seed, "svp-net-init")
        with seeded_torch(seed):
            proxy = ResNetCIFAR(self.options.depth, self.options.width or target.width, target.in_channels, seed=seed)
            return Classifier(proxy, self.ctx.case.num_classes).eval()

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        init = self.proxy_init()
        selector = NetworkSelector(init, ctx.case.pool, ctx.case.collate, ctx.config.training,
                                   epochs=self.options.selector_epochs, features=ctx.pool_features_or_none,
                                   group=ctx.group, data_parallel=ctx.config.distributed.proxy == "ddp")
        view, info = selector.view(labelled, ctx.state.labels_of(labelled),
                                   seed=derive_seed(ctx.config.seed, "svp-net", len(labelled)))
        space = ctx.config.selection.space if ctx.pool_features_or_none is not None else "embedding"
        rows = select(self.options.strategy or ctx.config.selection.strategy, view, labelled, k,
                      seed=self.strategy_seed(round_), space=space)
        x = example_batch(ctx)
        info.update(selector_params=count_params(init), selector_flops=count_flops(init, x))
        return rows, info


# -- standard AL continued from the previous round (PruneFuse V2's baseline) ----------------------------
class ContinuedStandardMethod(StandardMethod):
    """Standard AL whose target model starts from the previous round's trained one instead of the
    initialisation (the baseline of the paper's V2 table); round 0 trains from the initialisation.
    Each trained model is saved atomically in ``work/continued-<name>/`` for the next round."""

    def __init__(self, spec: MethodSpec, ctx: MethodContext) -> None:
        super().__init__(spec, ctx)
        self.trainer_name = f"continued[{self.slug}]"
        me, name = weakref.ref(self), self.trainer_name
        register_trainer(name, lambda: ContinuedTrainer(bound(me, name)))

    def training_mode(self) -> str:
        return self.spec.training or self.trainer_name

    def checkpoint(self, r: int) -> Path:
        path = self.ctx.work_dir / f"continued-{self.slug}"
        path.mkdir(parents=True, exist_ok=True)
        return path / f"model-r{r:03d}.pt"

    def on_trained(self, round_: int, model: Classifier) -> None:
        save_on_root(self.ctx.group, model.state_dict(), self.checkpoint(round_))
        super().on_trained(round_, model)


class ContinuedTrainer(Trainer):
    data_parallel = True

    def __init__(self, method: ContinuedStandardMethod) -> None:
        self.method = method

    def train(self, job: TrainJob) -> Classifier:
        m = self.method
        previous = len(m.ctx.state.method(m.name).rounds) - 2  # the round before the one being trained
        with seeded_torch(job.seed):
            model = Classifier(job.make_backbone(), job.num_classes)
        if previous >= 0:
            model.load_state_dict(torch.load(m.checkpoint(previous), map_location="cpu", weights_only=True))
        return fit(model, job.pool, job.collate, job.rows, job.labels, job.config, seed=job.seed, group=job.group)


__all__ = ["Base", "ContinuedStandardMethod", "FusedTrainer", "PruneFuseMethod", "PruneFuseOptions", "SVPNetMethod", "SVPNetOptions"]
