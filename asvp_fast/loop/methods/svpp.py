"""SVPp: selection via proxy on pre-trained features (the ASVP paper's baseline).

Each round an MLP proxy is trained on the cached pre-trained features of the labelled rows and
selects with the configured strategy; the target model is fine-tuned (FT, the paper's choice) on
the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..selection.selectors import ProxySelector
from ..selection.strategies import EMBEDDING_STRATEGIES, STRATEGIES, select
from .base import Method, derive_seed


@dataclass(frozen=True)
class SVPpOptions:
    """``strategy``: this method's query strategy (None: the config's ``selection.strategy``), so one
    study can compare strategies, e.g. ``{ method = "svpp", name = "svpp:bald", strategy = "bald" }``."""

    strategy: Optional[str] = field(default=None, metadata={"choices": lambda: STRATEGIES, "what": "strategy"})


class SVPpMethod(Method):
    """The MLP proxy on cached features selects; FT trains the target model."""

    Options: Any = SVPpOptions
    default_training = "ft"
    uses_cache = True
    distributed = True

    @property
    def strategy(self) -> str:
        return getattr(self.options, "strategy", None) or self.ctx.config.selection.strategy

    def proxy_selector(self, features: np.ndarray) -> ProxySelector:
        """The proxy over ``features`` (the cached pre-trained ones, or ASVP's refreshed ones)."""
        ctx = self.ctx
        hidden = self.strategy in EMBEDDING_STRATEGIES and ctx.config.selection.space == "embedding"
        return ProxySelector(features, ctx.case.num_classes, ctx.config.proxy, hidden=hidden,
                             spill_path=ctx.work_dir / f"{self.slug}-hidden.f16", progress=ctx.progress, group=ctx.group,
                             data_parallel=ctx.config.distributed.proxy == "ddp")

    def select_with_proxy(self, features: np.ndarray, round_: int, labelled: np.ndarray,
                          k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        view, info = self.proxy_selector(features).view(labelled, ctx.state.labels_of(labelled),
                                                        seed=derive_seed(ctx.config.seed, "proxy", self.name, round_))
        rows = select(self.strategy, view, labelled, k, seed=self.strategy_seed(round_),
                      space=ctx.config.selection.space)
        if ctx.config.oracle.kind == "label-studio":  # annotators see the proxy's guess and can sort by doubt
            info["hints"] = view.hints(rows)
        return rows, info

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        return self.select_with_proxy(self.ctx.pool_features, round_, labelled, k)
