"""Input and output plumbing shared by the public functions.

Inputs are numpy arrays (memory maps included), torch tensors (CPU or CUDA, passed to the
kernels through DLPack, so nothing links against libtorch) or anything ``numpy.asarray``
accepts. Outputs follow the input: numpy in, numpy out; torch in, torch out on the same device.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np

from . import _C

_SHARED_MMAP_MODES = ("r", "r+", "readonly", "readwrite")
_DEVICES = ("auto", "cpu", "cuda")


def is_torch_tensor(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "__dlpack__")


@dataclass
class Operand:
    """An input array as the compiled module takes it, plus what is needed to build outputs."""

    handle: Any  # numpy array, or a DLPack capsule (which keeps its tensor alive)
    shape: Tuple[int, ...]
    dtype_name: str
    itemsize: int
    on_cuda: bool
    torch_device: Any = None  # torch.device for torch inputs, else None
    release_pages: bool = False  # a shared memory map: pages may be dropped once read

    @property
    def nbytes(self) -> int:
        size = self.itemsize
        for extent in self.shape:
            size *= extent
        return size


def as_operand(x: Any, name: str = "x") -> Operand:
    if is_torch_tensor(x):
        import torch.utils.dlpack

        t = x.detach()
        return Operand(
            handle=torch.utils.dlpack.to_dlpack(t),
            shape=tuple(t.shape),
            dtype_name=str(t.dtype).replace("torch.", ""),
            itemsize=t.element_size(),
            on_cuda=t.device.type == "cuda",
            torch_device=t.device,
        )
    if not isinstance(x, np.ndarray):
        try:
            x = np.asarray(x)
        except Exception as exc:  # pragma: no cover - depends on the foreign type
            raise TypeError(f"{name} must be a numpy array, a numpy memmap or a torch tensor, got {type(x).__name__}") from exc
    release = isinstance(x, np.memmap) and getattr(x, "mode", None) in _SHARED_MMAP_MODES
    return Operand(handle=x, shape=tuple(x.shape), dtype_name=x.dtype.name, itemsize=x.itemsize, on_cuda=False,
                   release_pages=release)


_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_float_matrix(op: Operand, name: str = "x", columns: str = "C classes") -> Tuple[int, int]:
    """(rows, columns) of a 2-D float matrix; ``columns`` names the columns in messages."""
    if len(op.shape) != 2:
        raise ValueError(f"{name} must be 2-dimensional (N samples x {columns}), got shape {op.shape}")
    if op.dtype_name not in _FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {op.dtype_name}")
    n, c = op.shape
    if c < 1:
        unit = "class (column)" if columns == "C classes" else "column"
        raise ValueError(f"{name} must have at least one {unit}, got shape {op.shape}")
    return n, c


def check_threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"threads must be None or a positive integer, got {threads!r}")
    return int(threads)


def check_count(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"{name} must be non-negative, got {k}")
    return int(k)


def resolve_device(device: str, op: Operand) -> bool:
    """Returns True when the CUDA path should run."""
    if device not in _DEVICES:
        raise ValueError(f"device must be one of {_DEVICES}, got {device!r}")
    if device == "auto":
        return op.on_cuda
    if device == "cpu":
        if op.on_cuda:
            raise ValueError("x is on a CUDA device but device='cpu'; move it first (x.cpu()) or use device='auto'")
        return False
    info = _C.build_info()
    if not info["cuda_compiled"]:
        raise RuntimeError("device='cuda' but this build of asvp_fast has no CUDA kernels (rebuild with ASVP_CUDA=ON)")
    if info["cuda_devices"] < 1:
        raise RuntimeError(f"device='cuda' but no CUDA device is usable ({info['cuda_status']})")
    return True


def exclusion_mask(exclude: Any, n: int, op: Operand) -> Tuple[Any, int]:
    """Turns ``exclude`` (bool mask or index array) into a uint8 mask handle for the kernels.

    Returns the handle (None when nothing is excluded) and the number of excluded rows.
    """
    if exclude is None:
        return None, 0
    if is_torch_tensor(exclude):
        exclude = exclude.detach().cpu().numpy()
    e = np.asarray(exclude)
    if e.ndim != 1:
        raise ValueError(f"exclude must be a 1-D bool mask or index array, got shape {e.shape}")
    if e.dtype == np.bool_:
        if e.shape[0] != n:
            raise ValueError(f"exclude mask has length {e.shape[0]}, expected one entry per row of x ({n})")
        mask = np.ascontiguousarray(e).view(np.uint8)
    elif np.issubdtype(e.dtype, np.integer):
        if e.size and (e.min() < 0 or e.max() >= n):
            bad = e[(e < 0) | (e >= n)][0]
            raise ValueError(f"exclude contains index {int(bad)}, outside [0, {n}) for x with {n} rows")
        mask = np.zeros(n, dtype=np.uint8)
        mask[e] = 1
    elif e.size == 0:
        return None, 0
    else:
        raise TypeError(f"exclude must be a bool mask or an integer index array, got dtype {e.dtype}")
    excluded = int(np.count_nonzero(mask))
    if op.torch_device is not None:
        import torch
        import torch.utils.dlpack

        return torch.utils.dlpack.to_dlpack(torch.from_numpy(mask).to(op.torch_device)), excluded
    return mask, excluded


class Outputs:
    """Allocates result arrays matching the input's library and device."""

    def __init__(self, op: Operand):
        self.op = op

    def empty(self, n: int, dtype: str) -> Tuple[Any, Any]:
        """Returns (result object, handle for the kernels)."""
        if self.op.torch_device is not None:
            import torch
            import torch.utils.dlpack

            t = torch.empty(n, dtype=getattr(torch, dtype), device=self.op.torch_device)
            return t, torch.utils.dlpack.to_dlpack(t)
        a = np.empty(n, dtype=dtype)
        return a, a

    def cuda_stream(self) -> int:
        if self.op.on_cuda:
            import torch

            return int(torch.cuda.current_stream(self.op.torch_device).cuda_stream)
        return 0
