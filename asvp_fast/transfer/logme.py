"""LogME (You et al., ICML 2021; JMLR 2022): the log marginal evidence of a linear model on features.

For each class c the one-hot target y_c is modelled as Bayesian linear regression on the features
F (N x D) with prior w ~ N(0, α⁻¹ I) and noise N(0, β⁻¹). α and β maximise the evidence
p(y_c | F, α, β) by MacKay's fixed-point iteration:

    γ = Σ_i βσ_i / (α + βσ_i),   α ← γ / ‖m‖²,   β ← (N − γ) / ‖F m − y‖²,

where σ_i are the eigenvalues of FᵀF and m = β (αI + βFᵀF)⁻¹ Fᵀy the posterior mean. The
iteration stops when α and β change by less than ``tol`` (relative) or after ``max_iter`` steps.
Where the features interpolate a class's labels (N ≤ D) β grows without bound, and where they
carry no information about it α does: both are kept within [1e-12, 1e12], and the iteration then
ends at ``max_iter`` with a finite score
(the authors' implementation stops after a fixed 11 updates for the same reason).
LogME is the mean over classes of the maximised log evidence divided by N.

Scale: the maximised evidence does not depend on the scale of the features (scaling F by s is
absorbed by α → α/s²). The features are therefore divided by 2^e, the power of two just above
their largest absolute value, before any product is formed: the division is exact, so ordinary
features give the result of the unscaled arithmetic, and features near the float64 limits (1e150
and beyond, whose squares overflow, or 1e-200, whose squares underflow) give the same finite
score as the same features at an ordinary scale. The iteration starts from α = 1 in the input's
units (α = 2^-2e in the scaled ones: the published start, so ordinary results are unchanged) and
the bounds on α apply in the scaled units. The score is therefore scale-invariant wherever the
iteration converges to the maximum; where it stops at ``max_iter`` (N ≤ D) or settles at the
second fixed point α → bound ("the features say nothing" for a class with few samples), the start
matters, as it does in the published algorithm. Eigendirections the features do not span
(eigenvalues at round-off level) get no share of Fᵀy, as in exact arithmetic; a huge outlier row
therefore cannot turn round-off into evidence.

Implementation: one eigendecomposition of the D x D Gram matrix FᵀF, or of the N x N matrix F Fᵀ
when N < D (the same non-zero eigenvalues; the projections v_iᵀFᵀy = √σ_i u_iᵀy then come from
per-class sums of the eigenvectors u_i); one product Fᵀ Y for all classes at once (per-class row
sums, never an N x C one-hot matrix); every class iterated together as vectors; float64 throughout
the small matrices. The features are read in chunks, so a memmap larger than RAM works; memory is
O(D² + C·D) beyond one chunk (O(N·D + N²) on the N < D path). The power of two grows with the
largest value seen so far; the sums accumulated before are rescaled (exactly) when it does.

Devices (``device=``, the package's one rule): ``"auto"`` computes where the features live:
NumPy arrays and memmaps on the CPU with NumPy, torch tensors with torch on their own device, so
a CUDA tensor's Gram matrix and eigendecomposition stay on its GPU (in float64). ``"cpu"`` runs on
the CPU (torch for tensors, NumPy otherwise); ``"cuda"``/``"cuda:N"`` streams a NumPy array or
memmap (or a tensor from elsewhere) to that GPU in chunks. A device that is not usable raises
:class:`RuntimeError` naming it. ``threads``: BLAS (NumPy path) or torch threads for this call,
restored afterwards; ``None`` leaves them as they are (all cores by default).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor, parse_device, parse_int, parse_labels, parse_real, parse_threads
from ..core.devices import torch_device
from ..core.threads import limit_threads

__all__ = ["MAX_ITER", "logme"]

_CHUNK_BYTES = 64 << 20
_MIN_PRECISION, _MAX_PRECISION = 1e-12, 1e12

MAX_ITER = 10_000
"""The largest ``max_iter`` accepted: the iteration converges in tens of steps where it converges at
all, and each step costs O(D·C), so more would only let a typo run for hours."""

# (eigenvalues σ (D,), projections (D, C), ‖y_c‖² (C,), e): the spectral terms of F · 2^-e.
Spectrum = Tuple[np.ndarray, np.ndarray, np.ndarray, int]


def logme(features: Any, labels: Any, *, max_iter: int = 100, tol: float = 1e-6,
          device: Any = "auto", threads: Optional[int] = None) -> float:
    """LogME score of ``features`` (N, D) for the integer class ``labels`` (N,).

    Higher is better (features more linearly compatible with the labels). Labels may be any
    integers; classes are the distinct values present (at least 2).

    ``features``: a floating NumPy array (float16, bfloat16, float32, float64; memmaps included)
    or a floating torch tensor; every value finite. ``max_iter``: fixed-point updates at most, an
    integer in [1, :data:`MAX_ITER`]. ``tol``: relative change of α and β that ends the iteration
    (a finite number >= 0; 0 runs all ``max_iter`` updates). ``device``: ``"auto"`` (where the
    features live), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. ``threads``: None or a positive integer.

    Raises TypeError for arguments of the wrong type, ValueError for wrong values (shapes, NaN or
    Inf in the features, fewer than 2 classes, options out of range) and RuntimeError for a
    device that is not usable here.
    """
    max_iter = parse_int(max_iter, "max_iter", minimum=1, maximum=MAX_ITER)
    tol = parse_real(tol, "tol", minimum=0.0)
    n_threads = parse_threads(threads)
    feats = _as_matrix(features)
    y = parse_labels(labels, feats.shape[0])
    n, d = feats.shape
    classes, inverse = np.unique(y, return_inverse=True)
    inverse = inverse.reshape(-1)
    if classes.size < 2:
        raise ValueError(f"labels must contain at least 2 classes, got {classes.size}")
    target = _target_device(feats, device)
    with limit_threads(n_threads, ("blas",) if target is None else ("torch",)):
        if target is None:
            spectrum = _spectral_terms(feats, inverse, classes.size)
        else:
            spectrum = _spectral_terms_torch(feats, inverse, classes.size, target)
        sigma, proj, ysq, exponent = spectrum
        evidence = _max_evidence(sigma, proj, ysq, n, d, max_iter=max_iter, tol=tol, exponent=exponent)
    return float(np.mean(evidence) / n)


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def _target_device(feats: Any, device: Any) -> Any:
    """None: the NumPy path; otherwise the ``torch.device`` to compute on."""
    spec = parse_device(device)
    tensor = is_torch_tensor(feats)
    if spec.kind == "auto":
        return feats.device if tensor else None
    if spec.kind == "cpu" and not tensor:
        return None
    return torch_device(str(spec))  # RuntimeError naming the device when it is not usable


def _as_matrix(features: Any) -> Any:
    if is_torch_tensor(features):  # torch tensor: checked here, read by the torch path
        _check_shape(tuple(features.shape))
        if not features.dtype.is_floating_point:
            raise TypeError(f"features must be floating point, got dtype {features.dtype}")
        return features.detach()
    if isinstance(features, (str, bytes)):
        raise TypeError(f"features must be a 2-D floating-point array, got {type(features).__name__}")
    try:
        feats = features if isinstance(features, np.ndarray) else np.asarray(features)
    except (TypeError, ValueError) as exc:  # ragged nested lists and the like
        raise TypeError(f"features must be a 2-D floating-point array ({exc})") from None
    _check_shape(feats.shape)
    if feats.dtype.kind != "f" and feats.dtype.name != "bfloat16":
        raise TypeError(f"features must be floating point, got dtype {feats.dtype}")
    return feats


def _check_shape(shape: Tuple[int, ...]) -> None:
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"features must have at least one row and one column, got shape {shape}")


# ----------------------------------------------------------------------------------------------
# Exact power-of-two scaling
# ----------------------------------------------------------------------------------------------


def _peak_exponent(peak: float) -> Optional[int]:
    """e with peak · 2^-e in [0.5, 1) (None for 0): dividing by 2^e is exact."""
    return math.frexp(peak)[1] if peak > 0 else None


def _ldexp_torch(t: Any, exponent: int) -> Any:
    """t · 2^exponent, in factors that are representable doubles (2^±1000 at most)."""
    while exponent:
        step = max(-1000, min(1000, exponent))
        t = t * math.ldexp(1.0, step)
        exponent -= step
    return t


class _ScaledSums:
    """FᵀF and the per-class row sums of F · 2^-e, accumulated chunk by chunk, where 2^e is the power
    of two just above the largest |value| seen so far (``exponent`` None while all were 0).

    When a chunk raises the peak, the sums so far are rescaled to the new power of two: exact,
    except for parts 2^-1000 below the new peak, which round away as they would in the sum anyway.
    """

    def __init__(self, gram: Any, class_sums: Any) -> None:
        self.gram = gram
        self.class_sums = class_sums
        self.exponent: Optional[int] = None

    def add(self, x: Any, labels: Any) -> None:
        e = _peak_exponent(self._peak(x))
        if e is not None and (self.exponent is None or e > self.exponent):
            if self.exponent is not None:
                self.gram = self._ldexp(self.gram, 2 * (self.exponent - e))
                self.class_sums = self._ldexp(self.class_sums, self.exponent - e)
            self.exponent = e
        self._accumulate(self._ldexp(x, -self.exponent) if self.exponent else x, labels)

    def _peak(self, x: Any) -> float:
        raise NotImplementedError

    def _ldexp(self, x: Any, exponent: int) -> Any:
        raise NotImplementedError

    def _accumulate(self, x: Any, labels: Any) -> None:
        raise NotImplementedError


class _NumpySums(_ScaledSums):
    def __init__(self, d: int, c: int) -> None:
        super().__init__(np.zeros((d, d), dtype=np.float64), np.zeros((c, d), dtype=np.float64))

    def _peak(self, x: np.ndarray) -> float:
        return float(max(x.max(), -x.min()))

    def _ldexp(self, x: np.ndarray, exponent: int) -> np.ndarray:
        return np.ldexp(x, exponent)

    def _accumulate(self, x: np.ndarray, labels: np.ndarray) -> None:
        self.gram += x.T @ x
        _add_class_sums(self.class_sums, labels, x)


class _TorchSums(_ScaledSums):
    def __init__(self, d: int, c: int, device: Any) -> None:
        import torch

        super().__init__(torch.zeros((d, d), dtype=torch.float64, device=device),
                         torch.zeros((c, d), dtype=torch.float64, device=device))

    def _peak(self, x: Any) -> float:
        return float(x.abs().max())

    def _ldexp(self, x: Any, exponent: int) -> Any:
        return _ldexp_torch(x, exponent)

    def _accumulate(self, x: Any, labels: Any) -> None:
        self.gram.addmm_(x.T, x)
        self.class_sums.index_add_(0, labels, x)


# ----------------------------------------------------------------------------------------------
# Spectral terms
# ----------------------------------------------------------------------------------------------


def _chunks(n: int, d: int) -> Iterator[slice]:
    step = max(1, _CHUNK_BYTES // (8 * d))
    for s in range(0, n, step):
        yield slice(s, min(n, s + step))


def _check_rows(x: np.ndarray, start: int) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"features row {start + int(np.argmax(bad))} contains NaN or Inf")


def _zero_roundoff(sigma: np.ndarray, k: int) -> np.ndarray:
    """Eigenvalues at round-off level are zeros (directions the features do not span)."""
    sigma[sigma <= max(float(sigma.max()), 0.0) * k * np.finfo(np.float64).eps] = 0.0
    return sigma


def _pad_to_features(sigma_n: np.ndarray, usums: np.ndarray, d: int) -> Tuple[np.ndarray, np.ndarray]:
    """N < D path: eigenvalues of F Fᵀ (N,) and per-class sums of its eigenvectors (C, N) → the
    D eigenvalues of FᵀF (the extra D − N are zero) and proj[i, c] = √σ_i u_iᵀ y_c (zero rows for
    the null directions, which Fᵀy does not reach)."""
    n = sigma_n.size
    sigma = np.zeros(d, dtype=np.float64)
    sigma[:n] = sigma_n
    proj = np.zeros((d, usums.shape[0]), dtype=np.float64)
    proj[:n] = np.sqrt(sigma_n)[:, None] * usums.T
    return sigma, proj


def _gram_spectrum(gram: np.ndarray, class_sums: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Eigenvalues of the D x D Gram matrix and proj = Vᵀ (Fᵀ Y) (D, C), with no share of Fᵀy in
    the directions whose eigenvalue is at round-off level: in exact arithmetic Fᵀy lies in F's row
    space, and a round-off projection divided by a round-off eigenvalue is noise, not evidence."""
    d = gram.shape[0]
    sigma, vecs = np.linalg.eigh(gram)
    sigma = _zero_roundoff(sigma, d)
    proj = vecs.T @ class_sums.T
    proj[sigma == 0.0] = 0.0
    return sigma, proj


def _spectral_terms(feats: np.ndarray, inverse: np.ndarray, c: int, *,
                    by_rows: Optional[bool] = None) -> Spectrum:
    """Eigenvalues σ (D,) of (F·2^-e)ᵀ(F·2^-e), the class targets projected on the eigenvectors
    (D, C) scaled so that proj[i, c] = v_iᵀ (F·2^-e)ᵀ y_c, ‖y_c‖² (C,), and e (0 for all-zero
    features). ``by_rows`` picks the N x N path (default: N < D)."""
    n, d = feats.shape
    ysq = np.bincount(inverse, minlength=c).astype(np.float64)
    if n < d if by_rows is None else by_rows:  # the N x N matrix F Fᵀ is the smaller one (all N rows fit: N·D < D²)
        x = np.asarray(feats, dtype=np.float64)
        _check_rows(x, 0)
        e = _peak_exponent(float(max(x.max(), -x.min()))) or 0
        if e:
            x = np.ldexp(x, -e)  # a new array: the caller's is never modified
        sigma_n, u = np.linalg.eigh(x @ x.T)
        usums = np.zeros((c, n), dtype=np.float64)
        _add_class_sums(usums, inverse, u)
        sigma, proj = _pad_to_features(_zero_roundoff(sigma_n, n), usums, d)
        return sigma, proj, ysq, e
    sums = _NumpySums(d, c)
    for rows in _chunks(n, d):
        x = np.asarray(feats[rows], dtype=np.float64)
        _check_rows(x, rows.start)
        sums.add(x, inverse[rows])
    sigma, proj = _gram_spectrum(sums.gram, sums.class_sums)
    return sigma, proj, ysq, sums.exponent or 0


def _spectral_terms_torch(feats: Any, inverse: np.ndarray, c: int, device: Any) -> Spectrum:
    """:func:`_spectral_terms` with torch on ``device`` (float64): the same two paths, the input
    (tensor, array or memmap) moved there chunk by chunk. Returns NumPy arrays (small: D and D x C)."""
    import torch

    dev = torch.device(device)
    n, d = feats.shape
    labels = torch.as_tensor(inverse, device=dev)
    ysq = np.bincount(inverse, minlength=c).astype(np.float64)

    def chunk(rows: slice) -> "torch.Tensor":
        part = feats[rows]
        x = part.to(dev, torch.float64) if is_torch_tensor(part) else torch.from_numpy(np.asarray(part, dtype=np.float64)).to(dev)
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"features row {rows.start + int(torch.argmin(finite.to(torch.int8)))} contains NaN or Inf")
        return x

    if n < d:
        x = chunk(slice(0, n))
        e = _peak_exponent(float(x.abs().max())) or 0
        if e:
            x = _ldexp_torch(x, -e)
        sigma_n, u = torch.linalg.eigh(x @ x.T)
        usums = torch.zeros((c, n), dtype=torch.float64, device=dev).index_add_(0, labels, u)
        sigma, proj = _pad_to_features(_zero_roundoff(sigma_n.cpu().numpy(), n), usums.cpu().numpy(), d)
        return sigma, proj, ysq, e
    sums = _TorchSums(d, c, dev)
    for rows in _chunks(n, d):
        sums.add(chunk(rows), labels[rows])
    sigma_t, vecs = torch.linalg.eigh(sums.gram)
    sigma = _zero_roundoff(sigma_t.cpu().numpy(), d)
    proj = (vecs.T @ sums.class_sums.T).cpu().numpy()
    proj[sigma == 0.0] = 0.0  # as in _gram_spectrum
    return sigma, proj, ysq, sums.exponent or 0


def _add_class_sums(out: np.ndarray, labels: np.ndarray, x: np.ndarray) -> None:
    """out[c] += Σ rows of x labelled c, by sorting the chunk (no N x C one-hot matrix)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    out[sorted_labels[starts]] += np.add.reduceat(x[order], starts, axis=0)


# ----------------------------------------------------------------------------------------------
# The evidence
# ----------------------------------------------------------------------------------------------


def _initial_alpha(exponent: int) -> float:
    """α = 1 in the input's units is 2^-2e for the features divided by 2^e, kept in the bounds."""
    power = max(-80, min(80, -2 * exponent))  # 2^±80 is past both bounds already
    return min(max(math.ldexp(1.0, power), _MIN_PRECISION), _MAX_PRECISION)


def _max_evidence(sigma: np.ndarray, proj: np.ndarray, ysq: np.ndarray, n: int, d: int, *,
                  max_iter: int, tol: float, exponent: int = 0) -> np.ndarray:
    """Maximised log evidence of every class (C,), all classes iterated together, for the
    spectral terms of the features divided by 2^``exponent`` (the evidence does not change)."""
    s = sigma[:, None]  # (D, 1)
    c2 = proj**2  # (D, C): (v_iᵀ Fᵀ y)²
    alpha = np.full(proj.shape[1], _initial_alpha(exponent))
    beta = np.ones(proj.shape[1])
    for _ in range(max_iter):
        denom = alpha + beta * s  # (D, C)
        gamma = (beta * s / denom).sum(axis=0)
        m_sq, residual = _posterior_terms(c2, s, denom, alpha, beta, ysq)
        # Bounded, so that a diverging α (uninformative features) or β (interpolated labels)
        # stays finite; the evidence is flat out there anyway.
        new_alpha = np.clip(gamma / np.maximum(m_sq, 1e-300), _MIN_PRECISION, _MAX_PRECISION)
        new_beta = np.clip((n - gamma) / np.maximum(residual, 1e-300), _MIN_PRECISION, _MAX_PRECISION)
        with np.errstate(over="ignore"):  # a huge tol: inf, which every change is below
            done = (np.abs(new_alpha - alpha) <= tol * np.abs(alpha)) & (np.abs(new_beta - beta) <= tol * np.abs(beta))
        alpha, beta = new_alpha, new_beta
        if done.all():
            break
    denom = alpha + beta * s
    m_sq, residual = _posterior_terms(c2, s, denom, alpha, beta, ysq)
    return (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - alpha / 2.0 * m_sq - beta / 2.0 * residual
            - 0.5 * np.log(denom).sum(axis=0) - n / 2.0 * math.log(2.0 * math.pi))


def _posterior_terms(c2: np.ndarray, s: np.ndarray, denom: np.ndarray, alpha: np.ndarray, beta: np.ndarray,
                     ysq: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """‖m‖² and ‖F m − y‖² in the eigenbasis.

    With m_i = β c_i / (α + βσ_i): ‖m‖² = Σ β² c_i² / (α+βσ_i)², and the residual
    ‖y‖² − 2 mᵀFᵀy + mᵀFᵀF m = ‖y‖² − Σ c_i² β (2(α+βσ_i) − βσ_i) / (α+βσ_i)², written as
    ‖y‖² − Σ c_i²/σ_i (the part of y inside F's column space) + Σ α² c_i² / (σ_i (α+βσ_i)²),
    which has no cancellation between large terms.
    """
    m_sq = (beta**2 * c2 / denom**2).sum(axis=0)
    positive = s > 0
    safe_s = np.where(positive, s, 1.0)
    inside = np.where(positive, c2 / safe_s, 0.0).sum(axis=0)
    kept = np.where(positive, alpha**2 * c2 / (safe_s * denom**2), 0.0).sum(axis=0)
    residual = np.maximum(ysq - inside, 0.0) + kept
    return m_sq, residual
