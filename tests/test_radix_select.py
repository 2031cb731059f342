"""The CUDA path's selection algorithm (radix select over order-preserving 32-bit keys), run on
the host through the same shared code, against the NumPy reference. Runs without a GPU."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast._C as _C
import reference as ref

KIND_CODES = {"margin": 0, "entropy": 1, "least_confidence": 2}


@st.composite
def statistics(draw):
    n = draw(st.integers(1, 3000))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    style = draw(st.sampled_from(["continuous", "few_values", "signed_zeros", "extremes"]))
    if style == "continuous":
        s = rng.random(n).astype(np.float32)
    elif style == "few_values":  # heavy ties
        s = rng.choice(np.array([0.0, 0.25, 0.5, 1.0], np.float32), size=n)
    elif style == "signed_zeros":
        s = rng.choice(np.array([-0.0, 0.0, 1e-30, -1e-30], np.float32), size=n)
    else:
        s = rng.choice(np.array([np.inf, -np.inf, 3.4e38, -3.4e38, 1.0, np.nan], np.float32), size=n)
    mask = rng.random(n) < draw(st.sampled_from([0.0, 0.5, 0.95]))
    k = draw(st.integers(0, int(n - mask.sum())))
    return s, mask, k


@settings(max_examples=300, deadline=None)
@given(case=statistics(), kind=st.sampled_from(sorted(KIND_CODES)))
def test_radix_select_matches_reference(case, kind):
    s, mask, k = case
    got = _C.radix_select_scores(s, KIND_CODES[kind], mask.astype(np.uint8), k)
    # NaN statistics rank last (key -inf); signed zeros are equal.
    clean = np.where(np.isnan(s), np.inf if kind != "entropy" else -np.inf, s)
    np.testing.assert_array_equal(got, ref.select(clean.astype(np.float64) + 0.0, k, kind, mask))
