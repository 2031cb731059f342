"""Nearest labelled row of every pool row: a GEMM-style tiled 1-NN search.

k-center greedy starts from the distance of every row to its nearest labelled row. With L
labelled rows that is an N x L problem; it is solved here in tiles (||c||^2 - 2 x.c through a
matrix product, never an N x L matrix) by the best library at hand: faiss (``IndexFlatL2``) when
installed, else numpy's BLAS, or torch on the GPU for CUDA tensors (any backend takes any
input: rows are converted tile by tile). ``threads`` limits each library's pool for the call
only (:func:`asvp_fast.core.threads.limit_threads` restores it). Only the *index* of the
nearest labelled row is kept: the kernel then recomputes that distance directly, which is exact
where the expanded form cancels (rows close to their labelled neighbour).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor
from ..core.threads import limit_threads

# Rows of the pool converted to float32 at a time (bounded memory whatever N is).
_TILE_BYTES = 64 << 20
# The thread pools each backend uses on the CPU.
_POOLS = {"faiss": ("faiss",), "numpy": ("blas",), "torch": ("torch",)}


def _tile_rows(d: int) -> int:
    return max(1, _TILE_BYTES // (4 * max(d, 1)))


def _float32_tiles(features: Any, rows: int) -> Iterator[Tuple[int, Any]]:
    """(start, float32 tile) over the rows of a numpy array, memmap or tensor (copied to the host)."""
    n = features.shape[0]
    for start in range(0, n, rows):
        tile = features[start:start + rows]
        if is_torch_tensor(tile):  # CUDA tensors too, when faiss/numpy was asked for
            tile = tile.detach().float().cpu().numpy()
        with np.errstate(over="ignore", invalid="ignore"):  # out-of-range rows are named by the kernel
            converted = np.ascontiguousarray(tile, dtype=np.float32)
        yield start, converted


def _faiss_module() -> Optional[Any]:
    if importlib.util.find_spec("faiss") is None:
        return None
    try:
        import faiss
    except Exception:  # a broken install behaves as absent
        return None
    return faiss


def nearest_labelled(features: Any, labeled: np.ndarray, threads: int = 0,
                     backend: str = "auto", gpu: bool = False) -> np.ndarray:
    """For every row, the position in ``labeled`` of its nearest labelled row (int64, length N).

    ``backend``: "auto" (torch for CUDA tensors, faiss when installed, else numpy), "faiss",
    "numpy" or "torch". ``gpu``: the selection runs on the GPU, so faiss may search there too
    when it was built with GPU support (faiss-gpu).
    """
    if backend == "auto":
        if is_torch_tensor(features) and features.device.type == "cuda":
            backend = "torch"
        else:
            backend = "faiss" if _faiss_module() is not None else "numpy"
    if backend not in ("faiss", "numpy", "torch"):
        raise ValueError(f"unknown nearest-neighbour backend {backend!r}")
    centres = _labelled_rows(features, labeled)
    finite = np.isfinite(centres).all(axis=1)
    if not finite.all():
        raise ValueError(f"row {int(labeled[np.argmin(finite)])} of features contains NaN or Inf")
    with limit_threads(threads, _POOLS[backend]):
        if backend == "torch":
            nearest = _nearest_torch(features, labeled)
        elif backend == "faiss":
            nearest = _nearest_faiss(features, centres, gpu)
        else:
            nearest = _nearest_numpy(features, centres)
    # Rows holding NaN/Inf get no neighbour (-1 from faiss) or an arbitrary one; any valid entry
    # will do, since the kernel checks every row it reads and names the first bad one.
    np.clip(nearest, 0, len(labeled) - 1, out=nearest)
    return nearest


def _labelled_rows(features: Any, labeled: np.ndarray) -> np.ndarray:
    if is_torch_tensor(features):
        import torch

        return features.detach()[torch.from_numpy(labeled).to(features.device)].float().cpu().numpy()
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, rejected by the caller
        return np.ascontiguousarray(np.asarray(features[labeled]), dtype=np.float32)


def _nearest_faiss(features: Any, centres: np.ndarray, gpu: bool = False) -> np.ndarray:
    faiss = _faiss_module()
    if faiss is None:
        raise ValueError("nearest_backend='faiss' but faiss is not installed (pip install faiss-cpu)")
    index = faiss.IndexFlatL2(centres.shape[1])
    if gpu and hasattr(faiss, "index_cpu_to_all_gpus") and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        index = faiss.index_cpu_to_all_gpus(index)  # faiss-gpu: brute-force search on the GPU(s)
    index.add(centres)
    out = np.empty(features.shape[0], dtype=np.int64)
    for start, tile in _float32_tiles(features, _tile_rows(features.shape[1])):
        _, nearest = index.search(tile, 1)
        out[start:start + tile.shape[0]] = nearest[:, 0]
    return out


def _nearest_numpy(features: Any, centres: np.ndarray) -> np.ndarray:
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(features.shape[0], dtype=np.int64)
    rows = _tile_rows(max(features.shape[1], centres.shape[0]))
    for start, tile in _float32_tiles(features, rows):
        # ||x - c||^2 = ||x||^2 + ||c||^2 - 2 x.c; ||x||^2 is the same for every c of a row.
        partial = tile @ centres.T
        partial *= -2.0
        partial += centre_norms
        out[start:start + tile.shape[0]] = np.argmin(partial, axis=1)
    return out


def _torch_tiles(features: Any, rows: int) -> Iterator[Tuple[int, Any]]:
    """(start, float32 tile) as torch tensors: slices of a tensor on its own device, or numpy
    rows converted on the host."""
    import torch

    if not is_torch_tensor(features):
        for start, tile in _float32_tiles(features, rows):
            yield start, torch.from_numpy(tile)
        return
    x = features.detach()
    for start in range(0, x.shape[0], rows):
        yield start, x[start:start + rows].float()


def _nearest_torch(features: Any, labeled: np.ndarray) -> np.ndarray:
    import torch

    if is_torch_tensor(features):
        x = features.detach()
        centres = x[torch.from_numpy(labeled).to(x.device)].float()
    else:
        centres = torch.from_numpy(_labelled_rows(features, labeled))
    centre_norms = (centres * centres).sum(1)
    out = torch.empty(features.shape[0], dtype=torch.int64, device=centres.device)
    for start, tile in _torch_tiles(features, _tile_rows(max(features.shape[1], centres.shape[0]))):
        partial = torch.addmm(centre_norms, tile, centres.T, alpha=-2.0)
        out[start:start + tile.shape[0]] = partial.argmin(1)
    return out.cpu().numpy()
