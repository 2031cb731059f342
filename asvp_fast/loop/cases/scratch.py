"""Image cases trained from scratch (PruneFuse's setting): a CIFAR-style ResNet, randomly initialised.

* ``fashion-mnist-scratch``: the shipped Fashion-MNIST subset (28x28 grey images) and a
  ResNet-``depth`` of ``width`` (1 input channel);
* ``imagefolder-scratch``: your own ``<dir>/<class>/<image>`` folders, centre-cropped to
  ``image_size`` (32 for CIFAR-style data), with the same network on 3 channels.

The network's random initialisation comes from ``model_seed`` and is the same for every method of
a run (and every seed of a study), so methods differ only in what they select and how they train.
Train it from scratch: ``[training] backbone_lr = head_lr`` (e.g. 0.1), with weight decay.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..models.backbones.resnet_cifar import DEPTHS, ResNetCIFAR
from .builtin import fashion_mnist_case
from .case import Case
from .imagefolder import imagefolder_case
from .registry import register_case, resolve


def fashion_mnist_scratch_case(pool_size: int = 6000, test_size: int = 1000, seed: int = 0, depth: int = 20,
                               width: int = 16, model_seed: int = 0) -> Case:
    """The built-in Fashion-MNIST subset (see :func:`fashion_mnist_case`) with a random ResNet-``depth``."""
    ResNetCIFAR(depth, width, 1, model_seed)  # checks the arguments now, not at the first training
    case = fashion_mnist_case(pool_size=pool_size, test_size=test_size, seed=seed)
    return dataclasses.replace(case, name="fashion-mnist-scratch",
                               make_backbone=functools.partial(ResNetCIFAR, depth, width, 1, model_seed))


def imagefolder_scratch_case(train_dir: str, test_dir: str, *, image_size: int = 32, pool_size: Optional[int] = None,
                             test_size: Optional[int] = None, seed: int = 0, depth: int = 20, width: int = 16,
                             model_seed: int = 0) -> Case:
    """Your image folders (see :func:`imagefolder_case`), resized to ``image_size``, with a random ResNet."""
    ResNetCIFAR(depth, width, 3, model_seed)
    case = imagefolder_case(train_dir, test_dir, image_size=image_size, resize=image_size, pool_size=pool_size,
                            test_size=test_size, seed=seed)
    return dataclasses.replace(case, name="imagefolder-scratch",
                               make_backbone=functools.partial(ResNetCIFAR, depth, width, 3, model_seed))


@dataclass(frozen=True)
class FashionScratchFields:
    pool_size: int = 6000
    test_size: int = 1000
    seed: int = 0
    depth: int = field(default=20, metadata={"choices": DEPTHS, "what": "ResNet depth"})
    width: int = field(default=16, metadata={"ge": 1, "le": 1024})
    model_seed: int = 0


@dataclass(frozen=True)
class ImageFolderScratchFields:
    train_dir: str
    test_dir: str
    image_size: int = 32
    pool_size: Optional[int] = None
    test_size: Optional[int] = None
    seed: int = 0
    depth: int = field(default=20, metadata={"choices": DEPTHS, "what": "ResNet depth"})
    width: int = field(default=16, metadata={"ge": 1, "le": 1024})
    model_seed: int = 0


def _build_folder(f: ImageFolderScratchFields, base_dir: Path) -> Case:
    return imagefolder_scratch_case(str(resolve(base_dir, f.train_dir)), str(resolve(base_dir, f.test_dir)),
                                    image_size=f.image_size, pool_size=f.pool_size, test_size=f.test_size, seed=f.seed,
                                    depth=f.depth, width=f.width, model_seed=f.model_seed)


register_case("fashion-mnist-scratch", FashionScratchFields,
              lambda f, base_dir: fashion_mnist_scratch_case(**dataclasses.asdict(f)))
register_case("imagefolder-scratch", ImageFolderScratchFields, _build_folder)
