"""Property tests: generated bad arguments to the transfer measures and the metrics get either a
valid, finite result or a ValueError/TypeError (RuntimeError only for a well-spelt GPU that is not
usable here) — never another exception, a warning, a crash, a hang or a NaN."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast.metrics as m
from asvp_fast.core.checks import parse_device

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

any_float = st.floats(allow_nan=True, allow_infinity=True)
big_int = st.integers(min_value=-(10**400), max_value=10**400)
junk = st.one_of(
    st.none(), st.booleans(), big_int, any_float, st.text(max_size=6), st.binary(max_size=4),
    st.lists(any_float, max_size=4), st.lists(st.text(max_size=2), max_size=3), st.just([]), st.just(()),
    st.just({}), st.just({1, 2}), st.builds(object), st.complex_numbers(max_magnitude=1e3),
    st.just(np.float64("nan")), st.just(np.array([[1.0, 2.0], [3.0]], dtype=object)),
)

ARRAY_DTYPES = ["float16", "float32", "float64", "int32", "int64", "uint8", "bool", "complex64", "U3", "object"]


@st.composite
def arrays(draw, ndim=st.integers(0, 3), max_side: int = 6) -> np.ndarray:
    """Arrays of any of the dtypes above, any small shape (empty too), values up to the float extremes."""
    dims = draw(ndim)
    shape = tuple(draw(st.integers(0, max_side)) for _ in range(dims))
    dtype = draw(st.sampled_from(ARRAY_DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.standard_normal(shape) * 10.0 ** draw(st.sampled_from([-300, -5, 0, 3, 150, 300]))
    if values.size and draw(st.booleans()):
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1.7e308]))
    if dtype == "U3":
        return values.astype(str).astype("U3")
    if dtype == "object":
        return values.astype(object)
    with np.errstate(all="ignore"):
        return values.astype(dtype)


@st.composite
def features_and_labels(draw, broken: str) -> Tuple[Any, Any]:
    """Well-formed (N, D) features with integer labels at any scale, unless ``broken`` names one."""
    n, d = draw(st.integers(2, 12)), draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = 10.0 ** draw(st.sampled_from([-300, -150, -3, 0, 3, 100, 150, 300]))
    features: Any = rng.standard_normal((n, d)) * scale
    labels: Any = rng.integers(0, draw(st.integers(2, 4)), n)
    labels[:2] = [0, 1]
    if draw(st.booleans()):  # a row at another scale, clipped to the float64 range
        with np.errstate(all="ignore"):
            features[draw(st.integers(0, n - 1))] *= 10.0 ** draw(st.integers(-300, 300))
        features = np.nan_to_num(features, posinf=1.7e308, neginf=-1.7e308)
    kind = draw(st.sampled_from(["float64", "float32", "float16", "int64", "torch"]))
    with np.errstate(all="ignore"):
        if kind == "torch":
            torch = pytest.importorskip("torch")
            dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64]))
            features = torch.from_numpy(features).to(dtype)
            labels = torch.from_numpy(labels) if draw(st.booleans()) else labels
        elif kind != "float64":
            features = np.clip(features, -6e4, 6e4).astype(kind) if kind == "float16" else features.astype(kind)
    if broken == "features":
        features = draw(st.one_of(junk, arrays()))
    elif broken == "labels":
        labels = draw(st.one_of(junk, arrays(ndim=st.integers(0, 2), max_side=12), st.just(np.zeros(n, int))))
    elif broken == "value" and hasattr(features, "shape") and not hasattr(features, "detach"):
        if features.dtype.kind == "f":
            with np.errstate(all="ignore"):  # float16 overflows to inf: also a bad value
                features.flat[draw(st.integers(0, features.size - 1))] = draw(any_float)
    return features, labels


def option(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A bad option value: an out-of-range number, NaN/inf, a huge integer, or junk."""
    return st.one_of(valid, any_float, big_int, junk)


devices = st.one_of(st.sampled_from(["auto", "cpu", "CPU ", "cuda", "cuda:0", "cuda:99", "cuda:x", "gpu", "", "tpu:0"]),
                    junk)
threads = st.one_of(st.none(), st.integers(-3, 4), st.just(10**6), st.just(2**40), junk)


def _cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _allowed(kwargs: Dict[str, Any]) -> Tuple[type, ...]:
    """ValueError/TypeError always; RuntimeError only when a well-spelt CUDA device is asked for."""
    try:
        spec = parse_device(kwargs.get("device", "auto"))
    except (TypeError, ValueError):
        return (ValueError, TypeError)
    return (ValueError, TypeError, RuntimeError) if spec.kind == "cuda" else (ValueError, TypeError)


def _call(fn: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """The result, or None when fn raised one of the allowed exceptions (anything else fails)."""
    allowed = _allowed(kwargs)
    try:
        return fn(*args, **kwargs)
    except allowed as exc:
        if isinstance(exc, RuntimeError):
            assert not _cuda_usable() or "cuda:99" in str(exc), exc
        return None


def _options(draw: Callable[[st.SearchStrategy], Any], broken: str,
             options: Dict[str, Tuple[st.SearchStrategy, st.SearchStrategy]]) -> Dict[str, Any]:
    """Some of the options with valid values (edge values included); the ``broken`` one bad."""
    kwargs = {}
    for name, (valid, bad) in options.items():
        if name == broken:
            kwargs[name] = draw(bad)
        elif draw(st.booleans()):
            kwargs[name] = draw(valid)
    return kwargs


def _finite_array(out: Any) -> np.ndarray:
    if hasattr(out, "detach"):
        out = out.detach().cpu().double().numpy()
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Transfer measures
# ---------------------------------------------------------------------------------------------

LOGME_OPTIONS = {
    "max_iter": (st.sampled_from([1, 2, 100, 10_000]), option(st.integers(-2, 0) | st.just(10_001))),
    "tol": (st.sampled_from([0.0, 1e-12, 1e-6, 1.0, 1e300]), option(st.sampled_from([-1.0, -1e-300]))),
    "device": (st.sampled_from(["auto", "cpu", "CPU "]), devices),
    "threads": (st.sampled_from([None, 1, 2, 10**6]), threads),
}

PED_OPTIONS = {
    "steps": (st.sampled_from([2, 6, 40, 1000]), option(st.sampled_from([1, 1001, 10**9]))),
    "step_size": (st.sampled_from([1e-300, 0.1, 3.0, 1e200]), option(st.sampled_from([0.0, -0.1]))),
    "nsigma": (st.sampled_from([0.6, -0.6, 0.0, 1e6]), option(st.just(1e300))),
    "exit_ratio": (st.sampled_from([0.0, 0.5, 0.999]), option(st.sampled_from([1.0, -0.1]))),
    "constant": (st.sampled_from([0.0, 1.0, 1e308]), option(st.just(-1.0))),
    "eps": (st.sampled_from([1e-100, 1e-3, 1e100]), option(st.sampled_from([0.0, 1e-300, 1e300]))),
    "chunk_rows": (st.sampled_from([None, 1, 5, 10**30]), st.one_of(st.integers(-1, 0), junk)),
    "reference": (st.just(None), st.one_of(junk, st.tuples(arrays(ndim=st.just(1)), arrays(ndim=st.just(1))))),
    "device": (st.sampled_from(["auto", "cpu"]), devices),
    "threads": (st.sampled_from([None, 1, 10**6]), threads),
}


@SETTINGS
@given(broken=st.sampled_from(["nothing", "features", "labels", "value", *LOGME_OPTIONS]), draw=st.data())
def test_logme_bad_arguments(broken, draw):
    features, labels = draw.draw(features_and_labels(broken))
    kwargs = _options(draw.draw, broken, LOGME_OPTIONS)
    result = _call(af.logme, (features, labels), kwargs)
    if result is not None:
        assert isinstance(result, float) and math.isfinite(result), result
    if broken == "nothing" and not hasattr(features, "detach") and features.dtype.kind != "f":
        assert result is None  # integer features are a TypeError for LogME


@SETTINGS
@given(broken=st.sampled_from(["nothing", "features", "labels", "value", *PED_OPTIONS]), draw=st.data())
def test_ped_bad_arguments(broken, draw):
    features, labels = draw.draw(features_and_labels(broken))
    kwargs = _options(draw.draw, broken, PED_OPTIONS)
    if broken == "nothing" and draw.draw(st.booleans()) and hasattr(features, "shape") and len(features.shape) == 2:
        d = features.shape[1]  # a valid reference, sometimes far from the features
        kwargs["reference"] = (np.full(d, draw.draw(st.sampled_from([0.0, 1e10, -1e140]))), np.ones(d))
    result = _call(af.ped, (features, labels), kwargs)
    if result is None:
        return
    out, n_iter = result
    assert isinstance(n_iter, int) and 1 <= n_iter <= kwargs.get("steps", 6)
    moved = _finite_array(out)
    assert moved.shape == tuple(features.shape) and np.isfinite(moved).all()
    assert isinstance(out, np.ndarray) != hasattr(features, "detach")  # outputs follow the input


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

finite = st.floats(-1e308, 1e308)
bad_numbers = st.one_of(big_int, any_float, junk, arrays(ndim=st.integers(0, 2)),
                        st.lists(st.floats(-1e308, 1e308), min_size=0, max_size=5))


@st.composite
def valid_numbers(draw, elements: st.SearchStrategy, shape: Tuple[int, ...] = ()) -> Any:
    """A Python/NumPy scalar, a list or an array of ``elements``."""
    if shape == ():
        value = draw(elements)
        return draw(st.sampled_from([value, np.float64(value), np.array(value)]))
    values = np.array(draw(st.lists(elements, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                      dtype=np.float64).reshape(shape)
    return draw(st.sampled_from([values, values.tolist()]))


@st.composite
def curves(draw) -> Tuple[Any, Any]:
    """A valid random curve at any scale: 2..6 strictly increasing label counts, any accuracies."""
    size = draw(st.integers(2, 6))
    steps = draw(st.lists(st.floats(1e-300, 1e300), min_size=size, max_size=size))
    labels = np.cumsum(np.array(steps)) * draw(st.sampled_from([0.0, 1.0])) + draw(st.floats(0, 1e300))
    labels = np.unique(labels)
    if labels.size < 2:
        labels = np.array([1.0, 2.0])
    accuracy = np.array(draw(st.lists(st.one_of(finite, st.floats(0, 1)), min_size=labels.size, max_size=labels.size)))
    if draw(st.booleans()):
        accuracy = np.sort(accuracy)
    return labels, accuracy


outside_modes = st.sampled_from(["clip", "nan", "extrapolate"])
bad_outside = st.one_of(st.sampled_from(["Clip", "", "none"]), junk)


def _check_ratio_like(result: Any, outside: Any, allow_inf: bool = False) -> None:
    values = np.asarray(result, dtype=np.float64)
    if outside in ("nan", "extrapolate"):
        values = values[~np.isnan(values)]  # NaN is the documented answer outside the curve
    if allow_inf and outside == "extrapolate":
        values = values[~np.isposinf(values)]  # documented: an extrapolation past float64 range
    assert np.isfinite(values).all(), result


def _rounds(draw: Callable[[st.SearchStrategy], Any]) -> Tuple[Any, Any]:
    shape = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    n_labels = draw(valid_numbers(st.one_of(st.floats(0, 1e308), st.integers(0, 10**6)), shape))
    accuracy = draw(valid_numbers(st.one_of(finite, st.floats(0, 1)), shape))
    return n_labels, accuracy


def _break(draw: Callable[[st.SearchStrategy], Any], args: list, names: Tuple[str, ...], broken: str) -> None:
    if broken in names:
        args[names.index(broken)] = draw(bad_numbers)


@SETTINGS
@given(broken=st.sampled_from(["nothing", "accuracy", "random_labels", "random_accuracy", "outside"]),
       curve=curves(), outside=outside_modes, draw=st.data())
def test_equivalent_random_labels_bad_arguments(broken, curve, outside, draw):
    args = [draw.draw(valid_numbers(st.one_of(finite, st.floats(0, 1)), draw.draw(st.sampled_from([(), (3,)])))),
            *curve]
    _break(draw.draw, args, ("accuracy", "random_labels", "random_accuracy"), broken)
    kwargs = {"outside": draw.draw(bad_outside) if broken == "outside" else outside}
    result = _call(m.equivalent_random_labels, tuple(args), kwargs)
    if result is not None:
        _check_ratio_like(result, kwargs["outside"], allow_inf=True)
        if outside == "clip" and broken == "nothing":
            assert np.all((np.asarray(result) >= curve[0][0]) & (np.asarray(result) <= curve[0][-1]))


NAMES = ("n_labels", "accuracy", "random_labels", "random_accuracy")


@SETTINGS
@given(broken=st.sampled_from(["nothing", *NAMES, "outside"]), curve=curves(), outside=outside_modes, draw=st.data())
def test_sample_saving_ratio_bad_arguments(broken, curve, outside, draw):
    args = [*_rounds(draw.draw), *curve]
    _break(draw.draw, args, NAMES, broken)
    kwargs = {"outside": draw.draw(bad_outside) if broken == "outside" else outside}
    result = _call(m.sample_saving_ratio, tuple(args), kwargs)
    if result is not None:
        _check_ratio_like(result, kwargs["outside"])


@SETTINGS
@given(broken=st.sampled_from(["nothing", *NAMES, "outside"]), curve=curves(), outside=outside_modes, draw=st.data())
def test_average_sample_saving_ratio_bad_arguments(broken, curve, outside, draw):
    args = [*_rounds(draw.draw), *curve]
    _break(draw.draw, args, NAMES, broken)
    kwargs = {"outside": draw.draw(bad_outside) if broken == "outside" else outside}
    result = _call(m.average_sample_saving_ratio, tuple(args), kwargs)
    if result is not None:
        assert isinstance(result, float)
        _check_ratio_like(result, kwargs["outside"])


COST_NAMES = ("n_labels", "label_price", "train_hours", "hourly_price")


@SETTINGS
@given(broken=st.sampled_from(["nothing", *COST_NAMES, "reviews"]), draw=st.data())
def test_overall_cost_bad_arguments(broken, draw):
    shape = draw.draw(st.sampled_from([(), (2,), (1, 2)]))
    args = [draw.draw(valid_numbers(st.one_of(st.floats(0, 1e308), st.integers(0, 10**30)), shape)) for _ in COST_NAMES]
    _break(draw.draw, args, COST_NAMES, broken)
    kwargs = {}
    if broken == "reviews":
        kwargs["reviews"] = draw.draw(st.one_of(st.integers(-2, 0), big_int, junk))
    elif draw.draw(st.booleans()):
        kwargs["reviews"] = draw.draw(st.sampled_from([1, 3, np.int64(3), 10**300]))
    result = _call(m.overall_cost, tuple(args), kwargs)
    if result is not None:
        assert np.isfinite(np.asarray(result, dtype=np.float64)).all(), result


def test_the_strategies_reach_valid_calls():
    """The properties above are not vacuous: these well-formed calls (drawn the same way) succeed."""
    features = np.random.default_rng(0).standard_normal((12, 3)) * 1e300
    labels = np.arange(12) % 3
    assert math.isfinite(_call(af.logme, (features, labels), {"threads": 10**6}))
    out, n_iter = _call(af.ped, (features / 1e300, labels), {"steps": 1000, "exit_ratio": 0.0, "chunk_rows": 10**30})
    assert np.isfinite(out).all() and n_iter >= 1
    assert _call(m.overall_cost, (1e300, 1.0, 0.0, 0.0), {}) == 1e300
