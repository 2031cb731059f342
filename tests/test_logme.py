"""LogME against a plain per-class NumPy rendering of the published algorithm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast as af


def reference_logme(f: np.ndarray, y: np.ndarray, iters: int = 30) -> float:
    """You et al. (2021), Algorithm 1, one class at a time, explicit D-space posterior mean."""
    f = f.astype(np.float64)
    n, d = f.shape
    gram = f.T @ f
    sigma = np.linalg.eigvalsh(gram)
    sigma = np.where(sigma > sigma.max() * d * 1e-15, sigma, 0.0)
    scores = []
    for c in np.unique(y):
        t = (y == c).astype(np.float64)
        alpha = beta = 1.0
        for _ in range(iters):
            gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
            m = beta * np.linalg.solve(alpha * np.eye(d) + beta * gram, f.T @ t)
            res = float(np.sum((f @ m - t) ** 2))
            alpha, beta = gamma / max(float(m @ m), 1e-300), (n - gamma) / max(res, 1e-300)
        m = beta * np.linalg.solve(alpha * np.eye(d) + beta * gram, f.T @ t)
        res = float(np.sum((f @ m - t) ** 2))
        ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - alpha / 2 * float(m @ m) - beta / 2 * res
              - 0.5 * float(np.sum(np.log(alpha + beta * sigma))) - n / 2 * math.log(2 * math.pi))
        scores.append(ev / n)
    return float(np.mean(scores))


@settings(max_examples=40, deadline=None)
@given(extra=st.integers(8, 100), d=st.integers(1, 24), c=st.integers(2, 6), seed=st.integers(0, 2**31 - 1))
def test_matches_the_reference(extra, d, c, seed):
    n = 2 * d + extra  # more samples than dimensions: alpha and beta stay inside the clamp
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    y[:2] = [0, 1]
    f = rng.normal(size=(n, d)) + 0.7 * np.eye(c, d)[y % min(c, d)]
    # the same 30 fixed-point updates from alpha = beta = 1 (tol=0: no early stop) give the same evidence
    assert af.logme(f, y, max_iter=30, tol=0.0) == pytest.approx(reference_logme(f, y, 30), rel=1e-7, abs=1e-9)
    assert np.isfinite(af.logme(f, y))


def test_converged_default_matches_a_long_reference_run(rng):
    y = rng.integers(0, 4, 400)
    f = rng.normal(size=(400, 10)) + np.eye(4, 10)[y]
    assert af.logme(f, y) == pytest.approx(reference_logme(f, y, 300), rel=1e-8)


def test_more_dimensions_than_samples_is_finite(rng):
    # N < D: the features can interpolate the labels and the evidence keeps growing with beta;
    # the iteration stops at max_iter with a finite score
    f = rng.normal(size=(20, 60))
    y = rng.integers(0, 3, 20)
    with np.errstate(all="raise"):  # no inf/nan on the way either
        assert np.isfinite(af.logme(f, y))
        assert np.isfinite(af.logme(np.ones((30, 4)) + 1e-3 * rng.normal(size=(30, 4)), rng.integers(0, 2, 30)))


def test_invariant_to_sample_order_and_class_names(rng):
    f = rng.normal(size=(300, 16)).astype(np.float32)
    y = rng.integers(0, 4, 300)
    f[:, 0] += y
    base = af.logme(f, y)
    perm = rng.permutation(300)
    assert af.logme(f[perm], y[perm]) == pytest.approx(base, rel=1e-9)
    renamed = np.array([17, -3, 5, 99])[y]
    assert af.logme(f, renamed) == pytest.approx(base, rel=1e-9)


def test_informative_features_score_higher_than_noise(rng):
    y = rng.integers(0, 5, 2000)
    noise = rng.normal(size=(2000, 32))
    informative = noise.copy()
    informative[:, :5] += 3.0 * np.eye(5)[y]
    assert af.logme(informative, y) > af.logme(noise, y) + 0.1


def test_memmap_float16_and_chunking(tmp_path, rng, monkeypatch):
    from asvp_fast.transfer import logme as mod

    f = rng.normal(size=(5000, 12)).astype(np.float16)
    y = rng.integers(0, 7, 5000)
    path = tmp_path / "f.bin"
    f.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=f.shape)
    whole = af.logme(f.astype(np.float64), y)
    monkeypatch.setattr(mod, "_CHUNK_BYTES", 8 * 12 * 333)  # many small chunks
    assert af.logme(mm, y) == pytest.approx(whole, rel=1e-9)


def test_errors_name_the_problem(rng):
    f = rng.normal(size=(10, 3))
    with pytest.raises(ValueError, match="shape \\(10,\\)"):
        af.logme(f, np.zeros(9, int))
    with pytest.raises(ValueError, match="at least 2 classes"):
        af.logme(f, np.zeros(10, int))
    bad = f.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="row 4"):
        af.logme(bad, np.arange(10) % 2)
    with pytest.raises(ValueError, match="2-D"):
        af.logme(f[:, 0], np.arange(10) % 2)
    with pytest.raises(TypeError, match="integers"):
        af.logme(f, np.linspace(0, 1, 10))


def _evidence_by_path(f, y, by_rows, iters=10):
    from asvp_fast.transfer import logme as lm

    classes, inverse = np.unique(y, return_inverse=True)
    sigma, proj, ysq, exponent = lm._spectral_terms(f, inverse, classes.size, by_rows=by_rows)
    evidence = lm._max_evidence(sigma, proj, ysq, f.shape[0], f.shape[1], max_iter=iters, tol=0.0, exponent=exponent)
    return float(np.mean(evidence) / f.shape[0])


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 30), extra=st.integers(1, 40), c=st.integers(2, 4), seed=st.integers(0, 2**31 - 1))
def test_fewer_samples_than_dimensions_path_matches_the_gram_path_and_reference(n, extra, c, seed):
    rng = np.random.default_rng(seed)
    d = n + extra
    y = rng.integers(0, c, size=n)
    y[:2] = [0, 1]
    f = rng.normal(size=(n, d)) + np.eye(c, d)[y]
    by_rows, by_gram = _evidence_by_path(f, y, True), _evidence_by_path(f, y, False)
    assert by_rows == pytest.approx(by_gram, rel=1e-7, abs=1e-9)
    assert by_rows == pytest.approx(reference_logme(f, y, 10), rel=1e-7, abs=1e-9)
    assert af.logme(f, y, max_iter=10, tol=0.0) == pytest.approx(by_rows, rel=1e-12)  # N < D picks the row path


def test_torch_tensors_give_the_numpy_result(rng):
    torch = pytest.importorskip("torch")
    for n, d in ((500, 24), (40, 96)):  # the Gram path and the N < D path
        y = rng.integers(0, 5, n)
        f = (rng.normal(size=(n, d)) + np.eye(5, d)[y]).astype(np.float32)
        expected = af.logme(f, y)
        assert af.logme(torch.from_numpy(f), torch.from_numpy(y)) == pytest.approx(expected, rel=1e-9)
        assert af.logme(f, y, device="cpu") == expected
        half = torch.from_numpy(f).to(torch.bfloat16)
        assert af.logme(half, y) == pytest.approx(af.logme(half.float().numpy(), y), rel=1e-9)
    bad = torch.from_numpy(f.copy())
    bad[17, 3] = float("nan")
    with pytest.raises(ValueError, match="row 17"):
        af.logme(bad, y)
    with pytest.raises(ValueError, match="device"):
        af.logme(f, y, device="tpu")
    with pytest.raises(TypeError, match="floating"):
        af.logme(torch.ones((4, 2), dtype=torch.int64), np.array([0, 1, 0, 1]))


def test_torch_path_streams_chunks(rng, monkeypatch):
    torch = pytest.importorskip("torch")
    from asvp_fast.transfer import logme as lm

    y = rng.integers(0, 3, 3000)
    f = rng.normal(size=(3000, 8)) + np.eye(3, 8)[y]
    expected = af.logme(f, y)
    monkeypatch.setattr(lm, "_CHUNK_BYTES", 8 * 8 * 700)  # 700-row chunks, the last one partial
    assert af.logme(torch.from_numpy(f), y) == pytest.approx(expected, rel=1e-9)


@pytest.mark.cuda
def test_cuda_matches_cpu(rng, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    for n, d in ((4000, 64), (50, 200)):
        y = rng.integers(0, 10, n)
        f = (rng.normal(size=(n, d)) + np.eye(10, d)[y]).astype(np.float32)
        expected = af.logme(f, y)
        assert af.logme(torch.from_numpy(f).cuda(), y) == pytest.approx(expected, rel=1e-8)
        mm = np.lib.format.open_memmap(tmp_path / f"f{n}.npy", mode="w+", dtype=np.float32, shape=f.shape)
        mm[:] = f
        assert af.logme(mm, y, device="cuda") == pytest.approx(expected, rel=1e-8)
