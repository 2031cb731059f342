"""What this installation can run on."""

from __future__ import annotations

import importlib.util
from typing import Any, Dict

from .. import _C


def _faiss_status() -> Dict[str, bool]:
    if importlib.util.find_spec("faiss") is None:
        return {"faiss": False, "faiss_gpu": False}
    try:
        import faiss  # noqa: F401
    except Exception:  # a broken faiss install is reported as absent, never raised
        return {"faiss": False, "faiss_gpu": False}
    gpu = hasattr(faiss, "StandardGpuResources") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0
    return {"faiss": True, "faiss_gpu": bool(gpu)}


def backends() -> Dict[str, Any]:
    """Which back ends are available.

    Keys: ``cpu`` (always True), ``openmp_threads`` (threads a kernel uses by default),
    ``cuda_compiled`` (the extension has CUDA kernels), ``cuda_devices`` (usable now; 0 without
    a driver or device), ``faiss``, ``faiss_gpu``, plus ``cpu_isa`` (the SIMD variant in use),
    ``cpu_isas`` (those this processor can run), ``cuda_status`` (the runtime's reason when no
    device is usable), ``cuda_runtime_version`` and ``cuda_architectures``.
    """
    info = _C.build_info()
    result: Dict[str, Any] = {
        "cpu": True,
        "openmp_threads": int(info["openmp_threads"]),
        "cuda_compiled": bool(info["cuda_compiled"]),
        "cuda_devices": int(info["cuda_devices"]),
        "cpu_isa": info["isa"],
        "cpu_isas": list(info["supported_isas"]),
        "cuda_status": info["cuda_status"],
        "cuda_runtime_version": int(info["cuda_runtime_version"]),
        "cuda_architectures": info.get("cuda_architectures", ""),
    }
    result.update(_faiss_status())
    return result
