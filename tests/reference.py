"""Plain NumPy reference implementations the kernels are tested against (float64, no tricks)."""

from __future__ import annotations

import numpy as np


def probabilities(x: np.ndarray, from_logits: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if not from_logits:
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def scores(x: np.ndarray, kind: str, from_logits: bool = False) -> np.ndarray:
    p = probabilities(x, from_logits)
    if kind == "margin":
        top = np.sort(p, axis=1)
        return top[:, -1] - top[:, -2]
    if kind == "entropy":
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, p * np.log(p), 0.0)
        return -terms.sum(axis=1)
    if kind == "least_confidence":
        return p.max(axis=1)
    raise ValueError(kind)


def uncertainty_order(statistic: np.ndarray, kind: str) -> np.ndarray:
    """All rows, most uncertain first, ties to the lower index (a full stable sort)."""
    key = statistic if kind == "entropy" else -statistic
    return np.lexsort((np.arange(len(key)), -key.astype(np.float64)))


def select(statistic: np.ndarray, k: int, kind: str, exclude_mask=None) -> np.ndarray:
    order = uncertainty_order(statistic, kind)
    if exclude_mask is not None:
        order = order[~np.asarray(exclude_mask)[order]]
    return order[:k]
