"""Property-based hunt for malformed calls (issue 11): every public selection function, fed
hypothesis-generated bad arguments (wrong types, NaN/Inf and out-of-range values, huge and negative
integers, empty arrays, wrong shapes and dtypes, strings for numbers, lists for strings, bad or
repeated row indices, ...), must either return a valid result or raise ValueError/TypeError:
never another exception type, a crash, or NaN in an output.

Each draw replaces one or two of a valid call's arguments with drawn ones, so each example
exercises one or two problems at a time, as a user's typo would. Inputs are tiny and the default thread count is
1 (thread counts are drawn too): the suite stays fast on a busy 2-core machine.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import asvp_fast as af
from asvp_fast.acquisition.diversity import DiversityResult, diversity_select
from asvp_fast.core.checks import parse_rows

torch = pytest.importorskip("torch")
from asvp_fast.acquisition.activeft import activeft_select  # noqa: E402

N_ROWS = 12  # rows of the valid inputs
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOAT_DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]
# Values that break naive code: non-finite, beyond float16/float32 range, subnormal, signed zero.
SPECIALS = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 1e-310, 65504.0, 1e5, 3.5e38, 1e300, -1e300]


# --- strategies -------------------------------------------------------------------------------------

@st.composite
def float_matrices(draw: Any, kind: str = "normal") -> Any:
    """Float matrices of any supported dtype and layout, sometimes empty, sometimes holding specials."""
    n = draw(st.integers(0, 16))
    c = draw(st.integers(0, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "probs" and c > 0 and draw(st.booleans()):
        a = rng.dirichlet(np.ones(c), n)
    else:
        a = rng.standard_normal((n, c)) * draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]))
    if n * c and draw(st.booleans()):
        for _ in range(draw(st.integers(1, 3))):
            a[rng.integers(n), rng.integers(c)] = draw(st.sampled_from(SPECIALS))
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(draw(st.sampled_from(FLOAT_DTYPES)))
    layout = draw(st.sampled_from(["c", "fortran", "strided", "torch"]))
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "strided":
        return np.repeat(a, 2, axis=1)[:, ::2]
    if layout == "torch" and a.dtype != ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a))
    return a


BAD_ARRAYS = st.one_of(
    st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=4), st.booleans(),
    st.sampled_from([[], [[]], [[1.0, 2.0], [3.0]], [["a", "b"]], {"a": 1}, {1, 2}, (1.0, 2.0)]),
    st.builds(lambda n: np.ones(n, np.float32), st.integers(0, 5)),               # 1-D
    st.builds(lambda s: np.ones(s, np.float32), st.sampled_from([(), (2, 3, 4), (1, 1, 1, 1)])),
    st.builds(lambda d: np.ones((4, 3), d), st.sampled_from([np.int64, np.int8, np.uint8, np.bool_, np.complex64,
                                                             object, "U3", ">f4", ">f8"])),
    st.builds(lambda d: torch.ones((4, 3), dtype=d), st.sampled_from([torch.int64, torch.bool, torch.int32,
                                                                       torch.complex64, torch.uint8])),
    st.builds(lambda: torch.ones(5)), st.builds(lambda: torch.ones((2, 2, 2))),
)

NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70), st.sampled_from([0, -1, 1, 2**31, 2**63, 2**64, 10**30]),
    st.floats(allow_nan=True), st.booleans(), st.none(), st.text(max_size=3), st.just([3]),
    st.builds(np.int64, st.integers(-5, 50)), st.builds(np.float32, st.floats(-5, 50, width=32)),
)
FLAGS = st.one_of(st.booleans(), st.sampled_from(["False", "True", "", 0, 1, None, [True], np.array([True, False])]))
PROGRESS = st.one_of(st.just(None), st.booleans(), st.sampled_from(["yes", "False", 0, 1.0, [True]]))
DEVICES = st.one_of(st.sampled_from(["auto", "cpu", "tpu", "gpu", "", "cuda:", "cuda:x", "cuda:-1", "cpu:0",
                                     " auto", "CPU"]),
                    st.sampled_from([5, None, 0.0, ["cpu"], b"cpu", ("cpu",)]))
# Thread counts: mostly small (1024 OpenMP threads per call is slow on 2 busy cores), some huge.
THREADS = st.one_of(st.none(), st.integers(-3, 4), st.sampled_from([10**6, 2**31, 2**63, 10**30]),
                    st.floats(allow_nan=True), st.booleans(), st.text(max_size=2), st.just([2]))


def choices(valid: List[str]) -> Any:
    return st.one_of(st.sampled_from(valid), st.sampled_from(["", "MARGIN", "kcentre", "none", "auto "]),
                     st.builds(lambda v: [v], st.sampled_from(valid)), st.integers(-2, 3), st.none(),
                     st.builds(lambda v: v.encode(), st.sampled_from(valid)))


@st.composite
def row_arguments(draw: Any) -> Any:
    """exclude=/labeled= values: good and bad masks and index arrays, repeats, out of range."""
    n = N_ROWS + draw(st.sampled_from([0, 0, 0, -1, 1]))  # sometimes the wrong mask length
    form = draw(st.sampled_from(["mask", "indices", "list", "tensor", "other"]))
    if form == "mask":
        return draw(st.lists(st.booleans(), min_size=n, max_size=n).map(lambda v: np.array(v, dtype=bool)))
    indices = draw(st.lists(st.one_of(st.integers(0, N_ROWS - 1), st.integers(-(2**63), 2**63 - 1),
                                      st.sampled_from([-1, N_ROWS])), max_size=8))
    if form == "indices":
        dtype = draw(st.sampled_from([np.int64, np.int32, np.uint64, np.float64]))
        with np.errstate(over="ignore", invalid="ignore"):
            return np.array([i for i in indices if dtype != np.uint64 or i >= 0], dtype=np.int64).astype(dtype)
    if form == "list":
        return indices
    if form == "tensor":
        return torch.tensor(indices, dtype=torch.int64)
    return draw(st.sampled_from(["0,1", b"01", {1, 2}, {0: 1}, 3, 2.5, [[0, 1], [2]], [0.5], [True, 1], np.zeros((2, 2), int),
                                 np.array([np.nan]), [None]]))


def sometimes(data: Any, valid: Dict[str, Any], bad: Dict[str, Any]) -> Dict[str, Any]:
    """The valid arguments with one or two of them replaced by drawn (mostly bad) values: one
    problem at a time, as a user's typo would be, so that each check is reached."""
    kwargs = dict(valid)
    names = sorted(bad)
    count = data.draw(st.sampled_from([1, 1, 1, 2]), label="arguments replaced")
    for name in data.draw(st.lists(st.sampled_from(names), min_size=count, max_size=count, unique=True),
                          label="which"):
        kwargs[name] = data.draw(bad[name], label=name)
    return kwargs


# --- what a valid result is ----------------------------------------------------------------------------

def _rows(x: Any) -> int:
    return int(x.shape[0]) if hasattr(x, "shape") else len(np.asarray(x))


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.cpu().numpy()
    return np.asarray(value)


def _check_library(value: Any, like: Any) -> None:
    if isinstance(like, torch.Tensor):
        assert isinstance(value, torch.Tensor) and value.device == like.device, type(value)
    else:
        assert type(value) is np.ndarray, type(value)


def check_indices(picks: Any, like: Any, k: int, forbidden: Any = None) -> None:
    _check_library(picks, like)
    values = _as_numpy(picks)
    n = _rows(like)
    assert values.dtype == np.int64 and values.shape == (k,)
    assert len(np.unique(values)) == k and ((values >= 0) & (values < n)).all(), values
    if forbidden is not None:
        assert not np.isin(values, parse_rows(forbidden, n, "rows")).any()


def check_floats(values: Any, like: Any, length: int) -> None:
    _check_library(values, like)
    array = _as_numpy(values)
    assert array.dtype == np.float32 and array.shape == (length,)
    assert not np.isnan(array).any(), array


def outcome(call: Callable[[], Any], check: Callable[[Any], None]) -> None:
    """A valid result, or ValueError/TypeError; anything else fails the test."""
    try:
        result = call()
    except (ValueError, TypeError) as exc:
        event(f"raised {type(exc).__name__}")
        return
    event("valid result")
    check(result)


# --- one property per public function ---------------------------------------------------------------------

KINDS = ["margin", "entropy", "least_confidence"]
RNG = np.random.default_rng(0)
PROBS = RNG.dirichlet(np.ones(4), N_ROWS).astype(np.float32)
FEATURES = RNG.standard_normal((N_ROWS, 3)).astype(np.float32)
COMMON = {"device": DEVICES, "threads": THREADS, "progress": PROGRESS}


@SETTINGS
@given(data=st.data())
def test_scores(data):
    kwargs = sometimes(data, {"x": PROBS, "kind": "margin", "threads": 1},
                       {"x": st.one_of(float_matrices("probs"), BAD_ARRAYS), "kind": choices(KINDS),
                        "from_logits": FLAGS, "validate": FLAGS, **COMMON})
    outcome(lambda: af.scores(**kwargs), lambda s: check_floats(s, kwargs["x"], _rows(kwargs["x"])))


@SETTINGS
@given(data=st.data())
def test_select_uncertain(data):
    kwargs = sometimes(data, {"x": PROBS, "k": 3, "threads": 1},
                       {"x": st.one_of(float_matrices("probs"), BAD_ARRAYS), "k": NUMBERS, "kind": choices(KINDS),
                        "from_logits": FLAGS, "validate": FLAGS, "exclude": row_arguments(), **COMMON})
    outcome(lambda: af.select_uncertain(**kwargs),
            lambda p: check_indices(p, kwargs["x"], kwargs["k"], kwargs.get("exclude")))


@SETTINGS
@given(data=st.data())
def test_kcenter_greedy(data):
    kwargs = sometimes(data, {"features": FEATURES, "k": 3, "threads": 1},
                       {"features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS, "labeled": row_arguments(),
                        "seed": NUMBERS, **COMMON})
    outcome(lambda: af.kcenter_greedy(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("labeled")))


@SETTINGS
@given(data=st.data())
def test_kmeans_pp(data):
    kwargs = sometimes(data, {"features": FEATURES, "k": 3, "threads": 1},
                       {"features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS, "exclude": row_arguments(),
                        "seed": NUMBERS, **COMMON})
    outcome(lambda: af.kmeans_pp(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("exclude")))


@SETTINGS
@given(data=st.data())
def test_badge(data):
    kwargs = sometimes(data, {"x": PROBS, "features": FEATURES, "k": 3, "threads": 1},
                       {"x": st.one_of(float_matrices("probs"), BAD_ARRAYS),
                        "features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS,
                        "from_logits": FLAGS, "validate": FLAGS, "exclude": row_arguments(), "seed": NUMBERS,
                        **COMMON})
    outcome(lambda: af.badge(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("exclude")))


@SETTINGS
@given(data=st.data())
def test_diversity_select(data):
    kwargs = sometimes(data, {"method": "kcenter", "features": FEATURES, "k": 3, "x": PROBS, "threads": 1},
                       {"method": choices(["kcenter", "kmeans_pp", "badge"]),
                        "features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS,
                        "x": st.one_of(float_matrices("probs"), BAD_ARRAYS), "from_logits": FLAGS,
                        "labeled": row_arguments(), "exclude": row_arguments(), "seed": NUMBERS, "validate": FLAGS,
                        "prune": FLAGS, "nearest_backend": choices(["auto", "faiss", "numpy", "torch"]), **COMMON})

    def check(result: Any) -> None:
        assert isinstance(result, DiversityResult)
        check_indices(result.indices, kwargs["features"], kwargs["k"], kwargs.get("labeled"))
        check_floats(result.distances, kwargs["features"], kwargs["k"])
        assert min(result.distances_possible, result.distances_computed, result.centre_distances) >= 0

    outcome(lambda: diversity_select(**kwargs), check)


@SETTINGS
@given(data=st.data())
def test_activeft_select(data):
    iterations = st.one_of(st.integers(-3, 5), st.sampled_from([10**6, 10**9, 2**63]), st.floats(allow_nan=True),
                           st.booleans(), st.none(), st.text(max_size=2))
    reals = st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                      st.sampled_from([1e-300, 1e-40, 1e300, 0, -1, 10**400, -(10**400), np.float16(1e-3)]),
                      st.booleans(), st.none(), st.text(max_size=2), st.just([0.1]))
    kwargs = sometimes(data, {"features": FEATURES, "k": 3, "iterations": 2, "device": "cpu", "threads": 1},
                       {"features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS, "labeled": row_arguments(),
                        "iterations": iterations, "temperature": reals, "lr": reals, "balance": reals,
                        "batch_size": st.one_of(NUMBERS, st.integers(1, 20)), "seed": NUMBERS, **COMMON})
    outcome(lambda: activeft_select(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("labeled")))


# --- the strategies of issue 17 (BALD, BatchBALD, TypiClust, ProbCover, Cluster-Margin) -----------------

MC = RNG.dirichlet(np.ones(4), (3, N_ROWS)).astype(np.float32)  # (T, N, C) MC-dropout samples


@st.composite
def mc_arrays(draw: Any) -> Any:
    """(T, N, C) sample arrays of any supported dtype and layout, sometimes with T < 2, empty or special."""
    t, n, c = draw(st.integers(0, 4)), draw(st.integers(0, 12)), draw(st.integers(0, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if c > 0 and draw(st.booleans()):
        a = rng.dirichlet(np.ones(c), (t, n))
    else:
        a = rng.standard_normal((t, n, c)) * draw(st.sampled_from([1e-30, 1.0, 1e30]))
    if a.size and draw(st.booleans()):
        a[rng.integers(t), rng.integers(n), rng.integers(c)] = draw(st.sampled_from(SPECIALS))
    with np.errstate(over="ignore", invalid="ignore"):
        a = a.astype(draw(st.sampled_from(FLOAT_DTYPES)))
    layout = draw(st.sampled_from(["c", "strided", "torch"]))
    if layout == "strided":
        return np.repeat(a, 2, axis=2)[:, :, ::2]
    if layout == "torch" and a.dtype != ml_dtypes.bfloat16:
        return torch.from_numpy(np.ascontiguousarray(a))
    return a


@SETTINGS
@given(data=st.data())
def test_bald(data):
    kwargs = sometimes(data, {"x": MC, "k": 3, "threads": 1},
                       {"x": st.one_of(mc_arrays(), BAD_ARRAYS), "k": NUMBERS, "from_logits": FLAGS,
                        "validate": FLAGS, "exclude": row_arguments(), **COMMON})
    outcome(lambda: af.bald(**kwargs),
            lambda p: check_indices(p, kwargs["x"][0], kwargs["k"], kwargs.get("exclude")))


@SETTINGS
@given(data=st.data())
def test_batchbald(data):
    kwargs = sometimes(data, {"x": MC, "k": 3, "threads": 1, "exact_configs": 4, "samples": 8},
                       {"x": st.one_of(mc_arrays(), BAD_ARRAYS), "k": NUMBERS, "from_logits": FLAGS,
                        "validate": FLAGS, "exclude": row_arguments(), "seed": NUMBERS,
                        "candidates": st.one_of(st.none(), NUMBERS), "exact_configs": st.one_of(NUMBERS, st.integers(1, 9)),
                        "samples": st.one_of(NUMBERS, st.integers(1, 9)), **COMMON})
    outcome(lambda: af.batchbald(**kwargs),
            lambda p: check_indices(p, kwargs["x"][0], kwargs["k"], kwargs.get("exclude")))


@SETTINGS
@given(data=st.data())
def test_typiclust(data):
    kwargs = sometimes(data, {"features": FEATURES, "k": 3, "threads": 1},
                       {"features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS, "labeled": row_arguments(),
                        "seed": NUMBERS, "neighbours": st.one_of(NUMBERS, st.integers(1, 5)),
                        "max_clusters": st.one_of(st.none(), NUMBERS), "min_cluster_size": NUMBERS, **COMMON})
    outcome(lambda: af.typiclust(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("labeled")))


@SETTINGS
@given(data=st.data())
def test_probcover(data):
    reals = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, -1, 1e-300, 1e300, 10**400]),
                      st.booleans(), st.text(max_size=2), st.just([0.5]))
    kwargs = sometimes(data, {"features": FEATURES, "k": 3, "threads": 1},
                       {"features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS, "labeled": row_arguments(),
                        "seed": NUMBERS, "delta": st.one_of(st.none(), reals), "purity": reals,
                        "pseudo_classes": st.one_of(NUMBERS, st.integers(1, 5)),
                        "max_edges": st.one_of(NUMBERS, st.integers(1, 50)), **COMMON})
    outcome(lambda: af.probcover(**kwargs),
            lambda p: check_indices(p, kwargs["features"], kwargs["k"], kwargs.get("labeled")))


@SETTINGS
@given(data=st.data())
def test_cluster_margin(data):
    kwargs = sometimes(data, {"x": PROBS, "features": FEATURES, "k": 3, "threads": 1},
                       {"x": st.one_of(float_matrices("probs"), BAD_ARRAYS),
                        "features": st.one_of(float_matrices(), BAD_ARRAYS), "k": NUMBERS,
                        "from_logits": FLAGS, "validate": FLAGS, "exclude": row_arguments(), "seed": NUMBERS,
                        "candidates": st.one_of(st.none(), NUMBERS), "clusters": st.one_of(st.none(), NUMBERS),
                        "clustering": st.one_of(st.none(), BAD_ARRAYS, st.just(np.arange(N_ROWS) % 3)), **COMMON})
    outcome(lambda: af.cluster_margin(**kwargs),
            lambda p: check_indices(p, kwargs["x"], kwargs["k"], kwargs.get("exclude")))
