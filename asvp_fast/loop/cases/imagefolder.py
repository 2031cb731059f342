"""Your own ``class/image`` folders with a ResNet-50 checkpoint."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from ..models.backbones import ResNet50, VisionBackbone
from .case import Case
from .datasets import IMAGE_EXTENSIONS, ImageFolderDataset, stack_collate
from .registry import register_case, resolve
from .splits import random_subset

PathLike = Union[str, "os.PathLike[str]"]



def _class_dirs(root: Path, role: str) -> List[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"{role} directory not found: {root}")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise ValueError(f"{role} directory {root} has no class sub-directories (expected {root}/<class>/<image>)")
    return classes


def _images_under(directory: Path) -> List[Path]:
    """Image files below ``directory`` (recursively, sorted, hidden entries skipped)."""
    found = []
    for current, subdirs, files in os.walk(directory, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        images = [f for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        found += [Path(current) / f for f in images]
    return found


def scan_image_folder(
    root: PathLike, classes: Optional[Sequence[str]] = None, role: str = "image"
) -> Tuple[List[Path], np.ndarray, List[str]]:
    """``(paths, labels, class_names)`` of a ``root/<class>/<image>`` tree.

    ``classes`` fixes the label order (a test folder uses the training classes); the folder's
    classes must then be a subset of them. Every class directory must hold at least one image.
    """
    root = Path(os.path.abspath(root))  # absolute: describe() paths stay valid from any cwd
    found = _class_dirs(root, role)
    names = list(found) if classes is None else list(classes)
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise ValueError(f"{role} directory {root} has classes not in the training classes: {unknown}")
    paths: List[Path] = []
    labels: List[int] = []
    for name in found:
        images = _images_under(root / name)
        if not images:
            raise ValueError(f"{role} class directory {root / name} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += images
        labels += [names.index(name)] * len(images)
    return paths, np.asarray(labels, dtype=np.int64), names


def _files_digest(paths: Sequence[Path]) -> str:
    """A short hash of the file names and sizes: names the image set in the feature cache."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:12]


def imagefolder_case(
    train_dir: PathLike,
    test_dir: PathLike,
    *,
    checkpoint: Optional[PathLike] = None,
    image_size: int = 224,
    resize: Optional[int] = None,
    pool_size: Optional[int] = None,
    test_size: Optional[int] = None,
    seed: int = 0,
    trust_checkpoint: bool = False,
    architecture: Optional[str] = None,
) -> Case:
    """Your own images in ``<dir>/<class>/<image>`` folders, with a ResNet-50 backbone (or any
    torchvision/timm ``architecture``, e.g. ``"torchvision:resnet18"``, ``"timm:vit_small_patch16_224"``).

    Parameters
    ----------
    train_dir, test_dir
        Folders of class sub-directories (sorted names define the class ids); the pool comes
        from ``train_dir`` (its labels feed the simulated oracle), the test set from ``test_dir``,
        whose classes must be a subset of the training classes.
    checkpoint
        A torchvision-format ResNet-50 checkpoint (see :func:`~asvp_fast.loop.models.backbones.load_checkpoint`);
        ``None`` gives a random init (only useful for smoke tests).
    image_size
        Centre-crop side (224 for ImageNet-trained ResNets).
    architecture
        ``None``: our ResNet-50 (no extra package). ``"torchvision:NAME"`` / ``"timm:NAME"``: that
        architecture with ``checkpoint``'s weights (see :func:`~asvp_fast.loop.models.backbones.vision_backbone`).
    resize
        Shorter side before the crop; default ``image_size * 256 // 224``, the ImageNet
        evaluation convention (256 then 224).
    pool_size, test_size
        Optional seeded random subsets (default: every image).
    seed
        Seed of the subsets.
    trust_checkpoint
        Allow full unpickling of the checkpoint (see :class:`~asvp_fast.loop.models.backbones.ResNet50`).

    Items are uint8 ``(3, image_size, image_size)`` tensors; ``describe(i)`` is the file path.
    """
    train_paths, train_labels, classes = scan_image_folder(train_dir, role="training")
    test_paths, test_labels, _ = scan_image_folder(test_dir, classes, role="test")
    rng = np.random.default_rng(seed)
    pool_rows = np.arange(len(train_paths))
    if pool_size is not None:
        pool_rows = random_subset(len(train_paths), pool_size, rng, "pool_size")
    test_rows = np.arange(len(test_paths))
    if test_size is not None:
        test_rows = random_subset(len(test_paths), test_size, rng, "test_size")
    pool_paths = [train_paths[i] for i in pool_rows]
    chosen_test = [test_paths[i] for i in test_rows]
    resize = resize if resize is not None else image_size * 256 // 224
    pool = ImageFolderDataset(pool_paths, image_size, resize)
    return Case(
        name="imagefolder",
        dataset_id=(
            f"imagefolder-{Path(train_dir).name}:{_files_digest(pool_paths)}:{_files_digest(chosen_test)}:"
            f"pool{len(pool_paths)}:test{len(chosen_test)}:crop{image_size}:resize{resize}"
        ),
        pool=pool,
        test=ImageFolderDataset(chosen_test, image_size, resize),
        test_labels=test_labels[test_rows],
        num_classes=len(classes),
        class_names=classes,
        make_backbone=(functools.partial(ResNet50, checkpoint, trust_checkpoint=trust_checkpoint) if architecture is None
                       else functools.partial(VisionBackbone, architecture, checkpoint, image_size=image_size,
                                              trust_checkpoint=trust_checkpoint)),
        collate=stack_collate,
        pool_labels=train_labels[pool_rows],
        describe=pool.describe,
        licence="your images and checkpoint: check their licences",
    )




@dataclass(frozen=True)
class ImageFolderFields:
    """``[data]`` of ``case = "imagefolder"``: paths relative to the config file's folder."""

    train_dir: str
    test_dir: str
    checkpoint: Optional[str] = None
    image_size: int = 224
    pool_size: Optional[int] = None
    test_size: Optional[int] = None
    seed: int = 0
    architecture: Optional[str] = field(default=None, metadata={"path": False})  # "torchvision:NAME" | "timm:NAME"


def _build_imagefolder(f: ImageFolderFields, base_dir: Path) -> Case:
    checkpoint = resolve(base_dir, f.checkpoint)
    return imagefolder_case(str(resolve(base_dir, f.train_dir)), str(resolve(base_dir, f.test_dir)),
                            checkpoint=str(checkpoint) if checkpoint else None, image_size=f.image_size,
                            pool_size=f.pool_size, test_size=f.test_size, seed=f.seed, architecture=f.architecture)


register_case("imagefolder", ImageFolderFields, _build_imagefolder)
