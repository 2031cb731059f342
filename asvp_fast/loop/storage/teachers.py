"""The multi-model feature cache: features of several pre-trained models (AFT/KD teachers) for the
same split, one :class:`~.cache.FeatureCache` per model, seen as one concatenated matrix.

Layout: ``<root>/<teacher id>/pool.v0.float16.bin`` + manifest, exactly the single-model cache
(versioned, checksummed, resumable after a crash: see :mod:`.cache`). A model whose finished cache
exists is not even loaded. :class:`ConcatenatedFeatures` reads the memory-mapped parts and joins the
columns of the rows asked for only, so the whole matrix is never copied into RAM.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from ..models.backbones.base import Backbone
from ..models.teachers import make_teacher, teacher_collate
from .cache import FeatureCache

__all__ = ["ConcatenatedFeatures", "MultiModelCache"]


class ConcatenatedFeatures:
    """Feature matrices of the same rows (N, d_1), ..., (N, d_k) seen as one (N, Σ d_i) float32 matrix.

    ``view[rows]`` (an int, a slice, or an array of row numbers) gathers only those rows from each
    part and joins them; ``columns(name)`` is the column range of one model; ``np.asarray(view)``
    materialises everything (small data only).
    """

    def __init__(self, parts: Sequence[Any], names: Sequence[str]) -> None:
        if not parts:
            raise ValueError("ConcatenatedFeatures needs at least one feature matrix")
        if len(parts) != len(names) or len(set(names)) != len(names):
            raise ValueError(f"ConcatenatedFeatures needs one distinct name per part, got {list(names)}")
        rows = {int(p.shape[0]) for p in parts}
        if any(getattr(p, "ndim", 0) != 2 for p in parts) or len(rows) != 1:
            shapes = [tuple(getattr(p, "shape", ())) for p in parts]
            raise ValueError(f"the teachers' features must be 2-D with the same row count, got shapes {shapes} "
                             f"for {list(names)}")
        self.parts, self.names = list(parts), list(names)
        self.dims = [int(p.shape[1]) for p in self.parts]
        starts = np.cumsum([0] + self.dims)
        self._columns: Dict[str, slice] = {n: slice(int(a), int(b)) for n, a, b in zip(self.names, starts[:-1], starts[1:])}
        self.shape = (rows.pop(), int(starts[-1]))

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 2

    def columns(self, name: str) -> slice:
        return self._columns[name]

    def __getitem__(self, rows: Any) -> np.ndarray:
        if isinstance(rows, tuple):
            raise TypeError("index ConcatenatedFeatures by rows only (an int, a slice or an array of row numbers)")
        single = isinstance(rows, (int, np.integer))
        index = np.array([rows]) if single else rows
        out = np.concatenate([np.asarray(p[index], dtype=np.float32) for p in self.parts], axis=1)
        return out[0] if single else out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[slice(None)]
        return out if dtype is None else out.astype(dtype)


class MultiModelCache:
    """Pre-trained features of several models for one dataset under ``root`` (one folder per model)."""

    def __init__(self, root: "os.PathLike[str] | str") -> None:
        self.root = Path(root)

    def cache(self, teacher: str) -> FeatureCache:
        if not isinstance(teacher, str) or not teacher or "/" in teacher or teacher in (".", ".."):
            raise ValueError(f"a teacher id must be a non-empty string without '/', got {teacher!r}")
        return FeatureCache(self.root / teacher)

    def extract(self, teachers: Sequence[str], dataset: Any, collate: Any, *, split: str, dataset_id: str,
                make: Callable[[str], Backbone] = make_teacher, lengths: Optional[np.ndarray] = None,
                dtype: str = "float16", batch_size: int = 128, num_workers: int = 0, device: str = "auto",
                progress: Optional[bool] = None, verify: bool = True) -> ConcatenatedFeatures:
        """The features of every teacher (in the order given) for ``dataset``, each extracted once.

        ``make(name)`` builds a teacher (default: the registry of :mod:`..models.teachers`); it is
        called only for teachers whose cache is not finished. An interrupted extraction resumes.
        """
        names = _check_names(teachers)
        n = len(dataset)
        parts: List[np.ndarray] = []
        for name in names:
            cache = self.cache(name)
            if cache.has(split, 0):
                parts.append(cache.load(split, 0, verify=verify, dataset_id=dataset_id, n=n))
                continue
            backbone = make(name)
            parts.append(cache.extract(backbone, dataset, teacher_collate(backbone, collate), split=split,
                                       dataset_id=dataset_id, version=0, dtype=dtype, batch_size=batch_size,
                                       num_workers=num_workers, device=device, lengths=lengths, progress=progress,
                                       verify=verify))
            del backbone
        return ConcatenatedFeatures(parts, names)

    def load(self, teachers: Sequence[str], split: str, *, dataset_id: Optional[str] = None, n: Optional[int] = None,
             verify: bool = True) -> ConcatenatedFeatures:
        """The finished caches of ``teachers`` (a :class:`~.cache.CacheError` if one is missing)."""
        names = _check_names(teachers)
        return ConcatenatedFeatures([self.cache(t).load(split, 0, verify=verify, dataset_id=dataset_id, n=n)
                                     for t in names], names)


def _check_names(teachers: Sequence[str]) -> List[str]:
    if isinstance(teachers, str):
        teachers = [teachers]
    names = list(teachers)
    if not names:
        raise ValueError("no teachers given: list the pre-trained models by id (training.teachers)")
    if len(set(names)) != len(names):
        raise ValueError(f"a teacher is listed twice: {names}")
    return names
