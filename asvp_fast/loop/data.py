"""Data cases for the active-learning loop: built-in real data, image folders, synthetic blobs.

Every builder returns a :class:`~asvp_fast.loop.types.Case`. Datasets return inputs only;
labels live on the case (``pool_labels`` for the simulated oracle, ``test_labels``).

* :func:`wordnet_nouns_case`: WordNet 3.0 noun definitions, 26 lexicographer classes
  (``noun.animal``, ``noun.artifact``, ...), embedded with all-MiniLM-L6-v2.
* :func:`fashion_mnist_case`: Fashion-MNIST images, 10 classes, EfficientNet-Lite0.
* :func:`imagefolder_case`: your own ``class/image`` folders with a ResNet-50 checkpoint.
* :func:`synthetic_case`: Gaussian blobs and a tiny MLP, for fast tests of the loop.

The built-in data ship with the package (``asvp_fast/data``, see its ``NOTICE.md``) and are
read through :mod:`importlib.resources`, so they work from an installed wheel and offline.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .backbones import EfficientNetLite0, MiniLM, ResNet50, TextCollate, TinyMLPBackbone
from .types import Case

PathLike = Union[str, "os.PathLike[str]"]
DATA_PACKAGE = "asvp_fast.data"
WORDNET_FILE = "wordnet_nouns.tsv.gz"
FASHION_FILE = "fashion_mnist.npz"
NOTICE = "asvp_fast/data/NOTICE.md"

# WordNet's noun lexicographer files 03..28 (lexnames(5WN)); class id = file number - 3.
WORDNET_CLASS_NAMES: List[str] = [
    "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute", "noun.body",
    "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food",
    "noun.group", "noun.location", "noun.motive", "noun.object", "noun.person",
    "noun.phenomenon", "noun.plant", "noun.possession", "noun.process", "noun.quantity",
    "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
]  # fmt: skip
FASHION_CLASS_NAMES: List[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# --------------------------------------------------------------------------------------------
# Datasets (top-level classes: DataLoader workers pickle them)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Shipped files
# --------------------------------------------------------------------------------------------


def _read_resource(name: str) -> bytes:
    """Bytes of a shipped data file (works from a source tree, a wheel or a zip)."""
    try:
        return resources.files(DATA_PACKAGE).joinpath(name).read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"the built-in data file {name} is missing from the installed package {DATA_PACKAGE}; "
            "reinstall asvp-fast, or regenerate it with scripts/make_builtin_data.py"
        ) from exc


@dataclass(frozen=True)
class WordNetNouns:
    """The shipped WordNet table, one entry per synset (file order)."""

    offsets: Tuple[str, ...]
    labels: np.ndarray
    lemmas: Tuple[str, ...]
    glosses: Tuple[str, ...]

    def __len__(self) -> int:
        return len(self.offsets)

    def text(self, index: int) -> str:
        return f"{self.lemmas[index]}: {self.glosses[index]}"


@functools.lru_cache(maxsize=1)
def load_wordnet_nouns() -> WordNetNouns:
    """Parse ``wordnet_nouns.tsv.gz`` (cached: the table is read once per process)."""
    lines = gzip.decompress(_read_resource(WORDNET_FILE)).decode("utf-8").splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    if header != ["offset", "class_id", "lemma", "gloss"] or any(len(r) != 4 for r in rows):
        raise ValueError(f"{WORDNET_FILE} is not in the expected 4-column format")
    offsets, labels, lemmas, glosses = zip(*rows)
    return WordNetNouns(offsets, np.array(labels, dtype=np.int64), lemmas, glosses)


@functools.lru_cache(maxsize=1)
def load_fashion_mnist() -> Dict[str, np.ndarray]:
    """The shipped Fashion-MNIST subset: ``x_train``, ``y_train``, ``x_test``, ``y_test``, ..."""
    with np.load(io.BytesIO(_read_resource(FASHION_FILE)), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def _check_sizes(pool_size: int, test_size: int, available: int, what: str) -> None:
    if pool_size < 1 or test_size < 1:
        raise ValueError(f"pool_size and test_size must be positive, got {pool_size} and {test_size}")
    if pool_size + test_size > available:
        raise ValueError(
            f"pool_size + test_size = {pool_size + test_size} exceeds the {available} rows of {what}"
        )


def _disjoint_split(n: int, pool_size: int, test_size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Disjoint random (pool, test) row sets, each sorted.

    The test rows come first in the permutation, so for one seed the test set stays the same
    whatever the pool size (runs with growing pools are compared on the same test set).
    """
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[test_size : test_size + pool_size]), np.sort(order[:test_size])


def _subset(n: int, size: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``size`` seeded random rows of ``n``, sorted."""
    if not 1 <= size <= n:
        raise ValueError(f"{what} must be in 1..{n} (the rows available), got {size}")
    return np.sort(rng.permutation(n)[:size])


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def wordnet_nouns_case(pool_size: int = 4000, test_size: int = 800, seed: int = 0, max_length: int = 32) -> Case:
    """WordNet noun definitions, classified into their 26 lexicographer files.

    Parameters
    ----------
    pool_size, test_size
        Rows drawn (disjoint, seeded, not stratified: a plain random split, so rare classes
        such as ``noun.motive`` may be absent from a small test set) from the 12,000 shipped.
    seed
        Seed of the split.
    max_length
        Token limit of the MiniLM collate (texts are ``"lemma: definition"``, mostly < 32 tokens).

    ``pool_lengths`` / ``test_lengths`` are token counts when the MiniLM tokenizer is
    installed, otherwise character counts (both only order texts for length bucketing).
    """
    table = load_wordnet_nouns()
    _check_sizes(pool_size, test_size, len(table), f"the shipped WordNet subset ({WORDNET_FILE})")
    pool_rows, test_rows = _disjoint_split(len(table), pool_size, test_size, seed)
    pool_texts = [table.text(i) for i in pool_rows]
    test_texts = [table.text(i) for i in test_rows]
    collate = TextCollate(None, max_length)
    pool = TextDataset(pool_texts)
    return Case(
        name="wordnet-nouns",
        dataset_id=f"wordnet-nouns-{len(table)}:pool{pool_size}:test{test_size}:seed{seed}:maxlen{max_length}",
        pool=pool,
        test=TextDataset(test_texts),
        test_labels=table.labels[test_rows],
        num_classes=len(WORDNET_CLASS_NAMES),
        class_names=list(WORDNET_CLASS_NAMES),
        make_backbone=MiniLM,
        collate=collate,
        pool_labels=table.labels[pool_rows],
        pool_lengths=_text_lengths(collate, pool_texts),
        test_lengths=_text_lengths(collate, test_texts),
        describe=pool.describe,
        licence=f"WordNet 3.0 (Princeton University licence); see {NOTICE}",
    )


def _text_lengths(collate: TextCollate, texts: Sequence[str]) -> np.ndarray:
    """Token counts, or character counts if the tokenizer is not installed."""
    try:
        return np.asarray(collate.token_lengths(texts), dtype=np.int64)
    except ImportError:
        return np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))


def fashion_mnist_case(pool_size: int = 6000, test_size: int = 1000, seed: int = 0, image_size: int = 96) -> Case:
    """Fashion-MNIST: the pool from the shipped training images, the test set from the test images.

    Parameters
    ----------
    pool_size, test_size
        Seeded random subsets of the 6,000 shipped training and 1,000 test images (all by default).
    seed
        Seed of the subsets.
    image_size
        Side the EfficientNet-Lite0 backbone resizes the 28x28 images to.

    Items are uint8 tensors ``(1, 28, 28)``; ``describe(i)`` names the image's row in the
    original Fashion-MNIST training file.
    """
    data = load_fashion_mnist()
    n_train, n_test = len(data["y_train"]), len(data["y_test"])
    if pool_size > n_train or test_size > n_test:
        raise ValueError(
            f"the shipped Fashion-MNIST subset has {n_train} training and {n_test} test images; "
            f"asked for pool_size={pool_size}, test_size={test_size}"
        )
    rng = np.random.default_rng(seed)
    pool_rows, test_rows = _subset(n_train, pool_size, rng, "pool_size"), _subset(n_test, test_size, rng, "test_size")
    names = [f"Fashion-MNIST training image #{int(i)}" for i in data["train_index"][pool_rows]]
    pool = ArrayDataset(data["x_train"][pool_rows, None], names)
    test = ArrayDataset(data["x_test"][test_rows, None])
    return Case(
        name="fashion-mnist",
        dataset_id=f"fashion-mnist-{n_train}+{n_test}:pool{pool_size}:test{test_size}:seed{seed}",
        pool=pool,
        test=test,
        test_labels=data["y_test"][test_rows].astype(np.int64),
        num_classes=len(FASHION_CLASS_NAMES),
        class_names=list(FASHION_CLASS_NAMES),
        make_backbone=functools.partial(EfficientNetLite0, image_size=image_size),
        collate=stack_collate,
        pool_labels=data["y_train"][pool_rows].astype(np.int64),
        describe=pool.describe,
        licence=f"Fashion-MNIST (MIT, Zalando SE); see {NOTICE}",
    )


def synthetic_case(
    pool_size: int = 600,
    test_size: int = 200,
    num_classes: int = 4,
    in_dim: int = 16,
    feature_dim: int = 8,
    seed: int = 0,
    separation: float = 1.0,
) -> Case:
    """Gaussian class blobs (float32 ``(in_dim,)`` inputs) with a seeded :class:`TinyMLPBackbone`.

    Class means are drawn from ``N(0, separation**2 I)`` and points add unit Gaussian noise;
    with the defaults the means are ~5.7 noise standard deviations apart, so a linear head on
    the MLP's features learns the classes while leaving some ambiguous points to select.
    Classes are balanced (round robin, shuffled).
    """
    if num_classes < 2 or in_dim < 1 or feature_dim < 1:
        raise ValueError("need num_classes >= 2, in_dim >= 1 and feature_dim >= 1")
    _check_sizes(pool_size, test_size, pool_size + test_size, "the synthetic data")
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, separation, size=(num_classes, in_dim))
    n = pool_size + test_size
    labels = rng.permutation(np.arange(n) % num_classes)
    inputs = (means[labels] + rng.normal(size=(n, in_dim))).astype(np.float32)
    pool = ArrayDataset(inputs[:pool_size])
    return Case(
        name="synthetic",
        dataset_id=(
            f"synthetic-blobs:c{num_classes}:d{in_dim}:sep{separation:g}:"
            f"pool{pool_size}:test{test_size}:seed{seed}"
        ),
        pool=pool,
        test=ArrayDataset(inputs[pool_size:]),
        test_labels=labels[pool_size:].astype(np.int64),
        num_classes=num_classes,
        class_names=[f"class{i}" for i in range(num_classes)],
        make_backbone=functools.partial(TinyMLPBackbone, in_dim, feature_dim, seed=seed),
        collate=stack_collate,
        pool_labels=labels[:pool_size].astype(np.int64),
        describe=pool.describe,
        licence="synthetic data (no licence needed)",
    )


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


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
) -> Case:
    """Your own images in ``<dir>/<class>/<image>`` folders, with a ResNet-50 backbone.

    Parameters
    ----------
    train_dir, test_dir
        Folders of class sub-directories (sorted names define the class ids); the pool comes
        from ``train_dir`` (its labels feed the simulated oracle), the test set from ``test_dir``,
        whose classes must be a subset of the training classes.
    checkpoint
        A torchvision-format ResNet-50 checkpoint (see :func:`~asvp_fast.loop.backbones.load_checkpoint`);
        ``None`` gives a random init (only useful for smoke tests).
    image_size
        Centre-crop side (224 for ImageNet-trained ResNets).
    resize
        Shorter side before the crop; default ``image_size * 256 // 224``, the ImageNet
        evaluation convention (256 then 224).
    pool_size, test_size
        Optional seeded random subsets (default: every image).
    seed
        Seed of the subsets.
    trust_checkpoint
        Allow full unpickling of the checkpoint (see :class:`~asvp_fast.loop.backbones.ResNet50`).

    Items are uint8 ``(3, image_size, image_size)`` tensors; ``describe(i)`` is the file path.
    """
    train_paths, train_labels, classes = scan_image_folder(train_dir, role="training")
    test_paths, test_labels, _ = scan_image_folder(test_dir, classes, role="test")
    rng = np.random.default_rng(seed)
    pool_rows = np.arange(len(train_paths))
    if pool_size is not None:
        pool_rows = _subset(len(train_paths), pool_size, rng, "pool_size")
    test_rows = np.arange(len(test_paths))
    if test_size is not None:
        test_rows = _subset(len(test_paths), test_size, rng, "test_size")
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
        make_backbone=functools.partial(ResNet50, checkpoint, trust_checkpoint=trust_checkpoint),
        collate=stack_collate,
        pool_labels=train_labels[pool_rows],
        describe=pool.describe,
        licence="your images and checkpoint: check their licences",
    )


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

BUILTIN_CASES: Dict[str, Callable[..., Case]] = {
    "wordnet-nouns": wordnet_nouns_case,
    "fashion-mnist": fashion_mnist_case,
    "synthetic": synthetic_case,
}


def builtin_case(name: str, **kwargs: Any) -> Case:
    """Build a built-in case by name (``wordnet-nouns``, ``fashion-mnist``, ``synthetic``)."""
    try:
        builder = BUILTIN_CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; built-in cases: {', '.join(BUILTIN_CASES)}") from None
    return builder(**kwargs)
