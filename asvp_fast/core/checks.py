"""The one argument contract of every public function (``docs/api.md``, "One rule").

Each kind of argument that several public functions share is parsed here, once, so that the same
mistake gets the same answer everywhere:

* ``device``: ``"auto" | "cpu" | "cuda" | "cuda:N"`` (:func:`parse_device`; an unavailable device
  raises :class:`RuntimeError` naming it, see :mod:`.devices`);
* ``threads``: ``None`` (all cores) or a positive integer, clamped to :data:`MAX_THREADS`
  (:func:`parse_threads`);
* flags such as ``from_logits``/``validate``: real booleans only (:func:`parse_flag`; the string
  ``"False"`` is not silently true);
* tri-state options such as ``progress``: ``None``, ``True`` or ``False`` (:func:`parse_optional_flag`);
* choices among fixed strings (:func:`parse_choice`; a list is a TypeError, not "unhashable type");
* counts (``k``), seeds, and the index-or-mask arguments ``exclude=``/``labeled=``
  (:func:`parse_rows`, the only parser of those).

Nothing here imports torch: tensors are recognised by duck typing.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# More threads than this is never useful on one machine and makes libgomp run out of stack
# (threads=10**6 crashed every native entry point); larger requests are clamped to it.
MAX_THREADS = 1024

DEVICE_KINDS = ("auto", "cpu", "cuda")


def is_torch_tensor(x: Any) -> bool:
    """True for torch tensors (recognised without importing torch)."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "__dlpack__")


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed ``device=`` argument: ``kind`` is "auto", "cpu" or "cuda"; ``index`` is N of "cuda:N"."""

    kind: str
    index: Optional[int] = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(device: Any, name: str = "device") -> DeviceSpec:
    """Checks the spelling of a device argument (not whether it is usable: see :mod:`.devices`)."""
    if is_torch_tensor(device) or not isinstance(device, str):
        # torch.device objects are accepted by their string form ("cuda:1", "cpu")
        if type(device).__name__ == "device" and type(device).__module__.split(".")[0] == "torch":
            device = str(device)
        else:
            raise TypeError(f"{name} must be one of 'auto', 'cpu', 'cuda', 'cuda:N', got {type(device).__name__} {device!r}")
    text = device.strip().lower()
    if text in DEVICE_KINDS:
        return DeviceSpec(text)
    kind, sep, index = text.partition(":")
    if kind == "cuda" and sep and index.isascii() and index.isdigit() and len(index) <= 4:
        return DeviceSpec("cuda", int(index))
    raise ValueError(f"{name} must be one of 'auto', 'cpu', 'cuda', 'cuda:N', got {device!r}")


def parse_threads(threads: Any, name: str = "threads") -> int:
    """0 for ``None`` (all cores), else the thread count, at most :data:`MAX_THREADS`."""
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"{name} must be None or a positive integer, got {type(threads).__name__} {threads!r}")
    if threads < 1:
        raise ValueError(f"{name} must be None or a positive integer, got {threads!r}")
    return int(min(int(threads), MAX_THREADS))


def parse_flag(value: Any, name: str) -> bool:
    """A boolean option: ``True``/``False`` (numpy booleans too), nothing else."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def parse_optional_flag(value: Any, name: str) -> Optional[bool]:
    """A tri-state option such as ``progress``: ``None`` (decide automatically), ``True`` or ``False``."""
    if value is None:
        return None
    return parse_flag(value, name)


def parse_count(k: Any, name: str = "k") -> int:
    """A non-negative integer count."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"{name} must be non-negative, got {k}")
    return int(k)


def parse_int(value: Any, name: str, *, minimum: int = 0, maximum: Optional[int] = None) -> int:
    """An integer option in [minimum, maximum] (bools are not integers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def parse_real(value: Any, name: str, *, minimum: Optional[float] = None, positive: bool = False,
               maximum: Optional[float] = None) -> float:
    """A finite real number (bools and strings are not numbers), optionally bounded: ``>= minimum``,
    ``> 0`` with ``positive``, ``<= maximum``. An integer beyond float64 (10**400) is not finite."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and not number > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be a finite number >= {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be at most {maximum:g}, got {value!r}")
    return number


def parse_positive_real(value: Any, name: str, *, maximum: Optional[float] = None) -> float:
    """A finite real number > 0 (temperatures, learning rates, weights), at most ``maximum``."""
    return parse_real(value, name, positive=True, maximum=maximum)


def parse_labels(labels: Any, n: int, name: str = "labels", *, of: str = "the features") -> np.ndarray:
    """Integer class labels, one per row (N,), from NumPy, a list or a torch tensor (any device)."""
    if is_torch_tensor(labels):
        labels = labels.detach().cpu().numpy()
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{name} must be an integer array, got {type(labels).__name__}")
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an integer array ({exc})") from None
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match {of}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {y.dtype}")
    return y


def parse_seed(seed: Any, name: str = "seed") -> int:
    """An integer seed, reduced to 64 bits (the kernels' counter-based generator takes 64 bits)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(seed).__name__}")
    return int(seed) % (1 << 64)


def parse_choice(value: Any, choices: "tuple[str, ...] | list[str]", name: str) -> str:
    """One of a fixed set of strings (a list or other unhashable value is a TypeError, not a crash)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {sorted(choices)}, got {type(value).__name__} {value!r}")
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(choices)}")
    return value


def parse_rows(rows: Any, n: int, name: str, *, unique: bool = False, of: str = "") -> np.ndarray:
    """The index-or-mask argument (``exclude=``, ``labeled=``) as int64 row indices, in the order given.

    Accepts a bool mask of length ``n`` or an integer index array (numpy, list, or a torch tensor on
    any device). Indices must lie in [0, n); with ``unique=True`` a repeated index is an error.
    ``of`` names the array the rows belong to, for messages ("x", "features").
    """
    rows_of = f" of {of}" if of else ""
    kinds = "a bool mask or an integer index array"
    if is_torch_tensor(rows):
        rows = rows.detach().cpu().numpy()
    if isinstance(rows, (str, bytes, dict, set)) or rows is None:
        raise TypeError(f"{name} must be {kinds}, got {type(rows).__name__}")
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise TypeError(f"{name} must be {kinds} ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D bool mask or index array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        if arr.shape[0] != n:
            raise ValueError(f"{name} mask has length {arr.shape[0]}, expected one entry per row{rows_of} ({n})")
        return np.flatnonzero(arr).astype(np.int64)
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be {kinds}, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} contains index {int(arr.max())}, outside [0, {n}) for {n} rows{rows_of}")
    idx = arr.astype(np.int64)
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise ValueError(f"{name} contains index {int(bad[0])}, outside [0, {n}) for {n} rows{rows_of}")
    if unique:
        uniq, counts = np.unique(idx, return_counts=True)
        if uniq.size != idx.size:
            raise ValueError(f"{name} contains index {int(uniq[counts > 1][0])} more than once")
    return idx


def rows_to_mask(rows: np.ndarray, n: int) -> np.ndarray:
    """A uint8 mask (N,) with 1 at ``rows`` (the kernels' exclusion format)."""
    mask = np.zeros(n, dtype=np.uint8)
    mask[rows] = 1
    return mask
