"""BALD (Houlsby et al. 2011; Gal et al. 2017): the mutual information between a row's label and
the model parameters, estimated from T Monte-Carlo dropout samples.

For the T x C probabilities p_t of one row::

    BALD = H[mean_t p_t] - mean_t H[p_t]          (natural log, 0 ln 0 = 0)

Selection (:func:`bald`) runs the compiled kernel (``csrc/bald_cpu.cpp``, ``csrc/bald.cu``,
math shared in ``csrc/bald_math.h``): one pass over the samples in place (numpy, memmap or torch
on either device, any strides), each row's T x C values reduced in double precision straight from
the stored dtype, the validation of every sample and a streaming top-k together, threads over
rows. Memory: two C-element buffers per thread; no float64 copy or log of the samples.

The NumPy rendering below (:func:`mc_blocks`, :func:`mutual_information`, :func:`bald_scores`)
streams float64 blocks of :data:`CHUNK_BYTES`; BatchBALD reads its candidates' probabilities
through it, and the tests and the benchmark use it as the plain reference. With ``from_logits``
both compute the log-softmax stably (max-subtracted), so entropies are accurate for any finite
logits.

Cost: O(T N C) time; kernel O(threads x C + k) memory, NumPy O(T x chunk x C + k).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Tuple

import numpy as np

from .. import _C
from ..core.arrays import Outputs, as_operand, exclusion_mask, resolve_device
from ..core.checks import is_torch_tensor, parse_count, parse_flag
from ..core.progress import row_progress
from .distributed import select_uncertain_sharded
from .strategy_inputs import as_array, check_float, common, dtype_name, first_bad_row, like_input, read_float64

__all__ = ["bald", "bald_scores", "mc_blocks", "MIN_SAMPLES"]

#: Samples are read, widened to float64 and reduced in blocks of about this many bytes.
CHUNK_BYTES = 16 << 20

#: BALD needs at least two MC samples: with one, the mutual information is identically 0.
MIN_SAMPLES = 2


def mc_shape(x: Any, name: str = "x") -> Tuple[int, int, int]:
    """(T, N, C) of an MC-sample array, with the errors of the contract (too few samples, C < 1)."""
    t, n, c = check_float(x, name, 3, "T samples x N rows x C classes")
    if t < MIN_SAMPLES:
        raise ValueError(f"{name} holds {t} MC sample(s) (T = shape[0]); BALD needs at least {MIN_SAMPLES} "
                         "stochastic forward passes")
    if c < 1:
        raise ValueError(f"{name} must have at least one class (column), got shape {(t, n, c)}")
    return t, n, c


def _tolerance(x: Any) -> float:
    return 2.0 ** -7 if dtype_name(x) == "bfloat16" else 1e-3


def check_block(block: np.ndarray, *, from_logits: bool, validate: bool, start: int, tolerance: float,
                name: str = "x") -> None:
    """The contract's checks of a (T, rows, C) float64 block (rows counted from ``start``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        sums = block.sum(axis=2)  # (T, rows): finite sums mean finite entries (the exact scan only otherwise)
    if not np.isfinite(sums).all():
        bad = first_bad_row(np.moveaxis(block, 1, 0), start)
        if bad is not None:
            raise ValueError(f"{name} row {bad} contains NaN or Inf")
    if validate and not from_logits and block.size and (
            block.min() < 0 or block.max() > 1 or np.abs(sums - 1).max() > tolerance):
        wrong = ((block < 0) | (block > 1)).any(axis=(0, 2)) | (np.abs(sums - 1) > tolerance).any(axis=0)
        hits = np.flatnonzero(wrong)
        if hits.size:
            raise ValueError(f"{name} row {start + int(hits[0])} is not a probability vector in every sample "
                             f"(entries in [0, 1] summing to 1 within {tolerance:g}); pass from_logits=True for "
                             "logits or validate=False to skip this check")


def probabilities(block: np.ndarray, *, from_logits: bool) -> "tuple[np.ndarray, np.ndarray]":
    """(p, ln p) of a checked block; logits go through a stable (max-subtracted) log-softmax. Rows of
    probabilities are used as given (negative entries, possible with validate=False, count as 0)."""
    if from_logits:
        logp = block - block.max(axis=2, keepdims=True)
        p = np.exp(logp)
        total = p.sum(axis=2, keepdims=True)
        p /= total
        logp -= np.log(total)
        return p, logp
    p = np.maximum(block, 0.0)
    logp = np.zeros_like(p)
    np.log(p, out=logp, where=p > 0)
    return p, logp


def mutual_information(p: np.ndarray, logp: np.ndarray) -> np.ndarray:
    """BALD of each row of a (T, rows, C) block, float64 (rows,), never negative. Overwrites ``logp``."""
    with np.errstate(over="ignore", invalid="ignore"):  # only unvalidated garbage (1e300 "probabilities") overflows
        np.multiply(p, logp, out=logp)
        mean_entropy = -logp.sum(axis=2).mean(axis=0)
        mean = p.mean(axis=0)
        log_mean = np.zeros_like(mean)
        np.log(mean, out=log_mean, where=mean > 0)
        mi = -(mean * log_mean).sum(axis=1) - mean_entropy
    return np.where(np.isnan(mi), 0.0, np.maximum(mi, 0.0))  # type: ignore[no-any-return]


def mc_blocks(x: Any, *, from_logits: bool, validate: bool, name: str = "x",
              skip: Optional[np.ndarray] = None) -> Iterator[Tuple[int, np.ndarray, np.ndarray]]:
    """(start row, p, ln p) with p (T, rows, C) float64, block by block; blocks whose rows are all in
    the bool mask ``skip`` are not read."""
    t, n, c = mc_shape(x, name)
    step = max(1, CHUNK_BYTES // (8 * t * c))
    tolerance = _tolerance(x)
    for start in range(0, n, step):
        stop = min(n, start + step)
        if skip is not None and skip[start:stop].all():
            continue
        block = read_float64(x, (slice(None), slice(start, stop)))
        if skip is not None and skip[start:stop].any():  # skipped rows are not checked: give them a neutral value
            block[:, skip[start:stop], :] = 0.0 if from_logits else 1.0 / c
        check_block(block, from_logits=from_logits, validate=validate, start=start, tolerance=tolerance, name=name)
        p, logp = probabilities(block, from_logits=from_logits)
        del block
        yield start, p, logp


def bald_scores(x: Any, *, from_logits: bool = False, validate: bool = True) -> np.ndarray:
    """The BALD value of every row as float64 (N,) (NumPy; a helper for tests and BatchBALD)."""
    x = as_array(x, "x")
    _, n, _ = mc_shape(x)
    out = np.empty(n, dtype=np.float64)
    for start, p, logp in mc_blocks(x, from_logits=parse_flag(from_logits, "from_logits"),
                                    validate=parse_flag(validate, "validate")):
        out[start:start + p.shape[1]] = mutual_information(p, logp)
    return out


def bald(
    x: Any,
    k: int,
    *,
    from_logits: bool = False,
    exclude: Any = None,
    validate: bool = True,
    device: Any = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """The ``k`` rows of largest BALD mutual information, largest first, ties to the lower row.

    Args:
        x: (T, N, C) MC-dropout samples: T >= 2 stochastic forward passes over the N rows, as
            probabilities (rows in [0, 1] summing to 1 within 1e-3) or logits with
            ``from_logits=True``. float16, bfloat16, float32 or float64; numpy array, memmap
            (read in 16 MB float64 blocks) or torch tensor on any device.
        k: rows to pick (0: empty result); at most the rows not excluded.
        from_logits: the samples are logits (stable log-softmax).
        exclude: rows that may not be picked (bool mask (N,) or index array); excluded rows are
            neither read nor checked.
        validate: check probability rows (NaN/Inf are rejected regardless).
        device, threads, progress: the contract's (``docs/api.md``). A CUDA tensor is reduced by
            the CUDA kernel on its GPU; host input (numpy, memmap, CPU tensor) by the CPU kernel.
        group: a torch.distributed process group, or None. With a group, ``x`` is this rank's
            shard of the rows, (T, N_rank, C) (ranks hold consecutive rows in rank order),
            ``exclude`` is local to it, and the result is global row numbers, the same on every
            rank and equal to one process's answer on the whole pool (each rank's top k, merged
            by value with ties to the lower global row).

    Returns:
        int64 (k,): numpy for numpy input, a torch tensor on x's device for torch input.

    Raises:
        ValueError: fewer than 2 samples, wrong shape, k too large, a bad row (named).
        TypeError: wrong dtype or argument types.
    """
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    x = as_array(x, "x")
    if group is not None:
        return select_uncertain_sharded(group, x, True, lambda: _shard_top(
            x, k, exclude, from_logits=from_logits, validate=validate, device=device, threads=threads,
            progress=progress), score_dtype=np.float64)
    _, n, _ = mc_shape(x)
    call = common(x, n, k, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    picks = select_top(x, call.k, call.rows, from_logits=from_logits, validate=validate, threads=call.threads,
                       device=device, progress=call.progress)
    return like_input(picks, x)


def _shard_top(x: Any, k: Any, exclude: Any, *, from_logits: bool, validate: bool, device: Any, threads: Any,
               progress: Any) -> Any:
    """This rank's part of a sharded call: (k, rows, rows that may be picked, its best
    min(k, pickable) local rows, their BALD values)."""
    _, n, _ = mc_shape(x)
    kk = parse_count(k)
    call = common(x, n, 0, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    take = min(kk, n - call.rows.size)
    local = select_top(x, take, call.rows, from_logits=from_logits, validate=validate, threads=call.threads,
                       device=device, progress=call.progress)
    return kk, n, n - call.rows.size, local, values_of_rows(x, local, from_logits=from_logits, validate=validate)


def values_of_rows(x: Any, rows: np.ndarray, *, from_logits: bool, validate: bool) -> np.ndarray:
    """float64 BALD of the given rows, by the CPU kernel on a copy of just those rows (a row's value
    depends only on its own samples, so it equals the value the kernel ranked it by on the CPU)."""
    if is_torch_tensor(x):
        import torch

        part = x[:, torch.as_tensor(rows, device=x.device)]
        part = (part.float() if part.dtype == torch.bfloat16 else part).detach().cpu().numpy()  # exact widening
    else:
        part = np.take(x, rows, axis=1)
    scores = np.zeros(rows.size, dtype=np.float64)
    if rows.size:
        first, stride = _sample_zero(part)
        _C.bald(first, part.shape[0], stride, from_logits, validate, None, scores, None, 0, 0, CHUNK_BYTES, False, 0)
    return scores


def _sample_zero(x: Any) -> "tuple[Any, int]":
    """Sample 0 of (T, N, C) samples as an (N, C) view, and the distance from one sample to the next
    in elements (the kernels step through the samples in place)."""
    if is_torch_tensor(x):
        return x[0], int(x.stride(0))
    if x.strides[0] % x.itemsize:
        x = np.ascontiguousarray(x)
    return x[0], int(x.strides[0] // x.itemsize)


def select_top(x: Any, k: int, excluded_rows: np.ndarray, *, from_logits: bool, validate: bool, threads: int = 0,
               device: Any = "auto", progress: Optional[bool] = False) -> Any:
    """The compiled streaming top-k of BALD over the rows not in ``excluded_rows``: numpy int64
    (k,), largest first, ties to the lower row."""
    t, n, _ = mc_shape(x)
    first, sample_stride = _sample_zero(x)
    op = as_operand(first)
    use_cuda = resolve_device(device, op) and op.on_cuda  # host input always runs the CPU kernel
    mask, _ = exclusion_mask(excluded_rows, n, op)
    outputs = Outputs(op)
    result, handle = outputs.empty(k, "int64")
    if k == 0:
        return np.empty(0, dtype=np.int64)
    bar = row_progress(progress, op.nbytes * t, n, f"selecting {k} by BALD")
    try:
        _C.bald(op.handle, t, sample_stride, from_logits, validate, mask, None, handle, k, threads,
                CHUNK_BYTES, use_cuda, outputs.cuda_stream(), bar, workspace=outputs.workspace())
    finally:
        if bar is not None:
            bar.close()
    return result.cpu().numpy() if is_torch_tensor(result) else result
