"""Scores and top-k selection against the NumPy reference (tests/reference.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast._C as _C
import asvp_fast.acquisition.uncertainty as unc

import reference as ref
from helpers import random_logits, random_probabilities

KINDS = ["margin", "entropy", "least_confidence"]
DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def tolerance(dtype):
    # float64 input is reduced in double precision; everything else in float32.
    return (1e-6, 1e-7) if dtype == np.float64 else (1e-4, 2e-5)


def make_rows(seed: int, n: int, c: int, dtype, from_logits: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if from_logits:
        return random_logits(rng, n, c, dtype, scale=float(rng.choice([0.1, 3.0, 30.0])))
    concentration = float(rng.choice([0.05, 1.0, 20.0]))
    return random_probabilities(rng, n, c, dtype, concentration)


def assert_valid_topk(selected, statistic_ref, k, kind, exclude_mask=None, atol=2e-5):
    """`selected` is a correct top-k of the reference statistic up to float tolerance near the boundary."""
    selected = np.asarray(selected)
    assert selected.shape == (k,)
    assert len(np.unique(selected)) == k
    key = statistic_ref if kind == "entropy" else -statistic_ref
    allowed = np.ones(len(key), bool) if exclude_mask is None else ~np.asarray(exclude_mask)
    assert allowed[selected].all(), "an excluded row was selected"
    if k == 0:
        return
    boundary = key[selected].min()
    rest = allowed.copy()
    rest[selected] = False
    if rest.any():
        assert key[rest].max() <= boundary + atol, "a more uncertain row was left out"
    # Selected in (nearly) non-increasing uncertainty.
    assert np.all(np.diff(key[selected]) <= atol)


shapes = st.integers(min_value=1, max_value=1000).flatmap(
    lambda c: st.tuples(st.integers(min_value=1, max_value=max(1, min(10_000, 150_000 // c))), st.just(c))
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, dtype=st.sampled_from(DTYPES), kind=st.sampled_from(KINDS), from_logits=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_scores_match_reference(shape, dtype, kind, from_logits, seed):
    n, c = shape
    if kind == "margin" and c < 2:
        c = 2
    x = make_rows(seed, n, c, dtype, from_logits)
    ours = af.scores(x, kind, from_logits=from_logits)
    assert ours.dtype == np.float32 and ours.shape == (n,)
    expected = ref.scores(x.astype(np.float64), kind, from_logits)
    rtol, atol = tolerance(dtype)
    np.testing.assert_allclose(ours, expected, rtol=rtol, atol=atol)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, dtype=st.sampled_from(DTYPES), kind=st.sampled_from(KINDS), from_logits=st.booleans(),
       seed=st.integers(0, 2**32 - 1), k_fraction=st.floats(0, 1), exclude_fraction=st.sampled_from([0.0, 0.3]))
def test_select_matches_reference(shape, dtype, kind, from_logits, seed, k_fraction, exclude_fraction):
    n, c = shape
    if kind == "margin" and c < 2:
        c = 2
    x = make_rows(seed, n, c, dtype, from_logits)
    rng = np.random.default_rng(seed + 1)
    mask = rng.random(n) < exclude_fraction
    k = int(round(k_fraction * (n - mask.sum())))
    selected = af.select_uncertain(x, k, kind, from_logits=from_logits, exclude=mask if mask.any() else None)
    assert selected.dtype == np.int64
    # Exactly the order of our own float32 scores (ties to the lower index) ...
    ours = af.scores(x, kind, from_logits=from_logits)
    np.testing.assert_array_equal(selected, ref.select(ours, k, kind, mask))
    # ... which is a correct top-k of the float64 reference up to rounding.
    expected = ref.scores(x.astype(np.float64), kind, from_logits)
    assert_valid_topk(selected, expected, k, kind, mask, atol=tolerance(dtype)[1] * 4 + 1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_duplicated_rows_tie_to_lower_index(kind, from_logits, dtype, rng):
    base = make_rows(7, 40, 37, dtype, from_logits)
    rows = rng.integers(0, 40, size=600)  # many exact duplicates, in shuffled order
    x = base[rows]
    selected = af.select_uncertain(x, 600, kind, from_logits=from_logits)
    s = af.scores(x, kind, from_logits=from_logits)
    # Duplicates have bit-identical scores, and equal scores come out in increasing index order.
    for r in range(40):
        same = np.flatnonzero(rows == r)
        if len(same) > 1:
            assert len(set(s[same].tolist())) == 1
    np.testing.assert_array_equal(selected, ref.select(s, 600, kind))
    key = s if kind == "entropy" else -s
    for a, b in zip(selected[:-1], selected[1:]):
        if key[a] == key[b]:
            assert a < b


def test_uniform_rows_all_tie(rng):
    x = np.full((1000, 10), 0.1, dtype=np.float32)
    np.testing.assert_array_equal(af.select_uncertain(x, 17, "entropy"), np.arange(17))
    np.testing.assert_array_equal(af.select_uncertain(x, 17, "margin"), np.arange(17))


def test_most_uncertain_first_direction():
    x = np.array([[0.9, 0.1, 0.0], [0.4, 0.35, 0.25], [0.6, 0.3, 0.1], [1 / 3, 1 / 3, 1 / 3]], dtype=np.float32)
    # smallest margin first, largest entropy first, smallest max-probability first
    np.testing.assert_array_equal(af.select_uncertain(x, 4, "margin"), [3, 1, 2, 0])
    np.testing.assert_array_equal(af.select_uncertain(x, 4, "entropy"), [3, 1, 2, 0])
    np.testing.assert_array_equal(af.select_uncertain(x, 4, "least_confidence"), [3, 1, 2, 0])


def test_entropy_zero_probabilities_contribute_nothing():
    x = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(af.scores(x, "entropy"), [0.0, np.log(2)], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("magnitude", [1e3, 1e4, 6e4])
def test_huge_logits_do_not_overflow(magnitude, rng):
    x = rng.standard_normal((500, 50)).astype(np.float32) * magnitude
    x[0] = 0
    x[0, :2] = [magnitude, magnitude - 1]  # margin (1 - e^-1) / (1 + e^-1 + ~0)
    for kind in KINDS:
        s = af.scores(x, kind, from_logits=True)
        assert np.isfinite(s).all()
        np.testing.assert_allclose(s, ref.scores(x, kind, True), rtol=1e-4, atol=1e-5)
    assert af.scores(x[:1], "margin", from_logits=True)[0] == pytest.approx((1 - np.exp(-1)) / (1 + np.exp(-1)), rel=1e-5)
    h = np.clip(x, -6e4, 6e4).astype(np.float16)  # 6e4 is near float16's largest finite value
    np.testing.assert_allclose(af.scores(h, "entropy", from_logits=True), ref.scores(h, "entropy", True), rtol=1e-4, atol=1e-5)


def test_exclude_mask_and_indices_agree(rng):
    x = random_probabilities(rng, 2000, 12)
    idx = rng.choice(2000, size=700, replace=False)
    mask = np.zeros(2000, bool)
    mask[idx] = True
    a = af.select_uncertain(x, 300, exclude=mask)
    b = af.select_uncertain(x, 300, exclude=idx)
    c = af.select_uncertain(x, 300, exclude=list(idx))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert not np.isin(a, idx).any()
    np.testing.assert_array_equal(a, ref.select(af.scores(x, "margin"), 300, "margin", mask))


def test_exclude_everything_but_k(rng):
    x = random_probabilities(rng, 100, 5)
    keep = np.array([3, 50, 97])
    mask = np.ones(100, bool)
    mask[keep] = False
    assert sorted(af.select_uncertain(x, 3, exclude=mask).tolist()) == keep.tolist()


def test_k_zero_and_full(rng):
    x = random_probabilities(rng, 50, 4)
    assert af.select_uncertain(x, 0).shape == (0,)
    full = af.select_uncertain(x, 50, "entropy")
    np.testing.assert_array_equal(full, ref.select(af.scores(x, "entropy"), 50, "entropy"))


@pytest.mark.parametrize("isa", _C.build_info()["supported_isas"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_cpu_variant_matches_reference(isa, dtype, rng):
    x_p = random_probabilities(rng, 3000, 203, dtype)
    x_l = random_logits(rng, 3000, 203, dtype)
    previous = _C.build_info()["isa"]
    try:
        _C.set_isa(isa)
        for kind in KINDS:
            for x, logits in ((x_p, False), (x_l, True)):
                s = af.scores(x, kind, from_logits=logits)
                np.testing.assert_allclose(s, ref.scores(x, kind, logits), rtol=tolerance(dtype)[0], atol=tolerance(dtype)[1])
                np.testing.assert_array_equal(af.select_uncertain(x, 100, kind, from_logits=logits), ref.select(s, 100, kind))
    finally:
        _C.set_isa(previous)


def test_threads_do_not_change_results(rng):
    x = random_logits(rng, 20_000, 64, np.float16)
    one = af.select_uncertain(x, 500, "entropy", from_logits=True, threads=1)
    two = af.select_uncertain(x, 500, "entropy", from_logits=True, threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(af.scores(x, "margin", from_logits=True, threads=1),
                                  af.scores(x, "margin", from_logits=True, threads=2))


def test_small_chunks_give_the_same_result(rng, monkeypatch):
    x = random_probabilities(rng, 5000, 33)
    expected = af.select_uncertain(x, 250, "entropy")
    monkeypatch.setattr(unc, "_CHUNK_BYTES", 1000)  # ~7 rows per chunk
    np.testing.assert_array_equal(af.select_uncertain(x, 250, "entropy"), expected)


def test_progress_callback_and_cancellation(rng, monkeypatch):
    x = random_probabilities(rng, 3000, 16)
    monkeypatch.setattr(unc, "_CHUNK_BYTES", 64 * 100)  # 100 rows per chunk
    seen = []

    class Recorder:
        def __init__(self, total, description):
            self.total = total

        def __call__(self, done, total):
            seen.append((done, total))

        def close(self):
            seen.append("closed")

    monkeypatch.setattr(unc, "row_progress", lambda progress, nbytes, total, desc: Recorder(total, desc))
    expected = af.select_uncertain(x, 10)
    seen.clear()
    np.testing.assert_array_equal(af.select_uncertain(x, 10), expected)
    done = [d for d, _ in seen[:-1]]
    assert done == list(range(100, 3001, 100)) and seen[-1] == "closed"

    class Interrupting(Recorder):
        def __call__(self, done, total):
            if done >= 500:
                raise KeyboardInterrupt

    monkeypatch.setattr(unc, "row_progress", lambda progress, nbytes, total, desc: Interrupting(total, desc))
    with pytest.raises(KeyboardInterrupt):
        af.select_uncertain(x, 10)
    with pytest.raises(KeyboardInterrupt):
        af.scores(x, "entropy")
    # the kernel is usable again afterwards
    monkeypatch.setattr(unc, "row_progress", lambda *a: None)
    np.testing.assert_array_equal(af.select_uncertain(x, 10), expected)


def test_progress_bar_renders(rng, capsys):
    x = random_probabilities(rng, 1000, 8)
    quiet = af.select_uncertain(x, 5, progress=False)
    assert capsys.readouterr().err == ""
    np.testing.assert_array_equal(af.select_uncertain(x, 5, progress=True), quiet)
    printed = capsys.readouterr().err
    assert "selecting 5 by margin" in printed and "1.00k" in printed and "rows" in printed, printed
    af.scores(x, "entropy", progress=True)
    assert "entropy scores" in capsys.readouterr().err
    af.scores(x, "entropy")  # None: a small input on a captured stream shows nothing
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("offset", [-3e4, -100.0, -1.0, 0.0, 1e3])
@pytest.mark.parametrize("kind", KINDS)
def test_float16_logits_of_any_sign(offset, kind, rng):
    # All-negative, mixed and all-positive float16 rows: the float16 fast path finds the row
    # maximum on bit patterns, which must order negative values, -0 and +0 correctly.
    z = (rng.standard_normal((3000, 45)) * 4 + offset).astype(np.float16)
    z[0] = -0.0
    z[1, :] = np.float16(-65504)
    z[2, :3] = [np.float16(-0.0), np.float16(0.0), np.float16(-1e-7)]
    z[3] = np.float16(65504)
    for t in (z, z[:, ::-1], np.ascontiguousarray(z[:, 1:])):
        np.testing.assert_allclose(af.scores(t, kind, from_logits=True), ref.scores(t, kind, True), rtol=1e-4, atol=2e-5)
