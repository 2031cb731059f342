"""The random baseline: each round, new rows drawn uniformly from the unlabelled pool."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ..selection.strategies import select
from ..selection.view import SelectorView
from .base import Method


class RandomMethod(Method):
    """Random sampling; its accuracy curve is what the other methods' savings are measured against."""

    compute = "final"
    distributed = True

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        return select("random", SelectorView(self.ctx.n_pool), labelled, k, seed=self.strategy_seed(round_)), {}
