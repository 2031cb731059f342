"""Label-efficiency and cost metrics for comparing an active-learning run with random sampling.

A *random curve* is the test accuracy that random sampling reached at a few label counts
(``random_labels``, strictly increasing, with accuracies ``random_accuracy``). Between its points
it is read as piecewise linear. For a method that reached accuracy ``a`` with ``N1`` labels:

* ``N2 = equivalent_random_labels(a, ...)`` is the number of labels random sampling needs to reach
  ``a``: the **smallest** label count at which the piecewise-linear random curve first reaches
  ``a`` (its first crossing). Real random curves are noisy and need not be monotone; taking the
  first crossing means a later dip below ``a`` does not push ``N2`` further out, and a plateau at
  exactly ``a`` answers with its left end.
* ``sample_saving_ratio = (N2 - N1) / N2``: the fraction of random sampling's labels the method
  saved at that round (negative where the method needed more labels than random).
* ``average_sample_saving_ratio``: its mean over rounds.
* ``overall_cost = N1 * P_l * reviews + C_tr``, with ``C_tr = train_hours * hourly_price``.

Accuracies outside the random curve's range
-------------------------------------------
``outside`` decides what ``N2`` is for an accuracy the curve does not cover. Accuracies equal to
the first point's accuracy, or reached anywhere on the curve, are *inside* the range and are
answered by the first crossing in every mode.

``"clip"`` (default)
    * Above every point of the curve: ``N2`` is the largest random label count. Random sampling
      would have needed at least that many (it had not got there yet), so ``N2`` is
      under-stated and the saving ratio is a **lower bound** (conservative).
    * Below the first point's accuracy: ``N2`` is the smallest random label count. If random
      sampling improves with labels, it would have reached this accuracy with at most that many,
      so ``N2`` is over-stated and the saving ratio is an **upper bound** (optimistic) there. It
      is exact where it matters most: at round 0 every method starts from the same random
      initial labelled set as the random curve's first point, so ``N1`` equals the first random
      label count and the ratio is 0 however the accuracy fluctuates with the training seed. A
      later round that scores below random's starting accuracy gets a negative ratio; the true
      ratio is at most that.
``"nan"``
    ``N2`` is NaN outside the range; the ratio is NaN for that round and
    :func:`average_sample_saving_ratio` leaves such rounds out.
``"extrapolate"``
    The end segment on that side is extended as a straight line: the first two points below the
    range, the last two above it. Below the range the answer is never less than 0 labels (it is
    clamped at 0). If that end segment is flat or falling, the line never reaches the accuracy
    in the needed direction and ``N2`` is NaN.

A saving ratio needs ``N2 > 0``; an ``N2`` of 0 (a random curve that starts at 0 labels, or an
extrapolation clamped at 0) raises :class:`ValueError`.

Default prices
--------------
The module constants are reference figures for :func:`overall_cost`, not facts about your setup:
prices change and differ by region, workforce and task, so pass your own.

``DEFAULT_LABEL_PRICE_USD = 0.012``
    Price of one annotation (one worker labelling one item) of an image-classification item by
    a Mechanical-Turk-style public workforce: the per-object price tier that
    AWS SageMaker Ground Truth suggests for image classification with the Amazon Mechanical Turk
    workforce. The per-object service fee of Ground Truth itself is not included.
``DEFAULT_REVIEWS = 3``
    Annotations bought per item: the paper priced labels with three annotations per sample.
``DEFAULT_HOURLY_PRICE_USD = 3.06``
    On-demand hourly price of an AWS EC2 p3.2xlarge (one NVIDIA V100) in us-east-1, the instance
    family the paper priced training on.

Everything here is plain NumPy (float64).
"""

from __future__ import annotations

from .savings import (
    DEFAULT_HOURLY_PRICE_USD,
    DEFAULT_LABEL_PRICE_USD,
    DEFAULT_REVIEWS,
    average_sample_saving_ratio,
    equivalent_random_labels,
    overall_cost,
    sample_saving_ratio,
)

__all__ = [
    "DEFAULT_HOURLY_PRICE_USD",
    "DEFAULT_LABEL_PRICE_USD",
    "DEFAULT_REVIEWS",
    "average_sample_saving_ratio",
    "equivalent_random_labels",
    "overall_cost",
    "sample_saving_ratio",
]
