"""The CUDA row kernel's arithmetic (lanes over columns, butterfly merge; uncertainty_math.h),
run on the host against the NumPy reference. Runs without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast._C as _C
import reference as ref
from helpers import random_logits, random_probabilities

KIND_CODES = {"margin": 0, "entropy": 1, "least_confidence": 2}


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), c=st.integers(2, 700), kind=st.sampled_from(sorted(KIND_CODES)),
       from_logits=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_warp_math_matches_reference_and_cpu(n, c, kind, from_logits, seed):
    rng = np.random.default_rng(seed)
    x = random_logits(rng, n, c, scale=5.0) if from_logits else random_probabilities(rng, n, c)
    warp = _C.warp_emulated_scores(x, KIND_CODES[kind], from_logits)
    np.testing.assert_allclose(warp, ref.scores(x, kind, from_logits), rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(warp, af.scores(x, kind, from_logits=from_logits), rtol=1e-5, atol=1e-6)


def test_warp_math_rejects_non_finite_rows():
    x = np.full((3, 40), 1 / 40, np.float32)
    x[1, 33] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        _C.warp_emulated_scores(x, 0, False)
