"""Tests for asvp_fast.transfer.ped (PED feature dynamics, Li et al. ICCV 2023)."""

import tracemalloc

import numpy as np
import pytest

from transfer_refs import ped_dense as dense_reference  # bench/ is on pytest's path
from asvp_fast.transfer.ped import ped


def blobs(rng, C, D, per, spread, sep, dtype=np.float64):
    centres = rng.standard_normal((C, D)) * sep
    y = np.repeat(np.arange(C), per)
    X = centres[y] + spread * rng.standard_normal((C * per, D))
    return X.astype(dtype), y


def class_centres(X, y):
    return np.stack([X[y == k].mean(0) for k in np.unique(y)])


def test_separated_classes_converge_in_one_step(rng):
    X, y = blobs(rng, 4, 8, 30, spread=0.05, sep=10.0)
    out, n_it = ped(X, y)
    assert n_it == 1
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, X)  # original coordinates, untouched
    out32, n32 = ped(X.astype(np.float32), y)
    assert n32 == 1 and out32.dtype == np.float32
    np.testing.assert_array_equal(out32, X.astype(np.float32))


def test_overlapping_classes_move_apart(rng):
    X, y = blobs(rng, 3, 6, 40, spread=1.0, sep=0.3)
    out, n_it = ped(X, y)
    assert n_it > 1
    before = class_centres(X, y)
    after = class_centres(out, y)
    iu = np.triu_indices(3, 1)
    db = np.linalg.norm(before[:, None] - before[None], axis=-1)[iu]
    da = np.linalg.norm(after[:, None] - after[None], axis=-1)[iu]
    assert (da > db).all()
    # larger step size -> more separation; overlap (in the same standardised space) decreases
    out2, _ = ped(X, y, step_size=1.0)
    a2 = class_centres(out2, y)
    d2 = np.linalg.norm(a2[:, None] - a2[None], axis=-1)[iu]
    assert (d2 > da).all()


def test_same_displacement_within_class(rng):
    X, y = blobs(rng, 5, 7, 25, spread=1.0, sep=0.5)
    y = np.array([10, -3, 7, 99, 0])[y]  # arbitrary integer labels
    out, n_it = ped(X, y, step_size=0.8)
    assert n_it > 1
    delta = out - X
    for k in np.unique(y):
        dk = delta[y == k]
        assert np.abs(dk).max() > 0
        np.testing.assert_allclose(dk, np.broadcast_to(dk[0], dk.shape), atol=1e-12)


@pytest.mark.parametrize("kw", [
    {},
    {"step_size": 0.7},
    {"step_size": 2.0},  # 0.5*dt^2 >= 1: the min(., overlap) cap is active
    {"step_size": 3.0, "nsigma": 1.0},
    {"step_size": 1.0, "nsigma": 0.3},  # small balls: no overlap
    {"step_size": 0.5, "exit_ratio": 0.0, "steps": 4},
    {"step_size": 1.5, "exit_ratio": 0.9},
    {"nsigma": -0.6, "constant": 3.0},
])
def test_matches_dense_reference(rng, kw):
    X, y = blobs(rng, 6, 5, 20, spread=1.0, sep=0.6)
    X[:, 0] *= 5.0  # anisotropic scales exercise standardisation
    ref, n_ref = dense_reference(X, y, **kw)
    out, n_it = ped(X, y, chunk_rows=17, **kw)
    assert n_it == n_ref
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)


def test_reference_statistics_and_inputs(rng):
    X, y = blobs(rng, 4, 5, 30, spread=1.0, sep=0.5)
    mu, sd = rng.standard_normal(5), rng.uniform(0.5, 2.0, 5)
    ref, n_ref = dense_reference(X, y, reference=(mu, sd), step_size=0.9)
    out, n_it = ped(X, y, reference=(mu, sd), step_size=0.9)
    assert n_it == n_ref
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
    # float16 memmap-like input and torch tensors
    X16 = X.astype(np.float16)
    o16, n16 = ped(X16, y, step_size=0.9)
    o64, n64 = ped(X16.astype(np.float64), y, step_size=0.9)
    assert o16.dtype == np.float32 and n16 == n64
    np.testing.assert_allclose(o16, o64, rtol=1e-5, atol=1e-5)
    torch = pytest.importorskip("torch")
    ot, nt = ped(torch.from_numpy(X), torch.from_numpy(y), step_size=0.9)
    base, nb = ped(X, y, step_size=0.9)
    assert nt == nb
    assert isinstance(ot, torch.Tensor) and ot.dtype == torch.float64  # outputs follow the input
    np.testing.assert_array_equal(ot.numpy(), base)


def test_memmap_float16(tmp_path, rng):
    X, y = blobs(rng, 3, 4, 20, spread=1.0, sep=0.4, dtype=np.float16)
    mm = np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=X.shape)
    mm[:] = X
    mm.flush()
    ro = np.load(tmp_path / "f.npy", mmap_mode="r")
    out, n_it = ped(ro, y, chunk_rows=7)
    ref, n_ref = dense_reference(X.astype(np.float64), y)
    assert n_it == n_ref
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_input_not_modified(rng):
    X, y = blobs(rng, 4, 5, 20, spread=1.0, sep=0.4)
    X0, y0 = X.copy(), y.copy()
    out, n_it = ped(X, y, step_size=0.8)
    assert n_it > 1
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)
    out[:] = 0  # the output never aliases the input
    np.testing.assert_array_equal(X, X0)


def test_deterministic(rng):
    X, y = blobs(rng, 5, 6, 20, spread=1.0, sep=0.4)
    a = ped(X, y, step_size=0.6)
    b = ped(X, y, step_size=0.6)
    assert a[1] == b[1]
    np.testing.assert_array_equal(a[0], b[0])


def test_coincident_centres_exert_no_force():
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = np.array([0, 0, 1, 1])  # both centres at the origin: no direction
    out, n_it = ped(X, y)
    assert n_it == 1
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, X)


def test_large_class_count_memory():
    rng = np.random.default_rng(0)
    C, D, per = 1000, 2048, 4
    y = np.repeat(np.arange(C), per)
    X = (0.05 * rng.standard_normal((C, D))[y] + rng.standard_normal((C * per, D))).astype(np.float32)
    tracemalloc.start()
    try:
        out, n_it = ped(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == X.shape and out.dtype == np.float32
    assert n_it > 1  # heavily overlapping classes
    assert np.isfinite(out).all()
    assert peak < 1 << 30, peak  # a C x C x D float64 tensor would be 16 GB


@pytest.mark.parametrize("args,kwargs,match", [
    ((np.zeros((0, 3)), np.zeros(0, dtype=int)), {}, "N == 0"),
    ((np.zeros((4, 3)), np.zeros(3, dtype=int)), {}, "labels must have shape"),
    ((np.zeros((4, 3)), np.zeros((4, 1), dtype=int)), {}, "labels must have shape"),
    ((np.zeros(4), np.zeros(4, dtype=int)), {}, "2-D"),
    ((np.zeros((4, 3)), np.zeros(4, dtype=int)), {}, "at least 2 classes"),
    ((np.zeros((4, 3)), np.array([0, 1, 0, 1])), {"steps": 1}, "steps"),
    ((np.zeros((4, 3)), np.array([0, 1, 0, 1])), {"step_size": 0.0}, "step_size"),
    ((np.zeros((4, 3)), np.array([0, 1, 0, 1])), {"exit_ratio": 1.0}, "exit_ratio"),
    ((np.zeros((4, 3)), np.array([0, 1, 0, 1])), {"reference": (np.zeros(2), np.ones(2))},
     "reference"),
])
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ped(*args, **kwargs)


@pytest.mark.parametrize("labels,kwargs,match", [
    (np.zeros(4), {}, "labels must be integers"),
    (np.array([0, 1, 0, 1]), {"steps": 2.0}, "steps must be an integer"),
    (np.array([0, 1, 0, 1]), {"step_size": "0.1"}, "step_size must be a real number"),
    (np.array([0, 1, 0, 1]), {"exit_ratio": True}, "exit_ratio must be a real number"),
    (np.array([0, 1, 0, 1]), {"reference": np.zeros(3)}, "reference must be a \\(mean, std\\) pair"),
    (np.array([0, 1, 0, 1]), {"device": 0}, "device must be one of"),
])
def test_type_errors(labels, kwargs, match):
    with pytest.raises(TypeError, match=match):
        ped(np.zeros((4, 3)), labels, **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_row_is_named(bad):
    X = np.zeros((6, 3), dtype=np.float32)
    X[4, 1] = bad
    X[5, 2] = bad
    with pytest.raises(ValueError, match="row 4"):
        ped(X, np.array([0, 1, 0, 1, 0, 1]), chunk_rows=3)


@pytest.mark.parametrize("sparse_fraction", [0.0, 1.0])
def test_sparse_and_dense_accumulation_match_reference(monkeypatch, sparse_fraction):
    import asvp_fast.transfer.ped as ped_mod

    monkeypatch.setattr(ped_mod, "_SPARSE_FRACTION", sparse_fraction)
    rng = np.random.default_rng(7)
    C, D, per = 40, 4, 6
    centres = rng.standard_normal((C, D)) * 6.0
    centres[1] = centres[0] + 0.1  # a few overlapping pairs among many separated ones
    centres[5] = centres[4] - 0.2
    centres[6] = centres[4] + 0.25
    y = np.repeat(np.arange(C), per)
    X = centres[y] + 0.3 * rng.standard_normal((C * per, D))
    ref, n_ref = dense_reference(X, y, step_size=0.9)
    out, n_it = ped(X, y, step_size=0.9, chunk_rows=50)
    assert n_it == n_ref and n_it > 1
    np.testing.assert_allclose(out, ref, rtol=1e-9, atol=1e-9)
    moved = np.unique(y[np.abs(out - X).max(1) > 0])
    assert set(moved) <= {0, 1, 4, 5, 6} and {0, 1} <= set(moved)
