"""Precomputed embeddings on disk, read row by row: ``.npy`` files (memory-mapped), raw files
with a given shape and dtype, or a directory of ``.npy`` shards concatenated lazily.

Nothing here reads a whole file: rows are gathered from memory maps when a batch asks for them,
so a pool larger than RAM works. The datasets pickle as file names (DataLoader workers reopen
the files) rather than as the arrays.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Sequence as SequenceABC
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..models.backbones import file_fingerprint, files_fingerprint
from .tabular_io import DataError

PathLike = Union[str, "os.PathLike[str]"]
FLOAT_DTYPES = ("float16", "float32", "float64")


def _open_npy(path: Path) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a .npy array: {exc}") from exc
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path} holds several arrays (an .npz?); save the features alone with np.save")
    return array


def _open_raw(path: Path, dtype: str, shape: Sequence[int]) -> np.ndarray:
    if dtype not in FLOAT_DTYPES:
        raise DataError(f"dtype must be one of {FLOAT_DTYPES} for a raw features file, got {dtype!r}")
    item = np.dtype(dtype).itemsize
    size = path.stat().st_size
    dims = [int(s) for s in shape]
    if len(dims) != 2 or dims[1] < 1 or dims[0] == 0 or dims[0] < -1:
        raise DataError(f"shape must be [rows, dim] (rows may be -1: from the file size), got {list(shape)}")
    if dims[0] == -1:
        if size % (dims[1] * item):
            raise DataError(f"{path} has {size} bytes, not a whole number of {dims[1]}-wide {dtype} rows")
        dims[0] = size // (dims[1] * item)
    if dims[0] * dims[1] * item != size:
        raise DataError(f"{path} has {size} bytes, but shape {dims} of {dtype} needs {dims[0] * dims[1] * item}")
    if size == 0:
        raise DataError(f"{path} is empty")
    return np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(dims[0], dims[1]))


class FeatureStore:
    """The rows of one or more 2-D float arrays, one after the other (lazily).

    Build with :func:`open_features` (files) or :meth:`from_array` (an array in memory or a
    memmap). ``rows(indices)`` gathers rows in the order asked; ``name_row(i)`` says which file
    and row a global row comes from; ``source_id`` names the content for cache ids.
    """

    def __init__(self, specs: List[Dict[str, Any]], source_id: str, arrays: Optional[List[np.ndarray]] = None) -> None:
        self.specs = specs
        self.source_id = source_id
        self.arrays = arrays if arrays is not None else [self._open(s) for s in specs]
        first = self.arrays[0]
        self.dim = int(first.shape[1])
        self.dtype = first.dtype
        counts = [int(a.shape[0]) for a in self.arrays]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @staticmethod
    def _open(spec: Dict[str, Any]) -> np.ndarray:
        if spec["kind"] == "npy":
            return _open_npy(Path(spec["path"]))
        if spec["kind"] == "raw":
            return _open_raw(Path(spec["path"]), spec["dtype"], spec["shape"])
        if spec["kind"] == "memmap":
            return np.memmap(spec["path"], dtype=np.dtype(spec["dtype"]), mode="r", offset=spec["offset"],
                             shape=tuple(spec["shape"]))
        return spec["array"]  # type: ignore[no-any-return]

    @classmethod
    def from_array(cls, array: Any, name: str = "array") -> "FeatureStore":
        """A store over an array already in Python: NumPy (kept as is) or a torch tensor (its
        NumPy view). A ``np.memmap`` keeps being read lazily."""
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        if not isinstance(array, np.ndarray):
            raise TypeError(f"features must be a NumPy array, a memmap, a torch tensor or a path, got {type(array).__name__}")
        _check_array(array, name)
        filename = getattr(array, "filename", None)
        if (isinstance(array, np.memmap) and filename and isinstance(array.base, mmap.mmap)
                and array.flags.c_contiguous):  # a whole map (not a view): named and pickled as its file
            source = f"{file_fingerprint(filename)}@{array.offset}:{array.shape}:{array.dtype}"
            spec = {"kind": "memmap", "path": filename, "dtype": array.dtype.str, "offset": int(array.offset),
                    "shape": list(array.shape)}
            return cls([spec], source, [array])
        digest = hashlib.sha256(str((array.shape, array.dtype.str)).encode())
        for s in range(0, array.shape[0], 65536):
            digest.update(np.ascontiguousarray(array[s : s + 65536]).tobytes())
        source = f"{name}:{array.shape[0]}x{array.shape[1]}:{digest.hexdigest()[:12]}"
        return cls([{"kind": "array", "array": array, "name": name}], source, [array])

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        if all(s["kind"] != "array" for s in self.specs):
            state["arrays"] = None  # reopened from the files in the receiving process
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.arrays is None:
            self.arrays = [self._open(s) for s in self.specs]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def rows(self, rows: Any) -> np.ndarray:
        """``(len(rows), dim)`` array of the given global rows, in that order (a new, writable array)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(self.arrays) == 1:
            return _read(self.arrays[0], rows)
        out = np.empty((rows.size, self.dim), dtype=self.dtype)
        shards = self._locate(rows)
        for s in np.unique(shards):
            mask = shards == s
            out[mask] = _read(self.arrays[s], rows[mask] - self.offsets[s])
        return out

    def name_row(self, row: int) -> str:
        s = int(self._locate(np.asarray([row]))[0])
        spec = self.specs[s]
        label = Path(spec["path"]).name if "path" in spec else spec.get("name", "array")
        return f"{label} row {row - int(self.offsets[s])}"


def _read(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The rows as a new in-memory array: a run of consecutive rows is one plain read (copied out
    of the map), other rows one gather (already a copy)."""
    if rows.size and int(rows[-1]) - int(rows[0]) == rows.size - 1 and bool((np.diff(rows) == 1).all()):
        return np.array(array[int(rows[0]) : int(rows[-1]) + 1]).view(np.ndarray)
    return np.asarray(array[rows]).view(np.ndarray)


def _check_array(array: np.ndarray, where: str) -> None:
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise DataError(f"{where}: features must be a non-empty 2-D array (rows, dim), got shape {array.shape}")
    if array.dtype.name not in FLOAT_DTYPES:
        raise DataError(f"{where}: features must be float16, float32 or float64, got {array.dtype}")


def open_features(path: PathLike, *, shape: Optional[Sequence[int]] = None, dtype: Optional[str] = None,
                  role: str = "features") -> FeatureStore:
    """A store over a ``.npy`` file (memory-mapped), a raw file (``shape`` and ``dtype`` given) or
    a directory of ``.npy`` shards (name order, same width and dtype)."""
    file = Path(path).expanduser()
    if file.is_dir():
        shards = sorted(p for p in file.iterdir() if p.suffix == ".npy" and p.is_file() and not p.name.startswith("."))
        if not shards:
            raise DataError(f"{role} directory {file} has no .npy shards")
        specs = [{"kind": "npy", "path": str(p)} for p in shards]
        store = FeatureStore(specs, f"{file.name}/:{files_fingerprint(shards)}")
        for spec, array in zip(specs, store.arrays):
            _check_array(array, spec["path"])
            if array.shape[1] != store.dim or array.dtype != store.dtype:
                raise DataError(f"shard {spec['path']} is {array.dtype} of width {array.shape[1]}, but the first "
                                f"shard is {store.dtype} of width {store.dim}: shards must match")
        return store
    if not file.is_file():
        raise FileNotFoundError(f"{role} not found: {file}")
    if shape is not None or dtype is not None or file.suffix != ".npy":
        if shape is None or dtype is None:
            raise DataError(f"{file} is not a .npy file: give its shape = [rows, dim] and dtype (a raw file), "
                            f"or save it with np.save")
        spec: Dict[str, Any] = {"kind": "raw", "path": str(file), "dtype": dtype, "shape": list(shape)}
    else:
        spec = {"kind": "npy", "path": str(file)}
    store = FeatureStore([spec], file_fingerprint(file))
    _check_array(store.arrays[0], str(file))
    return store


def raw_like(path: PathLike, store: FeatureStore, role: str) -> FeatureStore:
    """A raw test file with the pool's dtype and width (rows from the file size)."""
    return open_features(path, shape=[-1, store.dim], dtype=store.dtype.name, role=role)


class RowBatch(SequenceABC):  # type: ignore[type-arg]
    """Rows gathered in one read (a ``(B, D)`` tensor), as the list of rows a collate expects."""

    def __init__(self, block: torch.Tensor) -> None:
        self.block = block

    def __len__(self) -> int:
        return int(self.block.shape[0])

    def __getitem__(self, i: Any) -> Any:
        return self.block[i]


def rows_collate(items: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack rows into a batch (a :class:`RowBatch` is already one: no copy)."""
    if isinstance(items, RowBatch):
        return items.block
    return torch.stack(list(items))


class FeatureRows(Dataset[torch.Tensor]):
    """Some rows of a :class:`FeatureStore` as a dataset (item i = store row ``rows[i]``).

    ``__getitems__`` reads a whole batch at once (DataLoader uses it), so extraction over a
    large memmap costs one gather per batch.
    """

    def __init__(self, store: FeatureStore, rows: Optional[np.ndarray] = None) -> None:
        self.store = store
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.store) if self.rows is None else int(self.rows.size)

    def _store_rows(self, indices: Any) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range 0..{len(self) - 1}")
        return idx if self.rows is None else self.rows[idx]

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.store.rows(self._store_rows([index]))[0])

    def __getitems__(self, indices: List[int]) -> RowBatch:
        return RowBatch(torch.from_numpy(self.store.rows(self._store_rows(indices))))

    def describe(self, index: int) -> str:
        return self.store.name_row(int(self._store_rows([index])[0]))


def load_labels(path: PathLike, n: int, role: str) -> np.ndarray:
    """Integer labels (``.npy``, one per row, -1 = unlabelled) as int64."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{role} not found: {file}")
    try:
        labels = np.load(file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {file} as a .npy array of labels: {exc}") from exc
    if not isinstance(labels, np.ndarray) or labels.ndim != 1:
        raise DataError(f"{file}: labels must be a 1-D array, got shape {getattr(labels, 'shape', None)}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{file}: labels must be integers (class numbers, -1 = unlabelled), got {labels.dtype}")
    if labels.shape[0] != n:
        raise DataError(f"{file} has {labels.shape[0]} labels for {n} feature rows")
    bad = np.flatnonzero(labels < -1)
    if bad.size:
        raise DataError(f"{file}, row {int(bad[0])}: label {int(labels[bad[0]])} (class numbers are >= 0, -1 = unlabelled)")
    return labels.astype(np.int64)


def store_of(value: Any, *, shape: Optional[Sequence[int]], dtype: Optional[str], role: str) -> FeatureStore:
    """A path (file or shard directory) or an in-memory array / memmap / tensor as a store."""
    if isinstance(value, (str, os.PathLike)):
        return open_features(value, shape=shape, dtype=dtype, role=role)
    return FeatureStore.from_array(value, role)


def labels_of(value: Any, n: int, role: str) -> Optional[np.ndarray]:
    if value is None:
        return None
    if isinstance(value, (str, os.PathLike)):
        return load_labels(value, n, role)
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.ndim != 1 or array.dtype.kind not in "iu" or array.shape[0] != n or bool((array < -1).any()):
        raise DataError(f"{role}: labels must be {n} integers (class numbers, -1 = unlabelled), "
                        f"got {array.dtype} of shape {array.shape}")
    return array.astype(np.int64)
