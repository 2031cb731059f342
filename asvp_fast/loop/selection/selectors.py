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
from ..models.ranks import rank_and_world, shard_range
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
    as a float16 memmap. ``group``: a distributed run's process group: the proxy trains
    data-parallel on the labelled rows (read from any shard; ``data_parallel=False``: every rank
    trains it whole, as one process does) and each rank computes the outputs of its own shard of
    the pool only (the view holds that shard).
    """

    features: np.ndarray
    num_classes: int
    config: ProxyConfig
    hidden: bool = False
    spill_path: Optional[Path] = None
    progress: Optional[bool] = None
    group: Any = None
    data_parallel: bool = True

    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        start = time.perf_counter()
        proxy = train_proxy(self.features, labelled, labels, self.num_classes, self.config, seed=seed,
                            progress=self.progress, group=self.group if self.data_parallel else None)
        trained_s = time.perf_counter() - start
        n = self.features.shape[0]
        lo, hi = shard_range(n, self.group)
        feats = self.features[lo:hi]  # this rank's shard (a memmap view; everything without a group)
        hidden_out = None
        width = proxy.head.in_features
        if self.hidden and self.spill_path is not None and feats.shape[0] * width * 2 > IN_MEMORY_BYTES:
            hidden_out = np.memmap(self._spill(""), dtype=np.float16, mode="w+", shape=(feats.shape[0], width))
        logits, hidden = proxy_outputs(proxy, feats, hidden=self.hidden, hidden_out=hidden_out,
                                       batch_size=self.config.inference_batch_size)
        mc = self._mc_sampler(proxy, feats, lo, seed) if self.config.dropout > 0 else None
        return (SelectorView(n, logits=logits, embedding=hidden, features=feats, mc_logits=mc, group=self.group),
                {"proxy_s": round(trained_s, 3)})

    def _spill(self, suffix: str) -> Path:
        """The spill file of this rank (one per rank in a distributed run)."""
        assert self.spill_path is not None
        rank, world = rank_and_world(self.group)
        path = self.spill_path if world == 1 else self.spill_path.with_name(f"{self.spill_path.name}.rank{rank}")
        return path.with_suffix(path.suffix + suffix) if suffix else path

    def _mc_sampler(self, proxy: MLPProxy, feats: np.ndarray, offset: int, seed: int) -> Callable[[], np.ndarray]:
        """MC-dropout logits of the shard on demand; a float32 memmap beside the hidden spill when large."""

        def sample() -> np.ndarray:
            n, t = feats.shape[0], self.config.mc_samples
            out = None
            if self.spill_path is not None and t * n * proxy.head.out_features * 4 > IN_MEMORY_BYTES:
                out = np.memmap(self._spill(".mc.f32"), dtype=np.float32, mode="w+", shape=(t, n, proxy.head.out_features))
            return proxy_mc_logits(proxy, feats, t, seed=seed, batch_size=self.config.inference_batch_size,
                                   out=out, row_offset=offset)

        return sample


@dataclass
class TargetModelSelector(Selector):
    """The target model trained on the labels so far: its head's logits and its backbone's features.

    ``extract(backbone)`` returns the pool's features under that backbone (the run caches them);
    ``features``: the pre-trained features, for strategies that select in that space. ``group``: a
    distributed run's process group: the view holds this rank's shard of both.
    """

    model: Classifier
    extract: Callable[[Any], np.ndarray]
    features: Optional[np.ndarray] = None
    mc_samples: int = 20  # MC-dropout passes when the model was trained with head_dropout > 0
    group: Any = None

    def view(self, labelled: np.ndarray, labels: np.ndarray, *, seed: int) -> Tuple[SelectorView, Dict[str, Any]]:
        start = time.perf_counter()
        pool = self.extract(self.model.backbone)
        extract_s = time.perf_counter() - start
        n = pool.shape[0]
        lo, hi = shard_range(n, self.group)
        feats = pool[lo:hi]
        rate = getattr(self.model, "head_dropout", 0.0)
        mc = ((lambda: head_mc_logits(self.model.head, feats, rate, self.mc_samples, seed=seed, row_offset=lo))
              if rate > 0 else None)
        view = SelectorView(n, logits=head_logits(self.model.head, feats), embedding=feats,
                            features=None if self.features is None else self.features[lo:hi], mc_logits=mc,
                            group=self.group)
        return view, {"extract_s": round(extract_s, 3)}
