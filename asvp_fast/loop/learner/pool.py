"""The learner's features as the proxy reads them: NumPy, memmaps (never loaded whole) and torch tensors.

:class:`FeaturePool` checks the user's array once (2-D, float, finite), gives the proxy something
it can read rows from (the array itself, :class:`CopiedRows` for read-only memmaps, a zero-copy
NumPy view of a CPU tensor, or :class:`TensorRows` for CUDA and bfloat16 tensors), computes the fingerprint the state file keeps,
and turns row numbers into outputs that follow the input (NumPy for NumPy and memmaps, an int64
tensor on the input's device for torch).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Optional, Union

import numpy as np

from ...core.arrays import chunked_rows
from ...core.checks import is_torch_tensor
from .state import FeatureInfo, FeatureSource, LearnerStateError

# Rows hashed into the fingerprint: evenly spaced, first and last included (reading them is cheap
# even for a pool far larger than RAM; the shape is hashed too).
FINGERPRINT_ROWS = 64
_NUMPY_FLOAT_NAMES = ("float16", "float32", "float64", "bfloat16")
_TORCH_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")


class TensorRows:
    """Row access to a torch tensor that NumPy cannot view (CUDA, bfloat16): each read is copied to
    the host as float32 (the proxy moves it back to its device)."""

    def __init__(self, tensor: Any) -> None:
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def __getitem__(self, rows: Union[slice, np.ndarray]) -> np.ndarray:
        import torch

        if isinstance(rows, slice):
            part = self.tensor[rows]
        else:
            part = self.tensor[torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.tensor.device)]
        return part.float().cpu().numpy()


class CopiedRows:
    """Row access to a read-only array (a memmap opened with ``mode="r"``) that hands out writable
    copies: torch warns about, and must not write to, tensors over read-only memory."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.shape = array.shape
        self.dtype = array.dtype

    def __getitem__(self, rows: Union[slice, np.ndarray]) -> np.ndarray:
        return np.array(self.array[rows])


class FeaturePool:
    """The user's ``features`` (see the module docstring); ``check_finite`` scans every row once."""

    def __init__(self, features: Any, *, check_finite: bool = True) -> None:
        self.original = features
        self.device: Any = None  # torch.device for torch input
        if is_torch_tensor(features):
            t = features.detach()
            name = str(t.dtype).replace("torch.", "")
            if name not in _TORCH_FLOAT_NAMES:
                raise TypeError(f"features must be float16, bfloat16, float32 or float64, got torch.{name}")
            self._check_shape(tuple(t.shape))
            self.device = t.device
            self.rows: Any = t.numpy() if t.device.type == "cpu" and name != "bfloat16" else TensorRows(t)
        elif isinstance(features, np.ndarray):
            if features.dtype.name not in _NUMPY_FLOAT_NAMES:
                raise TypeError(f"features must be float16, bfloat16, float32 or float64, got {features.dtype}")
            self._check_shape(tuple(features.shape))
            self.rows = features if features.flags.writeable else CopiedRows(features)
        else:
            raise TypeError("features must be a numpy array, a numpy memmap or a torch tensor, "
                            f"got {type(features).__name__}")
        self.n, self.dim = (int(s) for s in self.rows.shape)
        if check_finite:
            self.check_finite()
        self.fingerprint = fingerprint(self.rows)

    @staticmethod
    def _check_shape(shape: tuple) -> None:
        if len(shape) != 2:
            raise ValueError(f"features must be 2-dimensional (N rows x d features), got shape {shape}")
        if shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"features must have at least one row and one column, got shape {shape}")

    @property
    def is_torch(self) -> bool:
        return self.device is not None

    def check_finite(self) -> None:
        """ValueError naming the first row holding NaN or inf (read chunk by chunk)."""
        if isinstance(self.rows, TensorRows):
            import torch

            t = self.rows.tensor
            for rows in chunked_rows(self.n, self.dim, t.element_size()):
                ok = torch.isfinite(t[rows]).all(dim=1)
                if not bool(ok.all()):
                    bad = int(torch.nonzero(~ok)[0, 0]) + rows.start
                    raise ValueError(f"features row {bad} holds NaN or inf")
            return
        for rows in chunked_rows(self.n, self.dim, self.rows.dtype.itemsize):
            ok = np.isfinite(np.asarray(self.rows[rows], dtype=np.float32)).all(axis=1)
            if not ok.all():
                raise ValueError(f"features row {int(np.flatnonzero(~ok)[0]) + rows.start} holds NaN or inf")

    def info(self) -> FeatureInfo:
        return FeatureInfo(self.n, self.dim, self.fingerprint, memmap_source(self.original, self.fingerprint))

    def space_array(self) -> Any:
        """The features as diversity strategies take them (``space="features"``): the array itself;
        a CUDA tensor is copied to the host (the strategies return NumPy rows)."""
        if isinstance(self.rows, CopiedRows):
            return self.rows.array
        if isinstance(self.rows, TensorRows):
            return self.rows[slice(0, self.n)] if self.device.type != "cpu" else self.rows.tensor
        return self.rows

    def output(self, rows: np.ndarray) -> Any:
        """int64 row numbers in the input's kind: NumPy, or a torch tensor on the input's device."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if not self.is_torch:
            return rows
        import torch

        return torch.from_numpy(rows.copy()).to(self.device)

    def matches(self, saved: FeatureInfo) -> Optional[str]:
        """Why these features are not the ones the state was made with (None when they are)."""
        if (self.n, self.dim) != (saved.rows, saved.dim):
            return f"the state was made with features of shape ({saved.rows}, {saved.dim}), got ({self.n}, {self.dim})"
        if self.fingerprint != saved.fingerprint:
            return ("the features differ from the ones the state was made with (their fingerprint, a hash of "
                    f"the shape and {FINGERPRINT_ROWS} evenly spaced rows, does not match)")
        return None


def fingerprint(rows: Any) -> str:
    """blake2b-128 of the shape and :data:`FINGERPRINT_ROWS` evenly spaced rows as float32 (the same
    for NumPy, memmap and torch copies of the same values)."""
    n, dim = (int(s) for s in rows.shape)
    picks = np.unique(np.linspace(0, n - 1, min(n, FINGERPRINT_ROWS)).round().astype(np.int64))
    sample = np.ascontiguousarray(np.asarray(rows[picks], dtype=np.float32))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{n}x{dim};".encode())
    h.update(sample.tobytes())
    return h.hexdigest()


def memmap_source(features: Any, expected: str) -> Optional[FeatureSource]:
    """Where a memmap's data can be reopened from (None for anything else, or for a view of a
    memmap whose file region cannot be recovered: the reopened rows must give ``expected``)."""
    if not isinstance(features, np.memmap) or getattr(features, "filename", None) is None:
        return None
    if features.dtype.kind != "f":
        return None
    order = "C" if features.flags.c_contiguous else "F" if features.flags.f_contiguous else None
    if order is None:
        return None
    src = FeatureSource(os.path.abspath(str(features.filename)), int(features.offset), features.dtype.str, order)
    try:
        again = open_source(src, features.shape[0], features.shape[1])
    except LearnerStateError:
        return None
    return src if fingerprint(again) == expected else None


def open_source(src: FeatureSource, n: int, dim: int) -> np.memmap:
    """The memmap a state's ``features.source`` names, read-only (LearnerStateError when it cannot be opened)."""
    try:
        return np.memmap(src.path, dtype=np.dtype(src.dtype), mode="r", offset=src.offset, shape=(n, dim),
                         order=src.order)  # type: ignore[arg-type]
    except (OSError, ValueError, TypeError) as exc:
        raise LearnerStateError(f"features.source.path: cannot open {src.path!r} as a ({n}, {dim}) {src.dtype} "
                                f"memmap at offset {src.offset} ({exc}); pass the features to load()") from None
