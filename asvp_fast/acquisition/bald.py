"""BALD (Houlsby et al. 2011; Gal et al. 2017): the mutual information between a row's label and
the model parameters, estimated from T Monte-Carlo dropout samples.

For the T x C probabilities p_t of one row::

    BALD = H[mean_t p_t] - mean_t H[p_t]          (natural log, 0 ln 0 = 0)

One streaming pass over the rows: each block of (T, rows, C) samples is widened to float64,
checked, reduced to one value per row and merged into a running top-k, so no more than one
block of samples (:data:`CHUNK_BYTES`, 16 MB of float64, and its log) exists at a time,
whatever the size of the input (a memmap larger than RAM is fine). With ``from_logits`` the
log-softmax is computed stably (max-subtracted), so the entropies are finite and accurate for any
finite logits.

Cost: O(T N C) time, O(T x chunk x C + k) memory.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from ..core.checks import parse_flag
from .strategy_inputs import (as_array, check_float, common, dtype_name, first_bad_row, like_input,
                              read_float64, top_k_merge)

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
) -> Any:
    """The ``k`` rows of largest BALD mutual information, largest first, ties to the lower row.

    Args:
        x: (T, N, C) MC-dropout samples: T >= 2 stochastic forward passes over the N rows, as
            probabilities (rows in [0, 1] summing to 1 within 1e-3) or logits with
            ``from_logits=True``. float16, bfloat16, float32 or float64; numpy array, memmap
            (read in 16 MB float64 blocks) or torch tensor on any device.
        k: rows to pick (0: empty result); at most the rows not excluded.
        from_logits: the samples are logits (stable log-softmax).
        exclude: rows that may not be picked (bool mask (N,) or index array); blocks made only of
            excluded rows are not read, and excluded rows are not checked.
        validate: check probability rows (NaN/Inf are rejected regardless).
        device, threads, progress: the contract's (``docs/api.md``). The reduction runs in NumPy on
            the CPU; ``device`` is checked (an unusable one raises RuntimeError) and decides
            nothing else.

    Returns:
        int64 (k,): numpy for numpy input, a torch tensor on x's device for torch input.

    Raises:
        ValueError: fewer than 2 samples, wrong shape, k too large, a bad row (named).
        TypeError: wrong dtype or argument types.
    """
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    x = as_array(x, "x")
    _, n, _ = mc_shape(x)
    call = common(x, n, k, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    picks = select_top(x, call.k, call.rows, from_logits=from_logits, validate=validate, limits=call)
    return like_input(picks, x)


def select_top(x: Any, k: int, excluded_rows: np.ndarray, *, from_logits: bool, validate: bool,
               limits: Any = None) -> np.ndarray:
    """Streaming top-k of BALD over the rows not in ``excluded_rows`` (int64, largest first)."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    _, n, _ = mc_shape(x)
    skip = np.zeros(n, dtype=bool)
    skip[excluded_rows] = True
    best_scores, best_rows = np.empty(0), np.empty(0, dtype=np.int64)
    context = limits.limits() if limits is not None else nullcontext()
    with context:
        for start, p, logp in mc_blocks(x, from_logits=from_logits, validate=validate, skip=skip):
            rows = np.arange(start, start + p.shape[1], dtype=np.int64)
            scores = mutual_information(p, logp)
            keep = ~skip[rows]
            best_scores, best_rows = top_k_merge(best_scores, best_rows, scores[keep], rows[keep], k)
    return best_rows

