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


# --- diversity ----------------------------------------------------------------------------------

def sq_distances(x: np.ndarray, row: int) -> np.ndarray:
    """Squared Euclidean distance of every row of x to row `row`, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return ((x - x[row]) ** 2).sum(axis=1)


def greedy_radii(x: np.ndarray, picks, labeled=()) -> tuple:
    """For every step of a k-center sequence: (distance of the pick to the nearest earlier centre,
    the largest such distance over all rows that could have been picked), float64."""
    n = len(x)
    nearest = np.full(n, np.inf)
    for row in labeled:
        nearest = np.minimum(nearest, sq_distances(x, int(row)))
    blocked = np.zeros(n, dtype=bool)
    blocked[list(labeled)] = True
    chosen, best = [], []
    for row in picks:
        candidates = np.where(blocked, -np.inf, nearest)
        chosen.append(nearest[row])
        best.append(candidates.max())
        blocked[row] = True
        nearest = np.minimum(nearest, sq_distances(x, int(row)))
    return np.array(chosen), np.array(best)


def d2_probabilities(x: np.ndarray, centres, exclude=()) -> np.ndarray:
    """k-means++'s distribution of the next pick given the centres so far (D² weights)."""
    n = len(x)
    nearest = np.full(n, np.inf)
    for row in centres:
        nearest = np.minimum(nearest, sq_distances(x, int(row)))
    nearest[list(centres)] = 0.0
    nearest[list(exclude)] = 0.0
    return nearest / nearest.sum()


def gradient_embedding(p: np.ndarray, h: np.ndarray) -> np.ndarray:
    """BADGE's explicit embedding g_i = (p_i - onehot(argmax p_i)) (x) h_i, float64 (N x C*d)."""
    p = np.asarray(p, dtype=np.float64)
    h = np.asarray(h, dtype=np.float64)
    q = p.copy()
    q[np.arange(len(p)), p.argmax(axis=1)] -= 1.0
    return (q[:, :, None] * h[:, None, :]).reshape(len(p), -1)
