"""Where a computation runs: the device rule shared by the kernels, the transfer measures and the loop.

``device="auto"`` means "where the input lives" for a function given an array (a CUDA tensor runs on
its GPU, anything else on the CPU), and "a GPU when torch sees one" for the loop's training. A device
that is spelled right but not usable here raises :class:`RuntimeError` naming it, everywhere.
"""

from __future__ import annotations

from typing import Any, Optional

from .checks import DeviceSpec, is_torch_tensor, parse_device


def _unusable(spec: DeviceSpec, why: str) -> RuntimeError:
    return RuntimeError(f"device={str(spec)!r} is not usable here: {why}")


def kernel_uses_cuda(device: Any, *, on_cuda: bool, cuda_compiled: bool, cuda_devices: int, cuda_status: str = "",
                     input_index: Optional[int] = None, what: str = "x") -> bool:
    """For the compiled kernels: True when the CUDA path runs.

    ``on_cuda``/``input_index``: the input is a CUDA tensor (on that device). A CUDA input with
    ``device="cpu"`` is a :class:`ValueError` (move it first); ``device="cuda:N"`` for an input on
    another GPU likewise.
    """
    spec = parse_device(device)
    if spec.kind == "auto":
        return on_cuda
    if spec.kind == "cpu":
        if on_cuda:
            raise ValueError(f"{what} is on a CUDA device but device='cpu'; move it first ({what}.cpu()) "
                             f"or use device='auto'")
        return False
    if not cuda_compiled:
        raise _unusable(spec, "this build of asvp_fast has no CUDA kernels (rebuild with ASVP_CUDA=ON)")
    if cuda_devices < 1:
        raise _unusable(spec, f"no CUDA device is usable ({cuda_status or 'no driver or device'})")
    if spec.index is not None and spec.index >= cuda_devices:
        raise _unusable(spec, f"only {cuda_devices} CUDA device(s) are usable")
    if spec.index is not None and on_cuda and input_index is not None and input_index != spec.index:
        raise ValueError(f"{what} is on cuda:{input_index} but device='{spec}'; move it first or use device='auto'")
    return True


def requested_cuda_index(device: Any) -> int:
    """N of ``device="cuda:N"``; -1 for any other spelling (the input's own GPU, or the current one)."""
    spec = parse_device(device)
    return spec.index if spec.kind == "cuda" and spec.index is not None else -1


def torch_device(device: Any = "auto", *, like: Any = None) -> Any:
    """The ``torch.device`` for ``device`` (imports torch).

    ``"auto"``: the device of ``like`` when it is a tensor, else the first CUDA device when torch
    sees one, else the CPU.
    """
    import torch

    spec = parse_device(device)
    if spec.kind == "auto":
        if like is not None and is_torch_tensor(like):
            return torch.device(like.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.kind == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise _unusable(spec, "torch sees no CUDA device")
    count = torch.cuda.device_count()
    if spec.index is not None and spec.index >= count:
        raise _unusable(spec, f"torch sees only {count} CUDA device(s)")
    return torch.device(str(spec))


def check_device_spelling(device: Any, name: str = "device") -> str:
    """The canonical spelling of a device string (for configs: checked before any work)."""
    return str(parse_device(device, name))
