"""asvp_fast.metrics: the random curve's inverse, sample saving ratios and overall cost."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import asvp_fast.metrics as m

# The hand-worked random curve: 100 -> 0.5, 200 -> 0.6, 400 -> 0.7.
LABELS = [100, 200, 400]
ACC = [0.5, 0.6, 0.7]
# Non-monotone: rises, dips, rises again.
WAVY_LABELS = [100, 200, 300, 400]
WAVY_ACC = [0.5, 0.7, 0.6, 0.8]
MODES = ["clip", "nan", "extrapolate"]


# ---------------------------------------------------------------------------- known answers


@pytest.mark.parametrize(
    "accuracy,expected",
    [(0.65, 300.0), (0.55, 150.0), (0.6, 200.0), (0.5, 100.0), (0.7, 400.0), (0.625, 250.0)],
)
def test_equivalent_labels_known_answers(accuracy, expected):
    assert m.equivalent_random_labels(accuracy, LABELS, ACC) == pytest.approx(expected, rel=1e-12)


def test_saving_ratio_known_answer():
    # random needs 300 labels for 0.65; the method used 200: (300 - 200) / 300
    assert m.sample_saving_ratio(200, 0.65, LABELS, ACC) == pytest.approx(1 / 3, rel=1e-12)
    # the method needed more than random: (150 - 200) / 150
    assert m.sample_saving_ratio(200, 0.55, LABELS, ACC) == pytest.approx(-1 / 3, rel=1e-12)


def test_saving_ratios_per_round_and_average():
    n_labels, accuracy = [100, 200, 300], [0.5, 0.65, 0.7]  # N2 = 100, 300, 400
    ratios = m.sample_saving_ratio(n_labels, accuracy, LABELS, ACC)
    np.testing.assert_allclose(ratios, [0.0, 1 / 3, 0.25], rtol=1e-12, atol=1e-15)
    average = m.average_sample_saving_ratio(n_labels, accuracy, LABELS, ACC)
    assert average == pytest.approx((0 + 1 / 3 + 1 / 4) / 3, rel=1e-12)


def test_percentage_scale():
    # Percent scale works as long as both sides use it.
    assert m.equivalent_random_labels(65.0, [100.0, 200.0, 400.0], [50.0, 60.0, 70.0]) == pytest.approx(300.0)


# ---------------------------------------------------------------------------- non-monotone curves


@pytest.mark.parametrize(
    "accuracy,expected",
    [
        (0.65, 175.0),  # first crossing on the first rise, not 250 (the dip) or 325 (the second rise)
        (0.7, 200.0),  # reached exactly at a point
        (0.75, 375.0),  # only the last rise gets there
        (0.6, 150.0),
    ],
)
def test_non_monotone_curve_uses_first_crossing(accuracy, expected):
    assert m.equivalent_random_labels(accuracy, WAVY_LABELS, WAVY_ACC) == pytest.approx(expected, rel=1e-12)


def test_plateau_answers_its_left_end():
    assert m.equivalent_random_labels(0.6, [100, 200, 300, 400], [0.5, 0.6, 0.6, 0.7]) == pytest.approx(200.0)
    assert m.equivalent_random_labels(0.65, [100, 200, 300, 400], [0.5, 0.6, 0.6, 0.7]) == pytest.approx(350.0)


def test_dip_below_the_first_point_stays_at_first_label_count():
    # 0.45 is first reached at 100 labels (the first point is already above it).
    assert m.equivalent_random_labels(0.45, [100, 200, 300], [0.5, 0.4, 0.8]) == 100.0
    # 0.6 is reached on the last segment, after the dip: 200 + (0.6 - 0.4) / 0.4 * 100
    assert m.equivalent_random_labels(0.6, [100, 200, 300], [0.5, 0.4, 0.8]) == pytest.approx(250.0)


# ---------------------------------------------------------------------------- outside the range


@pytest.mark.parametrize(
    "outside,below,above",
    [
        ("clip", 100.0, 400.0),
        ("nan", math.nan, math.nan),
        # below: 100 - (0.5 - 0.45) / 0.1 * 100; above: 400 + (0.75 - 0.7) / 0.1 * 200
        ("extrapolate", 50.0, 500.0),
    ],
)
def test_outside_modes(outside, below, above):
    got_below = m.equivalent_random_labels(0.45, LABELS, ACC, outside=outside)
    got_above = m.equivalent_random_labels(0.75, LABELS, ACC, outside=outside)
    if math.isnan(below):
        assert math.isnan(got_below) and math.isnan(got_above)
    else:
        assert got_below == pytest.approx(below, rel=1e-12)
        assert got_above == pytest.approx(above, rel=1e-12)


@pytest.mark.parametrize("outside", MODES)
def test_range_ends_are_inside_in_every_mode(outside):
    assert m.equivalent_random_labels(0.5, LABELS, ACC, outside=outside) == 100.0
    assert m.equivalent_random_labels(0.7, LABELS, ACC, outside=outside) == 400.0


def test_default_outside_is_clip():
    assert m.equivalent_random_labels(0.9, LABELS, ACC) == 400.0
    assert m.equivalent_random_labels(0.1, LABELS, ACC) == 100.0


def test_clip_above_a_non_monotone_curve_uses_the_last_label_count():
    # Max accuracy 0.8 is at the end here; put it in the middle instead.
    assert m.equivalent_random_labels(0.9, [100, 200, 300], [0.5, 0.8, 0.7]) == 300.0


def test_extrapolation_never_goes_below_zero_labels():
    assert m.equivalent_random_labels(0.1, LABELS, ACC, outside="extrapolate") == 0.0


def test_extrapolation_past_float_range_is_inf_and_saves_everything():
    curve_labels, curve_acc = [100, 1e300], [0.0, 1e-300]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert m.equivalent_random_labels(1.0, curve_labels, curve_acc, outside="extrapolate") == math.inf
        assert m.sample_saving_ratio(100, 1.0, curve_labels, curve_acc, outside="extrapolate") == 1.0


@pytest.mark.parametrize(
    "accuracy,curve",
    [
        (0.9, [0.5, 0.8, 0.7]),  # last segment falls
        (0.9, [0.5, 0.7, 0.7]),  # last segment flat
        (0.4, [0.5, 0.5, 0.7]),  # first segment flat
        (0.4, [0.5, 0.45, 0.7]),  # first segment falls
    ],
)
def test_extrapolation_of_a_non_rising_end_is_nan(accuracy, curve):
    assert math.isnan(m.equivalent_random_labels(accuracy, [100, 200, 300], curve, outside="extrapolate"))


def test_extrapolation_above_uses_last_segment_even_after_a_higher_peak():
    # Peak 0.8 at 200, then 0.6 -> 0.7 over 250 -> 300: 0.85 is 300 + 0.15 / 0.1 * 50 = 375 labels.
    got = m.equivalent_random_labels(0.85, [100, 200, 250, 300], [0.5, 0.8, 0.6, 0.7], outside="extrapolate")
    assert got == pytest.approx(375.0)


def test_saving_ratio_outside_the_range():
    # Above the whole curve: clip says random needs (at least) 400 labels.
    assert m.sample_saving_ratio(200, 0.75, LABELS, ACC) == pytest.approx(0.5)
    assert m.sample_saving_ratio(200, 0.75, LABELS, ACC, outside="extrapolate") == pytest.approx(0.6)
    assert math.isnan(m.sample_saving_ratio(200, 0.75, LABELS, ACC, outside="nan"))
    # Round 0 with a slightly worse seed than random's: clip calls it a tie; extrapolation penalises.
    assert m.sample_saving_ratio(100, 0.49, LABELS, ACC) == 0.0
    assert m.sample_saving_ratio(100, 0.49, LABELS, ACC, outside="extrapolate") == pytest.approx(-1 / 9)


def test_average_leaves_nan_rounds_out():
    average = m.average_sample_saving_ratio([100, 200, 200], [0.5, 0.65, 0.75], LABELS, ACC, outside="nan")
    assert average == pytest.approx((0 + 1 / 3) / 2)
    # clip keeps the third round, as the lower bound 0.5
    assert m.average_sample_saving_ratio([100, 200, 200], [0.5, 0.65, 0.75], LABELS, ACC) == pytest.approx(
        (0 + 1 / 3 + 0.5) / 3
    )


def test_average_of_all_nan_rounds_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(m.average_sample_saving_ratio([200, 300], [0.9, 0.95], LABELS, ACC, outside="nan"))


def test_zero_equivalent_labels_is_reported():
    curve_labels, curve_acc = [0, 100, 200], [0.1, 0.5, 0.6]
    assert m.equivalent_random_labels(0.1, curve_labels, curve_acc) == 0.0
    with pytest.raises(ValueError, match="accuracy"):
        m.sample_saving_ratio(0, 0.1, curve_labels, curve_acc)
    with pytest.raises(ValueError, match=r"round index \[1\]"):
        m.sample_saving_ratio([100, 0], [0.5, 0.05], curve_labels, curve_acc)
    # extrapolated to 0 labels
    with pytest.raises(ValueError, match="N2"):
        m.sample_saving_ratio(100, 0.1, LABELS, ACC, outside="extrapolate")
    # nan mode has no 0 there: the round is NaN
    assert math.isnan(m.sample_saving_ratio(0, 0.05, curve_labels, curve_acc, outside="nan"))


# ---------------------------------------------------------------------------- return types


def test_scalar_in_float_out():
    for accuracy in (0.65, np.float64(0.65), np.float32(0.65)):
        got = m.equivalent_random_labels(accuracy, LABELS, ACC)
        assert type(got) is float
    assert type(m.equivalent_random_labels(1, [0, 10], [0, 2])) is float  # integer accuracy
    assert type(m.sample_saving_ratio(200, 0.65, LABELS, ACC)) is float
    assert type(m.sample_saving_ratio(np.int64(200), np.float64(0.65), LABELS, ACC)) is float
    assert type(m.average_sample_saving_ratio(200, 0.65, LABELS, ACC)) is float
    assert type(m.overall_cost(10, 0.5, 1, 2)) is float


def test_array_in_array_out():
    got = m.equivalent_random_labels([0.55, 0.65], LABELS, ACC)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and got.shape == (2,)
    np.testing.assert_allclose(got, [150.0, 300.0])
    grid = m.equivalent_random_labels(np.array([[0.55, 0.65], [0.5, 0.7]], dtype=np.float32), LABELS, ACC)
    assert grid.shape == (2, 2) and grid.dtype == np.float64
    np.testing.assert_allclose(grid, [[150.0, 300.0], [100.0, 400.0]], rtol=1e-6)
    zero_d = m.equivalent_random_labels(np.array(0.65), LABELS, ACC)
    assert isinstance(zero_d, np.ndarray) and zero_d.shape == ()
    ratios = m.sample_saving_ratio(np.array([200]), np.array([0.65]), LABELS, ACC)
    assert isinstance(ratios, np.ndarray) and ratios.shape == (1,) and ratios.dtype == np.float64
    empty = m.sample_saving_ratio([], [], LABELS, ACC)
    assert isinstance(empty, np.ndarray) and empty.shape == (0,)


def test_inputs_are_not_modified():
    accuracy = np.array([0.45, 0.65, 0.75])
    labels, acc = np.array(LABELS, dtype=np.float64), np.array(ACC)
    for mode in MODES:
        m.equivalent_random_labels(accuracy, labels, acc, outside=mode)
    np.testing.assert_array_equal(accuracy, [0.45, 0.65, 0.75])
    np.testing.assert_array_equal(labels, LABELS)


# ---------------------------------------------------------------------------- overall cost


def test_overall_cost_known_answers():
    # 1000 items x $0.012 x 3 reviews + 2.5 h x $3.06 = 36 + 7.65
    assert m.overall_cost(1000, 0.012, 2.5, 3.06, reviews=3) == pytest.approx(43.65, rel=1e-12)
    assert m.overall_cost(1000, 0.012, 0, 3.06) == pytest.approx(12.0, rel=1e-12)  # reviews defaults to 1
    assert m.overall_cost(0, 0.012, 10, 3.06) == pytest.approx(30.6, rel=1e-12)


def test_overall_cost_broadcasts():
    got = m.overall_cost([1000, 2000], 0.01, [1.0, 2.0], 3.0, reviews=2)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, [20.0 + 3.0, 40.0 + 6.0], rtol=1e-12)
    table = m.overall_cost(np.array([[100], [200]]), [0.01, 0.02], 0, 1)
    np.testing.assert_allclose(table, [[1.0, 2.0], [2.0, 4.0]], rtol=1e-12)


def test_default_prices():
    assert m.DEFAULT_LABEL_PRICE_USD == 0.012
    assert m.DEFAULT_REVIEWS == 3
    assert m.DEFAULT_HOURLY_PRICE_USD == 3.06
    cost = m.overall_cost(1000, m.DEFAULT_LABEL_PRICE_USD, 1, m.DEFAULT_HOURLY_PRICE_USD, reviews=m.DEFAULT_REVIEWS)
    assert cost == pytest.approx(36.0 + 3.06)
    doc = m.__doc__ or ""
    for source in ("Mechanical Turk", "Ground Truth", "p3.2xlarge", "us-east-1", "three annotations"):
        assert source in doc, source


# ---------------------------------------------------------------------------- errors


def _curve_error(labels, acc, match):
    with pytest.raises(ValueError, match=match):
        m.equivalent_random_labels(0.6, labels, acc)
    with pytest.raises(ValueError, match=match):
        m.sample_saving_ratio(200, 0.6, labels, acc)
    with pytest.raises(ValueError, match=match):
        m.average_sample_saving_ratio([200], [0.6], labels, acc)


@pytest.mark.parametrize(
    "labels,acc,match",
    [
        ([100, 200, 400], [0.5, 0.6], "random_labels and random_accuracy must have the same length"),
        ([100], [0.5], "random_labels needs at least 2 points"),
        ([], [], "random_labels needs at least 2 points"),
        ([100, 100, 400], [0.5, 0.6, 0.7], "random_labels must be strictly increasing"),
        ([400, 200, 100], [0.5, 0.6, 0.7], "random_labels must be strictly increasing"),
        ([-100, 200, 400], [0.5, 0.6, 0.7], "random_labels must not be negative"),
        ([100, 200, np.nan], [0.5, 0.6, 0.7], "random_labels contains NaN"),
        ([100, 200, 400], [0.5, np.inf, 0.7], "random_accuracy contains NaN or inf"),
        ([100, 200, 400], [0.5, np.nan, 0.7], "random_accuracy contains NaN"),
        ([[100, 200]], [[0.5, 0.6]], "random_labels and random_accuracy must be 1-D"),
        (["a", "b"], [0.5, 0.6], "random_labels must be numeric"),
        ([100, 200], [None, 0.6], "random_accuracy contains NaN"),  # None reads as NaN
        ([100, 200], [object(), 0.6], "random_accuracy must be numeric"),
    ],
)
def test_random_curve_errors(labels, acc, match):
    _curve_error(labels, acc, match)


@pytest.mark.parametrize("accuracy", [math.nan, math.inf, [0.5, math.nan], "high"])
def test_bad_accuracy(accuracy):
    with pytest.raises(ValueError, match="^accuracy"):
        m.equivalent_random_labels(accuracy, LABELS, ACC)


def test_bad_rounds():
    with pytest.raises(ValueError, match="n_labels must not be negative"):
        m.sample_saving_ratio(-1, 0.6, LABELS, ACC)
    with pytest.raises(ValueError, match="n_labels contains NaN"):
        m.sample_saving_ratio([100, math.nan], [0.5, 0.6], LABELS, ACC)
    with pytest.raises(ValueError, match="n_labels and accuracy must have the same shape"):
        m.sample_saving_ratio([100, 200], [0.5, 0.6, 0.7], LABELS, ACC)
    with pytest.raises(ValueError, match="n_labels and accuracy must have the same shape"):
        m.sample_saving_ratio(100, [0.5, 0.6], LABELS, ACC)
    with pytest.raises(ValueError, match="^accuracy contains NaN"):
        m.average_sample_saving_ratio([100, 200], [0.5, math.nan], LABELS, ACC)
    with pytest.raises(ValueError, match="no rounds"):
        m.average_sample_saving_ratio([], [], LABELS, ACC)


@pytest.mark.parametrize("outside", ["clamp", "", None, "NaN"])
def test_unknown_outside(outside):
    for call in (
        lambda: m.equivalent_random_labels(0.6, LABELS, ACC, outside=outside),
        lambda: m.sample_saving_ratio(200, 0.6, LABELS, ACC, outside=outside),
        lambda: m.average_sample_saving_ratio([200], [0.6], LABELS, ACC, outside=outside),
    ):
        with pytest.raises(ValueError, match="unknown outside="):
            call()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n_labels=-1), "n_labels must not be negative"),
        (dict(label_price=-0.01), "label_price must not be negative"),
        (dict(train_hours=[1, -2]), "train_hours must not be negative"),
        (dict(hourly_price=math.inf), "hourly_price contains NaN or inf"),
        (dict(label_price="cheap"), "label_price must be numeric"),
        (dict(n_labels=[1, 2, 3], train_hours=[1, 2]), "do not broadcast"),
        (dict(reviews=0), "reviews must be an integer >= 1"),
        (dict(reviews=1.5), "reviews must be an integer >= 1"),
        (dict(reviews=True), "reviews must be an integer >= 1"),
    ],
)
def test_overall_cost_errors(kwargs, match):
    args = dict(n_labels=100, label_price=0.012, train_hours=1.0, hourly_price=3.06)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        m.overall_cost(**args)


def test_overall_cost_accepts_numpy_integer_reviews():
    assert m.overall_cost(100, 0.01, 0, 0, reviews=np.int64(3)) == pytest.approx(3.0)


# ---------------------------------------------------------------------------- properties


@st.composite
def increasing_curves(draw):
    """A strictly increasing random curve: label counts and accuracies both strictly increasing."""
    size = draw(st.integers(min_value=2, max_value=8))
    start = draw(st.integers(min_value=0, max_value=1000))
    steps = draw(st.lists(st.integers(min_value=1, max_value=5000), min_size=size - 1, max_size=size - 1))
    labels = np.cumsum([start] + steps).astype(np.float64)
    accuracy = draw(
        st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=size, max_size=size, unique=True)
    )
    return labels, np.sort(np.array(accuracy))


@st.composite
def any_curves(draw):
    """A random curve with strictly increasing label counts and arbitrary (noisy) accuracies."""
    labels, _ = draw(increasing_curves())
    accuracy = draw(st.lists(st.floats(0.0, 1.0), min_size=labels.size, max_size=labels.size))
    return labels, np.array(accuracy)


@settings(max_examples=150, deadline=None)
@given(curve=increasing_curves(), mode=st.sampled_from(MODES))
def test_points_of_an_increasing_curve_map_to_their_label_counts(curve, mode):
    labels, accuracy = curve
    got = m.equivalent_random_labels(accuracy, labels, accuracy, outside=mode)
    np.testing.assert_array_equal(got, labels)
    for i in range(labels.size):
        assert m.equivalent_random_labels(float(accuracy[i]), labels, accuracy, outside=mode) == labels[i]


@settings(max_examples=150, deadline=None)
@given(
    curve=increasing_curves(),
    targets=st.lists(st.floats(-0.5, 1.5), min_size=2, max_size=20),
    mode=st.sampled_from(["clip", "extrapolate"]),
)
def test_equivalent_labels_are_monotone_on_an_increasing_curve(curve, targets, mode):
    labels, accuracy = curve
    ordered = np.sort(np.array(targets))
    got = m.equivalent_random_labels(ordered, labels, accuracy, outside=mode)
    assert not np.any(np.isnan(got))
    assert np.all(got[1:] >= got[:-1]), (ordered, got)  # not np.diff: a huge extrapolation may be inf
    if mode == "clip":
        assert np.all((got >= labels[0]) & (got <= labels[-1]))
    else:
        assert np.all(got >= 0)


@settings(max_examples=150, deadline=None)
@given(curve=any_curves(), fraction=st.floats(0.0, 1.0))
def test_first_crossing_on_any_curve(curve, fraction):
    labels, accuracy = curve
    top = float(accuracy.max())
    target = min(float(accuracy[0] + fraction * (top - accuracy[0])), top)  # inside the range
    got = m.equivalent_random_labels(target, labels, accuracy, outside="nan")
    assert labels[0] <= got <= labels[-1]
    # the curve is at the target there (up to rounding) ...
    assert np.interp(got, labels, accuracy) == pytest.approx(target, abs=1e-9)
    # ... and every point strictly before it is below the target.
    assert np.all(accuracy[labels < got] < target)
