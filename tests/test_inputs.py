"""Memory maps, non-contiguous arrays and torch tensors give the same results as plain arrays."""

from __future__ import annotations

import numpy as np
import pytest

import asvp_fast as af

import reference as ref
from helpers import random_logits, random_probabilities

torch = pytest.importorskip("torch")


def test_memmap_input(tmp_path, rng):
    x = random_probabilities(rng, 4000, 50)
    path = tmp_path / "probs.f32"
    x.tofile(path)
    for mode in ("r", "r+", "c"):
        m = np.memmap(path, dtype=np.float32, mode=mode, shape=x.shape)
        np.testing.assert_array_equal(af.select_uncertain(m, 123, "entropy"), af.select_uncertain(x, 123, "entropy"))
        np.testing.assert_array_equal(af.scores(m, "margin"), af.scores(x, "margin"))
        # the data is still readable after the pages were released
        np.testing.assert_array_equal(np.asarray(m[:10]), x[:10])


def test_memmap_slice_input(tmp_path, rng):
    x = random_logits(rng, 3000, 40, np.float16)
    path = tmp_path / "logits.f16"
    x.tofile(path)
    m = np.memmap(path, dtype=np.float16, mode="r", shape=x.shape)
    np.testing.assert_array_equal(af.select_uncertain(m[1000:2500], 50, from_logits=True),
                                  af.select_uncertain(x[1000:2500], 50, from_logits=True))


@pytest.mark.parametrize("view", ["columns", "rows", "fortran", "negative", "both"])
def test_non_contiguous_input(view, rng):
    base = random_logits(rng, 3000, 64)
    x = {
        "columns": base[:, ::2],
        "rows": base[::3],
        "fortran": np.asfortranarray(base),
        "negative": base[::-1, ::-1],
        "both": base[::2, 1::3],
    }[view]
    assert not (x.flags.c_contiguous and view != "fortran")
    dense = np.ascontiguousarray(x)
    for kind in ("margin", "entropy", "least_confidence"):
        np.testing.assert_array_equal(af.scores(x, kind, from_logits=True), af.scores(dense, kind, from_logits=True))
        np.testing.assert_array_equal(af.select_uncertain(x, 77, kind, from_logits=True),
                                      af.select_uncertain(dense, 77, kind, from_logits=True))


def test_python_lists_are_accepted():
    x = [[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]]
    assert af.select_uncertain(x, 1).tolist() == [1]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_cpu_tensors(dtype, rng):
    x = random_logits(rng, 2000, 30)
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    exact = t.to(torch.float64).numpy()
    s = af.scores(t, "entropy", from_logits=True)
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float32 and s.device.type == "cpu"
    rtol, atol = (1e-6, 1e-7) if dtype == "float64" else (1e-4, 2e-5)
    np.testing.assert_allclose(s.numpy(), ref.scores(exact, "entropy", True), rtol=rtol, atol=atol)
    idx = af.select_uncertain(t, 40, "entropy", from_logits=True, exclude=torch.arange(10))
    assert isinstance(idx, torch.Tensor) and idx.dtype == torch.int64
    np.testing.assert_array_equal(idx.numpy(), ref.select(s.numpy(), 40, "entropy", np.arange(2000) < 10))


def test_torch_tensor_requiring_grad_and_strided(rng):
    x = torch.from_numpy(random_logits(rng, 500, 20)).requires_grad_()
    view = x[::2, 1:]
    idx = af.select_uncertain(view, 10, from_logits=True)
    np.testing.assert_array_equal(idx.numpy(), af.select_uncertain(view.detach().numpy().copy(), 10, from_logits=True))
