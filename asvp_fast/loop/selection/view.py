"""What a selector hands to the query strategies: class scores and embeddings of the pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..models.ranks import shard_range


@dataclass
class SelectorView:
    """What a selector exposes about the pool (rows in pool order).

    ``logits`` (N, C): the selector's class scores; ``embedding`` (N, h): its penultimate features
    (the proxy's hidden layer, or the fine-tuned backbone's features); ``features`` (N, d): the
    cached pre-trained features; ``mc_logits``: makes (T, N, C) MC-dropout logits on demand (BALD,
    BatchBALD), None when the selector has no dropout.

    ``group``: in a distributed run, the process group; the arrays then hold only this rank's shard
    of the pool (rows :attr:`shard`, consecutive, in rank order) and strategies select with the
    ``group=`` kernels. ``n`` is always the whole pool's size and row numbers are global.
    """

    n: int
    logits: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None
    mc_logits: Optional[Callable[[], np.ndarray]] = None
    group: Any = None

    @property
    def shard(self) -> Tuple[int, int]:
        """The global rows [lo, hi) this rank's arrays hold (the whole pool without a group)."""
        return shard_range(self.n, self.group)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """The global ``rows`` that lie in this rank's shard, as indices into its arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.group is None:
            return rows
        lo, hi = self.shard
        return rows[(rows >= lo) & (rows < hi)] - lo

    def space(self, name: str) -> np.ndarray:
        """The embedding that diversity strategies work in: ``"embedding"`` or ``"features"``."""
        arr = self.embedding if name == "embedding" else self.features if name == "features" else None
        if name not in ("embedding", "features"):
            raise ValueError(f"embedding space must be 'embedding' or 'features', got {name!r}")
        if arr is None:
            raise ValueError(f"this selector provides no {name!r} for a diversity strategy")
        return arr

    def need_logits(self, strategy: str) -> np.ndarray:
        if self.logits is None:
            raise ValueError(f"strategy {strategy!r} needs class scores, and this selector provides none")
        return self.logits

    def need_mc_logits(self, strategy: str) -> np.ndarray:
        """The (T, N, C) MC-dropout logits (computed on first use and kept)."""
        if self.mc_logits is None:
            raise ValueError(f"strategy {strategy!r} needs MC-dropout samples: set [proxy] dropout > 0 for proxy "
                             "methods or [training] head_dropout > 0 for standard AL (e.g. 0.3; mc_samples "
                             "sets T)")
        if not hasattr(self, "_mc_cache"):
            self._mc_cache = self.mc_logits()
        return self._mc_cache

    def _all_offsets(self) -> List[int]:
        import torch.distributed as dist

        world = dist.get_world_size(self.group)
        return [r * self.n // world for r in range(world)]

    def hints(self, rows: np.ndarray) -> Dict[str, List[float]]:
        """For annotators: pool row → [top class, uncertainty in [0, 1]] of the selector, where the
        uncertainty is 1 − (p₍₁₎ − p₍₂₎) of the softmax (1: a tie, 0: certain). Keys are strings, so
        the mapping round-trips through the JSON run state. Empty without class scores."""
        if self.logits is None or len(rows) == 0:
            return {}
        if self.group is not None:  # each rank describes its own rows; every rank gets them all
            import torch.distributed as dist

            lo = self.shard[0]
            mine = np.asarray(rows, dtype=np.int64)
            mine = mine[(mine >= lo) & (mine < self.shard[1])]
            parts: List[Any] = [None] * dist.get_world_size(self.group)
            dist.all_gather_object(parts, SelectorView(len(self.logits), logits=self.logits).hints(mine - lo), group=self.group)
            merged = {int(k) + lo_r: v for part, lo_r in zip(parts, self._all_offsets()) for k, v in part.items()}
            return {str(int(r)): merged[int(r)] for r in rows}  # in the order of ``rows``, as one process
        logits = np.asarray(self.logits[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        top2 = -np.sort(-p, axis=1)[:, :2] if p.shape[1] > 1 else np.concatenate([p, np.zeros_like(p)], axis=1)
        uncertainty = 1.0 - (top2[:, 0] - top2[:, 1])
        return {str(int(r)): [int(c), round(float(u), 6)] for r, c, u in zip(rows, p.argmax(axis=1), uncertainty)}
