"""Input and output plumbing shared by the public functions.

Inputs are numpy arrays (memory maps included), torch tensors (CPU or CUDA, passed to the
kernels through DLPack, so nothing links against libtorch) or anything ``numpy.asarray``
accepts. Outputs follow the input: numpy in, numpy out; torch in, torch out on the same device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from .. import _C
from .checks import is_torch_tensor, parse_rows, rows_to_mask
from .devices import kernel_uses_cuda, requested_cuda_index

_SHARED_MMAP_MODES = ("r", "r+", "readonly", "readwrite")


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


def resolve_device(device: Any, op: Operand, what: str = "x") -> bool:
    """True when the CUDA path should run (the device rule of :mod:`.devices`)."""
    info = _C.build_info()
    index = op.torch_device.index if op.torch_device is not None and op.on_cuda else None
    return kernel_uses_cuda(device, on_cuda=op.on_cuda, cuda_compiled=bool(info["cuda_compiled"]),
                            cuda_devices=int(info["cuda_devices"]), cuda_status=str(info["cuda_status"]),
                            input_index=index, what=what)


def cuda_index(device: Any) -> int:
    """The GPU the compiled module should use for a NumPy/memmap input (-1: the current one); a
    CUDA tensor always runs on its own GPU (the module checks every operand's device)."""
    return requested_cuda_index(device)


def exclusion_mask(exclude: Any, n: int, op: Operand, name: str = "exclude", of: str = "x") -> Tuple[Any, int]:
    """Turns ``exclude`` (bool mask or index array) into a uint8 mask handle for the kernels.

    Returns the handle (None when nothing is excluded) and the number of excluded rows. The
    handle lives where ``op`` does (a tensor on its device for torch input); ``of`` names the
    array in messages.
    """
    if exclude is None:
        return None, 0
    rows = parse_rows(exclude, n, name, of=of)
    if rows.size == 0:
        return None, 0
    mask = rows_to_mask(rows, n)
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

    def workspace(self) -> Optional[Callable[[int], Any]]:
        """Scratch memory for the CUDA kernels through PyTorch's caching allocator (torch CUDA input):
        the compiled module calls it with a byte count and gets a DLPack buffer on the input's GPU,
        allocated on the current stream (the one the kernels use). None otherwise: the kernels then
        take stream-ordered memory from the device's pool."""
        if not self.op.on_cuda:
            return None
        import torch
        import torch.utils.dlpack

        device = self.op.torch_device

        def allocate(nbytes: int) -> Any:
            return torch.utils.dlpack.to_dlpack(torch.empty(int(nbytes), dtype=torch.uint8, device=device))

        return allocate

    def cuda_stream(self) -> int:
        if self.op.on_cuda:
            import torch

            return int(torch.cuda.current_stream(self.op.torch_device).cuda_stream)
        return 0


def chunked_rows(n: int, dim: int, itemsize: int = 4, target_bytes: int = 64 << 20) -> List[slice]:
    """Row slices of about ``target_bytes`` each, for passes over memmaps larger than RAM."""
    step = max(1, target_bytes // max(1, dim * itemsize))
    return [slice(s, min(n, s + step)) for s in range(0, n, step)]
