"""PED: potential-energy-decline feature dynamics (Li et al., ICCV 2023).

"Exploring Model Transferability through the Lens of Potential Energy" models fine-tuning as a
physical system: in a standardised feature space every class is a ball whose centre is the class
mean and whose radius is the class's feature spread; overlapping balls repel each other with a
force proportional to their overlap, every sample moves with its class, and the simulation stops
once the movement has decayed (the potential energy stops declining). A transferability score
(LogME in the ASVP paper) is then computed on the moved features.

This module implements the dynamics only; the score is computed by the caller on the returned
features. The ASVP rule "if PED converges within a single iteration, skip LogME" is
``n_iterations == 1``.

Implementation notes
--------------------
* Every sample of a class receives the same displacement, so the per-class variances (hence the
  radii) never change and the class centres simply move by the displacement. The class statistics
  are therefore computed once (two streaming passes over the features, float64), the dynamics run
  on the ``C x D`` centres only, and the accumulated displacement is applied to the samples once
  at the end. This is exactly the dynamics of the reference code, which recomputes the statistics
  from the moved features at every step.
* Pairwise centre distances come from the Gram matrix (``C x C``); the repulsion is accumulated
  through a ``C x C`` weight matrix ``W`` (sparse when few pairs overlap):
  ``disp = rowsum(W)[:, None] * M - W @ M``. No ``C x C x D`` tensor is ever built.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["ped"]

# Defaults, all from the authors' public code (github.com/lixiaotong97/PED, evaluate_metric_cpu.py
# argparse defaults and metrics.py:PED_Score / One_Step_PED).
DEFAULT_STEPS = 6  # `while number_step < 6` in PED_Score
DEFAULT_STEP_SIZE = 0.1  # `--step 0.1` (the time step dt)
DEFAULT_NSIGMA = 0.6  # `--nsigma 0.6` (radius multiplier; 0.3 is the other candidate)
DEFAULT_EXIT_RATIO = 0.5  # `--er 0.5`
DEFAULT_CONSTANT = 1.0  # `--constant 1` (force constant; acceleration = constant * overlap)
DEFAULT_EPS = 1e-3  # std floor used when standardising

# Below this fraction of overlapping pairs the weight matrix is applied as a sparse matrix.
_SPARSE_FRACTION = 0.05


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    return arr


def _chunk_rows(n: int, d: int, target_bytes: int = 32 << 20) -> int:
    return max(1, min(n, target_bytes // max(1, 8 * d)))


def _add_rows_sorted(target: np.ndarray, idx: np.ndarray, vals: np.ndarray) -> None:
    """``target[idx[k]] += vals[k]`` for ascending ``idx`` (segment sums, deterministic)."""
    if idx.size == 0:
        return
    starts = np.flatnonzero(np.r_[True, idx[1:] != idx[:-1]])
    target[idx[starts]] += np.add.reduceat(vals, starts, axis=0)


def ped(
    features: Any,
    labels: Any,
    *,
    steps: int = DEFAULT_STEPS,
    step_size: float = DEFAULT_STEP_SIZE,
    reference: Optional[Tuple[Any, Any]] = None,
    nsigma: float = DEFAULT_NSIGMA,
    exit_ratio: float = DEFAULT_EXIT_RATIO,
    constant: float = DEFAULT_CONSTANT,
    eps: float = DEFAULT_EPS,
    chunk_rows: Optional[int] = None,
) -> Tuple[np.ndarray, int]:
    """Run PED feature dynamics and return the moved features.

    Parameters
    ----------
    features : array_like (N, D)
        Any floating dtype (float16/32/64, memory maps included) or a torch tensor.
    labels : array_like of int (N,)
        Class labels; any integer values (remapped internally). At least two classes.
    steps : int
        Maximum number of dynamics iterations (force evaluations), ``>= 2`` so that a run that
        moves anything always reports ``n_iterations >= 2`` (see below).
    step_size : float
        The time step ``dt``. A step moves an overlapping pair by
        ``min(0.5 * constant * dt**2 * overlap, overlap)``.
    reference : (mean, std) or None
        Standardisation statistics, each of shape (D,). ``None`` (default) uses the mean and
        (population) standard deviation of ``features`` themselves, fixed for the whole run. The
        authors standardise with ImageNet-val feature statistics; pass those here to reproduce it.
        ``std`` is floored at ``eps``.
    nsigma : float
        Radius multiplier: the ball of class ``c`` has radius ``|nsigma| * R_c``.
    exit_ratio : float in [0, 1)
        A step is kept only while its total movement divided by the first step's total movement
        exceeds ``exit_ratio``; otherwise the dynamics stop (that step is discarded).
    constant : float
        Force constant (acceleration = ``constant * overlap``).
    eps : float
        Floor on the standardisation std.
    chunk_rows : int, optional
        Rows processed at a time in the streaming passes (default: ~32 MB of float64).

    Returns
    -------
    features_after : np.ndarray (N, D)
        The moved features in the *original* (un-standardised) coordinates, like the reference
        code (which maps back with ``X * std + mean``). float64 for float64 input, else float32.
        If nothing moved (``n_iterations == 1``) this is an exact copy of the input (cast).
    n_iterations : int
        The number of dynamics iterations *evaluated* (force computations), ``1 <= n <= steps``.
        Iteration ``k`` computes the forces at the current positions and the total movement
        ``m_k = sum |displacement|`` (L1 over classes and dimensions, standardised space); it is
        applied if ``m_k / m_1 > exit_ratio`` (always true for ``k == 1`` when ``m_1 > 0``),
        otherwise the run stops there. So ``n_iterations == 1`` exactly when the first check found
        no overlapping pair: PED "converged within a single iteration", nothing moved and LogME
        can be skipped. Otherwise the number of applied moves is ``n_iterations - 1`` when the
        exit rule fired and ``n_iterations`` when the ``steps`` cap was reached. (The reference
        code's ``number_step`` counts applied moves: 0 for no overlap.)

    Dynamics (one iteration)
    ------------------------
    In standardised space ``z = (x - mean) / max(std, eps)``, with class means ``m_c`` and the
    radius ``R_c = sqrt(sum_d Var_c[z_d])`` (population variance; the RMS distance of the class's
    samples to its centre), for every pair ``a != b`` with centre distance ``d_ab``::

        overlap_ab = max(|nsigma| * (R_a + R_b) - d_ab, 0)
        s_ab       = min(0.5 * constant * step_size**2 * overlap_ab, overlap_ab)
        disp_a     = sum_b s_ab * (m_a - m_b) / d_ab        (repulsion, away from b)

    and every sample of class ``a`` moves by ``disp_a`` (``disp_a * std`` in input coordinates).
    Pairs whose centres coincide (no defined direction) exert no force.

    Memory is O(N*D) for the output plus O(C*D + C^2) working space; time per iteration is
    O(C^2 * D) for the Gram matrix, plus two streaming O(N*D) passes for the statistics.
    Deterministic; no random numbers are used.
    """
    # ----- validation -------------------------------------------------------------------------
    X = _to_numpy(features, "features")
    y = _to_numpy(labels, "labels")
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {X.shape}")
    n, d = X.shape
    if n == 0:
        raise ValueError("features is empty (N == 0)")
    if d == 0:
        raise ValueError("features has no dimensions (D == 0)")
    if X.dtype.kind not in "fiub":
        raise ValueError(f"features must be numeric, got dtype {X.dtype}")
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match features {X.shape}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    for pname, val in (("step_size", step_size), ("nsigma", nsigma), ("constant", constant)):
        if not np.isfinite(val):
            raise ValueError(f"{pname} must be finite, got {val!r}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    if not 0.0 <= exit_ratio < 1.0:
        raise ValueError(f"exit_ratio must be in [0, 1), got {exit_ratio!r}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")

    classes, yi = np.unique(y, return_inverse=True)
    yi = yi.reshape(-1).astype(np.intp, copy=False)
    c = classes.shape[0]
    if c < 2:
        raise ValueError(f"PED needs at least 2 classes, got {c}")
    counts = np.bincount(yi, minlength=c).astype(np.float64)

    out_dtype = np.float64 if X.dtype == np.float64 else np.float32
    rows = int(chunk_rows) if chunk_rows is not None else _chunk_rows(n, d)
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows!r}")

    # ----- pass 1: finiteness, pool sums, class sums (float64, streamed in row chunks) --------
    class_sum = np.zeros((c, d), dtype=np.float64)
    pool_sum = np.zeros(d, dtype=np.float64)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        blk = np.asarray(X[lo:hi], dtype=np.float64)
        finite = np.isfinite(blk).all(axis=1)
        if not finite.all():
            bad = lo + int(np.argmin(finite))
            raise ValueError(f"features row {bad} contains NaN or Inf")
        order = np.argsort(yi[lo:hi], kind="stable")
        _add_rows_sorted(class_sum, yi[lo:hi][order], blk[order])
        pool_sum += blk.sum(axis=0)
    raw_means = class_sum / counts[:, None]
    del class_sum

    if reference is None:
        mean = pool_sum / n
        # population std of the pool, two-pass for accuracy
        sq = np.zeros(d, dtype=np.float64)
        for lo in range(0, n, rows):
            hi = min(n, lo + rows)
            blk = np.asarray(X[lo:hi], dtype=np.float64) - mean
            sq += np.einsum("ij,ij->j", blk, blk)
        std = np.sqrt(sq / n)
    else:
        if not isinstance(reference, (tuple, list)) or len(reference) != 2:
            raise ValueError("reference must be a (mean, std) pair")
        mean = np.asarray(_to_numpy(reference[0], "reference mean"), dtype=np.float64).reshape(-1)
        std = np.asarray(_to_numpy(reference[1], "reference std"), dtype=np.float64).reshape(-1)
        if mean.shape != (d,) or std.shape != (d,):
            raise ValueError(
                f"reference mean/std must have shape ({d},), got {mean.shape} and {std.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise ValueError("reference mean/std contain NaN or Inf")
        if (std < 0).any():
            raise ValueError("reference std must be non-negative")
    std = np.maximum(std, eps)

    # ----- pass 2: class radii in standardised space -------------------------------------------
    # Var_c[z_d] = Var_c[x_d] / std_d^2; centred on the class means for accuracy.
    inv_var = 1.0 / (std * std)
    ss = np.zeros(c, dtype=np.float64)
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        blk = np.asarray(X[lo:hi], dtype=np.float64) - raw_means[yi[lo:hi]]  # never in place
        blk *= blk
        ss += np.bincount(yi[lo:hi], weights=blk @ inv_var, minlength=c)
    radius = np.sqrt(ss / counts)
    reach = abs(float(nsigma)) * radius  # ball radius per class

    M = (raw_means - mean) / std  # class centres, standardised (C x D)
    del raw_means
    total = np.zeros((c, d), dtype=np.float64)
    coef = 0.5 * float(constant) * float(step_size) ** 2
    reach_sum = reach[:, None] + reach[None, :]

    # ----- dynamics on the centres ------------------------------------------------------------
    n_iter = 0
    first_move = 0.0
    while n_iter < steps:
        n_iter += 1
        sqn = np.einsum("ij,ij->i", M, M)
        gram = M @ M.T
        d2 = sqn[:, None] + sqn[None, :] - 2.0 * gram
        del gram
        np.maximum(d2, 0.0, out=d2)
        dist = np.sqrt(d2, out=d2)
        overlap = reach_sum - dist
        np.fill_diagonal(overlap, 0.0)
        # coincident centres: no direction, no force (relative tolerance on the Gram estimate)
        tiny = 1e-12 * (1.0 + sqn[:, None] + sqn[None, :])
        overlap[(dist * dist) <= tiny] = 0.0
        ia, ib = np.nonzero(overlap > 0.0)
        if ia.size == 0:
            disp = None
            move = 0.0
        else:
            ov = overlap[ia, ib]
            shift = np.minimum(coef * ov, ov)
            w = shift / dist[ia, ib]
            rowsum = np.bincount(ia, weights=w, minlength=c)
            if ia.size <= _SPARSE_FRACTION * c * c:
                # sparse W @ M: np.nonzero yields ia sorted, so segment sums over pair blocks
                wm = np.zeros((c, d), dtype=np.float64)
                blk_pairs = _chunk_rows(ia.size, d)
                for lo in range(0, ia.size, blk_pairs):
                    hi = min(ia.size, lo + blk_pairs)
                    _add_rows_sorted(wm, ia[lo:hi], M[ib[lo:hi]] * w[lo:hi, None])
            else:
                Wd = np.zeros((c, c), dtype=np.float64)
                Wd[ia, ib] = w
                wm = Wd @ M
                del Wd
            disp = rowsum[:, None] * M - wm
            move = float(np.abs(disp).sum())
        del overlap, dist
        if n_iter == 1:
            first_move = move
            if move <= 0.0:
                break
        elif not move / first_move > exit_ratio:
            break
        assert disp is not None
        M += disp
        total += disp

    # ----- apply the class displacements to the samples ---------------------------------------
    out = np.empty((n, d), dtype=out_dtype)
    shift_raw = total * std if first_move > 0.0 else None
    for lo in range(0, n, rows):
        hi = min(n, lo + rows)
        if shift_raw is None:
            out[lo:hi] = X[lo:hi]
        else:
            out[lo:hi] = np.asarray(X[lo:hi], dtype=np.float64) + shift_raw[yi[lo:hi]]
    return out, n_iter
