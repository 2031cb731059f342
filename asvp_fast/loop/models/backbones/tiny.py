"""A small seeded MLP backbone for fast synthetic tests."""

from __future__ import annotations

import torch
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone


# --------------------------------------------------------------------------------------------
# Synthetic: a tiny MLP
# --------------------------------------------------------------------------------------------


class TinyMLPBackbone(Backbone):
    """``Linear -> ReLU -> Linear``, seeded: float ``(B, in_dim)`` to ``(B, feature_dim)``."""

    def __init__(self, in_dim: int = 16, feature_dim: int = 8, hidden: int = 32, seed: int = 0) -> None:
        super().__init__()
        with seeded_torch(seed):  # the caller's RNG state (CPU and CUDA) is restored after
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
        self.feature_dim = int(feature_dim)
        self.backbone_id = f"tiny-mlp-{in_dim}-{hidden}-{feature_dim}-seed{seed}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())  # type: ignore[no-any-return]


