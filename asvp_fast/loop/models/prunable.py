"""Traceable stand-in forwards of the pre-trained backbones, so PruneFuse can prune them.

:func:`asvp_fast.prunefuse.prune` follows a network's graph with ``torch.fx``, which cannot trace a
forward that checks its input in Python. EfficientNet-Lite0's forward does (image shape checks,
grey-to-colour and resize branches), and so does ResNet-50's (shape check, uint8 scaling), so
pruning traces the stand-ins below: the same layers in the same order on the same shapes.
The pruned network itself still runs the backbone's own forward. Importing this module registers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...prunefuse import register_traceable_forward
from .backbones.image import LITE_MEAN, LITE_STD, EfficientNetLite0, ResNet50


def lite0_forward(backbone: EfficientNetLite0, images: torch.Tensor) -> torch.Tensor:
    x = images.float().expand(-1, 3, -1, -1)  # grey or colour: 3 channels either way
    x = F.interpolate(x, size=(backbone.image_size, backbone.image_size), mode="bilinear", align_corners=False)
    features: torch.Tensor = backbone.model.extract_features((x - LITE_MEAN) / LITE_STD)
    return features.mean(dim=(2, 3))


register_traceable_forward(EfficientNetLite0, lite0_forward)


def resnet50_forward(backbone: ResNet50, images: torch.Tensor) -> torch.Tensor:
    x = images.float()  # the scaling by the mean/std buffers changes no shape: left out of the trace
    x = backbone.maxpool(backbone.relu(backbone.bn1(backbone.conv1(x))))
    x = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(x))))
    return x.mean(dim=(2, 3))


register_traceable_forward(ResNet50, resnet50_forward)
