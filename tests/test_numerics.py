"""Regressions for the numerical bugs of issue 11: entropy from huge logit gaps, LogME at extreme
scales and with outliers, unbounded or unsupported PED calls, and metrics past the float64 range.
Each test names the value the old code gave."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast._C as _C
import asvp_fast.metrics as m
import reference as ref
from asvp_fast.transfer import logme as logme_module
from asvp_fast.transfer import ped as ped_module

KIND_CODES = {"margin": 0, "entropy": 1, "least_confidence": 2}


def reference_scores(x: np.ndarray, kind: str) -> np.ndarray:
    """float64 NumPy reference; x - max may overflow to -inf for float64 input, whose exp is 0."""
    with np.errstate(over="ignore"):
        return ref.scores(x, kind, from_logits=True)


# ---------------------------------------------------------------------------------------------
# Entropy (and margin, least confidence) from logits with huge gaps
# ---------------------------------------------------------------------------------------------


def test_a_confident_row_with_a_huge_logit_has_entropy_zero():
    x = np.zeros((2, 64), np.float32)
    x[0, 5] = 1e38  # the old kernels gave 103.7 for this row (more than ln 64 = 4.16)
    entropy = af.scores(x, "entropy", from_logits=True)
    assert 0.0 <= entropy[0] < 1e-6
    assert entropy[1] == pytest.approx(math.log(64), rel=1e-6)
    assert af.select_uncertain(x, 1, "entropy", from_logits=True).tolist() == [1]  # the uniform row
    np.testing.assert_allclose(_C.warp_emulated_scores(x, KIND_CODES["entropy"], True), entropy, atol=1e-7)
    for kind, confident in (("margin", 1.0), ("least_confidence", 1.0)):
        got = af.scores(x, kind, from_logits=True)
        assert got[0] == pytest.approx(confident, abs=1e-6), kind
        np.testing.assert_allclose(_C.warp_emulated_scores(x, KIND_CODES[kind], True), got, atol=1e-7)


@pytest.mark.parametrize("dtype,big", [(np.float32, 3.0e38), (np.float64, 1.7e308)])
def test_gaps_past_the_float_range_give_finite_scores(dtype, big):
    # z - max(z) = -2 * big overflows to -inf; the old kernels returned inf (float) or NaN (double)
    x = np.zeros((3, 40), dtype)
    x[0, :3] = [big, -big, big]  # two equal winners: entropy ln 2, margin 0, max p 1/2
    x[1, 7] = -big  # one impossible class among 40 equal ones
    x[2, 0] = big
    for kind in KIND_CODES:
        got = af.scores(x, kind, from_logits=True)
        assert np.isfinite(got).all(), kind
        np.testing.assert_allclose(got, reference_scores(x, kind), rtol=1e-5, atol=2e-6, err_msg=kind)
    assert af.scores(x, "entropy", from_logits=True)[0] == pytest.approx(math.log(2), rel=1e-6)


def test_float16_logits_at_the_range_ends():
    x = np.zeros((2, 20), np.float16)
    x[0, 3], x[0, 4] = 65504, -65504
    x[1, :] = -65504
    got = af.scores(x, "entropy", from_logits=True)
    np.testing.assert_allclose(got, reference_scores(x, "entropy"), atol=2e-6)


@st.composite
def logit_rows(draw):
    """Rows mixing ordinary logits with huge ones, scaled up to near the dtype's limit."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, c = draw(st.integers(1, 6)), draw(st.integers(2, 70))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    limit = 3.0e38 if dtype == np.float32 else 1.0e308
    scale = 10.0 ** draw(st.floats(-3, math.log10(limit)))
    x = rng.standard_normal((n, c)) * min(scale, limit / 8)
    huge = rng.random((n, c)) < draw(st.floats(0.0, 0.5))
    x[huge] = rng.choice([-1.0, 1.0], size=int(huge.sum())) * rng.uniform(0.1, 1.0, int(huge.sum())) * limit
    return x.astype(dtype)


@settings(max_examples=80, deadline=None)
@given(x=logit_rows(), kind=st.sampled_from(sorted(KIND_CODES)))
def test_scores_from_any_finite_logits_match_the_float64_reference(x, kind):
    got = af.scores(x, kind, from_logits=True)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, reference_scores(x, kind), rtol=1e-4, atol=2e-5)
    if x.dtype == np.float32:  # the CUDA kernel's arithmetic, emulated on the host
        np.testing.assert_allclose(_C.warp_emulated_scores(np.ascontiguousarray(x), KIND_CODES[kind], True), got,
                                   rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# LogME: scale, outliers, the iteration count
# ---------------------------------------------------------------------------------------------


def _classes(rng: np.random.Generator, n: int, d: int, c: int) -> tuple:
    y = rng.integers(0, c, n)
    y[:2] = [0, 1]
    f = rng.normal(size=(n, d)) + np.eye(c, d)[y]
    return f, y


def test_logme_of_features_at_1e150_is_the_score_at_scale_1(rng):
    f, y = _classes(rng, 200, 8, 3)
    base = af.logme(f, y)
    assert af.logme(f * 1e150, y) == pytest.approx(base, rel=1e-9)  # the old code returned NaN


@settings(max_examples=40, deadline=None)
@given(per_class=st.integers(10, 60), d=st.integers(1, 8), c=st.integers(2, 4), power=st.floats(-150, 150),
       seed=st.integers(0, 2**32 - 1))
def test_logme_is_scale_invariant(per_class, d, c, power, seed):
    # The maximised evidence is scale-free. MacKay's iteration can also settle at a second fixed
    # point (alpha at its bound: "the features say nothing") when a class has few samples, and
    # which one it reaches depends on the start (alpha = 1 in the input's units, as published):
    # so well-sampled classes here, iterated to convergence.
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(per_class * c) % c)
    f = rng.normal(size=(y.size, d)) + 2.0 * np.eye(c, d)[y]
    options = {"max_iter": logme_module.MAX_ITER, "tol": 1e-12}
    assert af.logme(f * 10.0**power, y, **options) == pytest.approx(af.logme(f, y, **options), rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(5, 30), extra=st.integers(1, 30), power=st.sampled_from([-300.0, -150.0, 150.0, 300.0]),
       seed=st.integers(0, 2**32 - 1))
def test_logme_with_fewer_samples_than_dimensions_is_finite_at_any_scale(n, extra, power, seed):
    # N < D: beta grows without bound and the iteration may settle at different points from
    # different starts (or, unconverged, amplify the rounding of two LAPACK builds), so no scale
    # invariance is claimed here: a finite score on both paths (the old code: NaN at 1e150)
    torch = pytest.importorskip("torch")
    f, y = _classes(np.random.default_rng(seed), n, n + extra, 2)
    scaled = f * 10.0**power
    assert math.isfinite(af.logme(scaled, y))
    assert math.isfinite(af.logme(torch.from_numpy(scaled), y))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(10, 200), d=st.integers(1, 30), outliers=st.integers(1, 3), power=st.floats(3, 150),
       float32=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_logme_with_outliers_is_finite_and_permutation_invariant(n, d, outliers, power, float32, seed):
    rng = np.random.default_rng(seed)
    f, y = _classes(rng, n, d, 3)
    f[rng.integers(0, n, outliers)] *= 10.0**power  # one 1e20 row moved the old score by 5% under permutation
    if float32 and power < 37:
        f = f.astype(np.float32)
    base = af.logme(f, y)
    assert math.isfinite(base)
    perm = rng.permutation(n)
    # The rounding of the Gram sums depends on the row order, and where beta reaches its bound
    # (1e12) it multiplies the rounding of the residual: a few 1e-6 at most. The old code moved by 5%.
    assert af.logme(f[perm], y[perm]) == pytest.approx(base, rel=1e-4, abs=1e-12)


def test_logme_is_finite_across_the_whole_float64_range(rng):
    f, y = _classes(rng, 60, 5, 3)
    f[:, 1] *= 1e-300  # a column 1e300 times smaller than the rest
    f[0] = 1.7e308  # and a row at the top of the range
    assert math.isfinite(af.logme(f, y))
    torch = pytest.importorskip("torch")
    assert math.isfinite(af.logme(torch.from_numpy(f), y))


def test_logme_torch_path_is_scale_invariant(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    f, y = _classes(rng, 3000, 6, 3)
    options = {"max_iter": logme_module.MAX_ITER, "tol": 1e-12}
    base = af.logme(f, y, **options)
    monkeypatch.setattr(logme_module, "_CHUNK_BYTES", 8 * 6 * 700)  # chunks, so the running scale grows
    for scale in (1e-150, 1e150):
        scaled = f * scale
        scaled[2500] *= 1e100 if scale < 1 else 1e-100  # a later chunk with a larger peak
        rescaled = f.copy()
        rescaled[2500] *= 1e100 if scale < 1 else 1e-100
        expected = af.logme(rescaled, y, **options)
        assert af.logme(torch.from_numpy(scaled), y, **options) == pytest.approx(expected, rel=1e-9)
        assert af.logme(scaled, y, **options) == pytest.approx(expected, rel=1e-9)
    assert math.isfinite(base)


def test_logme_ordinary_results_are_unchanged(rng):
    # the published algorithm (alpha = beta = 1 in the input's units) on unscaled features, as the old code
    f, y = _classes(rng, 120, 40, 3)
    f *= 7.3  # not a power of two
    classes, inverse = np.unique(y, return_inverse=True)
    n, d = f.shape
    gram = f.T @ f
    sigma, vecs = np.linalg.eigh(gram)
    sigma[sigma <= sigma.max() * d * np.finfo(np.float64).eps] = 0.0
    class_sums = np.stack([f[inverse == k].sum(0) for k in range(classes.size)])
    proj = vecs.T @ class_sums.T
    ysq = np.bincount(inverse).astype(np.float64)
    for iters in (1, 3, 100):
        unscaled = logme_module._max_evidence(sigma, proj, ysq, n, d, max_iter=iters, tol=0.0)
        assert af.logme(f, y, max_iter=iters, tol=0.0) == pytest.approx(float(np.mean(unscaled)) / n, rel=1e-12)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"max_iter": 0}, ValueError, "max_iter must be >= 1"),  # the old code returned an unmaximised evidence
    ({"max_iter": -3}, ValueError, "max_iter"),
    ({"max_iter": logme_module.MAX_ITER + 1}, ValueError, "max_iter must be <= "),
    ({"max_iter": 2.5}, TypeError, "max_iter must be an integer"),
    ({"max_iter": True}, TypeError, "max_iter"),
    ({"tol": -1e-6}, ValueError, "tol must be a finite number >= 0"),
    ({"tol": math.nan}, ValueError, "tol"),
    ({"tol": math.inf}, ValueError, "tol"),
    ({"tol": "1e-6"}, TypeError, "tol must be a real number"),
    ({"device": 5}, TypeError, "device"),  # the old code raised AttributeError
    ({"device": None}, TypeError, "device"),
    ({"device": "gpu"}, ValueError, "device"),
    ({"threads": 0}, ValueError, "threads"),
    ({"threads": 1.5}, TypeError, "threads"),
])
def test_logme_bad_options(rng, kwargs, error, match):
    f, y = _classes(rng, 30, 3, 2)
    with pytest.raises(error, match=match):
        af.logme(f, y, **kwargs)


def test_logme_on_an_unusable_gpu_names_it(rng):
    torch = pytest.importorskip("torch")
    f, y = _classes(rng, 30, 3, 2)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = ["cuda:7"] + ([] if count else ["cuda", "cuda:0"])  # the old code raised AssertionError
    for device in names:
        if device == "cuda:7" and count > 7:
            continue
        with pytest.raises(RuntimeError, match=re.escape(f"device={device!r}")):
            af.logme(f, y, device=device)


def test_logme_auto_and_cpu_give_the_default_result(rng):
    f, y = _classes(rng, 50, 4, 3)
    base = af.logme(f, y)
    assert af.logme(f, y, device="auto") == base
    assert af.logme(f, y, device="cpu", threads=1) == base
    torch = pytest.importorskip("torch")
    assert af.logme(torch.from_numpy(f), y, device="cpu") == pytest.approx(base, rel=1e-9)


def test_logme_threads_apply_during_the_call_and_are_restored(rng, monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    if not any(p["user_api"] == "blas" for p in threadpoolctl.threadpool_info()):
        pytest.skip("no BLAS thread pool visible to threadpoolctl")
    torch = pytest.importorskip("torch")

    def blas_threads() -> set:
        return {p["num_threads"] for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"}

    seen = []
    original = logme_module._max_evidence

    def spy(*args, **kwargs):
        seen.append((blas_threads(), torch.get_num_threads()))
        return original(*args, **kwargs)

    monkeypatch.setattr(logme_module, "_max_evidence", spy)
    f, y = _classes(rng, 50, 4, 3)
    before_blas, before_torch = blas_threads(), torch.get_num_threads()
    af.logme(f, y, threads=1)
    af.logme(torch.from_numpy(f), y, threads=1)
    assert seen[0][0] == {1}  # NumPy path: BLAS limited
    assert seen[1][1] == 1  # torch path: torch limited
    assert blas_threads() == before_blas and torch.get_num_threads() == before_torch


# ---------------------------------------------------------------------------------------------
# PED: bounded runs, bfloat16, outputs that follow the input, values near the limits
# ---------------------------------------------------------------------------------------------


def _blobs(rng: np.random.Generator, c: int = 4, d: int = 5, per: int = 30) -> tuple:
    centres = rng.standard_normal((c, d)) * 0.5
    y = np.repeat(np.arange(c), per)
    return centres[y] + rng.standard_normal((c * per, d)), y


def test_ped_steps_are_bounded(rng):
    X, y = _blobs(rng)
    with pytest.raises(ValueError, match=f"steps must be <= {ped_module.MAX_STEPS}"):
        af.ped(X, y, exit_ratio=0.0, steps=10**9)  # ran for hours before
    out, n_iter = af.ped(X, y, exit_ratio=0.0, steps=ped_module.MAX_STEPS, step_size=0.5)
    assert 2 <= n_iter <= ped_module.MAX_STEPS and np.isfinite(out).all()


@pytest.mark.parametrize("kwargs,error,match", [
    ({"exit_ratio": 1.0}, ValueError, "exit_ratio"),
    ({"exit_ratio": -0.1}, ValueError, "exit_ratio"),
    ({"exit_ratio": math.nan}, ValueError, "exit_ratio"),
    ({"step_size": math.inf}, ValueError, "step_size"),
    ({"step_size": -1.0}, ValueError, "step_size"),
    ({"nsigma": math.nan}, ValueError, "nsigma"),
    ({"nsigma": 1e300}, ValueError, "nsigma is too large"),
    ({"constant": -1.0}, ValueError, "constant"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"eps": 1e300}, ValueError, "eps"),
    ({"chunk_rows": 0}, ValueError, "chunk_rows"),
    ({"chunk_rows": 2.0}, TypeError, "chunk_rows"),
    ({"steps": "6"}, TypeError, "steps"),
    ({"constant": None}, TypeError, "constant"),
    ({"reference": (np.zeros(5), np.full(5, -1.0))}, ValueError, "non-negative"),
    ({"reference": (np.zeros(5), ["a"] * 5)}, TypeError, "reference std"),
    ({"reference": (np.full(5, 1e200), np.ones(5))}, ValueError, "reference mean"),
    ({"device": "cuda:x"}, ValueError, "device"),
    ({"threads": -1}, ValueError, "threads"),
])
def test_ped_bad_options(rng, kwargs, error, match):
    X, y = _blobs(rng)
    with pytest.raises(error, match=match):
        af.ped(X, y, **kwargs)


def test_ped_huge_steps_and_step_sizes_stay_finite(rng):
    X, y = _blobs(rng)
    for kwargs in ({"step_size": 1e300}, {"step_size": 1e200, "constant": 0.0}, {"constant": 1e308}):
        out, n_iter = af.ped(X, y, **kwargs)
        assert np.isfinite(out).all() and n_iter >= 1, kwargs


def test_ped_bfloat16_tensors_compute_in_float32(rng):
    torch = pytest.importorskip("torch")
    X, y = _blobs(rng)
    half = torch.from_numpy(X).to(torch.bfloat16)  # the old code failed: NumPy has no bfloat16
    out, n_iter = af.ped(half, y, step_size=0.9)
    expected, n_expected = af.ped(half.float().numpy(), y, step_size=0.9)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.device == half.device
    assert n_iter == n_expected > 1
    np.testing.assert_array_equal(out.numpy(), expected)


def test_ped_numpy_bfloat16(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    X, y = _blobs(rng)
    half = X.astype(ml_dtypes.bfloat16)
    out, n_iter = af.ped(half, y, step_size=0.9)
    expected, n_expected = af.ped(half.astype(np.float32), y, step_size=0.9)
    assert out.dtype == np.float32 and n_iter == n_expected
    np.testing.assert_array_equal(out, expected)


def test_ped_outputs_follow_the_input(rng):
    torch = pytest.importorskip("torch")
    X, y = _blobs(rng)
    out_np, _ = af.ped(X.astype(np.float32), y)
    assert isinstance(out_np, np.ndarray) and out_np.dtype == np.float32
    for dtype, expected in ((torch.float64, torch.float64), (torch.float16, torch.float32), (torch.int32, torch.float32)):
        t = torch.from_numpy(X).to(dtype)
        out, _ = af.ped(t, torch.from_numpy(y))
        assert isinstance(out, torch.Tensor) and out.dtype == expected and out.device == t.device
        np.testing.assert_array_equal(out.numpy(), af.ped(t.double().numpy(), y)[0].astype(out.numpy().dtype))


@pytest.mark.parametrize("as_tensor", [False, True])
def test_ped_torch_passes_match_numpy(rng, monkeypatch, as_tensor):
    """The passes of the CUDA path (torch, float64), run on the CPU, against the NumPy passes."""
    torch = pytest.importorskip("torch")
    X, y = _blobs(rng, c=6, d=7, per=25)
    expected, n_expected = af.ped(X, y, step_size=0.8, chunk_rows=17)
    monkeypatch.setattr(ped_module, "_compute_device", lambda features, device: torch.device("cpu"))
    features = torch.from_numpy(X) if as_tensor else X
    out, n_iter = af.ped(features, y, step_size=0.8, chunk_rows=17)
    assert n_iter == n_expected > 1
    assert isinstance(out, torch.Tensor) == as_tensor
    got = out.numpy() if as_tensor else out
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    bad = X.copy()
    bad[40, 2] = np.nan
    with pytest.raises(ValueError, match="row 40"):
        af.ped(torch.from_numpy(bad) if as_tensor else bad, y, chunk_rows=17)


def test_ped_on_an_unusable_gpu_names_it(rng):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is usable here")
    X, y = _blobs(rng)
    with pytest.raises(RuntimeError, match="cuda"):
        af.ped(X, y, device="cuda")


def test_ped_values_beyond_the_supported_range_are_named(rng):
    X, y = _blobs(rng)
    big = X * 1e150
    with pytest.raises(ValueError, match=r"features row 0 .*3.12e\+144"):
        af.ped(big, y)
    out, _ = af.ped(X * 1e140, y, step_size=0.9)  # within range: the same dynamics, scaled
    np.testing.assert_allclose(out / 1e140, af.ped(X, y, step_size=0.9)[0], rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="too far from the reference mean"):
        af.ped(X * 1e140, y, reference=(np.zeros(5), np.zeros(5)), eps=1e-100)  # z = 1e240


def test_ped_moved_float32_features_that_overflow_are_named(rng):
    X, y = _blobs(rng)
    X = (X / np.abs(X).max() * 3.3e38).astype(np.float32)
    with pytest.raises(ValueError, match="does not fit float32"):
        af.ped(X, y, step_size=3.0, nsigma=3.0)


def test_ped_threads_are_restored(rng):
    torch = pytest.importorskip("torch")
    X, y = _blobs(rng)
    before = torch.get_num_threads()
    expected = af.ped(X, y)
    got = af.ped(torch.from_numpy(X), y, threads=1)
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(got[0].numpy(), expected[0])


# ---------------------------------------------------------------------------------------------
# Metrics past the float64 range
# ---------------------------------------------------------------------------------------------


def test_overall_cost_overflow_is_a_value_error():
    with pytest.raises(ValueError, match="overflows float64"):
        m.overall_cost(1e308, 10, 0, 0)  # returned inf
    with pytest.raises(ValueError, match="overflows float64"):
        m.overall_cost([1.0, 2.0], 1.0, 1e308, [1.0, 10.0])
    with pytest.raises(ValueError, match="^n_labels holds a value too large"):
        m.overall_cost(10**400, 1, 0, 0)  # raised OverflowError
    with pytest.raises(ValueError, match="^reviews is too large"):
        m.overall_cost(1, 1, 0, 0, reviews=10**400)
    assert m.overall_cost(1e300, 1e5, 1e300, 1e5) == pytest.approx(2e305)


def test_huge_integers_are_named_not_overflow_errors():
    with pytest.raises(ValueError, match="^accuracy holds a value too large"):
        m.equivalent_random_labels(10**400, [100, 200], [0.5, 0.6])
    with pytest.raises(ValueError, match="^random_labels holds a value too large"):
        m.sample_saving_ratio(100, 0.6, [100, 10**400], [0.5, 0.6])
    with pytest.raises(ValueError, match="^n_labels holds a value too large"):
        m.average_sample_saving_ratio([10**400], [0.6], [100, 200], [0.5, 0.6])


@pytest.mark.parametrize("value", ["0.5", b"0.5", True, np.array([0.5 + 0j]), np.array(["0.5"])])
def test_strings_booleans_and_complex_numbers_are_not_accuracies(value):
    with pytest.raises(ValueError, match="^accuracy must be numeric"):  # "0.5" was read as 0.5
        m.equivalent_random_labels(value, [100, 200], [0.5, 0.6])


def test_accuracies_near_the_float64_limit_interpolate_exactly():
    # accuracy differences overflowed to inf: the midpoint came out as the right end (2.0)
    assert m.equivalent_random_labels(0.0, [1, 2], [-1e308, 1e308]) == 1.5
    assert m.equivalent_random_labels(-1.7e308, [1, 2], [-1.7e308, 1.7e308]) == 1.0
    got = m.equivalent_random_labels([-1e308, 0.0, 1e308], [0, 10, 20], [-1.5e308, 0.0, 1.5e308], outside="nan")
    np.testing.assert_allclose(got, [10 / 3, 10.0, 20 - 10 / 3], rtol=1e-12)


def test_saving_ratio_overflow_is_a_value_error():
    with pytest.raises(ValueError, match="overflows float64 at round index \\[0\\]"):
        m.sample_saving_ratio(1e308, 0.0, [5e-324, 1.0], [0.0, 1.0])  # returned -inf


def test_average_of_huge_ratios_is_finite():
    got = m.average_sample_saving_ratio([1e308, 1.5e308], [0.5, 0.5], [1.0, 2.0], [0.5, 0.6])  # was -inf
    assert got == pytest.approx(-1.25e308, rel=1e-12)
