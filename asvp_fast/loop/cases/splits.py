"""Seeded, disjoint pool/test splits shared by the case builders."""

from __future__ import annotations

from typing import Tuple

import numpy as np



def check_sizes(pool_size: int, test_size: int, available: int, what: str) -> None:
    if pool_size < 1 or test_size < 1:
        raise ValueError(f"pool_size and test_size must be positive, got {pool_size} and {test_size}")
    if pool_size + test_size > available:
        raise ValueError(
            f"pool_size + test_size = {pool_size + test_size} exceeds the {available} rows of {what}"
        )


def disjoint_split(n: int, pool_size: int, test_size: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Disjoint random (pool, test) row sets, each sorted.

    The test rows come first in the permutation, so for one seed the test set stays the same
    whatever the pool size (runs with growing pools are compared on the same test set).
    """
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[test_size : test_size + pool_size]), np.sort(order[:test_size])


def random_subset(n: int, size: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """``size`` seeded random rows of ``n``, sorted."""
    if not 1 <= size <= n:
        raise ValueError(f"{what} must be in 1..{n} (the rows available), got {size}")
    return np.sort(rng.permutation(n)[:size])


