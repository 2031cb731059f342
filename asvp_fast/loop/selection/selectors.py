"""Selectors: the models whose outputs the query strategies select with.

A selector is trained (or given) on the labelled rows and returns a :class:`SelectorView` of the
whole pool: class scores for uncertainty strategies, an embedding for diversity strategies. Methods
compose a selector, a strategy and a trainer; a new kind of selector (for instance a pruned copy of
the target network) subclasses :class:`Selector`.

* :class:`ProxySelector` – the MLP proxy, trained each round on cached features (SVPp, ASVP);
* :class:`TargetModelSelector` – the fine-tuned target model itself (standard active learning).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..models.classifier import Classifier, head_logits, head_mc_logits
from ..models.proxy import MLPProxy, ProxyConfig, proxy_mc_logits, proxy_outputs, train_proxy
from .view import SelectorView

# Hidden embeddings larger than this go to a memmap in the run directory instead of memory.
IN_MEMORY_BYTES = 1 << 30


class Selector(ABC):
    """Produces the pool's :class:`SelectorView` for a round (see the module docstring)."""

    @abstractmethod
    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        """The view to select with, trained on ``labelled`` rows and their ``labels``; plus timings
        and decisions to record in the round's info."""


@dataclass
class ProxySelector(Selector):
    """The MLP proxy on cached features (ASVP paper, section 6.1).

    ``hidden``: the proxy's penultimate embedding is needed (diversity strategies in the
    ``embedding`` space); ``spill_path``: where a hidden embedding over :data:`IN_MEMORY_BYTES` goes
    as a float16 memmap.
    """

    features: np.ndarray
    num_classes: int
    config: ProxyConfig
    hidden: bool = False
    spill_path: Optional[Path] = None
    progress: Optional[bool] = None

    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        start = time.perf_counter()
        proxy = train_proxy(self.features, labelled, labels, self.num_classes, self.config, seed=seed,
                            progress=self.progress)
        trained_s = time.perf_counter() - start
        feats = self.features
        hidden_out = None
        width = proxy.head.in_features
        if self.hidden and self.spill_path is not None and feats.shape[0] * width * 2 > IN_MEMORY_BYTES:
            hidden_out = np.memmap(self.spill_path, dtype=np.float16, mode="w+", shape=(feats.shape[0], width))
        logits, hidden = proxy_outputs(proxy, feats, hidden=self.hidden, hidden_out=hidden_out,
                                       batch_size=self.config.inference_batch_size)
        mc = self._mc_sampler(proxy, seed) if self.config.dropout > 0 else None
        return (SelectorView(feats.shape[0], logits=logits, embedding=hidden, features=feats, mc_logits=mc),
                {"proxy_s": round(trained_s, 3)})

    def _mc_sampler(self, proxy: MLPProxy, seed: int) -> Callable[[], np.ndarray]:
        """MC-dropout logits of the pool on demand; a float32 memmap beside the hidden spill when large."""

        def sample() -> np.ndarray:
            n, t = self.features.shape[0], self.config.mc_samples
            out = None
            if self.spill_path is not None and t * n * proxy.head.out_features * 4 > IN_MEMORY_BYTES:
                out = np.memmap(self.spill_path.with_suffix(".mc.f32"), dtype=np.float32, mode="w+",
                                shape=(t, n, proxy.head.out_features))
            return proxy_mc_logits(proxy, self.features, t, seed=seed, batch_size=self.config.inference_batch_size,
                                   out=out)

        return sample


@dataclass
class TargetModelSelector(Selector):
    """The target model trained on the labels so far: its head's logits and its backbone's features.

    ``extract(backbone)`` returns the pool's features under that backbone (the run caches them);
    ``features``: the pre-trained features, for strategies that select in that space.
    """

    model: Classifier
    extract: Callable[[Any], np.ndarray]
    features: Optional[np.ndarray] = None
    mc_samples: int = 20  # MC-dropout passes when the model was trained with head_dropout > 0

    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        start = time.perf_counter()
        feats = self.extract(self.model.backbone)
        extract_s = time.perf_counter() - start
        rate = getattr(self.model, "head_dropout", 0.0)
        mc = (lambda: head_mc_logits(self.model.head, feats, rate, self.mc_samples, seed=seed)) if rate > 0 else None
        view = SelectorView(feats.shape[0], logits=head_logits(self.model.head, feats), embedding=feats,
                            features=self.features, mc_logits=mc)
        return view, {"extract_s": round(extract_s, 3)}
