"""A backbone over precomputed embeddings: the stored features pass through unchanged.

With it, a user who only has embeddings gets the whole loop: the feature cache copies the
rows, the proxy (SVPp, ASVP) selects on them, and the target model is a head on them.
"""

from __future__ import annotations

import torch
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone

HEADS = ("linear", "mlp")


class FeaturesBackbone(Backbone):
    """Stored features as the backbone's output, optionally through a trainable residual MLP.

    Parameters
    ----------
    feature_dim
        D, the width of the stored features.
    source_id
        Names the stored features (e.g. a file fingerprint): it becomes the ``backbone_id``, so
        the feature caches of two different files never mix.
    head
        ``"linear"``: no parameters; the target model is a linear classifier on the features.
        ``"mlp"``: ``x + Linear(ReLU(Linear(x)))`` (hidden width ``hidden``) under the linear
        classifier, i.e. an MLP head with a skip connection. Its last layer starts at zero, so
        before training the output is exactly the stored features: the cache, the proxy and
        LP-FT's linear probe see the embeddings themselves, and the MLP trains with the
        ``training.backbone_lr`` learning rate (raise it towards ``head_lr`` for a real MLP).
    hidden
        Hidden width of the MLP head.
    seed
        Seed of the MLP's first layer (the output does not depend on it before training).

    ``forward`` takes ``(B, D)`` tensors of any float dtype and returns float32 ``(B, D)``.
    """

    def __init__(self, feature_dim: int, source_id: str, head: str = "linear", hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}")
        if int(feature_dim) < 1 or int(hidden) < 1:
            raise ValueError(f"feature_dim and hidden must be positive, got {feature_dim} and {hidden}")
        self.feature_dim = int(feature_dim)
        self.head_kind = head
        self.mlp: "nn.Module | None" = None
        if head == "mlp":
            with seeded_torch(seed):
                first = nn.Linear(self.feature_dim, int(hidden))
            last = nn.Linear(int(hidden), self.feature_dim)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.mlp = nn.Sequential(first, nn.ReLU(), last)
        # The pre-trained output is the stored features whatever the head: one id for both.
        self.backbone_id = f"features:{source_id}"
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != self.feature_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"expected a (B, {self.feature_dim}) batch of stored features, got {shape}")
        x = x.float()
        if self.mlp is not None:
            x = x + self.mlp(x)
        return x
