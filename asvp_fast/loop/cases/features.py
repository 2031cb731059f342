"""``case = "features"``: precomputed embeddings and a linear or MLP head on them.

The pool stays on disk: ``.npy`` files are memory-mapped, raw files are ``np.memmap``-ed, shard
directories are read shard by shard, and batches gather only their rows. The feature cache then
copies the rows (the backbone passes them through), and every method runs on them: SVPp and
ASVP's proxy, all strategies, the metrics and both oracles.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import numpy as np

from ..models.backbones import FeaturesBackbone
from ..models.backbones.features import HEADS
from .case import Case
from .feature_store import FLOAT_DTYPES, FeatureRows, FeatureStore, labels_of, open_features, raw_like, rows_collate, store_of
from .labels import UNLABELLED, pool_labels_or_none, rows_digest, split_labelled
from .registry import register_case, resolve
from .tabular_io import DataError

PathLike = Union[str, "os.PathLike[str]"]


def _classes(num_classes: Optional[int], class_names: Optional[Sequence[str]], known: List[np.ndarray]) -> List[str]:
    if class_names is not None:
        names = [str(n) for n in class_names]
        if not names or len(set(names)) != len(names) or any(not n for n in names):
            raise DataError(f"class_names must be a non-empty list of distinct, non-empty names, got {list(class_names)}")
        if num_classes is not None and num_classes != len(names):
            raise DataError(f"num_classes = {num_classes} but class_names lists {len(names)} classes")
        return names
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        return [str(i) for i in range(num_classes)]
    found = [int(a.max()) for a in known if a.size and int(a.max()) >= 0]
    if not found:
        raise DataError("the features have no labels to count the classes from: give num_classes or class_names")
    return [str(i) for i in range(max(found) + 1)]


def _test_store(value: Any, pool: FeatureStore, role: str) -> FeatureStore:
    if isinstance(value, (str, os.PathLike)):
        path = Path(value).expanduser()
        store = open_features(path, role=role) if path.is_dir() or path.suffix == ".npy" else raw_like(path, pool, role)
    else:
        store = FeatureStore.from_array(value, "test_features")
    if store.dim != pool.dim:
        raise DataError(f"test_features have width {store.dim}, the pool's features {pool.dim}")
    return store


def features_case(
    features: Any,
    *,
    labels: Any = None,
    test_features: Any = None,
    test_labels: Any = None,
    test_size: float = 0.2,
    seed: int = 0,
    num_classes: Optional[int] = None,
    class_names: Optional[Sequence[str]] = None,
    shape: Optional[Sequence[int]] = None,
    dtype: Optional[str] = None,
    head: str = "linear",
    hidden: int = 256,
) -> Case:
    """Precomputed embeddings as the pool, with a linear or MLP head as the target model.

    Parameters
    ----------
    features
        A ``.npy`` file (memory-mapped), a raw file (with ``shape = [rows, dim]``, rows may be
        -1, and ``dtype``: float16/float32/float64), a directory of ``.npy`` shards (name order,
        concatenated lazily), or from Python an array, ``np.memmap`` or torch tensor (N, D).
    labels
        Class numbers per row (``.npy`` of integers or an array; -1 = unlabelled). Without
        labels, or with any unlabelled pool row, ``pool_labels`` is None: only the file oracle
        can run (its CSV names items as ``<file> row <r>``).
    test_features, test_labels
        A held-out test set (a ``.npy`` file or shard directory, a raw file with the pool's
        dtype and width, or arrays). Without them, ``test_size`` labelled rows (a fraction in
        (0, 1) or a count) are held out, seeded by ``seed``; the pool is every other row.
    num_classes, class_names
        The classes; default: the largest label + 1, named "0", "1", ...
    head, hidden
        The target model: ``"linear"`` (a linear classifier on the features) or ``"mlp"`` (a
        residual MLP of width ``hidden`` under it; see
        :class:`~asvp_fast.loop.models.backbones.FeaturesBackbone`).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    store = store_of(features, shape=shape, dtype=dtype, role="features (data.features)")
    n = len(store)
    all_labels = labels_of(labels, n, "labels (data.labels)")
    if all_labels is None:
        all_labels = np.full(n, UNLABELLED, dtype=np.int64)
    if test_features is not None:
        if test_labels is None:
            raise DataError("test_features need test_labels")
        test_store = _test_store(test_features, store, "test_features (data.test_features)")
        test_y = labels_of(test_labels, len(test_store), "test_labels (data.test_labels)")
        assert test_y is not None
        if bool((test_y == UNLABELLED).any()):
            raise DataError(f"test_labels, row {int(np.flatnonzero(test_y == UNLABELLED)[0])}: every test row needs a label")
        pool_rows: Optional[np.ndarray] = None
        test = FeatureRows(test_store)
        split = f"test={test_store.source_id}"
    elif test_labels is not None:
        raise DataError("test_labels were given without test_features")
    else:
        pool_rows, test_rows = split_labelled(all_labels, test_size, seed, "the pool")
        test_y = all_labels[test_rows]
        test = FeatureRows(store, test_rows)
        split = f"split{test_size:g}/seed{seed}:{rows_digest(pool_rows)}"
    names = _classes(num_classes, class_names, [all_labels, test_y])
    for what, y in (("labels", all_labels), ("test_labels", test_y)):
        if y.size and int(y.max()) >= len(names):
            row = int(np.argmax(y))
            raise DataError(f"{what}, row {row}: class {int(y[row])} but there are {len(names)} classes")
    pool = FeatureRows(store, pool_rows)
    pool_y = all_labels if pool_rows is None else all_labels[pool_rows]
    return Case(
        name="features",
        dataset_id=f"features:{store.source_id}:{split}:pool{len(pool)}",
        pool=pool,
        test=test,
        test_labels=test_y.astype(np.int64),
        num_classes=len(names),
        class_names=names,
        make_backbone=functools.partial(FeaturesBackbone, store.dim, store.source_id, head, hidden, seed),
        collate=rows_collate,
        pool_labels=pool_labels_or_none(pool_y),
        describe=pool.describe,
        licence="your embeddings: check the licences of the data and model they came from",
    )


@dataclass(frozen=True)
class FeaturesFields:
    """``[data]`` of ``case = "features"`` (paths relative to the config file's folder)."""

    features: str = field(metadata={"path": "exists"})  # a file or a directory of shards
    labels: Optional[str] = field(default=None, metadata={"path": "file"})
    test_features: Optional[str] = field(default=None, metadata={"path": "exists"})
    test_labels: Optional[str] = field(default=None, metadata={"path": "file"})
    test_size: float = field(default=0.2, metadata={"gt": 0})
    seed: int = 0
    num_classes: Optional[int] = field(default=None, metadata={"ge": 2})
    class_names: Optional[List[str]] = None
    shape: Optional[List[int]] = None
    dtype: Optional[str] = field(default=None, metadata={"choices": FLOAT_DTYPES, "what": "dtype"})
    head: str = field(default="linear", metadata={"choices": HEADS, "what": "head"})
    hidden: int = field(default=256, metadata={"ge": 1})


def _build_features(f: FeaturesFields, base_dir: Path) -> Case:
    return features_case(resolve(base_dir, f.features), labels=resolve(base_dir, f.labels),
                         test_features=resolve(base_dir, f.test_features), test_labels=resolve(base_dir, f.test_labels),
                         test_size=f.test_size, seed=f.seed, num_classes=f.num_classes, class_names=f.class_names,
                         shape=f.shape, dtype=f.dtype, head=f.head, hidden=f.hidden)


register_case("features", FeaturesFields, _build_features)
