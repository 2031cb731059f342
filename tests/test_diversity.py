"""k-center greedy, k-means++ and BADGE against brute-force NumPy references (tests/reference.py)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast._C as _C
from asvp_fast.acquisition.diversity import diversity_select

import reference as ref

DTYPES = [np.float16, ml_dtypes.bfloat16, np.float32, np.float64]


def make_points(seed: int, n: int, d: int, layout: str, dtype=np.float32, clusters: int = 0) -> np.ndarray:
    """Point sets that stress different parts of the engine."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(1, n // 20)
    if layout == "gaussian":
        x = rng.standard_normal((n, d))
    elif layout == "clustered":  # where the triangle-inequality pruning skips most work
        centres = rng.standard_normal((clusters, d)) * 5
        x = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d))
    elif layout == "duplicates":  # many exact repeats: zero distances and exact ties
        distinct = rng.standard_normal((max(1, n // 7), d))
        x = distinct[rng.integers(0, len(distinct), n)]
    elif layout == "grid":  # small integers: many exactly equal distances
        x = rng.integers(-3, 4, (n, d)).astype(np.float64)
    else:
        raise ValueError(layout)
    return x.astype(dtype)


def as_float64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def assert_greedy(x, picks, labeled=(), rtol=2e-4):
    """The k-center invariant at every step, picks distinct and never labelled."""
    picks = np.asarray(picks)
    assert len(np.unique(picks)) == len(picks)
    assert not np.isin(picks, labeled).any()
    chosen, best = ref.greedy_radii(as_float64(x), picks, labeled)
    finite = np.isfinite(best)
    scale = max(1.0, float(np.max(best[finite], initial=0.0)))
    np.testing.assert_array_less(best[finite] - chosen[finite], rtol * best[finite] + 1e-6 * scale)
    if len(labeled) == 0:
        assert np.isinf(best[0]) and np.isinf(chosen[0])


# --- k-center greedy ------------------------------------------------------------------------------

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 500),
    d=st.integers(1, 40),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["gaussian", "clustered", "duplicates", "grid"]),
    labelled_fraction=st.sampled_from([0.0, 0.0, 0.05, 0.3]),
    data=st.data(),
)
def test_kcenter_is_exact_greedy_and_pruning_changes_nothing(seed, n, d, dtype, layout, labelled_fraction, data):
    x = make_points(seed, n, d, layout, dtype)
    rng = np.random.default_rng(seed + 1)
    labeled = rng.choice(n, int(labelled_fraction * n), replace=False) if n > 1 else np.empty(0, np.int64)
    k = data.draw(st.integers(1, n - len(labeled)))
    pruned = diversity_select("kcenter", x, k, labeled=labeled, seed=seed)
    plain = diversity_select("kcenter", x, k, labeled=labeled, seed=seed, prune=False)
    np.testing.assert_array_equal(pruned.indices, plain.indices)
    np.testing.assert_array_equal(pruned.distances, plain.distances)
    assert plain.distances_computed >= pruned.distances_computed
    assert_greedy(x, pruned.indices, labeled)
    # The reported radii are the distances of each pick to the nearest earlier centre.
    chosen, _ = ref.greedy_radii(as_float64(x), pruned.indices, labeled)
    finite = np.isfinite(chosen)
    np.testing.assert_allclose(pruned.distances[finite], chosen[finite], rtol=2e-4, atol=1e-5 * (1 + chosen[finite].max(initial=0)))


def test_kcenter_matches_plain_float64_greedy_exactly(rng):
    x = rng.standard_normal((400, 12))
    labeled = rng.choice(400, 30, replace=False)
    picks = af.kcenter_greedy(x, 60, labeled=labeled)
    nearest = np.full(400, np.inf)
    for row in labeled:
        nearest = np.minimum(nearest, ref.sq_distances(x, row))
    expected = []
    for _ in range(60):
        masked = nearest.copy()
        masked[labeled] = -1
        masked[expected] = -1
        row = int(np.argmax(masked))
        expected.append(row)
        nearest = np.minimum(nearest, ref.sq_distances(x, row))
    np.testing.assert_array_equal(picks, expected)


def test_pruning_skips_most_work_on_clustered_data():
    # Once there are more picks than clusters, most rows sit close to their centre.
    x = make_points(7, 20000, 16, "clustered", clusters=20)
    result = diversity_select("kcenter", x, 200)
    assert result.skipped_fraction > 0.5, result
    assert_greedy(x, result.indices)


def test_first_pick_is_uniform_over_seeds():
    # Regression: several libraries always start at row 0.
    n, trials = 10, 2000
    x = make_points(3, n, 3, "gaussian")
    counts = np.bincount([int(af.kcenter_greedy(x, 1, seed=s)[0]) for s in range(trials)], minlength=n)
    expected = trials / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 33.7, counts  # 9 degrees of freedom, p ~ 1e-4


def test_no_ghost_centre_at_the_origin():
    # Regression: seeding the running minimum with the distance to a zero vector makes rows
    # near the origin look covered. Row 1 is 9.9 from the labelled row 0; row 2 only 2.
    x = np.array([[10.0, 0.0], [0.1, 0.0], [12.0, 0.0]], dtype=np.float32)
    assert af.kcenter_greedy(x, 1, labeled=[0]).tolist() == [1]


def test_duplicates_are_never_picked_twice():
    x = make_points(5, 70, 4, "duplicates")
    distinct = len(np.unique(x, axis=0))
    picks = af.kcenter_greedy(x, 60, seed=2)
    assert len(np.unique(picks)) == 60
    assert len(np.unique(x[picks[:distinct]], axis=0)) == distinct  # every value before any repeat
    assert_greedy(x, picks)


def test_identical_rows_everywhere():
    x = np.ones((50, 8), dtype=np.float32)
    picks = af.kcenter_greedy(x, 50, seed=4)
    assert sorted(picks.tolist()) == list(range(50))
    assert (np.diff(picks[1:]) > 0).all()  # zero-distance ties go to the lower row


@pytest.mark.parametrize("method", ["kcenter", "kmeans_pp", "badge"])
def test_threads_and_repeats_give_the_same_result(method, rng):
    x = make_points(11, 3000, 24, "clustered")
    p = rng.dirichlet(np.ones(5), 3000).astype(np.float32)
    one = diversity_select(method, x, 40, x=p, seed=9, threads=1).indices
    two = diversity_select(method, x, 40, x=p, seed=9, threads=2).indices
    again = diversity_select(method, x, 40, x=p, seed=9).indices
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, again)


@pytest.mark.parametrize("isa", _C.build_info()["supported_isas"])
def test_every_cpu_variant_is_greedy(isa):
    x = make_points(13, 1500, 33, "clustered", np.float16)
    previous = _C.build_info()["isa"]
    try:
        _C.set_isa(isa)
        assert _C.build_info()["isa"] == isa
        picks = af.kcenter_greedy(x, 50, seed=1)
        chosen = af.badge(np.full((1500, 3), 1 / 3, np.float32), x, 10)
    finally:
        _C.set_isa(previous)  # the variant in use before, not a guess at the default
    assert _C.build_info()["isa"] == previous
    assert_greedy(x, picks)
    assert len(np.unique(chosen)) == 10


@pytest.mark.parametrize("backend", ["numpy", "faiss", "torch"])
@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy-input", "tensor-input"])
def test_nearest_labelled_backends_agree(backend, as_tensor, rng):
    # Every backend takes every input (regression: "torch" on numpy input raised AttributeError).
    if backend != "numpy":
        pytest.importorskip(backend)
    x = make_points(17, 2000, 20, "clustered")
    labeled = rng.choice(2000, 300, replace=False)
    expected = diversity_select("kcenter", x, 30, labeled=labeled, nearest_backend="numpy")
    features = x
    if as_tensor:
        features = pytest.importorskip("torch").from_numpy(x)
    direct = diversity_select("kcenter", features, 30, labeled=labeled, nearest_backend=backend)
    np.testing.assert_array_equal(np.asarray(direct.indices), expected.indices)
    assert_greedy(x, expected.indices, labeled)


def test_nearest_labelled_search_restores_thread_settings(rng):
    faiss = pytest.importorskip("faiss")
    torch = pytest.importorskip("torch")
    x = make_points(18, 1000, 8, "clustered")
    labeled = rng.choice(1000, 50, replace=False)
    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    want = af.kcenter_greedy(x, 10, labeled=labeled)
    for backend in ("faiss", "numpy", "torch"):
        got = diversity_select("kcenter", x, 10, labeled=labeled, threads=1, nearest_backend=backend)
        np.testing.assert_array_equal(got.indices, want)
        assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before, backend


# --- k-means++ -------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    n=st.integers(1, 400),
    d=st.integers(1, 24),
    c=st.integers(1, 12),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(["gaussian", "clustered", "duplicates", "grid"]),
    from_logits=st.booleans(),
    data=st.data(),
)
def test_d2_methods_are_unchanged_by_pruning(seed, n, d, c, dtype, layout, from_logits, data):
    x = make_points(seed, n, d, layout, dtype)
    rng = np.random.default_rng(seed)
    scores = (rng.standard_normal((n, c)) * 3).astype(dtype)
    if not from_logits:
        scores = ref.probabilities(scores, True).astype(dtype)
    if layout == "duplicates":  # duplicated embeddings too
        scores = scores[np.arange(n) % max(1, n // 7)]
    exclude = rng.random(n) < 0.2
    k = data.draw(st.integers(1, max(1, n - int(exclude.sum()))))
    if int((~exclude).sum()) < k:
        exclude[:] = False
    for method in ("kmeans_pp", "badge"):
        kwargs = dict(x=scores, from_logits=from_logits, exclude=exclude, seed=seed, validate=False)
        pruned = diversity_select(method, x, k, **kwargs)
        plain = diversity_select(method, x, k, prune=False, **kwargs)
        np.testing.assert_array_equal(pruned.indices, plain.indices)
        np.testing.assert_array_equal(pruned.distances, plain.distances)
        assert len(np.unique(pruned.indices)) == k and not exclude[pruned.indices].any()

def sequence_probability(x, sequence, exclude=()):
    """Probability that k-means++ draws exactly this ordered sequence."""
    candidates = len(x) - len(exclude)
    prob = 1.0 / candidates
    for t in range(1, len(sequence)):
        prob *= ref.d2_probabilities(x, sequence[:t], exclude)[sequence[t]]
    return prob


def chi_square(observed: dict, expected: dict, trials: int) -> float:
    return float(sum((observed.get(key, 0) - trials * p) ** 2 / (trials * p) for key, p in expected.items() if p > 0))


def test_kmeans_pp_follows_the_d2_distribution():
    x = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [-2, 1], [5, -1]], dtype=np.float32)
    exclude = [4]
    trials = 4000
    observed: dict = {}
    for seed in range(trials):
        seq = tuple(af.kmeans_pp(x, 3, seed=seed, exclude=exclude).tolist())
        observed[seq] = observed.get(seq, 0) + 1
    import itertools

    rows = [0, 1, 2, 3, 5]
    expected = {seq: sequence_probability(x.astype(np.float64), list(seq), exclude)
                for seq in itertools.permutations(rows, 3)}
    assert set(observed) <= set(expected)  # the excluded row never appears
    assert abs(sum(expected.values()) - 1) < 1e-9
    assert chi_square(observed, expected, trials) < 110  # 59 degrees of freedom, p ~ 1e-4


def test_kmeans_pp_zero_weight_rows_are_drawn_last(rng):
    x = np.repeat(rng.standard_normal((3, 4)).astype(np.float32), 4, axis=0)  # 3 values x 4 copies
    picks = af.kmeans_pp(x, 12, seed=5)
    assert len(np.unique(x[picks[:3]], axis=0)) == 3  # positive weight first
    assert sorted(picks.tolist()) == list(range(12))


# --- BADGE ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("from_logits", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_badge_factorised_distances_equal_the_explicit_embeddings(from_logits, dtype, rng):
    n, c, d, k = 300, 7, 5, 25
    h = rng.standard_normal((n, d)).astype(dtype)
    if from_logits:
        z = (rng.standard_normal((n, c)) * 3).astype(dtype)
        p = ref.probabilities(z, True)
    else:
        p = rng.dirichlet(np.full(c, 0.3), n).astype(dtype)
        z = p
    result = diversity_select("badge", h, k, x=z, from_logits=from_logits, seed=3)
    g = ref.gradient_embedding(as_float64(p), as_float64(h))
    picks = result.indices
    norms = (g**2).sum(1)
    assert picks[0] == int(np.argmax(norms)) or norms[picks[0]] >= norms.max() * (1 - 1e-5)
    nearest = np.full(n, np.inf)
    for t, row in enumerate(picks):
        if t:
            tol = 2e-3 if dtype == np.float16 else 1e-4
            assert result.distances[t] == pytest.approx(nearest[row], rel=tol, abs=tol * norms.max())
        nearest = np.minimum(nearest, ((g - g[row]) ** 2).sum(1))
    assert len(np.unique(picks)) == k


def test_badge_keeps_the_one_minus_p_term():
    # Regression: dropping the (1 - p) term of the predicted class (using p instead of p - 1)
    # changes which row has the largest gradient embedding.
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]], dtype=np.float64)
    h = np.array([[1.0], [1.0], [1.0]])
    g = ref.gradient_embedding(p, h)
    assert int(af.badge(p, h, 1)[0]) == int(np.argmax((g**2).sum(1))) == 2


def test_badge_follows_the_d2_distribution_in_embedding_space():
    rng = np.random.default_rng(21)
    p = rng.dirichlet(np.ones(3), 6)
    h = rng.standard_normal((6, 2))
    g = ref.gradient_embedding(p, h)
    first = int(np.argmax((g**2).sum(1)))
    trials = 3000
    seconds = np.bincount([int(af.badge(p, h, 2, seed=s)[1]) for s in range(trials)], minlength=6)
    expected = ref.d2_probabilities(g, [first])
    assert seconds[first] == 0
    observed = {i: seconds[i] for i in range(6)}
    assert chi_square(observed, dict(enumerate(expected)), trials) < 23.5  # 4 d.o.f., p ~ 1e-4


def test_badge_exclude_and_logits_agree_with_probabilities(rng):
    z = rng.standard_normal((500, 6)).astype(np.float64) * 2
    p = ref.probabilities(z, True)
    h = rng.standard_normal((500, 9))
    exclude = rng.choice(500, 100, replace=False)
    a = af.badge(z, h, 30, from_logits=True, exclude=exclude, seed=8)
    b = af.badge(p, h, 30, exclude=exclude, seed=8)
    assert not np.isin(a, exclude).any()
    assert (a == b).mean() > 0.8  # same draws; only near-boundary draws may differ by rounding


# --- inputs -----------------------------------------------------------------------------------------

def test_strided_memmap_and_torch_inputs_give_identical_picks(tmp_path, rng):
    torch = pytest.importorskip("torch")
    x = make_points(19, 2000, 32, "clustered", np.float16)
    expected = af.kcenter_greedy(x, 50, seed=2)
    path = tmp_path / "features.f16"
    x.tofile(path)
    mm = np.memmap(path, dtype=np.float16, mode="r", shape=x.shape)
    np.testing.assert_array_equal(af.kcenter_greedy(mm, 50, seed=2), expected)
    wide = np.zeros((2000, 64), np.float16)
    wide[:, ::2] = x
    np.testing.assert_array_equal(af.kcenter_greedy(wide[:, ::2], 50, seed=2), expected)
    np.testing.assert_array_equal(af.kcenter_greedy(np.asfortranarray(x), 50, seed=2), expected)
    picks = af.kcenter_greedy(torch.from_numpy(x), 50, seed=2)
    assert isinstance(picks, torch.Tensor) and picks.dtype == torch.int64
    np.testing.assert_array_equal(picks.numpy(), expected)
    np.testing.assert_array_equal(af.kcenter_greedy(x.astype(np.float32), 50, seed=2), expected)


@pytest.mark.parametrize("method", ["kcenter", "kmeans_pp", "badge"])
def test_torch_input_gives_torch_indices_and_distances(method, rng):
    torch = pytest.importorskip("torch")
    x = make_points(20, 500, 6, "gaussian")
    p = rng.dirichlet(np.ones(4), 500).astype(np.float32)
    want = diversity_select(method, x, 12, x=p, seed=3)
    got = diversity_select(method, torch.from_numpy(x), 12, x=torch.from_numpy(p), seed=3)
    assert isinstance(want.indices, np.ndarray) and isinstance(want.distances, np.ndarray)
    assert want.indices.dtype == np.int64 and want.distances.dtype == np.float32
    for value, dtype in ((got.indices, torch.int64), (got.distances, torch.float32)):
        assert isinstance(value, torch.Tensor) and value.dtype == dtype and value.device.type == "cpu"
    np.testing.assert_array_equal(got.indices.numpy(), want.indices)
    np.testing.assert_array_equal(got.distances.numpy(), want.distances)
    empty = diversity_select(method, torch.from_numpy(x), 0, x=torch.from_numpy(p))
    assert isinstance(empty.distances, torch.Tensor) and empty.distances.shape == (0,)


def test_k_zero_and_all_rows():
    x = make_points(1, 30, 3, "gaussian")
    assert af.kcenter_greedy(x, 0).shape == (0,)
    assert sorted(af.kmeans_pp(x, 30).tolist()) == list(range(30))
    assert sorted(af.kcenter_greedy(x, 25, labeled=range(5)).tolist()) == list(range(5, 30))


# --- errors ----------------------------------------------------------------------------------------

def test_errors_name_the_problem(rng):
    x = rng.standard_normal((100, 4)).astype(np.float32)
    p = rng.dirichlet(np.ones(3), 100).astype(np.float32)
    bad = x.copy()
    bad[37, 2] = np.nan
    with pytest.raises(ValueError, match="row 37 of features contains NaN or Inf"):
        af.kcenter_greedy(bad, 5)
    with pytest.raises(ValueError, match="row 37 of features"):
        af.kcenter_greedy(bad, 5, labeled=[37])
    with pytest.raises(ValueError, match="row 37 of features"):
        af.badge(p, bad, 5)
    with pytest.raises(ValueError, match="row 37 of features"):
        af.kmeans_pp(bad, 5, seed=1)
    bad_p = p.copy()
    bad_p[12, 0] = np.inf
    with pytest.raises(ValueError, match="row 12 of x contains NaN or Inf"):
        af.badge(bad_p, x, 5)
    bad_p = p.copy()
    bad_p[12] *= 2
    with pytest.raises(ValueError, match="row 12 of x"):
        af.badge(bad_p, x, 5)
    af.badge(bad_p, x, 5, validate=False)
    with pytest.raises(ValueError, match="k=101 is larger than the 100 rows"):
        af.kcenter_greedy(x, 101)
    with pytest.raises(ValueError, match="k=96 is larger than the 95 rows that may be picked"):
        af.kcenter_greedy(x, 96, labeled=range(5))
    with pytest.raises(ValueError, match="all 100 rows are labelled or excluded"):
        af.kmeans_pp(x, 1, exclude=np.ones(100, bool))
    with pytest.raises(ValueError, match="x has 99 rows but features has 100"):
        af.badge(p[:99], x, 5)
    with pytest.raises(ValueError, match="index 7 more than once"):
        af.kcenter_greedy(x, 5, labeled=[7, 3, 7])
    with pytest.raises(ValueError, match="index 100, outside"):
        af.kcenter_greedy(x, 5, labeled=[100])
    with pytest.raises(ValueError, match="2-dimensional"):
        af.kcenter_greedy(x[:, 0], 5)
    with pytest.raises(TypeError, match="features must be float16, bfloat16, float32 or float64"):
        af.kcenter_greedy(x.astype(np.int32), 5)
    with pytest.raises(TypeError, match="k must be an integer"):
        af.kcenter_greedy(x, 2.5)
    with pytest.raises(TypeError, match="seed must be an integer"):
        af.kmeans_pp(x, 2, seed="a")
    with pytest.raises(ValueError, match="exclude"):
        af.kmeans_pp(x, 2, exclude=[200])


@pytest.mark.parametrize("method", ["kcenter", "kmeans_pp"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_k_one_checks_every_row(method, bad):
    # Regression: with k=1 and no labelled rows there is no update pass, so a NaN/Inf row was
    # only noticed when it happened to be the first pick; every row the run may pick is checked.
    x = make_points(21, 3000, 5, "gaussian")
    x[2345, 1] = bad
    x[2900, 0] = bad
    for seed in range(5):
        with pytest.raises(ValueError, match="row 2345 of features contains NaN or Inf"):
            diversity_select(method, x, 1, seed=seed)
    # an excluded bad row is not read, as for larger k
    mask = np.zeros(3000, bool)
    mask[[2345, 2900]] = True
    assert not mask[diversity_select(method, x, 1, exclude=mask).indices].any()


@pytest.mark.parametrize("threads", [1024, 10**6, 2**31, 2**63])
def test_huge_thread_counts_are_clamped(threads, rng):
    # Regression: threads=10**6 crashed (libgomp ran out of stack); 2**31 leaked a pybind11 error.
    x = make_points(22, 300, 4, "gaussian")
    p = rng.dirichlet(np.ones(3), 300).astype(np.float32)
    for method in ("kcenter", "kmeans_pp", "badge"):
        want = diversity_select(method, x, 5, x=p, seed=1, threads=1).indices
        np.testing.assert_array_equal(diversity_select(method, x, 5, x=p, seed=1, threads=threads).indices, want)


def test_labelled_and_excluded_rows_are_counted_once():
    x = make_points(23, 10, 2, "gaussian")
    # rows 0-4 are both labelled and excluded: 5 rows remain, not 0
    result = diversity_select("kcenter", x, 5, labeled=range(5), exclude=np.arange(5))
    assert sorted(result.indices.tolist()) == [5, 6, 7, 8, 9]
    with pytest.raises(ValueError, match=r"k=6 is larger than the 5 rows that may be picked \(10 rows, 5 labelled, 5 excluded\)"):
        diversity_select("kcenter", x, 6, labeled=range(5), exclude=np.arange(5))


@pytest.mark.parametrize("bad_kwargs, error, name", [
    ({"threads": 0}, ValueError, "threads"),
    ({"threads": -1}, ValueError, "threads"),
    ({"threads": 2.0}, TypeError, "threads"),
    ({"threads": "2"}, TypeError, "threads"),
    ({"seed": 1.5}, TypeError, "seed"),
    ({"device": "tpu"}, ValueError, "device"),
    ({"device": 5}, TypeError, "device"),
    ({"progress": "yes"}, TypeError, "progress"),
    ({"prune": "False"}, TypeError, "prune"),
    ({"validate": "False"}, TypeError, "validate"),
    ({"from_logits": "False"}, TypeError, "from_logits"),
    ({"nearest_backend": ["faiss"]}, TypeError, "nearest_backend"),
    ({"nearest_backend": "scipy"}, ValueError, "nearest_backend"),
    ({"labeled": "0,1"}, TypeError, "labeled"),
    ({"exclude": [[0, 1], [2]]}, TypeError, "exclude"),
])
def test_bad_options_name_the_argument(bad_kwargs, error, name, rng):
    x = make_points(24, 50, 3, "gaussian")
    with pytest.raises(error, match=name):
        diversity_select("kcenter", x, 3, **bad_kwargs)


def test_badge_without_x_is_a_type_error():
    with pytest.raises(TypeError, match="BADGE needs x"):
        diversity_select("badge", make_points(25, 20, 3, "gaussian"), 2)


def test_native_layer_checks_its_own_preconditions(rng):
    # What the Python layer rules out, the compiled module must not turn into an out-of-bounds
    # read: a repeated labelled row, k beyond the rows neither labelled nor excluded, bad threads.
    x = rng.standard_normal((50, 3)).astype(np.float32)
    picks = np.empty(5, np.int64)
    lab = np.array([1, 1, 2], np.int64)
    nearest = np.zeros(50, np.int64)
    with pytest.raises(ValueError, match="labeled contains row 1 more than once"):
        _C.diversity(0, x, None, False, True, lab, nearest, None, picks, None, 5, 0, 0, True, False, 0)
    mask = np.ones(50, np.uint8)
    mask[:4] = 0
    with pytest.raises(ValueError, match="k is larger than the rows that may be picked"):
        _C.diversity(1, x, None, False, True, None, None, mask, picks, None, 5, 0, 0, True, False, 0)
    with pytest.raises(ValueError, match="threads must be 0"):
        _C.diversity(1, x, None, False, True, None, None, None, picks, None, 5, 0, -1, True, False, 0)
    _C.diversity(1, x, None, False, True, None, None, None, picks, None, 5, 0, 2**40, True, False, 0)
    assert len(set(picks.tolist())) == 5
    p = rng.dirichlet(np.ones(3), 50).astype(np.float32)
    indices = np.empty(5, np.int64)
    with pytest.raises(ValueError, match="k is larger than the rows that are not excluded"):
        _C.uncertainty(p, 0, False, True, mask, None, indices, 5, 0, False, 0, False, 0)
    _C.uncertainty(p, 0, False, True, None, None, indices, 5, 2**40, False, 0, False, 0)
    np.testing.assert_array_equal(indices, af.select_uncertain(p, 5))


def test_an_exception_in_the_progress_callback_cancels_the_run(rng):
    x = rng.standard_normal((500, 4)).astype(np.float32)
    picks = np.empty(20, np.int64)

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _C.diversity(0, x, None, False, True, None, None, None, picks, None, 20, 0, 0, True, False, 0, boom)
