"""Equivalent random labels, sample saving ratios and overall cost (see :mod:`asvp_fast.metrics`)."""

from __future__ import annotations

import math
import numbers
from typing import Any, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

from .validation import (
    ArrayInput,
    FloatArray,
    Outside,
    as_finite,
    check_nonnegative,
    check_outside,
    is_scalar,
    random_curve,
    round_inputs,
)

DEFAULT_LABEL_PRICE_USD: float = 0.012
"""USD per annotation of one image-classification item (Mechanical-Turk-style public workforce,
the image-classification price tier of AWS SageMaker Ground Truth with Mechanical Turk). Set your own."""

DEFAULT_REVIEWS: int = 3
"""Annotations per labelled item (the paper used three per sample). Set your own."""

DEFAULT_HOURLY_PRICE_USD: float = 3.06
"""USD per hour of an AWS EC2 p3.2xlarge on demand (one V100, us-east-1). Set your own."""


# ----------------------------------------------------------------------------------------------
# The random curve's inverse
# ----------------------------------------------------------------------------------------------


def _first_crossing(target: FloatArray, labels: FloatArray, accuracy: FloatArray) -> FloatArray:
    """Smallest label count at which the curve reaches each target; NaN where it never does.

    Targets at or below the first accuracy get the first label count.
    """
    # The first point at or above the target is the first index where the running maximum is.
    first = np.searchsorted(np.maximum.accumulate(accuracy), target, side="left")
    reached = first < labels.size
    hi = np.minimum(first, labels.size - 1)
    lo = np.maximum(hi - 1, 0)
    # Between points lo and hi the curve rises from below the target to at or above it. Measured
    # back from hi, so an accuracy equal to a point's gives exactly that point's label count.
    rise = accuracy[hi] - accuracy[lo]
    with np.errstate(all="ignore"):  # only the unreached placeholders (masked below) can misbehave
        back = (accuracy[hi] - target) / rise * (labels[hi] - labels[lo])
    inside = np.where(first == 0, labels[0], np.clip(labels[hi] - back, labels[lo], labels[hi]))
    return np.where(reached, inside, np.nan)


def _extrapolate_below(target: FloatArray, labels: FloatArray, accuracy: FloatArray) -> FloatArray:
    """Label counts on the first segment's line extended backwards (clamped at 0; NaN if not rising)."""
    rise = accuracy[1] - accuracy[0]
    if rise <= 0:
        return np.full(target.shape, np.nan)
    with np.errstate(over="ignore"):  # a near-flat segment: -inf, clamped to 0 below
        back = (accuracy[0] - target) / rise * (labels[1] - labels[0])
    result: FloatArray = np.clip(labels[0] - back, 0.0, labels[0])
    return result


def _extrapolate_above(target: FloatArray, labels: FloatArray, accuracy: FloatArray) -> FloatArray:
    """Label counts on the last segment's line extended forwards (NaN if not rising)."""
    rise = accuracy[-1] - accuracy[-2]
    if rise <= 0:
        return np.full(target.shape, np.nan)
    with np.errstate(over="ignore"):  # a near-flat segment: beyond float range is inf
        forward = (target - accuracy[-1]) / rise * (labels[-1] - labels[-2])
    result: FloatArray = np.maximum(labels[-1] + forward, labels[-1])
    return result


def _common_scale(target: FloatArray, accuracy: FloatArray) -> Tuple[FloatArray, FloatArray]:
    """Accuracies beyond ±2^1000 divided by one power of two (exact), so that their differences
    cannot overflow; N2 depends only on ratios of accuracy differences. Ordinary accuracies are
    returned as they are."""
    peak = max(float(np.max(np.abs(target), initial=0.0)), float(np.max(np.abs(accuracy))))
    excess = math.frexp(peak)[1] - 1000
    if excess <= 0:
        return target, accuracy
    return np.ldexp(target, -excess), np.ldexp(accuracy, -excess)


def _equivalent(target: FloatArray, labels: FloatArray, accuracy: FloatArray, outside: str) -> FloatArray:
    """N2 for every entry of ``target`` (validated inputs), following the ``outside`` mode."""
    target, accuracy = _common_scale(target, accuracy)
    result = _first_crossing(target, labels, accuracy)
    below = target < accuracy[0]
    above = np.isnan(result)
    if outside == "nan":
        result[below] = np.nan
    elif outside == "extrapolate":
        result[below] = _extrapolate_below(target[below], labels, accuracy)
        result[above] = _extrapolate_above(target[above], labels, accuracy)
    else:  # clip: below already holds the first label count
        result[above] = labels[-1]
    return result


@overload
def equivalent_random_labels(
    accuracy: float, random_labels: npt.ArrayLike, random_accuracy: npt.ArrayLike, *, outside: Outside = ...
) -> float: ...


@overload
def equivalent_random_labels(
    accuracy: ArrayInput, random_labels: npt.ArrayLike, random_accuracy: npt.ArrayLike, *, outside: Outside = ...
) -> FloatArray: ...


def equivalent_random_labels(
    accuracy: npt.ArrayLike,
    random_labels: npt.ArrayLike,
    random_accuracy: npt.ArrayLike,
    *,
    outside: Outside = "clip",
) -> Union[float, FloatArray]:
    """Labels random sampling needs to reach ``accuracy`` (N2), read off the random curve.

    N2 is the smallest label count at which the piecewise-linear random curve first reaches
    ``accuracy`` (its first crossing), so a noisy, non-monotone curve is answered by the first
    time random sampling got there.

    Parameters
    ----------
    accuracy
        The accuracy (or accuracies) to look up. A Python or NumPy scalar, or array-like of any
        shape.
    random_labels
        Label counts of the random curve: 1-D, at least 2, non-negative, strictly increasing.
    random_accuracy
        Random sampling's accuracy at each of ``random_labels`` (same length). Any scale
        (fractions or percentages) as long as ``accuracy`` uses the same.
    outside
        What N2 is for an accuracy outside the curve's range:

        * ``"clip"`` (default): above every point, the largest random label count (random
          needs at least that many: the saving ratio is a lower bound); below the first point's
          accuracy, the smallest random label count (exact at round 0, where every method shares
          random's initial labelled set; an over-statement of N2 elsewhere).
        * ``"nan"``: NaN.
        * ``"extrapolate"``: on the straight line through the end segment on that side (the
          first two points below, the last two above), never below 0 labels; NaN if that
          segment is flat or falling (and ``inf`` if the line is so nearly flat that the count
        passes the float64 range).

        An accuracy equal to the first point's is inside the range: the first label count.

    Returns
    -------
    float or numpy.ndarray
        A float for a scalar ``accuracy``; otherwise a float64 array of ``accuracy``'s shape.

    Raises
    ------
    ValueError
        If ``accuracy``, ``random_labels`` or ``random_accuracy`` is not numeric or holds NaN or
        inf (strings, booleans and complex numbers are not numeric; integers beyond float64 are
        named too); the random curve is not 1-D, has mismatched lengths, fewer than 2 points,
        negative or non-increasing label counts; or ``outside`` is unknown.

    Examples
    --------
    >>> round(equivalent_random_labels(0.65, [100, 200, 400], [0.5, 0.6, 0.7]), 9)
    300.0
    """
    check_outside(outside)
    labels, curve = random_curve(random_labels, random_accuracy)
    target = as_finite(accuracy, "accuracy")
    result = _equivalent(target.reshape(-1), labels, curve, outside).reshape(target.shape)
    return float(result) if is_scalar(accuracy) else result


# ----------------------------------------------------------------------------------------------
# Saving ratios and cost
# ----------------------------------------------------------------------------------------------


def _saving_ratios(
    n_labels: Any, accuracy: Any, random_labels: Any, random_accuracy: Any, outside: str
) -> FloatArray:
    """(N2 - N1) / N2 as a float64 array of the rounds' shape (validated)."""
    check_outside(outside)
    labels, curve = random_curve(random_labels, random_accuracy)
    n1, acc = round_inputs(n_labels, accuracy)
    n2 = _equivalent(acc.reshape(-1), labels, curve, outside).reshape(acc.shape)
    zero = n2 <= 0  # NaN compares False: NaN rounds stay NaN
    if np.any(zero):
        rounds = np.flatnonzero(zero).tolist()
        raise ValueError(
            f"accuracy {acc[zero].tolist()} (round index {rounds}) needs 0 random labels on the random curve "
            "(random_labels starts at 0, or outside='extrapolate' reached 0), so the ratio (N2 - N1) / N2 "
            "is undefined; start random_labels above 0 or use outside='clip' or 'nan'"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        # An extrapolation past float range (N2 = inf) saves everything: the limit of the ratio.
        ratios: FloatArray = np.where(np.isposinf(n2), 1.0, (n2 - n1) / n2)
    overflow = np.isinf(ratios)
    if np.any(overflow):  # N1 more than 1e308 times N2 (N2 a sub-normal number of labels)
        raise ValueError(
            f"the sample saving ratio overflows float64 at round index {np.flatnonzero(overflow).tolist()}: "
            f"n_labels {n1[overflow].tolist()} against N2 {n2[overflow].tolist()}"
        )
    return ratios


@overload
def sample_saving_ratio(
    n_labels: float, accuracy: float, random_labels: npt.ArrayLike, random_accuracy: npt.ArrayLike,
    *, outside: Outside = ...
) -> float: ...


@overload
def sample_saving_ratio(
    n_labels: ArrayInput, accuracy: ArrayInput, random_labels: npt.ArrayLike, random_accuracy: npt.ArrayLike,
    *, outside: Outside = ...
) -> FloatArray: ...


def sample_saving_ratio(
    n_labels: npt.ArrayLike,
    accuracy: npt.ArrayLike,
    random_labels: npt.ArrayLike,
    random_accuracy: npt.ArrayLike,
    *,
    outside: Outside = "clip",
) -> Union[float, FloatArray]:
    """Sample saving ratio ``(N2 - N1) / N2`` of each round.

    ``N1`` is ``n_labels``, the labels the method had, and ``N2`` is
    :func:`equivalent_random_labels` of the accuracy it reached: the first label count at which
    the piecewise-linear random curve reaches it. 0.25 means random sampling needed a third more
    labels (the method saved a quarter of them); negative values mean the method needed more
    labels than random sampling.

    Parameters
    ----------
    n_labels
        The method's label count at each round (non-negative).
    accuracy
        The method's accuracy at each round, the same shape as ``n_labels``.
    random_labels, random_accuracy
        The random curve, as in :func:`equivalent_random_labels`.
    outside
        ``"clip"`` (default), ``"nan"`` or ``"extrapolate"``, as in
        :func:`equivalent_random_labels`. With ``"clip"`` an accuracy above the whole random
        curve gives a lower bound on the ratio; one below its first point gives 0 at round 0
        (when ``N1`` is random's first label count) and an upper bound elsewhere.

    Returns
    -------
    float or numpy.ndarray
        A float when both ``n_labels`` and ``accuracy`` are scalars; otherwise a float64 array
        of their shape. NaN where ``N2`` is NaN.

    Raises
    ------
    ValueError
        For the input errors of :func:`equivalent_random_labels`; if ``n_labels`` is negative,
        not finite or not the shape of ``accuracy``; if ``N2`` is 0 for some round (the
        ratio is undefined there); or if a ratio overflows float64 (``N1`` more than 1e308
        times ``N2``).

    Examples
    --------
    >>> round(sample_saving_ratio(200, 0.65, [100, 200, 400], [0.5, 0.6, 0.7]), 9)  # (300 - 200) / 300
    0.333333333
    """
    ratios = _saving_ratios(n_labels, accuracy, random_labels, random_accuracy, outside)
    return float(ratios) if is_scalar(n_labels) and is_scalar(accuracy) else ratios


def average_sample_saving_ratio(
    n_labels: npt.ArrayLike,
    accuracy: npt.ArrayLike,
    random_labels: npt.ArrayLike,
    random_accuracy: npt.ArrayLike,
    *,
    outside: Outside = "clip",
) -> float:
    """Mean of :func:`sample_saving_ratio` over rounds, leaving NaN rounds out.

    Parameters
    ----------
    n_labels, accuracy, random_labels, random_accuracy, outside
        As in :func:`sample_saving_ratio`; ``n_labels`` and ``accuracy`` hold one entry per round.

    Returns
    -------
    float
        The mean over the rounds whose ratio is not NaN (only ``outside="nan"`` or
        ``"extrapolate"`` make NaN rounds); NaN, without a warning, if every round is NaN.

    Raises
    ------
    ValueError
        As :func:`sample_saving_ratio`, and if there are no rounds at all.

    Examples
    --------
    >>> n_labels, accuracy = [100, 200, 300], [0.5, 0.65, 0.7]  # N2 = 100, 300, 400
    >>> ratio = average_sample_saving_ratio(n_labels, accuracy, [100, 200, 400], [0.5, 0.6, 0.7])
    >>> round(ratio, 9)  # (0 + 1/3 + 1/4) / 3
    0.194444444
    """
    ratios = _saving_ratios(n_labels, accuracy, random_labels, random_accuracy, outside)
    if ratios.size == 0:
        raise ValueError("n_labels and accuracy are empty: there are no rounds to average")
    kept = ratios[~np.isnan(ratios)]
    if not kept.size:
        return float("nan")
    with np.errstate(over="ignore"):
        mean = float(np.mean(kept))
    if not math.isfinite(mean):  # the sum passed float range: average the shares instead
        mean = float(np.sum(kept / kept.size))
    return mean


@overload
def overall_cost(
    n_labels: float, label_price: float, train_hours: float, hourly_price: float, *, reviews: int = ...
) -> float: ...


@overload
def overall_cost(
    n_labels: npt.ArrayLike, label_price: npt.ArrayLike, train_hours: npt.ArrayLike, hourly_price: npt.ArrayLike,
    *, reviews: int = ...
) -> Union[float, FloatArray]: ...


def overall_cost(
    n_labels: npt.ArrayLike,
    label_price: npt.ArrayLike,
    train_hours: npt.ArrayLike,
    hourly_price: npt.ArrayLike,
    *,
    reviews: int = 1,
) -> Union[float, FloatArray]:
    """Overall cost ``N1 * P_l * reviews + C_tr`` of reaching a model, with ``C_tr = train_hours * hourly_price``.

    Parameters
    ----------
    n_labels
        Labelled items ``N1``.
    label_price
        Price ``P_l`` of one annotation of one item (e.g. :data:`DEFAULT_LABEL_PRICE_USD`).
    train_hours
        Accelerator hours spent training (and selecting), all rounds included.
    hourly_price
        Price of one accelerator hour (e.g. :data:`DEFAULT_HOURLY_PRICE_USD`).
    reviews
        Annotations bought per item (an integer >= 1; the paper used
        :data:`DEFAULT_REVIEWS` = 3). Default 1: ``label_price`` is the price per item.

    Returns
    -------
    float or numpy.ndarray
        A float when all four values are scalars; otherwise their broadcast as float64.

    Raises
    ------
    ValueError
        If any of the four is negative, not numeric or not finite, they do not broadcast
        together, ``reviews`` is not an integer >= 1 (or beyond float64), or the cost itself
        overflows float64.

    Examples
    --------
    >>> round(overall_cost(1000, 0.012, 2.5, 3.06, reviews=3), 6)  # 36 + 7.65
    43.65
    """
    if isinstance(reviews, (bool, np.bool_)) or not isinstance(reviews, numbers.Integral) or reviews < 1:
        raise ValueError(f"reviews must be an integer >= 1, got {reviews!r}")
    try:
        per_item = float(reviews)
    except OverflowError as exc:
        raise ValueError("reviews is too large for float64") from exc
    values = {"n_labels": n_labels, "label_price": label_price, "train_hours": train_hours,
              "hourly_price": hourly_price}
    arrays = {name: as_finite(value, name) for name, value in values.items()}
    for name, array in arrays.items():
        check_nonnegative(array, name)
    try:
        n1, p_l, hours, hourly = np.broadcast_arrays(*arrays.values())
    except ValueError as exc:
        shapes = ", ".join(f"{name} {array.shape}" for name, array in arrays.items())
        raise ValueError(f"n_labels, label_price, train_hours and hourly_price do not broadcast: {shapes}") from exc
    with np.errstate(over="ignore", invalid="ignore"):
        cost = n1 * p_l * per_item + hours * hourly
    if not np.all(np.isfinite(cost)):
        raise ValueError(
            "the overall cost n_labels * label_price * reviews + train_hours * hourly_price overflows float64"
        )
    return float(cost) if all(is_scalar(value) for value in values.values()) else cost
