"""Fuzzing the loaders of untrusted files: the feature-cache manifest, data and progress record, the
run state, and the file oracle's answers. Whatever the damage (truncation, bit flips, a field
replaced by any JSON value, deep nesting, a key deleted, random bytes), only the loader's own
error class may come out, or a valid result."""

from __future__ import annotations

import copy
import csv
import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from asvp_fast.loop import CacheError, FeatureCache, LabelsPending, StateError  # noqa: E402
from asvp_fast.loop.engine.oracle import FileOracle, OracleError  # noqa: E402
from asvp_fast.loop.engine.state import RoundRecord, RunState  # noqa: E402

FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)


def _slots(node, out):
    """Every (container, key) in a decoded JSON document."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        out.append((node, key))
        _slots(value, out)
    return out


@st.composite
def damaged(draw, base):
    """``base`` (a JSON-able document) encoded, then damaged one way."""
    text = json.dumps(base).encode()
    kind = draw(st.sampled_from(["truncate", "flip", "replace", "nest", "delete", "bytes"]))
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text) - 1))]
    if kind == "flip":
        data = bytearray(text)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    doc = copy.deepcopy(base)
    container, key = draw(st.sampled_from(_slots(doc, [])))
    if kind == "replace":
        container[key] = draw(JSON)
    elif kind == "delete":
        del container[key]
    else:  # wrap the value in many lists (built as text: the encoder would recurse)
        inner = json.dumps(container[key])
        container[key] = "@@NEST@@"
        depth = draw(st.sampled_from([1, 2, 40, 5000, 200000]))
        return json.dumps(doc).replace('"@@NEST@@"', "[" * depth + inner + "]" * depth).encode()
    return json.dumps(doc).encode()


# -- the feature cache -----------------------------------------------------------------------------------
DATA = (np.arange(24, dtype=np.float32).reshape(6, 4) - 7) / 3


def _stored(root):
    cache = FeatureCache(root)
    if not cache.has("pool", 0):
        cache.write_array("pool", 0, DATA, backbone_id="b", dataset_id="d")
    return cache


@FUZZ
@given(data=st.data())
def test_fuzzed_manifests_give_a_cache_error_or_the_stored_features(tmp_path, data):
    cache = _stored(tmp_path)
    path = cache.manifest_path("pool", 0)
    base = json.loads(path.read_text())
    blob = data.draw(damaged(base))
    path.write_bytes(blob)
    try:
        try:
            out = cache.load("pool", 0, verify=True)
        except CacheError:
            return
        np.testing.assert_array_equal(np.asarray(out), DATA.astype(np.float16))
        assert cache.versions("pool") == [0]
    finally:
        path.write_text(json.dumps(base))


@FUZZ
@given(cut=st.integers(0, 47), flips=st.lists(st.tuples(st.integers(0, 47), st.integers(0, 7)), max_size=4),
       extra=st.binary(max_size=8))
def test_fuzzed_feature_files_give_a_cache_error_or_the_stored_features(tmp_path, cut, flips, extra):
    cache = _stored(tmp_path)
    path = cache.data_path("pool", 0, "float16")
    good = path.read_bytes()
    blob = bytearray(good[:cut] if cut < len(good) else good)
    for i, bit in flips:
        if i < len(blob):
            blob[i] ^= 1 << bit
    blob = bytes(blob) + extra
    path.write_bytes(blob)
    try:
        try:
            out = cache.load("pool", 0, verify=True)
        except CacheError:
            assert blob != good
            return
        assert blob == good
        np.testing.assert_array_equal(np.asarray(out), DATA.astype(np.float16))
    finally:
        path.write_bytes(good)


class Ramp(torch.nn.Module):
    feature_dim = 2
    backbone_id = "ramp"

    def __init__(self, crash_after=None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.5))
        self.calls = 0
        self.crash_after = crash_after

    def to_device(self, batch, device):
        return batch.to(device)

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise KeyboardInterrupt
        return torch.stack([x, -x], dim=1) * self.scale


def _extract(cache, backbone):
    items = torch.arange(48, dtype=torch.float32)
    return cache.extract(backbone, items, lambda b: torch.stack(b), split="pool", dataset_id="r", batch_size=8,
                         flush_every_s=0.0)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_fuzzed_progress_record_resumes_or_starts_over_but_never_misleads(tmp_path, data):
    root = tmp_path / "x"
    cache = FeatureCache(root)
    for p in root.glob("*") if root.exists() else ():
        p.unlink()
    with pytest.raises(KeyboardInterrupt):
        _extract(cache, Ramp(crash_after=3))
    progress = next(root.glob("*.progress.json"))
    progress.write_bytes(data.draw(damaged(json.loads(progress.read_text()))))
    out = np.asarray(_extract(cache, Ramp()))
    x = np.arange(48, dtype=np.float32) * 1.5
    np.testing.assert_array_equal(out, np.stack([x, -x], 1).astype(np.float16))


# -- the run state -------------------------------------------------------------------------------------
def _state_doc():
    state = RunState(config={"seed": 3, "schedule": {"initial": 2, "steps": [{"until": 4, "step": 2}]}},
                     labels={5: 1, 9: 0, 11: 2, 40: 1},
                     memo={"ab12": {"accuracy": 0.5, "train_s": 1.0, "eval_s": 0.1}}, stages={"extract_pool_s": 2.5})
    state.method("svpp").rounds = [
        RoundRecord(round=0, n_labels=2, new=[5, 9], stage="done", accuracy=0.5, info={"mode": "ft", "memo": True}),
        RoundRecord(round=1, n_labels=4, new=[11, 40], stage="labelled", select_s=0.2,
                    info={"refresh": True, "features_version": 1, "logme_ped": -0.3}),
    ]
    state.method("oneshot").rounds = [
        RoundRecord(round=0, n_labels=2, new=[5, 11], train_rows=[11, 5], stage="done"),
        RoundRecord(round=1, n_labels=3, new=[12], train_rows=[5, 12, 11], stage="selected"),
    ]
    return json.loads(state.to_json())


@FUZZ
@given(data=st.data())
def test_fuzzed_states_give_a_state_error_or_a_consistent_state(tmp_path, data):
    path = tmp_path / "state.json"
    path.write_bytes(data.draw(damaged(_state_doc())))
    try:
        state = RunState.load(path, num_classes=3, n_pool=50)
    except StateError:
        return
    # a valid result is usable: it saves (no NaN), reloads to itself, and its labels cover its rounds
    state.save(tmp_path / "again.json")
    assert RunState.load(tmp_path / "again.json", num_classes=3, n_pool=50).to_json() == state.to_json()
    for m in state.methods.values():
        for i, r in enumerate(m.rounds):
            assert r.round == i and (r.stage == "done" or i == len(m.rounds) - 1)
            if r.stage != "selected":
                assert set(state.labels_of(np.asarray(r.new, dtype=np.int64))) <= {0, 1, 2}
            m.train_rows(i + 1)
    assert all(0 <= r < 50 for r in state.labels)


# -- the file oracle's answers ----------------------------------------------------------------------------
ROWS = np.array([4, 8, 15])
CELL = st.text(alphabet=st.sampled_from(list("0123456789,-\" \n\r\t²١abcATdogeel") + ["\x00", "\ufeff", "é"]), max_size=6)


def _ask(oracle, blob):
    oracle.path("b").write_bytes(blob)
    try:
        answers = oracle.query(ROWS, "b")
    except (LabelsPending, OracleError) as exc:
        assert type(exc) in (LabelsPending, OracleError)
        return
    assert answers.dtype == np.int64 and answers.shape == (3,) and ((answers >= 0) & (answers < 3)).all()


_INDEX = st.sampled_from(["4", "8", "15", " 8", "16", "١٥", "1_5", "-4", "", "4.0", "¹"])
_LABEL = st.sampled_from(["cat", "DOG", " eel", "0", "2", "3", "-1", "²", "", "1.0", "١"])
INDEX = st.one_of(_INDEX, _INDEX, CELL)  # mostly near-miss values, sometimes anything
LABEL = st.one_of(_LABEL, _LABEL, _LABEL, CELL)
HEADER = st.sampled_from([["index", "item", "label"], ["index", "item", "label"], ["Label", "INDEX"], ["idx", "label"], []])
NONE = st.just([])


@FUZZ
@given(data=st.data(), header=HEADER, labels=st.tuples(LABEL, LABEL, LABEL),
       extra=NONE | NONE | st.lists(st.tuples(INDEX, CELL, LABEL), max_size=2),
       odd=NONE | NONE | NONE | st.lists(st.lists(CELL, max_size=4), max_size=2))
def test_fuzzed_answer_tables_give_answers_pending_or_an_oracle_error(tmp_path, data, header, labels, extra, odd):
    oracle = FileOracle(tmp_path, ["cat", "dog", "eel"], describe=str)
    rows = [(str(i), f"item {i}", label) for i, label in zip(ROWS, labels)] + extra
    rows = data.draw(st.permutations(rows))
    buf = io.StringIO()
    w = csv.writer(buf)
    if header:
        w.writerow(header)
    for index, item, label in rows:
        w.writerow([index, item, label] if header != ["Label", "INDEX"] else [label, index])
    for r in odd:  # rows of other lengths
        w.writerow(r)
    _ask(oracle, buf.getvalue().encode("utf-8"))


@FUZZ
@given(cut=st.integers(0, 60), flips=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 7)), max_size=6),
       noise=st.binary(max_size=40))
def test_fuzzed_answer_files_give_answers_pending_or_an_oracle_error(tmp_path, cut, flips, noise):
    oracle = FileOracle(tmp_path, ["cat", "dog", "eel"], describe=str)
    good = bytearray(b"index,item,label\n4,four,cat\n8,eight,2\n15,\"fif,teen\",DOG\n")
    blob = good[:cut] if cut < len(good) else good
    for i, bit in flips:
        if i < len(blob):
            blob[i] ^= 1 << bit
    _ask(oracle, bytes(blob) + noise)
