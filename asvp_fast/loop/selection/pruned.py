"""A selector that is a network of its own, trained on the labelled rows each round.

PruneFuse's selector is a structurally pruned copy of the target network (:mod:`asvp_fast.prunefuse`);
SVP's is a smaller network of the same family. Either way :class:`NetworkSelector` trains a copy
of its initial network on the labels so far (:func:`~..models.netfit.fit`, the FT recipe), then
scores the whole pool with it: its logits for the uncertainty strategies, its penultimate features
(the pooled backbone output) as the embedding of k-center, BADGE and the other diversity
strategies. The trained network stays available (:attr:`NetworkSelector.trained`) for fusion.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ..models.classifier import Classifier
from ..models.netfit import fit, outputs
from ..models.ranks import shard_range
from ..models.trainers import TrainConfig
from .selectors import Selector
from .view import SelectorView


@dataclass
class NetworkSelector(Selector):
    """``init``: the network before training (left untouched: each round trains a copy);
    ``trained``: set to skip training (a network already trained on these labels, e.g. loaded
    from the run directory); ``features``: the case's pre-trained features, if any (the
    ``features`` space of diversity strategies). ``group``: a distributed run's process group:
    the network trains data-parallel (``data_parallel=False``: every rank trains it whole) and each
    rank scores its own shard of the pool (the view holds that shard)."""

    init: Classifier
    pool: Any
    collate: Any
    config: TrainConfig
    epochs: Optional[int] = None
    trained: Optional[Classifier] = None
    features: Optional[np.ndarray] = None
    group: Any = None
    data_parallel: bool = True

    def train(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> float:
        """Train a copy of ``init`` on the labelled rows (unless already trained); the seconds taken."""
        if self.trained is not None:
            return 0.0
        start = time.perf_counter()
        self.trained = fit(copy.deepcopy(self.init), self.pool, self.collate, labelled, labels, self.config, seed=seed,
                           epochs=self.epochs, group=self.group if self.data_parallel else None)
        return time.perf_counter() - start

    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        train_s = self.train(labelled, labels, seed=seed)
        assert self.trained is not None
        start = time.perf_counter()
        n = len(self.pool)
        lo, hi = shard_range(n, self.group)
        logits, embedding = outputs(self.trained, self.pool, self.collate, self.config,
                                    rows=None if self.group is None else np.arange(lo, hi))
        infer_s = time.perf_counter() - start
        view = SelectorView(n, logits=logits, embedding=embedding, group=self.group,
                            features=None if self.features is None else self.features[lo:hi])
        return view, {"selector_train_s": round(train_s, 3), "selector_infer_s": round(infer_s, 3)}
