"""What a selector hands to the query strategies: class scores and embeddings of the pool."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class SelectorView:
    """What a selector exposes about the pool (rows in pool order).

    ``logits`` (N, C): the selector's class scores; ``embedding`` (N, h): its penultimate features
    (the proxy's hidden layer, or the fine-tuned backbone's features); ``features`` (N, d): the
    cached pre-trained features.
    """

    n: int
    logits: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None
    features: Optional[np.ndarray] = None

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
