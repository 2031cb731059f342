"""Standard active learning: the target model, fine-tuned on the labels so far, selects the next rows
with its own logits and features (re-extracted from the fine-tuned backbone every round)."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models.classifier import Classifier
from ..selection.selectors import TargetModelSelector
from ..selection.strategies import select
from ..storage.cache import FeatureCache
from .base import Method, MethodContext, MethodSpec


class StandardMethod(Method):
    """The fine-tuned target model of the previous round selects (it trains every round)."""

    trains_every_round = True
    compute = "every-round"
    distributed = True

    def __init__(self, spec: MethodSpec, ctx: MethodContext) -> None:
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
            self.model = ctx.train(labelled, self.training_mode())
            self.model_round = round_ - 1
            info["retrain_s"] = round(time.perf_counter() - start, 3)
        # Derived weights: a finished version left by an interrupted attempt with other weights
        # is replaced; a partial one is resumed only by bit-identical weights (weights_digest).
        cache = FeatureCache(ctx.work_dir / f"{self.slug}-features", replace_stale=True)

        def extract(backbone: Any) -> np.ndarray:
            feats = ctx.extract(cache, backbone, version=round_, backbone_id=f"{self.name}@round{round_ - 1}")
            for old in ctx.cache_versions(cache):
                if old < round_:
                    ctx.drop_cache_version(cache, old)
            return feats

        selector = TargetModelSelector(self.model, extract, ctx.pool_features_or_none,
                                       mc_samples=ctx.config.training.mc_samples, group=ctx.group)
        view, timing = selector.view(labelled, ctx.state.labels_of(labelled), seed=self.strategy_seed(round_))
        info.update(timing)
        space = ctx.config.selection.space if ctx.pool_features_or_none is not None else "embedding"
        rows = select(ctx.config.selection.strategy, view, labelled, k, seed=self.strategy_seed(round_), space=space)
        if ctx.config.oracle.kind == "label-studio":
            info["hints"] = view.hints(rows)
        return rows, info
