"""CUDA path: same results as the CPU path (needs a CUDA device; skipped visibly otherwise)."""

from __future__ import annotations

import numpy as np
import pytest

import asvp_fast as af

import reference as ref
from helpers import random_logits, random_probabilities

pytestmark = pytest.mark.cuda
torch = pytest.importorskip("torch")

KINDS = ["margin", "entropy", "least_confidence"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_cuda_tensor_matches_cpu(dtype, from_logits, rng):
    x = random_logits(rng, 20_000, 257) if from_logits else random_probabilities(rng, 20_000, 257)
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    g = t.cuda()
    exclude = torch.arange(0, 20_000, 7)
    for kind in KINDS:
        s_gpu = af.scores(g, kind, from_logits=from_logits)
        assert s_gpu.device == g.device
        s_cpu = af.scores(t, kind, from_logits=from_logits)
        np.testing.assert_allclose(s_gpu.cpu().numpy(), s_cpu.numpy(), rtol=1e-4, atol=2e-5)
        idx = af.select_uncertain(g, 1000, kind, from_logits=from_logits, exclude=exclude)
        assert idx.device == g.device and idx.dtype == torch.int64
        mask = np.zeros(20_000, bool)
        mask[exclude.numpy()] = True
        # exactly the order of the GPU's own scores, ties to the lower index
        np.testing.assert_array_equal(idx.cpu().numpy(), ref.select(s_gpu.cpu().numpy(), 1000, kind, mask))


def test_cuda_ties_and_numpy_input(rng):
    x = np.repeat(random_probabilities(rng, 50, 10), 40, axis=0)
    idx = af.select_uncertain(x, 500, "entropy", device="cuda")
    assert isinstance(idx, np.ndarray)
    np.testing.assert_array_equal(idx, ref.select(af.scores(x, "entropy", device="cuda"), 500, "entropy"))


def test_cuda_bad_row_named(rng):
    x = torch.from_numpy(random_probabilities(rng, 1000, 5)).cuda()
    x[613, 2] = float("nan")
    with pytest.raises(ValueError, match="row 613 of x contains NaN or Inf"):
        af.select_uncertain(x, 5)
