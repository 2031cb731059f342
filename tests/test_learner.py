"""Ask/tell: asvp_fast.ActiveLearner (query/teach, persistence before return, crash and reload, strategies,
NumPy/memmap/torch inputs, argument checks, damaged state files)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import asvp_fast as af  # noqa: E402
from asvp_fast.loop.learner import state as state_module  # noqa: E402
from asvp_fast.loop.learner.state import LearnerStateError, checksum  # noqa: E402

FAST = {"epochs": 5}
N, D, C = 240, 8, 3


def _data(seed=0, n=N):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(C, D)) * 3
    y = rng.integers(0, C, n)
    x = (centres[y] + rng.normal(size=(n, D))).astype(np.float32)
    return x, y


X, Y = _data()


def _learner(path, features=X, strategy="margin", **kw):
    kw.setdefault("num_classes", C)
    return af.ActiveLearner(features, strategy=strategy, state_dir=path, seed=kw.pop("seed", 0), **FAST, **kw)


def _as_numpy(rows):
    return rows.cpu().numpy() if torch.is_tensor(rows) else np.asarray(rows)


def _run(learner, rounds=3, n=8):
    """The queries of an uninterrupted session that answers every batch in full."""
    out = []
    for _ in range(rounds):
        rows = _as_numpy(learner.query(n))
        out.append(rows.tolist())
        learner.teach(rows, Y[rows])
    return out


def _on_disk(path):
    return json.loads((Path(path) / "state.json").read_text())


# -- the loop with each kind of input ------------------------------------------------------------

def _features(kind, tmp_path):
    if kind == "numpy":
        return X
    if kind == "memmap":
        np.save(tmp_path / "pool.npy", X)
        return np.load(tmp_path / "pool.npy", mmap_mode="r")
    return torch.from_numpy(X.copy())


@pytest.mark.parametrize("kind", ["numpy", "memmap", "torch"])
def test_query_teach_loop_and_outputs_follow_the_input(kind, tmp_path):
    learner = _learner(tmp_path / "state", _features(kind, tmp_path))
    seen = set()
    for _ in range(3):
        rows = learner.query(8)
        if kind == "torch":
            assert torch.is_tensor(rows) and rows.dtype == torch.int64 and rows.device.type == "cpu"
        else:
            assert isinstance(rows, np.ndarray) and not isinstance(rows, np.memmap) and rows.dtype == np.int64
        rows = _as_numpy(rows)
        assert len(set(rows.tolist())) == 8 and not seen & set(rows.tolist())
        seen |= set(rows.tolist())
        learner.teach(rows, Y[rows])
    got_rows, got_labels = (_as_numpy(a) for a in learner.labelled)
    assert set(got_rows.tolist()) == seen and (got_labels == Y[got_rows]).all()
    assert _as_numpy(learner.pending).size == 0
    # the same values as NumPy, a memmap or a tensor give the same queries
    assert _run(_learner(tmp_path / "again", X)) == _run(_learner(tmp_path / "again2", _features(kind, tmp_path)))


def test_teach_accepts_lists_tensors_masks_and_scalars(tmp_path):
    learner = _learner(tmp_path)
    learner.teach([0, 1], [int(Y[0]), int(Y[1])])
    learner.teach(torch.tensor([2, 3]), torch.from_numpy(Y[[2, 3]]))
    mask = np.zeros(N, dtype=bool)
    mask[[4, 5]] = True
    learner.teach(mask, Y[[4, 5]])
    learner.teach(np.int64(6), int(Y[6]))
    assert _as_numpy(learner.labelled[0]).tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_determinism_same_seed_same_queries_other_seed_others(tmp_path):
    a = _run(_learner(tmp_path / "a", strategy="badge"))
    b = _run(_learner(tmp_path / "b", strategy="badge"))
    c = _run(_learner(tmp_path / "c", strategy="badge", seed=1))
    assert a == b and a != c


@pytest.mark.parametrize("strategy", ["margin", "entropy", "least_confidence", "coreset", "badge", "random", "activeft"])
def test_each_strategy(strategy, tmp_path):
    learner = _learner(tmp_path, strategy=strategy)
    batches = _run(learner, rounds=3, n=6)
    flat = [r for b in batches for r in b]
    assert len(set(flat)) == len(flat) == 18
    assert learner.last_info["strategy"] == strategy  # the proxy chose (not the random fallback)


def test_coreset_in_the_feature_space(tmp_path):
    learner = _learner(tmp_path, strategy="coreset", space="features")
    learner.teach([0, 1, 2], Y[[0, 1, 2]])
    rows = learner.query(5)
    expected = np.asarray(af.kcenter_greedy(X, 5, labeled=np.array([0, 1, 2]), seed=0))
    assert sorted(rows.tolist()) == sorted(expected.tolist())  # k-center greedy: exact, seed only breaks ties


def test_random_fallback_until_two_classes(tmp_path):
    learner = _learner(tmp_path)
    learner.query(4)
    assert learner.last_info["strategy"] == "random" and learner.last_info["fallback"]
    one = np.flatnonzero(Y == 0)[:5]
    learner.discard()
    learner.teach(one, Y[one])  # a single class: the proxy cannot be trained yet
    learner.query(4)
    assert learner.last_info["strategy"] == "random"
    learner.discard()
    two = np.flatnonzero(Y == 1)[:2]
    learner.teach(two, Y[two])
    learner.query(4)
    assert learner.last_info["strategy"] == "margin"


def test_num_classes_inferred_from_the_labels(tmp_path):
    learner = af.ActiveLearner(X, state_dir=tmp_path, **FAST)
    assert learner.num_classes is None
    assert len(_run(learner)) == 3
    with pytest.raises(ValueError, match="outside"):
        learner.teach([239], [1 << 16])


# -- pending batches and persistence -----------------------------------------------------------

def test_pending_batch_is_returned_again_whatever_n(tmp_path):
    learner = _learner(tmp_path)
    learner.teach(np.arange(6), Y[:6])
    first = learner.query(8).tolist()
    assert learner.query(8).tolist() == first and learner.query(3).tolist() == first
    assert learner.query(50).tolist() == first
    learner.teach(first[:3], Y[first[:3]])  # a partial answer: the rest stays pending
    assert learner.query(8).tolist() == first[3:] == learner.pending.tolist()
    learner.discard(first[3])
    assert learner.pending.tolist() == first[4:]
    learner.teach(first[4:], Y[first[4:]])
    assert not set(learner.query(8).tolist()) & set(first)


def test_a_new_learner_on_the_dir_sees_the_pending_batch(tmp_path):
    learner = _learner(tmp_path)
    rows = learner.query(8)
    assert _on_disk(tmp_path)["pending"] == rows.tolist()
    assert _learner(tmp_path).query(2).tolist() == rows.tolist()
    assert af.ActiveLearner.load(tmp_path, X).query(8).tolist() == rows.tolist()


def _failing_write(monkeypatch, *, after: bool):
    real = state_module.atomic_write_text

    def write(path, text):
        if after:
            real(path, text)
        raise OSError("simulated crash")

    monkeypatch.setattr(state_module, "atomic_write_text", write)


def test_the_batch_is_persisted_before_query_returns(tmp_path, monkeypatch):
    expected = _run(_learner(tmp_path / "ref"), rounds=2)
    learner = _learner(tmp_path / "s")
    learner.teach(learner.query(8), Y[expected[0]])
    with monkeypatch.context() as m:
        _failing_write(m, after=True)
        with pytest.raises(OSError, match="simulated"):
            learner.query(8)  # the write went through, then the process "crashed" before returning
    assert _on_disk(tmp_path / "s")["pending"] == expected[1]
    assert learner.pending.tolist() == expected[1]  # the learner took the disk as the truth
    assert _learner(tmp_path / "s").query(8).tolist() == expected[1]


def test_a_write_that_fails_before_the_rename_changes_nothing(tmp_path, monkeypatch):
    learner = _learner(tmp_path)
    before = _on_disk(tmp_path)
    with monkeypatch.context() as m:
        _failing_write(m, after=False)
        with pytest.raises(OSError):
            learner.query(8)
        with pytest.raises(OSError):
            learner.teach([1, 2], Y[[1, 2]])
    assert _on_disk(tmp_path) == before
    assert learner.pending.size == 0 and learner.labelled[0].size == 0
    assert learner.query(8).tolist() == _learner(tmp_path / "ref").query(8).tolist()


def test_mid_teach_crash_keeps_the_answers(tmp_path, monkeypatch):
    learner = _learner(tmp_path)
    rows = learner.query(8).tolist()
    with monkeypatch.context() as m:
        _failing_write(m, after=True)
        with pytest.raises(OSError):
            learner.teach(rows[:5], Y[rows[:5]])
    again = af.ActiveLearner.load(tmp_path, X)
    assert again.labelled[0].tolist() == rows[:5] and again.pending.tolist() == rows[5:]
    again.teach(rows, Y[rows])  # re-sending the answers already kept is fine
    assert again.labelled[0].tolist() == rows and again.pending.size == 0


@pytest.mark.parametrize("reopen", ["constructor", "load"])
def test_crash_and_reload_at_every_step_gives_the_same_session(tmp_path, reopen):
    reference = _learner(tmp_path / "ref", strategy="badge")
    expected = _run(reference, rounds=3)

    def fresh():
        if reopen == "load":
            return af.ActiveLearner.load(tmp_path / "s", X)
        return _learner(tmp_path / "s", strategy="badge")

    learner = _learner(tmp_path / "s", strategy="badge")
    got = []
    for _ in range(3):
        rows = learner.query(8).tolist()
        learner = fresh()  # crash after the query returned
        assert learner.query(8).tolist() == rows
        learner.teach(rows[:3], Y[rows[:3]])
        learner = fresh()  # crash in the middle of the answers
        assert learner.pending.tolist() == rows[3:]
        learner.teach(rows[3:], Y[rows[3:]])
        learner = fresh()  # crash after the batch was answered
        got.append(rows)
    assert got == expected
    assert learner.labelled[0].tolist() == reference.labelled[0].tolist()
    assert learner.labelled[1].tolist() == reference.labelled[1].tolist()


def test_a_stale_learner_does_not_overwrite_a_newer_state(tmp_path):
    old = _learner(tmp_path)
    rows = old.query(6).tolist()
    new = af.ActiveLearner.load(tmp_path, X)
    new.teach(rows, Y[rows])
    before = _on_disk(tmp_path)
    with pytest.raises(LearnerStateError, match="changed by another learner"):
        old.teach(rows[:2], (Y[rows[:2]] + 1) % C)
    assert _on_disk(tmp_path) == before
    assert old.labelled[0].tolist() == rows and old.pending.size == 0  # it took the new state


def test_memmap_features_are_reopened_by_load(tmp_path):
    np.save(tmp_path / "pool.npy", X)
    pool = np.load(tmp_path / "pool.npy", mmap_mode="r")
    learner = _learner(tmp_path / "s", pool)
    rows = learner.query(8).tolist()
    again = af.ActiveLearner.load(tmp_path / "s")
    assert again.query(8).tolist() == rows
    np.save(tmp_path / "pool.npy", X[::-1].copy())  # the file changed under the state
    with pytest.raises(LearnerStateError, match="features"):
        af.ActiveLearner.load(tmp_path / "s")
    (tmp_path / "pool.npy").unlink()
    with pytest.raises(LearnerStateError, match="pool.npy"):
        af.ActiveLearner.load(tmp_path / "s")


def test_load_of_in_memory_features_needs_them_and_checks_them(tmp_path):
    _learner(tmp_path).query(4)
    with pytest.raises(TypeError, match="pass them"):
        af.ActiveLearner.load(tmp_path)
    with pytest.raises(ValueError, match="shape"):
        af.ActiveLearner.load(tmp_path, X[:-1])
    other = X.copy()
    other[0, 0] += 1
    with pytest.raises(ValueError, match="fingerprint"):
        af.ActiveLearner.load(tmp_path, other)
    with pytest.raises(ValueError, match="other features"):
        _learner(tmp_path, other)
    with pytest.raises(ValueError, match="strategy"):
        _learner(tmp_path, strategy="entropy")
    with pytest.raises(ValueError, match="epochs"):
        af.ActiveLearner(X, state_dir=tmp_path, num_classes=C, epochs=6)
    assert af.ActiveLearner.load(tmp_path, torch.from_numpy(X.copy())).pending.numel() == 4
    # machine settings are not part of the state: another device or chunk size resumes the same learner
    assert _learner(tmp_path, device="cpu", inference_batch_size=7, progress=False).pending.size == 4


def test_import_asvp_fast_does_not_import_torch(tmp_path):
    code = "import sys, asvp_fast as af; assert 'torch' not in sys.modules; assert 'ActiveLearner' in dir(af)"
    # cwd outside the checkout: `-c` puts the cwd first on sys.path, and the source tree has no _C
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


# -- bad arguments -----------------------------------------------------------------------------

@pytest.mark.parametrize("features, error", [
    (X[0], ValueError), (X[:0], ValueError), (X.astype(np.int32), TypeError), (X.tolist(), TypeError),
    (torch.zeros(4, 3, dtype=torch.int64), TypeError),
])
def test_bad_features(features, error, tmp_path):
    with pytest.raises(error):
        _learner(tmp_path, features)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_nan_or_inf_features_name_the_row(kind, tmp_path):
    bad = X.copy()
    bad[17, 3] = np.nan if kind == "numpy" else np.inf
    with pytest.raises(ValueError, match="row 17"):
        _learner(tmp_path, bad if kind == "numpy" else torch.from_numpy(bad))


@pytest.mark.parametrize("kwargs, error", [
    ({"strategy": "nope"}, ValueError), ({"strategy": 3}, TypeError), ({"num_classes": 1}, ValueError),
    ({"num_classes": 2.0}, TypeError), ({"seed": "0"}, TypeError), ({"epochs": 0}, ValueError),
    ({"lr": float("nan")}, ValueError), ({"momentum": 1.0}, ValueError), ({"batch_size": 1}, ValueError),
    ({"space": "pixels"}, ValueError), ({"device": "tpu"}, ValueError), ({"progress": "yes"}, TypeError),
    ({"epoch": 3}, TypeError), ({"state_dir": None}, TypeError),
])
def test_bad_settings(kwargs, error, tmp_path):
    kwargs.setdefault("state_dir", tmp_path)
    with pytest.raises(error):
        af.ActiveLearner(X, **kwargs)


def test_unknown_option_suggests_the_right_one(tmp_path):
    with pytest.raises(TypeError, match="did you mean 'epochs'"):
        af.ActiveLearner(X, state_dir=tmp_path, epoch=3)


def test_bad_queries_and_answers(tmp_path):
    learner = _learner(tmp_path)
    for n, error in [(0, ValueError), (N + 1, ValueError), ("3", TypeError), (2.0, TypeError), (True, TypeError)]:
        with pytest.raises(error):
            learner.query(n)
    learner.teach([0, 1], [0, 1])
    with pytest.raises(ValueError, match="already labelled"):
        learner.teach([1], [2])
    learner.teach([1], [1])  # the same answer again: a no-op
    learner.teach([7], [2])
    with pytest.raises(ValueError, match="already labelled 2"):
        learner.teach([7], [0])  # a row taught by a later call is checked too
    for rows, labels, error in [
        ([2], [C], ValueError), ([2], [-1], ValueError), ([N], [0], ValueError), ([-1], [0], ValueError),
        ([2, 3], [0], ValueError), ([2, 2], [0, 1], ValueError), ([2], [0.0], TypeError), ([2], [True], TypeError),
        ([2], "0", TypeError), ([[2]], [[0]], ValueError), ([2.0], [0], TypeError), (None, [0], TypeError),
    ]:
        with pytest.raises(error):
            learner.teach(rows, labels)
    assert learner.labelled[0].tolist() == [0, 1, 7]  # nothing half-recorded
    learner.query(5)
    with pytest.raises(ValueError, match="not pending"):
        learner.discard([0])
    with pytest.raises(ValueError, match="only 3 of 3"):
        _learner(tmp_path / "other", X[:3]).query(4)


# -- damaged state files -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("good")
    learner = _learner(path)
    learner.teach(np.arange(6), Y[:6])
    learner.query(5)
    return (path / "state.json").read_bytes()


def _load_bytes(data: bytes):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "state.json").write_bytes(data)
        return af.ActiveLearner.load(d, X)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_truncated_or_bit_flipped_state_gives_only_the_state_error(good_state, data):
    if data.draw(st.booleans(), label="truncate"):
        damaged = good_state[: data.draw(st.integers(0, len(good_state) - 1), label="length")]
    else:
        flips = data.draw(st.lists(st.integers(0, len(good_state) * 8 - 1), min_size=1, max_size=4, unique=True),
                          label="bits")
        buf = bytearray(good_state)
        for bit in flips:
            buf[bit // 8] ^= 1 << (bit % 8)
        damaged = bytes(buf)
    try:
        _load_bytes(damaged)
    except LearnerStateError as exc:
        assert "state.json" in str(exc)
    else:  # only damage that leaves the same JSON (the final newline cut or turned into other whitespace)
        assert json.loads(damaged) == json.loads(good_state)


def _resealed(doc):
    body = {k: v for k, v in doc.items() if k != "checksum"}
    doc = dict(body, checksum=checksum(body))
    return json.dumps(doc).encode()


_FIELD_DAMAGE = [
    ("batches", -1), ("batches", 2.0), ("batches", "1"), ("pending", "35"), ("pending", [1, 1]),
    ("pending", [N]), ("pending", [0]), ("rows", [0, -1, 2, 3, 4, 5]), ("labels", [0, 0, 0, 0, 0, C]),
    ("labels", [0]), ("version", 2), ("format", "other"), ("settings", []), ("features", None),
]


@pytest.mark.parametrize("field, value", _FIELD_DAMAGE)
def test_wrong_fields_with_a_valid_checksum_name_the_field(good_state, field, value):
    doc = json.loads(good_state)
    doc[field] = value
    with pytest.raises(LearnerStateError, match=field):
        _load_bytes(_resealed(doc))


@settings(max_examples=40, deadline=None)
@given(path=st.sampled_from([("settings", "seed"), ("settings", "num_classes"), ("settings", "proxy", "lr"),
                             ("settings", "proxy", "hidden"), ("features", "rows"), ("features", "fingerprint"),
                             ("features", "source"), ("settings", "strategy"), ("settings", "space")]),
       value=st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                          | st.text(max_size=5), lambda kids: st.lists(kids, max_size=3)
                          | st.dictionaries(st.text(max_size=3), kids, max_size=3), max_leaves=6))
def test_wrong_types_anywhere_give_only_the_state_error(good_state, path, value):
    doc = json.loads(good_state)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        _load_bytes(_resealed(doc))
    except LearnerStateError:
        pass
    except ValueError as exc:  # a well-formed state that does not fit these features (other rows or strategy)
        assert "features" in str(exc) or "strategy" in str(exc)


def test_deep_nesting_huge_numbers_and_missing_files(tmp_path, good_state):
    with pytest.raises(LearnerStateError):
        _load_bytes(b"[" * 100000 + b"]" * 100000)
    with pytest.raises(LearnerStateError):
        _load_bytes(good_state.replace(b'"lr":0.01', b'"lr":1e400'))
    with pytest.raises(LearnerStateError, match="NaN"):
        _load_bytes(good_state.replace(b'"lr":0.01', b'"lr":NaN'))
    with pytest.raises(LearnerStateError, match="not found"):
        af.ActiveLearner.load(tmp_path / "nothing", X)
    (tmp_path / "state.json").mkdir()
    with pytest.raises(LearnerStateError):
        af.ActiveLearner.load(tmp_path, X)


@pytest.mark.cuda
def test_cuda_tensor_features(tmp_path):
    feats = torch.from_numpy(X.copy()).cuda()
    learner = _learner(tmp_path, feats, strategy="badge")
    rows = learner.query(8)
    assert rows.device.type == "cuda" and rows.dtype == torch.int64
    learner.teach(rows, torch.from_numpy(Y).cuda()[rows])
    rows2 = learner.query(8)
    assert rows2.is_cuda and not set(rows2.tolist()) & set(rows.tolist())
    learner.discard()
    coreset = _learner(tmp_path / "f", feats, strategy="coreset", space="features")
    coreset.teach(rows, Y[rows.cpu().numpy()])
    assert coreset.query(8).is_cuda
