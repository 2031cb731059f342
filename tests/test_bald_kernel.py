"""The compiled BALD kernel (csrc/bald_cpu.cpp, math in csrc/bald_math.h) against the plain
definition: values for every dtype, logits and probabilities, layouts (strided, transposed
samples, memmaps, torch), exclusion, the tie rule, threads, progress and cancellation, and its
errors. The CUDA kernel is compared with the CPU one where a GPU exists (`cuda` marker)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast as af
from asvp_fast import _C

ml_dtypes = pytest.importorskip("ml_dtypes")

_DTYPES = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16, "float32": np.float32, "float64": np.float64}


def _entropy_rows(p):
    """-sum p ln p over the last axis, 0 ln 0 = 0 (float64)."""
    logs = np.zeros_like(p)
    np.log(p, out=logs, where=p > 0)
    return -(p * logs).sum(axis=-1)


def _reference(x, from_logits):
    """BALD of every row of (T, N, C) samples, straight from the definition in float64."""
    v = np.asarray(x).astype(np.float64)
    if from_logits:
        v = np.exp(v - v.max(axis=2, keepdims=True))
        v /= v.sum(axis=2, keepdims=True)
    else:
        v = np.maximum(v, 0.0)
    return np.maximum(_entropy_rows(v.mean(axis=0)) - _entropy_rows(v).mean(axis=0), 0.0)


def _kernel(x, k, *, from_logits=False, exclude=None, threads=0, chunk_bytes=0, progress=None, validate=True):
    """(picks, scores) straight from the binding; scores of excluded rows are NaN."""
    t, n, _ = x.shape
    first, stride = x[0], x.strides[0] // x.itemsize
    scores = np.full(n, np.nan)
    picks = np.empty(k, dtype=np.int64)
    mask = None
    if exclude is not None:
        mask = np.zeros(n, dtype=np.uint8)
        mask[exclude] = 1
    _C.bald(first, t, stride, from_logits, validate, mask, scores, picks, k, threads, chunk_bytes, False, 0, progress)
    return picks, scores


def _samples(rng, t, n, c, dtype, from_logits):
    if from_logits:
        x = rng.standard_normal((t, n, c)) * 3
    else:
        x = rng.dirichlet(np.full(c, 0.4), (t, n))
    return x.astype(_DTYPES[dtype])


@settings(max_examples=60, deadline=None)
@given(t=st.integers(2, 6), n=st.integers(0, 40), c=st.integers(1, 7), dtype=st.sampled_from(sorted(_DTYPES)),
       from_logits=st.booleans(), seed=st.integers(0, 2**31 - 1), data=st.data())
def test_kernel_matches_the_definition_and_ranks_by_its_own_values(t, n, c, dtype, from_logits, seed, data):
    rng = np.random.default_rng(seed)
    x = _samples(rng, t, n, c, dtype, from_logits)
    if n > 3:
        x[:, n - 1] = x[:, 1]  # a duplicated row: an exact tie
    exclude = np.flatnonzero(rng.random(n) < 0.3)
    k = data.draw(st.integers(0, n - exclude.size))
    picks, scores = _kernel(x, k, from_logits=from_logits, exclude=exclude, validate=False)
    keep = np.setdiff1d(np.arange(n), exclude)
    np.testing.assert_allclose(scores[keep], _reference(x, from_logits)[keep], rtol=1e-9, atol=1e-12)
    assert np.isnan(scores[exclude]).all()  # excluded rows are not even read
    order = keep[np.lexsort((keep, -scores[keep]))]  # largest first, ties to the lower row
    assert picks.tolist() == order[:k].tolist()


def test_duplicated_rows_score_bit_identically_and_threads_change_nothing():
    rng = np.random.default_rng(5)
    x = _samples(rng, 8, 3000, 10, "float32", False)
    x[:, 2000:2010] = x[:, [17]]
    one, s1 = _kernel(x, 50, threads=1)
    two, s2 = _kernel(x, 50, threads=2, chunk_bytes=4096)
    assert one.tolist() == two.tolist()
    np.testing.assert_array_equal(s1, s2)
    assert len(set(s1[[17, *range(2000, 2010)]].tolist())) == 1


def test_layouts_give_the_contiguous_answer(tmp_path):
    rng = np.random.default_rng(6)
    x = _samples(rng, 5, 300, 6, "float32", True)
    want = af.bald(x, 20, from_logits=True)
    wide = np.zeros((5, 600, 9), dtype=np.float32)
    wide[:, ::2, 1:7] = x
    assert af.bald(wide[:, ::2, 1:7], 20, from_logits=True).tolist() == want.tolist()  # strided rows and columns
    rows_first = np.ascontiguousarray(np.moveaxis(x, 0, 1))  # stored (N, T, C), viewed as (T, N, C)
    assert af.bald(np.moveaxis(rows_first, 1, 0), 20, from_logits=True).tolist() == want.tolist()
    path = tmp_path / "mc.f32"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=x.shape)
    assert af.bald(mm, 20, from_logits=True).tolist() == want.tolist()
    torch = pytest.importorskip("torch")
    out = af.bald(torch.from_numpy(x), 20, from_logits=True)
    assert isinstance(out, torch.Tensor) and out.tolist() == want.tolist()


def test_public_function_equals_the_numpy_rendering():
    rng = np.random.default_rng(7)
    x = _samples(rng, 10, 2000, 5, "float64", False)
    from asvp_fast.acquisition import bald as bald_module

    want = bald_module.bald_scores(x)
    picks = af.bald(x, 100, exclude=np.arange(0, 2000, 7))
    allowed = np.setdiff1d(np.arange(2000), np.arange(0, 2000, 7))
    assert picks.tolist() == allowed[np.lexsort((allowed, -want[allowed]))][:100].tolist()


def test_progress_is_reported_per_chunk_and_an_exception_cancels():
    rng = np.random.default_rng(8)
    x = _samples(rng, 4, 1000, 8, "float32", False)
    seen = []
    _kernel(x, 5, chunk_bytes=4 * 8 * 4 * 100, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(d, 1000) for d in range(100, 1001, 100)]

    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _kernel(x, 5, chunk_bytes=4 * 8 * 4 * 100, progress=stop)


def test_the_first_bad_row_is_named_whatever_its_problem():
    rng = np.random.default_rng(9)
    x = _samples(rng, 3, 50, 4, "float32", False)
    x[2, 30, 1] = np.nan
    x[1, 12] *= 1.5  # sums to 1.5 in sample 1
    with pytest.raises(ValueError, match=r"^x row 12 is not a probability vector in every sample \(entries in \[0, 1\] "
                                         r"summing to 1 within 0\.001\)"):
        af.bald(x, 3)
    with pytest.raises(ValueError, match="x row 30 contains NaN or Inf"):
        af.bald(x, 3, validate=False)
    with pytest.raises(ValueError, match="x row 30 contains NaN or Inf"):
        af.bald(x, 3, validate=False, from_logits=True)
    assert 30 not in af.bald(x, 3, validate=False, exclude=[30]).tolist()  # excluded rows are not checked
    bf16 = x.astype(ml_dtypes.bfloat16)
    with pytest.raises(ValueError, match="within 0.0078125"):
        af.bald(bf16, 3)


def test_native_preconditions():
    x = np.full((3, 10, 2), 0.5)
    with pytest.raises(ValueError, match="at least 2 MC samples"):
        _C.bald(x[0], 1, 20, False, True, None, None, np.empty(1, np.int64), 1, 0, 0, False, 0)
    with pytest.raises(ValueError, match="k is larger"):
        _C.bald(x[0], 3, 20, False, True, np.ones(10, np.uint8), None, np.empty(1, np.int64), 1, 0, 0, False, 0)
    with pytest.raises(ValueError, match="scores output has length 9"):
        _C.bald(x[0], 3, 20, False, True, None, np.empty(9), None, 0, 0, 0, False, 0)
    with pytest.raises(TypeError, match="int64"):
        _C.bald(x[0].astype(np.int64), 3, 20, False, True, None, None, None, 0, 0, 0, False, 0)


@pytest.mark.cuda
def test_cuda_kernel_matches_the_cpu_kernel():
    torch = pytest.importorskip("torch")
    if not (af.backends()["cuda_compiled"] and af.backends()["cuda_devices"] > 0):
        pytest.skip("needs a CUDA device and a CUDA build")
    rng = np.random.default_rng(10)
    for dtype, from_logits in [("float32", True), ("float16", False), ("float64", False), ("bfloat16", True)]:
        x = _samples(rng, 12, 5000, 37, dtype, from_logits)
        x[:, 4000:4005] = x[:, [3]]
        exclude = np.arange(0, 5000, 11)
        want = af.bald(x, 64, from_logits=from_logits, exclude=exclude, validate=False)
        tensor = torch.from_numpy(x.astype(np.float32) if dtype == "bfloat16" else x).cuda()
        if dtype == "bfloat16":
            tensor = tensor.to(torch.bfloat16)
        got = af.bald(tensor, 64, from_logits=from_logits, exclude=exclude, validate=False)
        assert got.device.type == "cuda"
        assert got.cpu().tolist() == want.tolist()


def test_polynomial_exp_and_log_are_accurate_to_a_few_ulp():
    rng = np.random.default_rng(11)
    x = np.concatenate([-rng.random(20000) * 708, [0.0, -708.0, -1e-300, -0.5 * np.log(2), -745.0]])
    want = np.exp(np.maximum(x, -708.0))
    np.testing.assert_allclose(_C.bald_elementary(x, "exp"), want, rtol=4e-16, atol=0)
    y = np.concatenate([np.exp(rng.uniform(-700, 700, 20000)), [1.0, 2.0, 0.5, np.sqrt(2), 2.2250738585072014e-308,
                                                                   1.7976931348623157e308]])
    got = _C.bald_elementary(y, "log")
    np.testing.assert_allclose(got, np.log(y), rtol=4e-16, atol=4e-16)
    assert _C.bald_elementary(np.array([1.0]), "log")[0] == 0.0


@pytest.mark.parametrize("from_logits", [False, True])
def test_the_cuda_kernels_order_of_arithmetic_gives_the_cpu_values(from_logits):
    # The host rendering of bald.cu (32 lanes over the columns, butterfly merges) against the CPU
    # kernel: same values to rounding, exact ties for duplicated rows, the same bad row.
    rng = np.random.default_rng(12)
    for c in (1, 3, 31, 32, 33, 100):
        x = _samples(rng, 5, 60, c, "float64", from_logits)
        x[:, 50:53] = x[:, [7]]
        rendered = _C.bald_warp_rendering(x, from_logits, True, 1e-3)
        _, scores = _kernel(x, 0, from_logits=from_logits)
        np.testing.assert_allclose(rendered, scores, rtol=1e-12, atol=1e-15)
        assert len(set(rendered[[7, 50, 51, 52]].tolist())) == 1
    x = _samples(rng, 3, 10, 4, "float64", False)
    x[1, 4] *= 2
    assert np.isnan(_C.bald_warp_rendering(x, False, True, 1e-3)[4])
    assert not np.isnan(_C.bald_warp_rendering(x, False, True, 1e-3)[[0, 1, 2, 3, 5]]).any()
