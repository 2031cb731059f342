"""Bad input gets a clear exception that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

import asvp_fast as af

from helpers import random_logits, random_probabilities


@pytest.fixture
def probs(rng):
    return random_probabilities(rng, 100, 5)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("column", [5, 39])  # in a full 16-wide block, or in the row's tail
def test_non_finite_rows_are_named(bad, from_logits, dtype, column, rng):
    x = random_logits(rng, 5000, 40, dtype) if from_logits else random_probabilities(rng, 5000, 40, dtype)
    x[3217, column] = bad
    x[4000, 1] = bad
    for kind in ("margin", "entropy", "least_confidence"):
        with pytest.raises(ValueError, match=r"row 3217 of x contains NaN or Inf"):
            af.select_uncertain(x, 10, kind, from_logits=from_logits)
        with pytest.raises(ValueError, match=r"row 3217 "):
            af.scores(x, kind, from_logits=from_logits)


def test_first_bad_row_is_reported_with_many_threads(rng):
    x = random_probabilities(rng, 50_000, 4)
    x[[49_000, 26_000, 25_001], 0] = np.nan
    for _ in range(5):
        with pytest.raises(ValueError, match=r"row 25001 "):
            af.select_uncertain(x, 5, threads=2)


def test_probabilities_out_of_range(probs):
    probs[42] = [1.2, -0.2, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"row 42 of x is not a probability vector.*-0\.2.*1\.2.*from_logits=True"):
        af.select_uncertain(probs, 3)


def test_probabilities_not_summing_to_one(probs):
    probs[7] *= 0.9
    with pytest.raises(ValueError, match=r"row 7 of x sums to 0\.9.*not 1 within 0\.001"):
        af.scores(probs, "entropy")
    # the opt-out skips the simplex checks
    assert af.scores(probs, "entropy", validate=False).shape == (100,)


def test_sum_tolerance_is_1e3(probs):
    probs[0] = [0.5004, 0.2, 0.1, 0.1, 0.1]  # sums to 1.0004
    af.scores(probs, "margin")
    probs[0] = [0.502, 0.2, 0.1, 0.1, 0.1]  # 1.002
    with pytest.raises(ValueError, match="row 0"):
        af.scores(probs, "margin")


def test_logits_are_not_mistaken_for_probabilities(rng):
    with pytest.raises(ValueError, match="from_logits=True"):
        af.select_uncertain(random_logits(rng, 10, 3), 2)


def test_margin_needs_two_classes():
    x = np.ones((5, 1), np.float32)
    with pytest.raises(ValueError, match="margin needs at least 2 classes"):
        af.select_uncertain(x, 1, "margin")
    np.testing.assert_array_equal(af.scores(x, "entropy"), np.zeros(5))  # fine for the others


def test_k_larger_than_pickable_rows(probs):
    with pytest.raises(ValueError, match=r"k=101 is larger than the 100 rows"):
        af.select_uncertain(probs, 101)
    with pytest.raises(ValueError, match=r"k=60 is larger than the 50 rows that may be picked \(100 rows, 50 excluded\)"):
        af.select_uncertain(probs, 60, exclude=np.arange(50))


@pytest.mark.parametrize("k", [-1, 2.5, "3", True])
def test_bad_k(probs, k):
    with pytest.raises((ValueError, TypeError), match="k must"):
        af.select_uncertain(probs, k)


@pytest.mark.parametrize("shape", [(10,), (2, 3, 4), ()])
def test_wrong_ndim(shape):
    with pytest.raises(ValueError, match="must be 2-dimensional"):
        af.select_uncertain(np.ones(shape, np.float32), 1)


def test_no_classes():
    with pytest.raises(ValueError, match="at least one class"):
        af.scores(np.ones((3, 0), np.float32), "entropy")


@pytest.mark.parametrize("dtype", [np.int64, np.int8, np.bool_, np.complex64])
def test_non_float_dtype(dtype):
    with pytest.raises(TypeError, match="float16, bfloat16, float32 or float64"):
        af.scores(np.ones((3, 3), dtype), "margin")


def test_exclude_wrong_length(probs):
    with pytest.raises(ValueError, match="exclude mask has length 99, expected one entry per row of x \\(100\\)"):
        af.select_uncertain(probs, 3, exclude=np.zeros(99, bool))


@pytest.mark.parametrize("index", [100, -1, 10**9])
def test_exclude_out_of_range(probs, index):
    with pytest.raises(ValueError, match=f"exclude contains index {index}, outside \\[0, 100\\)"):
        af.select_uncertain(probs, 3, exclude=np.array([1, index]))


def test_exclude_wrong_type(probs):
    with pytest.raises(TypeError, match="bool mask or an integer index array"):
        af.select_uncertain(probs, 3, exclude=np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="1-D"):
        af.select_uncertain(probs, 3, exclude=np.zeros((10, 10), bool))


def test_unknown_kind(probs):
    with pytest.raises(ValueError, match="unknown uncertainty kind 'margins'"):
        af.select_uncertain(probs, 3, "margins")


@pytest.mark.parametrize("threads", [0, -2])
def test_non_positive_threads(probs, threads):
    with pytest.raises(ValueError, match="threads must be None or a positive integer"):
        af.scores(probs, "margin", threads=threads)


@pytest.mark.parametrize("threads", [1.5, 2.0, "2", True, [2]])
def test_threads_of_the_wrong_type(probs, threads):
    with pytest.raises(TypeError, match="threads must be None or a positive integer"):
        af.select_uncertain(probs, 3, threads=threads)


@pytest.mark.parametrize("threads", [1024, 10**6, 2**31, 2**63, 10**30])
def test_huge_thread_counts_are_clamped(probs, threads):
    # Regression: threads=10**6 crashed the process (libgomp ran out of stack) and 2**31
    # leaked a pybind11 signature error; requests above 1024 threads are clamped to 1024.
    np.testing.assert_array_equal(af.scores(probs, "entropy", threads=threads), af.scores(probs, "entropy", threads=1))
    np.testing.assert_array_equal(af.select_uncertain(probs, 7, threads=threads), af.select_uncertain(probs, 7, threads=1))


@pytest.mark.parametrize("name", ["from_logits", "validate"])
@pytest.mark.parametrize("value", ["False", "True", 0, 1, None, np.array([True])])
def test_flags_must_be_booleans(probs, name, value):
    # Regression: from_logits="False" and validate="False" were taken as True.
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        af.scores(probs, "margin", **{name: value})
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        af.select_uncertain(probs, 2, **{name: value})


def test_numpy_booleans_are_flags(probs):
    np.testing.assert_array_equal(af.scores(probs, "margin", validate=np.bool_(False)), af.scores(probs, "margin"))


@pytest.mark.parametrize("kind", [["margin"], ("margin",), {"margin"}, b"margin", 0, None])
def test_kind_of_the_wrong_type(probs, kind):
    # Regression: kind=["margin"] gave "unhashable type: 'list'".
    with pytest.raises(TypeError, match="uncertainty kind must be one of"):
        af.select_uncertain(probs, 3, kind)
    with pytest.raises(TypeError, match="uncertainty kind must be one of"):
        af.scores(probs, kind)


@pytest.mark.parametrize("progress", ["yes", "False", 1, [True]])
def test_progress_must_be_none_or_a_boolean(probs, progress):
    with pytest.raises(TypeError, match="progress must be True or False"):
        af.select_uncertain(probs, 3, progress=progress)


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:", "cuda:x", "cuda:-1", ""])
def test_misspelled_device(probs, device):
    with pytest.raises(ValueError, match="device must be one of"):
        af.scores(probs, "margin", device=device)


@pytest.mark.parametrize("device", [5, None, ["cpu"], b"cpu"])
def test_device_of_the_wrong_type(probs, device):
    with pytest.raises(TypeError, match="device must be one of"):
        af.select_uncertain(probs, 2, device=device)


def test_cuda_requested_without_device(probs):
    if af.backends()["cuda_devices"] > 0:
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="device='cuda'"):
        af.select_uncertain(probs, 3, device="cuda")


def test_empty_pool():
    x = np.zeros((0, 4), np.float32)
    assert af.scores(x, "margin").shape == (0,)
    assert af.select_uncertain(x, 0).shape == (0,)
    with pytest.raises(ValueError, match="k=1 is larger"):
        af.select_uncertain(x, 1)


def test_big_endian_rejected(probs):
    with pytest.raises(TypeError, match="byte order"):
        af.scores(probs.astype(">f4"), "margin")
