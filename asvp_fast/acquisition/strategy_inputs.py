"""Argument and input plumbing shared by the Python strategies (BALD, BatchBALD, TypiClust,
ProbCover, Cluster-Margin).

Every argument is parsed by :mod:`asvp_fast.core.checks` (the one parser); this module turns the
array inputs (NumPy arrays, memory maps, torch tensors on any device) into validated working
blocks, chunk by chunk, and gives results back in the input's library and device.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor, parse_count, parse_optional_flag, parse_rows, parse_threads
from ..core.devices import torch_device
from ..core.threads import limit_threads

#: Rows are read, widened to float64 and checked in blocks of about this many bytes.
CHUNK_BYTES = 64 << 20

_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
# Feature values beyond this would overflow float32 squared distances.
MAX_FEATURE = 1e15


def dtype_name(x: Any) -> str:
    """The element type of an array or tensor by name ("float32", "bfloat16", ...)."""
    if is_torch_tensor(x):
        return str(x.dtype).replace("torch.", "")
    return str(np.dtype(x.dtype).name)


def as_array(x: Any, name: str) -> Any:
    """A numpy array (memmaps kept as they are) or the torch tensor itself; anything else a TypeError."""
    if is_torch_tensor(x) or isinstance(x, np.ndarray):
        return x
    if isinstance(x, (str, bytes, dict, set)) or x is None or isinstance(x, (bool, int, float)):
        raise TypeError(f"{name} must be a numpy array, a numpy memmap or a torch tensor, got {type(x).__name__}")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numpy array, a numpy memmap or a torch tensor ({exc})") from None


def check_float(x: Any, name: str, ndim: int, axes: str) -> Tuple[int, ...]:
    """The shape of a float array of ``ndim`` dimensions (``axes`` names them in messages)."""
    shape = tuple(int(s) for s in x.shape)
    if len(shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional ({axes}), got shape {shape}")
    if dtype_name(x) not in _FLOAT_NAMES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {dtype_name(x)}")
    return shape


def read_float64(x: Any, index: Any) -> np.ndarray:
    """``x[index]`` as a float64 NumPy array (exact for every supported dtype)."""
    if is_torch_tensor(x):
        import torch

        out: np.ndarray = x[index].detach().to(device="cpu", dtype=torch.float64).numpy()
        return out
    return np.asarray(x[index]).astype(np.float64)


def first_bad_row(block: np.ndarray, start: int) -> Optional[int]:
    """The first row (counting from ``start``) of a (rows, ...) block holding NaN or Inf."""
    bad = ~np.isfinite(block)
    if bad.ndim > 1:
        bad = bad.reshape(bad.shape[0], -1).any(axis=1)
    hits = np.flatnonzero(bad)
    return int(hits[0]) + start if hits.size else None


def feature_matrix(features: Any, name: str = "features") -> np.ndarray:
    """A validated float32 working copy (N, d) of a feature matrix, converted block by block.

    NaN/Inf and values beyond float32 are a ValueError naming the first bad row; N x d x 4 bytes
    must fit in memory."""
    features = as_array(features, name)
    n, d = check_float(features, name, 2, "N rows x d features")
    if d < 1:
        raise ValueError(f"{name} must have at least one column, got shape {(n, d)}")
    out = np.empty((n, d), dtype=np.float32)
    step = max(1, CHUNK_BYTES // (8 * d))
    for start in range(0, n, step):
        block = read_float64(features, slice(start, min(n, start + step)))
        bad = first_bad_row(block, start)
        if bad is not None:
            raise ValueError(f"{name} row {bad} contains NaN or Inf")
        big = np.flatnonzero(np.abs(block).max(axis=1) > MAX_FEATURE)
        if big.size:
            raise ValueError(f"{name} row {start + int(big[0])} has a value too large for float32 distances")
        out[start:start + block.shape[0]] = block
    return out


def like_input(values: np.ndarray, x: Any) -> Any:
    """Outputs follow the input: numpy for numpy/memmap/list input, a tensor on x's device for torch."""
    if is_torch_tensor(x):
        import torch

        return torch.from_numpy(np.ascontiguousarray(values)).to(x.device)
    return values


def budget_check(k: int, n: int, taken: int, what: str) -> None:
    """``k`` may not exceed the rows that may be picked (``what``: "excluded" or "labelled")."""
    if k > n - taken:
        detail = f"{n} rows, {taken} {what}" if taken else f"{n} rows"
        raise ValueError(f"k={k} is larger than the {n - taken} rows that may be picked ({detail})")


@dataclass(frozen=True)
class Common:
    """The parsed shared arguments of one call."""

    k: int
    rows: np.ndarray  # the exclude=/labeled= rows, sorted and unique
    threads: int
    device: Any  # torch.device
    progress: Optional[bool]

    @contextmanager
    def limits(self) -> Iterator[None]:
        """Thread counts of torch, faiss and BLAS for the call, restored afterwards."""
        with limit_threads(self.threads, ("torch", "faiss", "blas")):
            yield


def common(x: Any, n: int, k: Any, rows: Any, rows_name: str, *, device: Any, threads: Any, progress: Any,
           of: str) -> Common:
    """Parses k, the rows argument (exclude=/labeled=), threads, progress and device, in that order,
    and checks the budget."""
    count = parse_count(k)
    unique = rows_name == "labeled"
    parsed = (np.empty(0, np.int64) if rows is None
              else np.unique(parse_rows(rows, n, rows_name, unique=unique, of=of)))
    n_threads = parse_threads(threads)
    flag = parse_optional_flag(progress, "progress")
    dev = torch_device(device, like=x)
    if is_torch_tensor(x) and x.device.type == "cuda" and dev.type == "cpu":
        raise ValueError(f"{of} is on a CUDA device but device='cpu'; move it first ({of}.cpu()) or use device='auto'")
    if is_torch_tensor(x) and x.device.type == "cuda" and dev.index is not None and x.device.index != dev.index:
        raise ValueError(f"{of} is on {x.device} but device='{dev}'; move it first or use device='auto'")
    budget_check(count, n, parsed.size, "excluded" if rows_name == "exclude" else "labelled")
    return Common(count, parsed, n_threads, dev, flag)


def top_k_merge(best_scores: np.ndarray, best_rows: np.ndarray, scores: np.ndarray, rows: np.ndarray,
                k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest of two (score, row) sets, largest first, ties to the lower row (streaming top-k)."""
    if scores.size > k:  # keep every row tied with the k-th largest, then sort the few left
        threshold = np.partition(scores, scores.size - k)[scores.size - k]
        keep = scores >= threshold
        scores, rows = scores[keep], rows[keep]
    all_scores = np.concatenate([best_scores, scores])
    all_rows = np.concatenate([best_rows, rows])
    order = np.lexsort((all_rows, -all_scores))[:k]
    return all_scores[order], all_rows[order]


def gathered_shard_input(features: Any, k: Any, labeled: Any, make_options: Callable[[], Dict[str, Any]],
                         run: Callable[..., np.ndarray], *, device: Any, threads: Any, progress: Any) -> Any:
    """A strategy's input to the gathered route (:func:`.distributed.select_on_root`): this rank's
    checked float32 rows, its labelled rows as a mask, the options every rank must agree on
    (``make_options()``, checked after the common arguments), and the selection rank 0 runs,
    ``run(pool, labelled, k, **options)``, under this call's thread limits (TypiClust, ProbCover)."""
    from .distributed import ShardInput

    features = as_array(features, "features")
    n, _ = check_float(features, "features", 2, "N rows x d features")
    count = parse_count(k)
    call = common(features, n, 0, labeled, "labeled", device=device, threads=threads, progress=progress,
                  of="features")
    options = make_options()
    blocked = np.zeros(n, dtype=bool)
    blocked[call.rows] = True

    def select(pool: np.ndarray, labelled: np.ndarray, kk: int) -> np.ndarray:
        with call.limits():
            return run(pool, labelled, kk, **options)

    return ShardInput(feature_matrix(features), blocked, dict(options, k=count), select)
