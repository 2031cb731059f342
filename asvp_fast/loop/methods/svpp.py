"""SVPp: selection via proxy on pre-trained features (the ASVP paper's baseline).

Each round an MLP proxy is trained on the cached pre-trained features of the labelled rows and
selects with the configured strategy; the target model is fine-tuned (FT, the paper's choice) on
the result.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from ..selection.selectors import ProxySelector
from ..selection.strategies import select
from .base import Method, derive_seed


class SVPpMethod(Method):
    """The MLP proxy on cached features selects; FT trains the target model."""

    default_training = "ft"
    uses_cache = True

    def proxy_selector(self, features: np.ndarray) -> ProxySelector:
        """The proxy over ``features`` (the cached pre-trained ones, or ASVP's refreshed ones)."""
        ctx = self.ctx
        hidden = ctx.needs_embedding and ctx.config.selection.space == "embedding"
        return ProxySelector(features, ctx.case.num_classes, ctx.config.proxy, hidden=hidden,
                             spill_path=ctx.work_dir / f"{self.slug}-hidden.f16", progress=ctx.progress)

    def select_with_proxy(self, features: np.ndarray, round_: int, labelled: np.ndarray,
                          k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        view, info = self.proxy_selector(features).view(labelled, ctx.state.labels_of(labelled),
                                                        seed=derive_seed(ctx.config.seed, "proxy", self.name, round_))
        rows = select(ctx.config.selection.strategy, view, labelled, k, seed=self.strategy_seed(round_),
                      space=ctx.config.selection.space)
        if ctx.config.oracle.kind == "label-studio":  # annotators see the proxy's guess and can sort by doubt
            info["hints"] = view.hints(rows)
        return rows, info

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        return self.select_with_proxy(self.ctx.pool_features, round_, labelled, k)
