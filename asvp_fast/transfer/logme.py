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

Implementation: one eigendecomposition of the D x D Gram matrix FᵀF, or of the N x N matrix F Fᵀ
when N < D (the same non-zero eigenvalues; the projections v_iᵀFᵀy = √σ_i u_iᵀy then come from
per-class sums of the eigenvectors u_i); one product Fᵀ Y for all classes at once (per-class row
sums, never an N x C one-hot matrix); every class iterated together as vectors; float64 throughout
the small matrices. The features are read in chunks, so a memmap larger than RAM works; memory is
O(D² + C·D) beyond one chunk (O(N·D + N²) on the N < D path).

Devices: NumPy arrays (memmaps included) run on the CPU with NumPy; torch tensors run with torch
on their own device, so a CUDA tensor's Gram matrix and eigendecomposition stay on its GPU (in
float64). ``device="cuda"`` streams NumPy/memmap chunks to the GPU instead.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

_CHUNK_BYTES = 64 << 20
_MIN_PRECISION, _MAX_PRECISION = 1e-12, 1e12


def logme(features: Any, labels: Any, *, max_iter: int = 100, tol: float = 1e-6,
          device: Optional[str] = None) -> float:
    """LogME score of ``features`` (N, D) for the integer class ``labels`` (N,).

    Higher is better (features more linearly compatible with the labels). Labels may be any
    integers; classes are the distinct values present (at least 2).

    ``device``: ``None`` computes where the features live (NumPy on the CPU for arrays and
    memmaps, torch on the tensor's device for tensors); ``"cpu"`` or ``"cuda[:i]"`` forces one
    (``"cuda"`` streams a NumPy array or memmap to the GPU in chunks).
    """
    feats = _as_matrix(features)
    y = _as_labels(labels, feats.shape[0])
    n, d = feats.shape
    classes, inverse = np.unique(y, return_inverse=True)
    if classes.size < 2:
        raise ValueError(f"labels must contain at least 2 classes, got {classes.size}")
    target = _target_device(feats, device)
    if target is None:
        sigma, proj, ysq = _spectral_terms(feats, inverse, classes.size)
    else:
        sigma, proj, ysq = _spectral_terms_torch(feats, inverse, classes.size, target)
    evidence = _max_evidence(sigma, proj, ysq, n, d, max_iter=max_iter, tol=tol)
    return float(np.mean(evidence) / n)


def _is_tensor(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device") and hasattr(x, "dtype")


def _target_device(feats: Any, device: Optional[str]) -> Optional[str]:
    """None: the NumPy path; otherwise the torch device to compute on."""
    if device is None:
        return str(feats.device) if _is_tensor(feats) else None
    if device == "cpu" and not _is_tensor(feats):
        return None
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be None, 'cpu' or 'cuda[:i]', got {device!r}")
    return device


def _as_matrix(features: Any) -> Any:
    if _is_tensor(features):  # torch tensor: checked here, read by the torch path
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (N, D), got shape {tuple(features.shape)}")
        if features.shape[0] == 0 or features.shape[1] == 0:
            raise ValueError(f"features must have at least one row and one column, got shape {tuple(features.shape)}")
        if not features.dtype.is_floating_point:
            raise TypeError(f"features must be floating point, got dtype {features.dtype}")
        return features.detach()
    feats = features if isinstance(features, np.ndarray) else np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"features must be 2-D (N, D), got shape {feats.shape}")
    if feats.shape[0] == 0 or feats.shape[1] == 0:
        raise ValueError(f"features must have at least one row and one column, got shape {feats.shape}")
    if feats.dtype.kind != "f" and feats.dtype.name != "bfloat16":
        raise TypeError(f"features must be floating point, got dtype {feats.dtype}")
    return feats


def _as_labels(labels: Any, n: int) -> np.ndarray:
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the features, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {y.dtype}")
    return y


def _chunks(n: int, d: int):  # type: ignore[no-untyped-def]
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


def _spectral_terms(feats: np.ndarray, inverse: np.ndarray, c: int, *,
                    by_rows: Optional[bool] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Eigenvalues σ (D,), the class targets projected on the eigenvectors (D, C) scaled so that
    proj[i, c] = v_iᵀ Fᵀ y_c, and ‖y_c‖² (C,). ``by_rows`` picks the N x N path (default: N < D)."""
    n, d = feats.shape
    ysq = np.bincount(inverse, minlength=c).astype(np.float64)
    if n < d if by_rows is None else by_rows:  # the N x N matrix F Fᵀ is the smaller one (all N rows fit: N·D < D²)
        x = np.asarray(feats, dtype=np.float64)
        _check_rows(x, 0)
        sigma_n, u = np.linalg.eigh(x @ x.T)
        usums = np.zeros((c, n), dtype=np.float64)
        _add_class_sums(usums, inverse, u)
        sigma, proj = _pad_to_features(_zero_roundoff(sigma_n, n), usums, d)
        return sigma, proj, ysq
    gram = np.zeros((d, d), dtype=np.float64)
    class_sums = np.zeros((c, d), dtype=np.float64)  # (Fᵀ Y)ᵀ: per-class sums of rows
    for rows in _chunks(n, d):
        x = np.asarray(feats[rows], dtype=np.float64)
        _check_rows(x, rows.start)
        gram += x.T @ x
        _add_class_sums(class_sums, inverse[rows], x)
    sigma, vecs = np.linalg.eigh(gram)
    proj = vecs.T @ class_sums.T  # (D, C)
    return _zero_roundoff(sigma, d), proj, ysq


def _spectral_terms_torch(feats: Any, inverse: np.ndarray, c: int, device: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_spectral_terms` with torch on ``device`` (float64): the same two paths, the input
    (tensor, array or memmap) moved there chunk by chunk. Returns NumPy arrays (small: D and D x C)."""
    import torch

    dev = torch.device(device)
    n, d = feats.shape
    labels = torch.as_tensor(inverse, device=dev)
    ysq = np.bincount(inverse, minlength=c).astype(np.float64)

    def chunk(rows: slice) -> "torch.Tensor":
        part = feats[rows]
        x = part.to(dev, torch.float64) if _is_tensor(part) else torch.from_numpy(np.asarray(part, dtype=np.float64)).to(dev)
        finite = torch.isfinite(x).all(dim=1)
        if not bool(finite.all()):
            raise ValueError(f"features row {rows.start + int(torch.argmin(finite.to(torch.int8)))} contains NaN or Inf")
        return x

    if n < d:
        x = chunk(slice(0, n))
        sigma_n, u = torch.linalg.eigh(x @ x.T)
        usums = torch.zeros((c, n), dtype=torch.float64, device=dev).index_add_(0, labels, u)
        sigma, proj = _pad_to_features(_zero_roundoff(sigma_n.cpu().numpy(), n), usums.cpu().numpy(), d)
        return sigma, proj, ysq
    gram = torch.zeros((d, d), dtype=torch.float64, device=dev)
    class_sums = torch.zeros((c, d), dtype=torch.float64, device=dev)
    for rows in _chunks(n, d):
        x = chunk(rows)
        gram.addmm_(x.T, x)
        class_sums.index_add_(0, labels[rows], x)
    sigma_t, vecs = torch.linalg.eigh(gram)
    proj = (vecs.T @ class_sums.T).cpu().numpy()
    return _zero_roundoff(sigma_t.cpu().numpy(), d), proj, ysq


def _add_class_sums(out: np.ndarray, labels: np.ndarray, x: np.ndarray) -> None:
    """out[c] += Σ rows of x labelled c, by sorting the chunk (no N x C one-hot matrix)."""
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
    out[sorted_labels[starts]] += np.add.reduceat(x[order], starts, axis=0)


def _max_evidence(sigma: np.ndarray, proj: np.ndarray, ysq: np.ndarray, n: int, d: int, *,
                  max_iter: int, tol: float) -> np.ndarray:
    """Maximised log evidence of every class (C,), all classes iterated together."""
    s = sigma[:, None]  # (D, 1)
    c2 = proj**2  # (D, C): (v_iᵀ Fᵀ y)²
    alpha = np.ones(proj.shape[1])
    beta = np.ones(proj.shape[1])
    for _ in range(max_iter):
        denom = alpha + beta * s  # (D, C)
        gamma = (beta * s / denom).sum(axis=0)
        m_sq, residual = _posterior_terms(c2, s, denom, alpha, beta, ysq)
        # Bounded, so that a diverging α (uninformative features) or β (interpolated labels)
        # stays finite; the evidence is flat out there anyway.
        new_alpha = np.clip(gamma / np.maximum(m_sq, 1e-300), _MIN_PRECISION, _MAX_PRECISION)
        new_beta = np.clip((n - gamma) / np.maximum(residual, 1e-300), _MIN_PRECISION, _MAX_PRECISION)
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
