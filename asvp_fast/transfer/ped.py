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
* Devices: the streaming passes over the N rows run with NumPy on the CPU, or with torch on a
  CUDA device (``device="cuda"``, or ``"auto"`` for a CUDA tensor); the dynamics on the small
  ``C x D`` centres always run with NumPy. The output follows the input: NumPy for NumPy/memmap
  input, a torch tensor on the input's device for torch input.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor, parse_device, parse_int, parse_labels, parse_real, parse_threads
from ..core.devices import torch_device
from ..core.threads import limit_threads
from .ped_passes import MAX_ABS_VALUE, NumpyPasses, RowPasses, TorchPasses, add_rows_sorted, default_chunk_rows

__all__ = ["MAX_ABS_VALUE", "MAX_STEPS", "ped"]

# Defaults, all from the authors' public code (github.com/lixiaotong97/PED, evaluate_metric_cpu.py
# argparse defaults and metrics.py:PED_Score / One_Step_PED).
DEFAULT_STEPS = 6  # `while number_step < 6` in PED_Score
DEFAULT_STEP_SIZE = 0.1  # `--step 0.1` (the time step dt)
DEFAULT_NSIGMA = 0.6  # `--nsigma 0.6` (radius multiplier; 0.3 is the other candidate)
DEFAULT_EXIT_RATIO = 0.5  # `--er 0.5`
DEFAULT_CONSTANT = 1.0  # `--constant 1` (force constant; acceleration = constant * overlap)
DEFAULT_EPS = 1e-3  # std floor used when standardising

MAX_STEPS = 1000
"""The largest ``steps`` accepted. Each step costs O(C²·D); the authors use 6, and with
``exit_ratio=0`` a run goes on until no pair overlaps, which a typo in ``steps`` (10**9) turned into
hours."""

# |feature| and |reference| values are at most MAX_ABS_VALUE (2^480, about 3.1e144: the float64
# sums of squares cannot overflow); eps outside [1e-100, 1e100] would overflow or underflow 1/std².
EPS_RANGE = (1e-100, 1e100)
# Standardised centres and ball radii above this would overflow the dynamics' squared distances.
_MAX_GEOMETRY = 2.0**400

# Below this fraction of overlapping pairs the weight matrix is applied as a sparse matrix.
_SPARSE_FRACTION = 0.05


class _Options(NamedTuple):
    steps: int
    step_size: float
    nsigma: float
    exit_ratio: float
    constant: float
    eps: float
    chunk_rows: Optional[int]


class _Statistics(NamedTuple):
    mean: np.ndarray  # (D,) standardisation centre
    std: np.ndarray  # (D,) standardisation scale, floored at eps
    centres: np.ndarray  # (C, D) class means, standardised
    reach: np.ndarray  # (C,) ball radius |nsigma| * R_c


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
    device: Any = "auto",
    threads: Optional[int] = None,
) -> Tuple[Any, int]:
    """Run PED feature dynamics and return the moved features.

    Parameters
    ----------
    features : array_like (N, D)
        Any real dtype (float16, bfloat16, float32, float64, integers; memory maps included) or
        a torch tensor on any device. Every value finite and at most :data:`MAX_ABS_VALUE`
        (about 3.1e144) in magnitude.
    labels : array_like of int (N,)
        Class labels; any integer values (remapped internally). At least two classes.
    steps : int
        Maximum number of dynamics iterations (force evaluations), in [2, :data:`MAX_STEPS`],
        at least 2 so that a run that moves anything always reports ``n_iterations >= 2``.
    step_size : float
        The time step ``dt`` (finite, > 0). A step moves an overlapping pair by
        ``min(0.5 * constant * dt**2 * overlap, overlap)``.
    reference : (mean, std) or None
        Standardisation statistics, each of shape (D,). ``None`` (default) uses the mean and
        (population) standard deviation of ``features`` themselves, fixed for the whole run. The
        authors standardise with ImageNet-val feature statistics; pass those here to reproduce it.
        ``std`` (non-negative) is floored at ``eps``.
    nsigma : float
        Radius multiplier (finite; its sign is ignored): the ball of class ``c`` has radius
        ``|nsigma| * R_c``.
    exit_ratio : float in [0, 1)
        A step is kept only while its total movement divided by the first step's total movement
        exceeds ``exit_ratio``; otherwise the dynamics stop (that step is discarded).
    constant : float
        Force constant (finite, >= 0; acceleration = ``constant * overlap``).
    eps : float
        Floor on the standardisation std, in [1e-100, 1e100].
    chunk_rows : int, optional
        Rows processed at a time in the streaming passes (default: ~32 MB of float64), >= 1.
    device : "auto" | "cpu" | "cuda" | "cuda:N"
        Where the passes over the rows run: ``"auto"`` on a CUDA tensor's GPU, else the CPU.
        A device that is not usable raises RuntimeError naming it.
    threads : int, optional
        BLAS/torch threads for this call (restored afterwards); None leaves them as they are.

    Returns
    -------
    features_after : np.ndarray or torch.Tensor (N, D)
        The moved features in the *original* (un-standardised) coordinates, like the reference
        code (which maps back with ``X * std + mean``). float64 for float64 input, else float32;
        a NumPy array for NumPy input, a tensor on the input's device for a torch tensor.
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

    Raises
    ------
    TypeError
        An argument of the wrong type (non-numeric features, non-integer labels or steps, ...).
    ValueError
        A wrong value: shapes, NaN/Inf or too large values, fewer than 2 classes, an option out
        of its range, or moved features that would not fit the output dtype.
    RuntimeError
        ``device`` names a device that is not usable here.

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
    Deterministic on the CPU; no random numbers are used.
    """
    opts = _parse_options(steps, step_size, nsigma, exit_ratio, constant, eps, chunk_rows)
    n_threads = parse_threads(threads)
    X = _as_features(features)
    n, d = X.shape
    yi, c = _class_index(labels, n, X.shape)
    target = _compute_device(X, device)
    rows = min(opts.chunk_rows or default_chunk_rows(n, d), n)
    passes: RowPasses = NumpyPasses(X, yi, c, rows) if target is None else TorchPasses(X, yi, c, rows, target)
    ref = None if reference is None else _parse_reference(reference, d)
    with limit_threads(n_threads, ("blas",) if target is None else ("torch", "blas")):
        stats = _statistics(passes, ref, opts)
        total, n_iter = _dynamics(stats.centres, stats.reach, opts)
        shift = None if n_iter == 1 else _raw_shift(total, stats.std)  # n_iter == 1: nothing moved
        out = passes.moved(shift, _output_dtype(X))
    return out, n_iter


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def _parse_options(steps: Any, step_size: Any, nsigma: Any, exit_ratio: Any, constant: Any, eps: Any,
                   chunk_rows: Any) -> _Options:
    steps = parse_int(steps, "steps", minimum=2, maximum=MAX_STEPS)
    step_size = parse_real(step_size, "step_size")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size!r}")
    nsigma = parse_real(nsigma, "nsigma")
    exit_ratio = parse_real(exit_ratio, "exit_ratio")
    if not 0.0 <= exit_ratio < 1.0:
        raise ValueError(f"exit_ratio must be in [0, 1), got {exit_ratio!r}")
    constant = parse_real(constant, "constant")
    if constant < 0:
        raise ValueError(f"constant must be >= 0 (the force repels overlapping classes), got {constant!r}")
    eps = parse_real(eps, "eps")
    if not EPS_RANGE[0] <= eps <= EPS_RANGE[1]:
        raise ValueError(f"eps must be in [{EPS_RANGE[0]:g}, {EPS_RANGE[1]:g}], got {eps!r}")
    rows = None if chunk_rows is None else parse_int(chunk_rows, "chunk_rows", minimum=1)
    return _Options(steps, step_size, nsigma, exit_ratio, constant, eps, rows)


def _as_features(features: Any) -> Any:
    """The (N, D) input, checked: a numpy array (memmaps kept as they are) or a detached tensor."""
    if is_torch_tensor(features):
        X = features.detach()
        if X.is_complex():
            raise TypeError(f"features must be real numbers, got dtype {X.dtype}")
    else:
        if isinstance(features, (str, bytes)):
            raise TypeError(f"features must be a 2-D numeric array, got {type(features).__name__}")
        try:
            X = features if isinstance(features, np.ndarray) else np.asarray(features)
        except (TypeError, ValueError) as exc:  # ragged nested lists and the like
            raise TypeError(f"features must be a 2-D numeric array ({exc})") from None
        if X.dtype.kind not in "fiub" and X.dtype.name != "bfloat16":
            raise TypeError(f"features must be numeric, got dtype {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise ValueError("features is empty (N == 0)")
    if X.shape[1] == 0:
        raise ValueError("features has no dimensions (D == 0)")
    return X


def _class_index(labels: Any, n: int, shape: Tuple[int, ...]) -> Tuple[np.ndarray, int]:
    """Labels remapped to 0..C-1 (intp), and C (at least 2)."""
    y = parse_labels(labels, n, of=f"features {tuple(shape)}")
    classes, yi = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        raise ValueError(f"PED needs at least 2 classes, got {classes.shape[0]}")
    return yi.reshape(-1).astype(np.intp, copy=False), int(classes.shape[0])


def _parse_reference(reference: Any, d: int) -> Tuple[np.ndarray, np.ndarray]:
    if not isinstance(reference, (tuple, list)) or len(reference) != 2:
        raise TypeError(f"reference must be a (mean, std) pair or None, got {type(reference).__name__}")
    mean, std = (_reference_vector(part, name, d) for part, name in zip(reference, ("mean", "std")))
    if (std < 0).any():
        raise ValueError("reference std must be non-negative")
    return mean, std


def _reference_vector(value: Any, name: str, d: int) -> np.ndarray:
    if is_torch_tensor(value):
        value = value.detach().cpu().double().numpy()
    try:
        raw = np.asarray(value)
        if raw.dtype.kind not in "iufO" and raw.dtype.name != "bfloat16":  # no strings, bools, complex
            raise TypeError(f"dtype {raw.dtype}")
        vector = raw.astype(np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"reference {name} must be a real vector of shape ({d},) ({exc})") from None
    if vector.shape != (d,):
        raise ValueError(f"reference mean/std must have shape ({d},), got {vector.shape} for the {name}")
    if not (np.abs(vector) <= MAX_ABS_VALUE).all():
        raise ValueError(f"reference {name} contains NaN, Inf or a value above {MAX_ABS_VALUE:.3g} in magnitude")
    return vector


def _compute_device(X: Any, device: Any) -> Any:
    """None: the passes run with NumPy on the CPU; otherwise the CUDA ``torch.device`` to use."""
    spec = parse_device(device)
    if spec.kind == "cpu":
        return None
    if spec.kind == "auto":
        on_cuda = is_torch_tensor(X) and X.device.type == "cuda"
        return X.device if on_cuda else None
    return torch_device(str(spec))  # RuntimeError naming the device when it is not usable


def _output_dtype(X: Any) -> Any:
    """float64 for float64 input, else float32 (as a NumPy dtype)."""
    name = str(X.dtype).replace("torch.", "")
    return np.float64 if name == "float64" else np.float32


# ----------------------------------------------------------------------------------------------
# Class statistics and dynamics (NumPy, on the C x D centres)
# ----------------------------------------------------------------------------------------------


def _statistics(passes: RowPasses, reference: Optional[Tuple[np.ndarray, np.ndarray]], opts: _Options) -> _Statistics:
    """Standardisation, standardised class centres and ball radii (two or three passes)."""
    class_sum, pool_sum = passes.class_and_pool_sums()
    counts = np.bincount(passes.yi, minlength=passes.c).astype(np.float64)
    raw_means = class_sum / counts[:, None]
    if reference is None:
        mean = pool_sum / passes.n
        std = np.sqrt(passes.pool_squares(mean) / passes.n)  # population std of the pool, two-pass
    else:
        mean, std = reference
    std = np.maximum(std, opts.eps)
    # Var_c[z_d] = Var_c[x_d] / std_d^2; centred on the class means for accuracy. Far outside the
    # reference distribution these can overflow: checked below, not warned about.
    with np.errstate(over="ignore", invalid="ignore"):
        inv_var = 1.0 / (std * std)
        radius = np.sqrt(passes.class_squares(raw_means, inv_var) / counts)
        reach = abs(opts.nsigma) * radius  # ball radius per class
        centres = (raw_means - mean) / std  # class centres, standardised (C x D)
    _check_geometry(centres, radius, reach, reference is not None)
    return _Statistics(mean, std, centres, reach)


def _check_geometry(centres: np.ndarray, radius: np.ndarray, reach: np.ndarray, with_reference: bool) -> None:
    """ValueError unless the standardised problem fits the dynamics' float64 arithmetic."""
    if not (np.abs(centres) <= _MAX_GEOMETRY).all() or not (radius <= _MAX_GEOMETRY).all():
        source = "reference" if with_reference else "features"
        raise ValueError(f"the standardised class centres or radii exceed {_MAX_GEOMETRY:.3g} standard deviations "
                         f"(the features lie too far from the {source} mean for the float64 dynamics)")
    if not (reach <= _MAX_GEOMETRY).all():
        raise ValueError(f"nsigma is too large: |nsigma| * class radius exceeds {_MAX_GEOMETRY:.3g}")


def _step_coefficient(step_size: float, constant: float) -> float:
    """0.5 * constant * dt², capped at 1: a step moves a pair by min(coef, 1) * overlap either way
    (min(coef * ov, ov)), and the cap keeps a huge dt from overflowing."""
    try:
        coef = 0.5 * constant * step_size**2
    except OverflowError:  # dt**2 beyond float range
        return 1.0 if constant > 0 else 0.0
    return min(coef, 1.0)


def _displacement(M: np.ndarray, reach_sum: np.ndarray, coef: float) -> Optional[np.ndarray]:
    """One force evaluation at centres M: the displacement (C x D), None when no pair overlaps."""
    c, d = M.shape
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
        return None
    ov = overlap[ia, ib]
    shift = np.minimum(coef * ov, ov)
    w = shift / dist[ia, ib]
    rowsum = np.bincount(ia, weights=w, minlength=c)
    if ia.size <= _SPARSE_FRACTION * c * c:
        # sparse W @ M: np.nonzero yields ia sorted, so segment sums over pair blocks
        wm = np.zeros((c, d), dtype=np.float64)
        blk_pairs = default_chunk_rows(ia.size, d)
        for lo in range(0, ia.size, blk_pairs):
            hi = min(ia.size, lo + blk_pairs)
            add_rows_sorted(wm, ia[lo:hi], M[ib[lo:hi]] * w[lo:hi, None])
    else:
        Wd = np.zeros((c, c), dtype=np.float64)
        Wd[ia, ib] = w
        wm = Wd @ M
        del Wd
    disp: np.ndarray = rowsum[:, None] * M - wm
    return disp


def _dynamics(centres: np.ndarray, reach: np.ndarray, opts: _Options) -> Tuple[np.ndarray, int]:
    """The accumulated displacement of every class (C x D, standardised) and the iterations evaluated."""
    M = centres.copy()
    total = np.zeros_like(M)
    coef = _step_coefficient(opts.step_size, opts.constant)
    reach_sum = reach[:, None] + reach[None, :]
    n_iter = 0
    first_move = 0.0
    # Overflow is only possible for centres near the geometry bound; the result is checked below.
    with np.errstate(over="ignore", invalid="ignore"):
        while n_iter < opts.steps:
            n_iter += 1
            disp = _displacement(M, reach_sum, coef)
            move = 0.0 if disp is None else float(np.abs(disp).sum())
            if n_iter == 1:
                first_move = move
                if move <= 0.0:
                    break
            elif not move / first_move > opts.exit_ratio:
                break
            assert disp is not None
            M += disp
            total += disp
    if not np.isfinite(total).all():
        raise ValueError("PED's dynamics overflowed float64: the standardised class centres are too far apart")
    return total, n_iter


def _raw_shift(total: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The class displacements in input units; ValueError if they leave float64 range."""
    with np.errstate(over="ignore"):
        shift: np.ndarray = total * std
    if not np.isfinite(shift).all():
        raise ValueError("the moved features leave the float64 range; scale the features down")
    return shift
