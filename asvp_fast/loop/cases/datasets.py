"""Datasets the cases hand to the loop: inputs only, labels live on the case.

Top-level classes, because DataLoader workers pickle them.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")



class TextDataset(Dataset[str]):
    """A list of strings; ``describe(i)`` is the text itself."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]

    def describe(self, index: int) -> str:
        return self.texts[index]


class ArrayDataset(Dataset[torch.Tensor]):
    """Rows of a numpy array as tensors; ``describe(i)`` names the row (never its label)."""

    def __init__(self, array: np.ndarray, names: Optional[Sequence[str]] = None) -> None:
        self.array = np.ascontiguousarray(array)
        self.names = None if names is None else list(names)

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.array[index].copy())  # a copy: the batch may be modified

    def describe(self, index: int) -> str:
        return self.names[index] if self.names is not None else f"row {index}"


class ImageFolderDataset(Dataset[torch.Tensor]):
    """Image files as uint8 ``(3, image_size, image_size)`` tensors.

    Each image is converted to RGB, resized so its shorter side is ``resize`` (bilinear,
    antialiased by Pillow when shrinking) and centre-cropped to ``image_size``.
    """

    def __init__(self, paths: Sequence[PathLike], image_size: int, resize: int) -> None:
        if resize < image_size:
            raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
        self.paths = [os.fspath(p) for p in paths]
        self.image_size = int(image_size)
        self.resize = int(resize)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image  # imported here: only image folders need Pillow

        path = self.paths[index]
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except Exception as exc:  # Pillow raises several types for unreadable files
            raise ValueError(f"cannot read image {path}: {exc}") from exc
        image = _resize_shorter_side(image, self.resize)
        image = _centre_crop(image, self.image_size)
        array = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array))

    def describe(self, index: int) -> str:
        return self.paths[index]


def _resize_shorter_side(image: Any, size: int) -> Any:
    from PIL import Image

    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    return image if new_size == image.size else image.resize(new_size, Image.Resampling.BILINEAR)


def _centre_crop(image: Any, size: int) -> Any:
    width, height = image.size
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def stack_collate(items: List[torch.Tensor]) -> torch.Tensor:
    """Stack same-shaped tensors into a batch."""
    return torch.stack(items)


