"""ActiveFT(pre): every budget selected in one shot from the pre-trained features (no model in the
loop); the target model is trained on each budget's selection."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ...acquisition.activeft import activeft_select
from ..models.ranks import shard_range
from .base import Method, derive_seed


class ActiveFTPreMethod(Method):
    """One-shot ActiveFT on pre-trained features: each budget is a fresh selection, not nested."""

    uses_cache = True
    nested = False
    distributed = True  # each rank normalises its shard; the optimisation runs on rank 0 (gathered)

    def initial(self, k: int) -> np.ndarray:
        return self.select(0, np.empty(0, np.int64), k)[0]

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        budget = self.ctx.config.schedule.budgets()[round_]
        lo, hi = shard_range(self.ctx.n_pool, self.ctx.group)
        rows = activeft_select(self.ctx.pool_features[lo:hi], budget, group=self.ctx.group,
                               seed=derive_seed(self.ctx.config.seed, "activeft", budget))
        return np.asarray(rows, dtype=np.int64), {}
