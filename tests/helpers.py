"""Random test data."""

from __future__ import annotations

import numpy as np


def random_probabilities(rng, n, c, dtype=np.float32, concentration=1.0):
    p = rng.dirichlet(np.full(c, concentration), size=n)
    return p.astype(dtype)


def random_logits(rng, n, c, dtype=np.float32, scale=3.0):
    return (rng.standard_normal((n, c)) * scale).astype(dtype)
