"""Image backbones by architecture name from torchvision or timm, with weights from a local checkpoint.

``vision_backbone("torchvision:resnet18", checkpoint="r18.pth")`` builds the architecture with no
pretrained weights (nothing is downloaded), removes its classifier, loads the checkpoint
tensors-only (``trust_checkpoint=True`` allows full unpickling, only for files you trust) and
returns a :class:`Backbone` giving the pooled penultimate features. Neither library is a
dependency: each is imported when named.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple, Union

import torch
from torch import nn

from ..seeding import seeded_torch
from .base import Backbone, require
from .checkpoint import checkpoint_fingerprint, load_checkpoint
from .image import IMAGENET_MEAN, IMAGENET_STD, check_images, resize_square

PathLike = Union[str, "os.PathLike[str]"]
LIBRARIES = ("torchvision", "timm")
# Where the two libraries keep the classification layer (replaced by an identity: features only).
_CLASSIFIER_ATTRIBUTES = ("fc", "classifier", "head", "heads")


def parse_architecture(spec: str) -> Tuple[str, str]:
    """``"torchvision:resnet18"`` → ``("torchvision", "resnet18")``; a bare name means torchvision."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"architecture must be 'torchvision:NAME' or 'timm:NAME', got {spec!r}")
    library, sep, name = spec.partition(":")
    if not sep:
        library, name = "torchvision", spec
    if library not in LIBRARIES or not name:
        raise ValueError(f"architecture must be 'torchvision:NAME' or 'timm:NAME', got {spec!r}")
    return library, name


def _build(library: str, name: str) -> Tuple[nn.Module, Tuple[str, ...]]:
    """The architecture without weights and its classifier removed; the removed keys' prefixes."""
    if library == "timm":
        timm = require("timm", "timm")
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0)  # num_classes=0: pooled features
        except RuntimeError as exc:  # timm's "unknown model"
            raise ValueError(f"timm has no architecture {name!r} ({exc})") from None
        return model, ("head.", "fc.", "classifier.")
    models = require("torchvision.models", "torchvision")
    builder = getattr(models, name, None)
    if builder is None or not callable(builder) or name.startswith("_"):
        raise ValueError(f"torchvision.models has no architecture {name!r}")
    model = builder(weights=None)
    removed = []
    for attribute in _CLASSIFIER_ATTRIBUTES:
        if isinstance(getattr(model, attribute, None), nn.Module):
            setattr(model, attribute, nn.Identity())
            removed.append(attribute + ".")
    if not removed:
        raise ValueError(f"torchvision:{name} has no fc/classifier/head attribute to remove; wrap the model "
                         "yourself with asvp_fast.loop.models.backbones.module_backbone")
    return model, tuple(removed)


class VisionBackbone(Backbone):
    """A torchvision or timm image model as a feature extractor (see the module docstring).

    ``forward`` takes uint8 images ``(B, 3, H, W)`` (as the image datasets make them), resizes them
    to ``image_size`` and normalises them with the ImageNet mean/std; a float batch is taken as
    already normalised and only resized.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, architecture: str, checkpoint: Optional[PathLike] = None, *, image_size: int = 224,
                 seed: int = 0, trust_checkpoint: bool = False) -> None:
        super().__init__()
        library, name = parse_architecture(architecture)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
            raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
        self.image_size = image_size
        with seeded_torch(seed):  # the random init of weights the checkpoint does not cover; RNG restored
            self.model, removed = _build(library, name)
        if checkpoint is not None:
            load_checkpoint(self.model, checkpoint, weights_only=not trust_checkpoint, ignore=removed,
                            what=f"{library}:{name}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.eval()
        with torch.inference_mode():  # the pooled width, measured rather than guessed per family
            probe = self.model(torch.zeros(1, 3, image_size, image_size))
        if probe.dim() != 2:
            raise ValueError(f"{library}:{name} returns features of shape {tuple(probe.shape)} once its classifier "
                             "is removed, not (batch, features); wrap it with module_backbone")
        self.feature_dim = int(probe.shape[1])
        weights = checkpoint_fingerprint(checkpoint) if checkpoint is not None else f"random-seed{seed}"
        self.backbone_id = f"{library}-{name}-{weights}-{image_size}px"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, (3,))
        x = (images.float() - self.mean) / self.std if images.dtype == torch.uint8 else images.float()
        out: Any = self.model(resize_square(x, self.image_size))
        return out.float()


def vision_backbone(architecture: str, checkpoint: Optional[PathLike] = None, **options: Any) -> VisionBackbone:
    """:class:`VisionBackbone` by name (``"torchvision:NAME"`` or ``"timm:NAME"``); see its docstring."""
    return VisionBackbone(architecture, checkpoint, **options)
