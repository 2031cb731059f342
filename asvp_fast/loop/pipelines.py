"""Methods: how each pipeline picks the next rows and what its model is trained on.

A method is a small class with a ``select`` step; the run loop (:mod:`.run`) owns the rounds, the
oracle, the state file, training and evaluation. Selectors are pluggable through this class:

* :class:`RandomMethod` – the random baseline;
* :class:`StandardMethod` – standard AL: the target model fine-tuned (FT or LP-FT) on the labels so
  far selects the next rows with its own logits and features;
* :class:`SVPpMethod` – selection via proxy on pre-computed features: the MLP proxy, retrained each
  round on the cached pre-trained features, selects; the target model is fine-tuned (FT) on the
  result;
* :class:`ActiveFTPreMethod` – ActiveFT(pre): one-shot selection of each budget on pre-trained
  features;
* ``asvp`` – the slot the ASVP method (LogME-PED-triggered feature refresh) registers into
  (:func:`register_method`).
A pruned-network selector (PruneFuse) fits the same shape: a ``select`` that trains its own
selector on the labelled rows and returns a :class:`SelectorView`.
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

import numpy as np

from .cache import FeatureCache
from .config import split_method
from .proxy import proxy_outputs, train_proxy
from .strategies import SelectorView, select
from .training import Classifier, head_logits

if TYPE_CHECKING:  # pragma: no cover
    from .run import RunContext

# Hidden embeddings larger than this go to a memmap in the run directory instead of memory.
_IN_MEMORY_BYTES = 1 << 30


def derive_seed(base: int, *parts: Any) -> int:
    """A 32-bit seed from the run seed and a path of names/numbers (stable across runs and resumes)."""
    words = [int(base) & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


class Method:
    """Base class: one AL pipeline. Subclasses implement :meth:`select`."""

    default_mode: Optional[str] = None  # None: the config's training.mode
    trains_every_round = False  # its selection needs the target model of every round (standard AL)
    uses_cache = False  # reads the pre-trained feature cache
    nested = True  # each round adds rows to the previous rounds' labelled set

    def __init__(self, spec: str, ctx: "RunContext") -> None:
        base, mode = split_method(spec)
        self.name = spec
        self.base = base
        self.ctx = ctx
        self.mode = mode or self.default_mode or ctx.config.training.mode
        self.slug = spec.replace(":", "-")  # for file names

    def initial(self, k: int) -> np.ndarray:
        """Round 0: the initial random set, the same for every nested method."""
        return select("random", SelectorView(self.ctx.n_pool), np.empty(0, np.int64), k,
                      seed=derive_seed(self.ctx.config.seed, "initial"))

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        raise NotImplementedError

    def on_trained(self, round_: int, model: Classifier) -> None:
        """Called with the target model trained on round ``round_``'s labels."""

    def strategy_seed(self, round_: int) -> int:
        return derive_seed(self.ctx.config.seed, "select", self.name, round_)


class RandomMethod(Method):
    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        return select("random", SelectorView(self.ctx.n_pool), labelled, k, seed=self.strategy_seed(round_)), {}


class SVPpMethod(Method):
    default_mode = "ft"  # the paper trains SVPp's final model with FT
    uses_cache = True

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        feats = ctx.pool_features
        start = time.perf_counter()
        proxy = train_proxy(feats, labelled, ctx.state.labels_of(labelled), ctx.case.num_classes, ctx.config.proxy,
                            seed=derive_seed(ctx.config.seed, "proxy", self.name, round_), progress=ctx.progress)
        proxy_s = time.perf_counter() - start
        view = self.proxy_view(proxy, feats)
        rows = select(ctx.config.selection.strategy, view, labelled, k, seed=self.strategy_seed(round_),
                      space=ctx.config.selection.space)
        return rows, {"proxy_s": round(proxy_s, 3)}

    def proxy_view(self, proxy: Any, feats: np.ndarray) -> SelectorView:
        ctx = self.ctx
        needs_hidden = ctx.needs_embedding and ctx.config.selection.space == "embedding"
        hidden_out = None
        width = proxy.head.in_features
        if needs_hidden and feats.shape[0] * width * 2 > _IN_MEMORY_BYTES:
            path = ctx.work_dir / f"{self.slug}-hidden.f16"
            hidden_out = np.memmap(path, dtype=np.float16, mode="w+", shape=(feats.shape[0], width))
        logits, hidden = proxy_outputs(proxy, feats, hidden=needs_hidden, hidden_out=hidden_out,
                                       batch_size=ctx.config.proxy.inference_batch_size)
        return SelectorView(feats.shape[0], logits=logits, embedding=hidden, features=feats)


class StandardMethod(Method):
    trains_every_round = True

    def __init__(self, spec: str, ctx: "RunContext") -> None:
        super().__init__(spec, ctx)
        self.model: Optional[Classifier] = None
        self.model_round = -1

    def on_trained(self, round_: int, model: Classifier) -> None:
        self.model, self.model_round = model, round_

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        info: Dict[str, Any] = {}
        if self.model is None or self.model_round != round_ - 1:
            # After a resume: retrain the previous round's model (training is deterministic).
            start = time.perf_counter()
            self.model = ctx.train(labelled, self.mode)
            self.model_round = round_ - 1
            info["retrain_s"] = round(time.perf_counter() - start, 3)
        start = time.perf_counter()
        cache = FeatureCache(ctx.work_dir / f"{self.slug}-features")
        feats = ctx.extract(cache, self.model.backbone, version=round_, backbone_id=f"{self.name}@round{round_ - 1}")
        for old in cache.versions("pool"):
            if old < round_:
                ctx.drop_cache_version(cache, old)
        info["extract_s"] = round(time.perf_counter() - start, 3)
        view = SelectorView(ctx.n_pool, logits=head_logits(self.model.head, feats), embedding=feats,
                            features=ctx.pool_features_or_none)
        rows = select(ctx.config.selection.strategy, view, labelled, k, seed=self.strategy_seed(round_),
                      space=ctx.config.selection.space if ctx.pool_features_or_none is not None else "embedding")
        return rows, info


class ActiveFTPreMethod(Method):
    """ActiveFT(pre): every budget selected in one shot from the pre-trained features."""

    uses_cache = True
    nested = False

    def initial(self, k: int) -> np.ndarray:
        return self.select(0, np.empty(0, np.int64), k)[0]

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        from .activeft import activeft_select

        budget = self.ctx.config.schedule.budgets()[round_]
        rows = activeft_select(self.ctx.pool_features, budget, seed=derive_seed(self.ctx.config.seed, "activeft", budget))
        return np.asarray(rows, dtype=np.int64), {}


MethodFactory = Callable[[str, "RunContext"], Method]

METHODS: Dict[str, MethodFactory] = {
    "random": RandomMethod,
    "svpp": SVPpMethod,
    "standard": StandardMethod,
    "activeft-pre": ActiveFTPreMethod,
}


def register_method(name: str, factory: MethodFactory) -> None:
    """Add a method (ASVP, PruneFuse, ...) under ``name`` for configs and the CLI."""
    METHODS[name] = factory


def make_method(spec: str, ctx: "RunContext") -> Method:
    from . import asvp  # noqa: F401  (registers "asvp")

    base, _ = split_method(spec)
    if base not in METHODS:
        from .config import ConfigError

        raise ConfigError(f"methods: unknown method {base!r}; available: {sorted(METHODS)}")
    return METHODS[base](spec, ctx)
