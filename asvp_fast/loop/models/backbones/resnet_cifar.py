"""CIFAR-style ResNets (He et al. 2016, section 4.2): ResNet-8/14/20/32/44/56/110, trained from scratch.

Three stages of ``n = (depth - 2) / 6`` basic blocks with ``width``, ``2·width`` and ``4·width``
channels (16/32/64 by default), a 3x3 stem, global average pooling: ``feature_dim = 4·width``. The
downsampling shortcuts are 1x1 convolutions with BatchNorm (option B), so every block is an
ordinary traced graph that structured pruning (:mod:`asvp_fast.prunefuse`) can follow. ResNet-56
at width 16 has 0.86 M parameters (0.85 M in the PruneFuse paper, whose shortcuts are
parameter-free).

Inputs are images ``(B, in_channels, H, W)`` with values on the 0..255 scale (the uint8 tensors
of the image cases), scaled to about [-1, 1]; any size works (28x28 Fashion-MNIST, 32x32 CIFAR).
"""

from __future__ import annotations

import torch
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone

DEPTHS = (8, 14, 20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or inplanes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))  # type: ignore[no-any-return]


class ResNetCIFAR(Backbone):
    """A CIFAR-style ResNet of ``depth`` layers as a loop backbone (see the module docstring).

    ``seed`` draws the random initialisation (Kaiming-normal convolutions, BatchNorm at 1/0); the
    weights are part of ``backbone_id``.
    """

    def __init__(self, depth: int = 20, width: int = 16, in_channels: int = 3, seed: int = 0) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS} (6n + 2), got {depth!r}")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        if in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 (grey) or 3 (colour), got {in_channels!r}")
        n = (depth - 2) // 6
        with seeded_torch(seed):  # the caller's RNG state is restored after
            self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU()
            stages, inplanes = [], width
            for i, planes in enumerate((width, 2 * width, 4 * width)):
                blocks = []
                for j in range(n):
                    blocks.append(BasicBlock(inplanes, planes, 2 if (i > 0 and j == 0) else 1))
                    inplanes = planes
                stages.append(nn.Sequential(*blocks))
            self.layer1, self.layer2, self.layer3 = stages
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.depth, self.width, self.in_channels = int(depth), int(width), int(in_channels)
        self.feature_dim = 4 * width
        self.backbone_id = f"resnet{depth}-cifar-w{width}-c{in_channels}-random-seed{seed}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - 127.5) / 127.5
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x.mean(dim=(2, 3))
