"""Reference implementations for the transferability benchmark (``asvp-fast bench --suite transfer``)
and the tests (pytest puts bench/ on the path): the plain forms our LogME and PED are measured
and checked against.

* :func:`logme_per_class` – LogME the way the published implementation is organised: one
  eigendecomposition of FᵀF, then a Python loop over classes, each with its own one-hot target,
  matrix-vector product Fᵀy and fixed-point iteration (float64).
* :func:`ped_dense` – PED with the dense C x C x D pair tensor, statistics recomputed from the
  moved samples at every step.
"""

from __future__ import annotations

import math

import numpy as np


def logme_per_class(f: np.ndarray, y: np.ndarray, *, max_iter: int = 100, tol: float = 1e-6,
                    classes: "int | None" = None) -> "tuple[float, int]":
    """Mean per-sample evidence over the first ``classes`` classes (all by default, for timing a
    subset and extrapolating) and the number of classes done."""
    f = np.asarray(f, dtype=np.float64)
    n, d = f.shape
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.where(sigma > sigma.max() * d * np.finfo(np.float64).eps, sigma, 0.0)
    labels = np.unique(y)[: classes or None]
    scores = []
    for c in labels:
        t = (y == c).astype(np.float64)
        proj_sq = (v.T @ (f.T @ t)) ** 2
        alpha = beta = 1.0
        for _ in range(max_iter):
            denom = alpha + beta * sigma
            gamma = float((beta * sigma / denom).sum())
            m_sq = float((beta**2 * proj_sq / denom**2).sum())
            pos = sigma > 0
            res = max(float(t @ t) - float((proj_sq[pos] / sigma[pos]).sum()), 0.0) + float(
                (alpha**2 * proj_sq[pos] / (sigma[pos] * denom[pos] ** 2)).sum())
            new_alpha = min(max(gamma / max(m_sq, 1e-300), 1e-12), 1e12)
            new_beta = min(max((n - gamma) / max(res, 1e-300), 1e-12), 1e12)
            done = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
            alpha, beta = new_alpha, new_beta
            if done:
                break
        denom = alpha + beta * sigma
        m_sq = float((beta**2 * proj_sq / denom**2).sum())
        pos = sigma > 0
        res = max(float(t @ t) - float((proj_sq[pos] / sigma[pos]).sum()), 0.0) + float(
            (alpha**2 * proj_sq[pos] / (sigma[pos] * denom[pos] ** 2)).sum())
        ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - alpha / 2 * m_sq - beta / 2 * res
              - 0.5 * float(np.log(denom).sum()) - n / 2 * math.log(2 * math.pi))
        scores.append(ev / n)
    return float(np.mean(scores)), len(labels)


def ped_dense(X, y, *, steps=6, step_size=0.1, nsigma=0.6, exit_ratio=0.5,
                    constant=1.0, eps=1e-3, reference=None):
    """Plain dense PED: C x C x D pair tensor, statistics recomputed from the moved samples
    at every step (as the authors' One_Step_PED / PED_Score do). Returns (X_moved, evaluations)."""
    X = np.asarray(X, dtype=np.float64).copy()
    classes, yi = np.unique(y, return_inverse=True)
    C = len(classes)
    if reference is None:
        mu, sd = X.mean(0), X.std(0)
    else:
        mu, sd = (np.asarray(r, dtype=np.float64) for r in reference)
    sd = np.maximum(sd, eps)
    first = None
    n_eval = 0
    while n_eval < steps:
        n_eval += 1
        Z = (X - mu) / sd
        means = np.stack([Z[yi == k].mean(0) for k in range(C)])
        R = np.sqrt(np.stack([Z[yi == k].var(0) for k in range(C)]).sum(1))
        diff = means[:, None, :] - means[None, :, :]  # C x C x D
        dist = np.sqrt((diff ** 2).sum(-1))
        ov = np.maximum(abs(nsigma) * (R[:, None] + R[None, :]) - dist, 0.0)
        np.fill_diagonal(ov, 0.0)
        mag = np.minimum(0.5 * constant * step_size ** 2 * ov, ov)
        with np.errstate(invalid="ignore", divide="ignore"):
            unit = np.where(dist[..., None] > 0, diff / dist[..., None], 0.0)
        disp = (unit * mag[..., None]).sum(1)  # C x D, class a pushed away from every b
        move = np.abs(disp).sum()
        if first is None:
            first = move
            if move == 0:
                break
        elif not move / first > exit_ratio:
            break
        X = X + (disp * sd)[yi]
    return X, n_eval
