"""Argument checks shared by the metrics: finite float64 arrays, label counts, random curves."""

from __future__ import annotations

import numbers
from typing import Any, Literal, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

Outside = Literal["clip", "nan", "extrapolate"]
FloatArray = npt.NDArray[np.float64]
ArrayInput = Union[Sequence[float], Sequence[Sequence[float]], npt.NDArray[Any]]

OUTSIDE_MODES: Tuple[str, ...] = ("clip", "nan", "extrapolate")

# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def is_scalar(value: Any) -> bool:
    """Whether ``value`` is a Python or NumPy real scalar (0-d arrays are arrays)."""
    return isinstance(value, numbers.Real) and not isinstance(value, np.ndarray)


def as_finite(value: Any, name: str) -> FloatArray:
    """``value`` as a float64 array; ValueError naming ``name`` if not numeric or not finite.

    Real numbers only: strings (even "0.5"), booleans, complex numbers and dates are not numeric
    here, and an integer too large for float64 is named instead of raising OverflowError.
    """
    if isinstance(value, (str, bytes, bool, np.bool_)):
        raise ValueError(f"{name} must be numeric, got {type(value).__name__} {value!r}")
    try:
        raw = np.asarray(value)
        if raw.dtype.kind not in "iufO":  # bool, complex, str, bytes, dates, structured
            raise TypeError(f"dtype {raw.dtype}")
        array = raw.astype(np.float64)
    except OverflowError as exc:  # Python integers beyond float64 (10**400)
        raise ValueError(f"{name} holds a value too large for float64") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric, got {value!r}") from exc
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or inf; every value must be finite")
    return array


def check_nonnegative(array: FloatArray, name: str) -> None:
    """ValueError naming ``name`` if any entry of ``array`` is negative."""
    if np.any(array < 0):
        raise ValueError(f"{name} must not be negative, got a minimum of {float(np.min(array))}")


def check_outside(outside: str) -> None:
    """ValueError naming ``outside`` if it is not one of the known modes."""
    if outside not in OUTSIDE_MODES:
        raise ValueError(f"unknown outside={outside!r}; expected one of {list(OUTSIDE_MODES)}")


def random_curve(random_labels: Any, random_accuracy: Any) -> Tuple[FloatArray, FloatArray]:
    """The validated random curve as two float64 1-D arrays of equal length >= 2."""
    labels = as_finite(random_labels, "random_labels")
    accuracy = as_finite(random_accuracy, "random_accuracy")
    if labels.ndim != 1 or accuracy.ndim != 1:
        raise ValueError(
            f"random_labels and random_accuracy must be 1-D, got shapes {labels.shape} and {accuracy.shape}"
        )
    if labels.size != accuracy.size:
        raise ValueError(
            f"random_labels and random_accuracy must have the same length, got {labels.size} and {accuracy.size}"
        )
    if labels.size < 2:
        raise ValueError(
            f"random_labels needs at least 2 points to interpolate between, got {labels.size}"
        )
    check_nonnegative(labels, "random_labels")
    if np.any(np.diff(labels) <= 0):
        raise ValueError("random_labels must be strictly increasing (one accuracy per label count, in order)")
    return labels, accuracy


def round_inputs(n_labels: Any, accuracy: Any) -> Tuple[FloatArray, FloatArray]:
    """The validated per-round label counts and accuracies, of the same shape."""
    n1 = as_finite(n_labels, "n_labels")
    acc = as_finite(accuracy, "accuracy")
    check_nonnegative(n1, "n_labels")
    if n1.shape != acc.shape:
        raise ValueError(
            f"n_labels and accuracy must have the same shape (one entry per round), got {n1.shape} and {acc.shape}"
        )
    return n1, acc

