"""Labels never lost, selections never recomputed, and files treated as untrusted input: the
round's saved selection on resume, cache versions after a crashed ASVP refresh, partial
extractions keyed by the weights, and every loader's answer to damage (feature-cache manifest and
data, run state, oracle answers)."""

from __future__ import annotations

import copy
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from asvp_fast.loop import (  # noqa: E402
    METHODS,
    CacheError,
    FeatureCache,
    LabelsPending,
    Method,
    StateError,
    parse_config,
    register_method,
    run,
)
from asvp_fast.loop.cases.builtin import synthetic_case  # noqa: E402
from asvp_fast.loop.engine.oracle import FileOracle, OracleError, SimulatedOracle  # noqa: E402
from asvp_fast.loop.engine.state import STATE_FORMAT, RoundRecord, RunState  # noqa: E402
from asvp_fast.loop.methods.asvp import ASVPMethod  # noqa: E402
from asvp_fast.loop.storage.cache import weights_digest  # noqa: E402

POOL = 300


def config(**overrides):
    raw = {
        "seed": 3,
        "methods": ["random"],
        "data": {"case": "synthetic", "pool_size": POOL, "test_size": 120},
        "schedule": {"initial": 20, "steps": [{"until": 40, "step": 20}]},
        "training": {"epochs": 1, "batch_size": 16, "lp_epochs": 1},
        "proxy": {"epochs": 5},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return parse_config(raw)


def quiet(*_args, **_kwargs):
    pass


class Crash(Exception):
    pass


def outcome(state):
    return {name: [(r.round, r.n_labels, r.new, r.accuracy, r.stage) for r in m.rounds]
            for name, m in state.methods.items()}, dict(sorted(state.labels.items()))


TRUTH = synthetic_case(pool_size=POOL, test_size=120, seed=0)


def answer(path: Path) -> list:
    """Fill in a file oracle's batch with the true labels; returns the rows asked for."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "item", "label"])
        for r in rows:
            w.writerow([r["index"], r["item"], int(TRUTH.pool_labels[int(r["index"])])])
    return [int(r["index"]) for r in rows]


# -- a selector that picks differently on every call --------------------------------------------------
class Fickle(Method):
    """Each call starts from another offset, so a recomputed selection would differ."""

    calls: list = []

    def select(self, round_, labelled, k):
        Fickle.calls.append(round_)
        taken = set(int(x) for x in labelled)
        start = 37 * len(Fickle.calls)
        rows = [i % POOL for i in range(start, start + POOL) if i % POOL not in taken][:k]
        return np.asarray(rows, dtype=np.int64), {"call": len(Fickle.calls)}


@pytest.fixture
def fickle():
    saved = dict(METHODS)
    register_method("fickle", Fickle)
    Fickle.calls.clear()
    yield
    METHODS.clear()
    METHODS.update(saved)


def saved_round(run_dir: Path, method: str, r: int) -> dict:
    return json.loads((run_dir / "state.json").read_text())["methods"][method][r]


def test_a_pending_round_keeps_its_saved_selection_across_resumes(tmp_path, fickle):
    cfg = config(methods=["fickle"], oracle={"kind": "file"})
    out = tmp_path / "r"
    with pytest.raises(LabelsPending) as first:
        run(cfg, out, echo=quiet, report=False)
    assert saved_round(out, "fickle", 0)["stage"] == "selected"  # saved before the oracle was asked
    answer(first.value.path)
    with pytest.raises(LabelsPending) as second:
        run(cfg, out, resume=True, echo=quiet, report=False)
    saved = saved_round(out, "fickle", 1)
    assert saved["stage"] == "selected" and saved["info"] == {"call": 1} and Fickle.calls == [1]
    asked = [int(r["index"]) for r in csv.DictReader(io.StringIO(second.value.path.read_text()))]
    assert asked == saved["new"]
    # the selector would now pick other rows ...
    again, _ = Fickle(cfg.methods[0], None).select(1, np.asarray(saved_round(out, "fickle", 0)["new"]), 20)
    assert sorted(again.tolist()) != sorted(saved["new"])
    # ... but resuming, still unanswered, asks for the same batch without selecting again
    with pytest.raises(LabelsPending) as third:
        run(cfg, out, resume=True, echo=quiet, report=False)
    assert third.value.path == second.value.path and saved_round(out, "fickle", 1) == saved
    assert len(Fickle.calls) == 2  # the second call was the direct one above
    assert answer(second.value.path) == saved["new"]
    state = run(cfg, out, resume=True, echo=quiet, report=False)
    rounds = state.methods["fickle"].rounds
    assert rounds[1].new == saved["new"] and rounds[1].info["call"] == 1 and rounds[1].stage == "done"
    assert len(Fickle.calls) == 2


def test_a_crash_after_the_selection_is_saved_reuses_it(tmp_path, fickle, monkeypatch):
    cfg = config(methods=["fickle"])
    original = SimulatedOracle.query

    def crashing(self, rows, tag):
        if tag.endswith("round001"):
            raise Crash("the oracle's machine went down")
        return original(self, rows, tag)

    monkeypatch.setattr(SimulatedOracle, "query", crashing)
    with pytest.raises(Crash):
        run(cfg, tmp_path / "r", echo=quiet, report=False)
    saved = saved_round(tmp_path / "r", "fickle", 1)
    assert saved["stage"] == "selected" and Fickle.calls == [1]
    monkeypatch.setattr(SimulatedOracle, "query", original)
    state = run(cfg, tmp_path / "r", resume=True, echo=quiet, report=False)
    assert state.methods["fickle"].rounds[1].new == saved["new"] and Fickle.calls == [1]
    assert state.labels_of(np.asarray(saved["new"])).tolist() == TRUTH.pool_labels[saved["new"]].tolist()


# -- a crash between an ASVP refresh and the state save ----------------------------------------------
ASVP = dict(methods=["asvp"], asvp={"force_refresh_round": 2, "threshold": 0.0},
            schedule={"initial": 20, "steps": [{"until": 60, "step": 20}]})
CACHE_FILES = ["pool.v0.float16.bin", "pool.v0.manifest.json", "pool.v1.float16.bin", "pool.v1.manifest.json"]


@pytest.fixture(scope="module")
def asvp_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("asvp") / "ref"
    return outcome(run(config(**ASVP), out, echo=quiet, report=False))


@pytest.mark.parametrize("where", ["in-selection", "in-save", "other-weights"])
def test_a_crash_after_an_asvp_refresh_leaves_one_cache_version(tmp_path, monkeypatch, asvp_reference, where):
    cfg = config(**ASVP)
    out = tmp_path / "r"
    if where == "in-save":
        original_save = RunState.save

        def crashing_save(self, path):
            last = self.methods.get("asvp") and self.methods["asvp"].rounds[-1]
            if last and last.round == 2 and last.stage == "selected":
                raise Crash("killed before the state was saved")
            original_save(self, path)

        monkeypatch.setattr(RunState, "save", crashing_save)
    else:
        original_select = ASVPMethod.select_with_proxy

        def crashing_select(self, feats, round_, labelled, k):
            if round_ == 2:
                raise Crash("killed after the refresh")
            return original_select(self, feats, round_, labelled, k)

        monkeypatch.setattr(ASVPMethod, "select_with_proxy", crashing_select)
    with pytest.raises(Crash):
        run(cfg, out, echo=quiet, report=False)
    cache = out / "cache"
    assert sorted(p.name for p in cache.iterdir()) == CACHE_FILES  # the refresh finished its version
    assert len(json.loads((out / "state.json").read_text())["methods"]["asvp"]) == 2  # round 2 not saved
    manifest_path = cache / "pool.v1.manifest.json"
    if where == "other-weights":  # the recomputed fine-tune is not bit-identical (another GPU, AMP ...)
        m = json.loads(manifest_path.read_text())
        m["weights"] = "0" * 32
        manifest_path.write_text(json.dumps(m))
    before = json.loads(manifest_path.read_text())
    monkeypatch.undo()
    state = run(cfg, out, resume=True, echo=quiet, report=False)
    assert outcome(state) == asvp_reference
    assert sorted(p.name for p in cache.iterdir()) == CACHE_FILES  # no second version, no orphans
    assert state.methods["asvp"].rounds[2].info["features_version"] == 1
    after = json.loads(manifest_path.read_text())
    if where == "other-weights":
        assert after["created"] > before["created"] and after["weights"] != before["weights"]  # replaced
    else:
        assert after == before  # bit-identical weights: the finished version is reused, not re-extracted


# -- partial extractions are keyed by the weights ---------------------------------------------------------
class Ramp(torch.nn.Module):
    feature_dim = 3
    backbone_id = "ramp"  # the same name whatever the weights

    def __init__(self, scale=1.0, crash_after=None):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)))
        self.calls = 0
        self.crash_after = crash_after

    def to_device(self, batch, device):
        return batch.to(device)

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise Crash("extraction crashed")
        return torch.stack([x, 2 * x, x * x], dim=1) * self.scale


def extract(cache, backbone, n=640, **kw):
    data = torch.arange(n, dtype=torch.float32) / 100
    return cache.extract(backbone, data, lambda items: torch.stack(items), split="pool", dataset_id="ramp",
                         batch_size=64, flush_every_s=0.0, **kw)


def test_a_partial_extraction_is_resumed_only_by_the_same_weights(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(Crash):
        extract(cache, Ramp(1.0, crash_after=4))
    other = Ramp(2.0)  # same backbone_id, other weights
    out = np.array(extract(cache, other))
    assert other.calls == 10, "a partial file written by other weights must not be resumed"
    np.testing.assert_array_equal(out, np.array(extract(FeatureCache(tmp_path / "clean"), Ramp(2.0))))
    assert cache.manifest("pool", 0).weights == weights_digest(other)
    cache.discard("pool", 0)
    assert list(tmp_path.glob("pool.*")) == []
    with pytest.raises(Crash):
        extract(cache, Ramp(1.0, crash_after=4))
    same = Ramp(1.0)
    extract(cache, same)
    assert same.calls == 6  # bit-identical weights continue where the crash stopped


def test_a_finished_derived_version_from_other_weights_is_replaced_not_reused(tmp_path):
    stale = FeatureCache(tmp_path, replace_stale=True)
    extract(stale, Ramp(1.0), version=3)
    fresh = Ramp(3.0)
    out = np.array(extract(stale, fresh, version=3))
    assert fresh.calls == 10 and stale.manifest("pool", 3).weights == weights_digest(fresh)
    np.testing.assert_allclose(out[:, 0], 3 * np.arange(640) / 100, rtol=1e-3)
    with pytest.raises(CacheError, match="built for backbone"):  # the pre-trained cache names its backbone
        extract(FeatureCache(tmp_path), Ramp(1.0), version=3, backbone_id="another")


def test_weights_digest_covers_every_value_and_ignores_chunking():
    net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.BatchNorm1d(4))
    base = weights_digest(net)
    assert len(base) == 32 and weights_digest(copy.deepcopy(net)) == base
    assert weights_digest(net, chunk_bytes=7) == base
    changed = copy.deepcopy(net)
    with torch.no_grad():
        changed[0].weight[3, 5] = torch.nextafter(changed[0].weight[3, 5], torch.tensor(2.0))
    assert weights_digest(changed) != base
    buffers = copy.deepcopy(net)
    buffers[1].running_mean[0] = 0.5
    assert weights_digest(buffers) != base
    assert weights_digest(copy.deepcopy(net).half()) != base
    assert weights_digest(object()) == ""


# -- the feature-cache manifest and data --------------------------------------------------------------
@pytest.fixture
def stored(tmp_path):
    cache = FeatureCache(tmp_path)
    data = np.arange(12, dtype=np.float32).reshape(4, 3)
    cache.write_array("pool", 0, data, backbone_id="b", dataset_id="d")
    return cache, data


def _damage(cache, text):
    cache.manifest_path("pool", 0).write_text(text)


def _deep(depth):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("field, value, message", [
    ("n", 4.0, "n must be an integer, not a number"),
    ("n", -4, r"n is -4, outside \[0"),
    ("n", None, "n must be an integer, not null"),
    ("n", True, "n must be an integer, not a boolean"),
    ("dim", 0, r"dim is 0, outside \[1"),
    ("dtype", ["float16"], "dtype must be a string, not a list"),
    ("dtype", "float64", "dtype is 'float64'; expected 'float16' or 'float32'"),
    ("version", 1, "version is 1, but the file is named for version 0"),
    ("split", "test", "split is 'test', but the file is named for 'pool'"),
    ("checksum", "zz", "checksum is 'zz'; expected 32 lowercase hex digits"),
    ("weights", 7, "weights must be a string"),
    ("format", 9, "format is 9; this version reads formats"),
    ("created", "yesterday", "created must be a number"),
    ("extra", 1, "unknown key 'extra'"),
    ("backbone_id", {"a": [1, 2]}, "backbone_id must be a string, not an object"),
])
def test_a_damaged_manifest_names_the_field(stored, field, value, message):
    cache, _ = stored
    m = json.loads(cache.manifest_path("pool", 0).read_text())
    m[field] = value
    _damage(cache, json.dumps(m))
    with pytest.raises(CacheError, match=message) as info:
        cache.load("pool", 0)
    assert str(cache.manifest_path("pool", 0)) in str(info.value)


@pytest.mark.parametrize("data, message", [
    (_deep(100000).encode(), "nested too deeply"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"n": NaN}', "lacks the key"),
    (b"[]", "not a JSON object"),
    (b'{"backbone_id": "b"', "not valid JSON"),
    (b"\xff\xfe{", "not UTF-8"),
    (b" " * (2 << 20), "larger than"),
])
def test_an_unreadable_manifest_is_a_cache_error(stored, data, message):
    cache, _ = stored
    path = cache.manifest_path("pool", 0)
    path.write_bytes(data)
    with pytest.raises(CacheError, match=message):
        cache.load("pool", 0)
    path.unlink()
    path.mkdir()
    with pytest.raises(CacheError, match="cannot be read"):
        cache.load("pool", 0)


@pytest.mark.parametrize("checksum", ["", None])
def test_a_manifest_without_checksum_fails_verification(stored, checksum):
    cache, data = stored
    m = json.loads(cache.manifest_path("pool", 0).read_text())
    if checksum is None:
        del m["checksum"]
    else:
        m["checksum"] = checksum
    _damage(cache, json.dumps(m))
    path = cache.data_path("pool", 0, "float16")
    raw = bytearray(path.read_bytes())
    raw[5] ^= 0x40  # corrupt the data as well: nothing may load it when verifying
    path.write_bytes(bytes(raw))
    with pytest.raises(CacheError, match="checksum is missing or empty"):
        cache.load("pool", 0, verify=True)
    assert cache.load("pool", 0, verify=False).shape == data.shape  # the documented size-only check


def test_a_data_file_that_is_a_directory_is_a_cache_error(stored):
    cache, _ = stored
    path = cache.data_path("pool", 0, "float16")
    path.unlink()
    path.mkdir()
    with pytest.raises(CacheError, match="missing"):
        cache.load("pool", 0)


@pytest.mark.parametrize("features, message", [
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "row 0 has NaN"),
    (np.array([[1.0, 2.0], [0.0, -np.inf]]), "row 1 has NaN or infinite"),
    (np.array([[1.0, 2.0], [1e5, 0.0]]), "row 1 has features of magnitude 1e\\+05, beyond float16's range"),
    (np.array([[1, 2], [70000, 0]]), "row 1 .* beyond float16's range"),
    (np.array([[1.0, None]], dtype=object), "must be real numbers, got dtype object"),
    (np.array([[1 + 2j, 0]]), "must be real numbers"),
    (np.array(["a", "b"]).reshape(1, 2), "must be real numbers"),
    (np.arange(5.0), r"must be a 2-D array .*shape \(5,\)"),
    (np.zeros((2, 2, 2)), "must be a 2-D array"),
    (np.zeros((3, 0)), "no columns"),
])
def test_write_array_refuses_what_readers_refuse(tmp_path, features, message):
    cache = FeatureCache(tmp_path)
    with pytest.raises(CacheError, match=message):
        cache.write_array("pool", 0, features, backbone_id="b", dataset_id="d")
    assert list(tmp_path.iterdir()) == []  # nothing half-written stays behind


def test_write_array_checks_names_and_ranges(tmp_path):
    cache = FeatureCache(tmp_path)
    ok = np.ones((2, 2))
    for kwargs, message in ((dict(version=-1), r"version is -1"), (dict(version=True), "version must be an integer"),
                            (dict(split="../x"), "split is '../x'"), (dict(backbone_id=None), "backbone_id must be a string"),
                            (dict(weights="nope"), "weights is 'nope'")):
        args = {"split": "pool", "version": 0, "backbone_id": "b", "dataset_id": "d", **kwargs}
        split, version = args.pop("split"), args.pop("version")
        with pytest.raises(CacheError, match=message):
            cache.write_array(split, version, ok, **args)
    big = cache.write_array("pool", 0, np.array([[1e5, 0.0]]), backbone_id="b", dataset_id="d", dtype="float32")
    assert big.dtype == np.float32 and float(big[0, 0]) == 1e5
    with pytest.raises(CacheError, match="beyond float32's range"):
        cache.write_array("pool", 1, np.array([[1e39, 0.0]]), backbone_id="b", dataset_id="d", dtype="float32")
    ints = cache.write_array("pool", 2, np.array([[1, 2], [3, 4]], dtype=np.int64), backbone_id="b", dataset_id="d")
    assert ints.tolist() == [[1, 2], [3, 4]] and ints.dtype == np.float16


def test_versions_ignore_names_that_are_not_plain_numbers(stored):
    cache, _ = stored
    for odd in ("pool.v².manifest.json", "pool.v01.manifest.json", "pool.v-1.manifest.json", "pool.vx.manifest.json",
                "pool.v١.manifest.json", "pool.v 2.manifest.json"):
        (cache.root / odd).write_text("{}")
    assert cache.versions("pool") == [0]


# -- the run state ---------------------------------------------------------------------------------------
def valid_state() -> RunState:
    state = RunState(config={"seed": 3, "schedule": {"initial": 2}}, labels={5: 1, 9: 0, 11: 2, 40: 1},
                     memo={"ab12": {"accuracy": 0.5, "train_s": 1.0, "eval_s": 0.1}}, stages={"extract_pool_s": 2.5})
    state.method("svpp").rounds = [
        RoundRecord(round=0, n_labels=2, new=[5, 9], stage="done", accuracy=0.5, info={"mode": "ft"}),
        RoundRecord(round=1, n_labels=4, new=[11, 40], stage="labelled", select_s=0.2, info={"refresh": False}),
    ]
    state.method("oneshot").rounds = [
        RoundRecord(round=0, n_labels=2, new=[5, 11], train_rows=[11, 5], stage="done"),
        RoundRecord(round=1, n_labels=3, new=[12], train_rows=[5, 12, 11], stage="selected"),
    ]
    return state


def write_state(tmp_path, raw) -> Path:
    path = tmp_path / "state.json"
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return path


def test_a_valid_state_round_trips_and_loads_from_a_str_path(tmp_path):
    state = valid_state()
    state.save(tmp_path / "state.json")
    back = RunState.load(str(tmp_path / "state.json"), num_classes=3, n_pool=50)
    assert back.to_json() == state.to_json()
    assert back.methods["oneshot"].rounds[1].stage == "selected"


def _mutate(raw, path, value):
    *head, last = path
    node = raw
    for key in head:
        node = node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[last] = value


_DELETE = object()


@pytest.mark.parametrize("path, value, message", [
    (("methods", "svpp", 1, "new"), "35", r"methods.svpp\[1\].new must be a JSON list, not a string"),
    (("methods", "svpp", 1, "new"), [11, 11], r"methods.svpp\[1\].new repeats the row 11"),
    (("methods", "svpp", 1, "new"), [11, 40.0], r"methods.svpp\[1\].new\[1\] must be an integer, not a number"),
    (("methods", "svpp", 1, "new"), [-11, 40], r"new\[0\] is -11, outside \[0, 49\]"),
    (("methods", "svpp", 1, "new"), [11, 7], "uses rows without labels"),
    (("methods", "svpp", 1, "new"), [5, 40], "which an earlier round of this method already bought"),
    (("methods", "svpp", 1, "n_labels"), 5, r"n_labels is 5, but the rows give 4"),
    (("methods", "svpp", 1, "round"), 2, r"round is 2, expected 1"),
    (("methods", "svpp", 1, "stage"), "trained", "stage is 'trained'; expected one of"),
    (("methods", "svpp", 0, "stage"), "labelled", "only the last round can be unfinished"),
    (("methods", "svpp", 0, "accuracy"), float("nan"), r"accuracy is nan"),
    (("methods", "svpp", 0, "accuracy"), 1.5, r"accuracy is 1.5, outside"),
    (("methods", "svpp", 0, "train_s"), -1, r"train_s is -1.0, outside"),
    (("methods", "svpp", 0, "info"), [], "info must be a JSON object"),
    (("methods", "svpp", 0, "info"), {"features_version": "1"}, "features_version must be an integer"),
    (("methods", "svpp", 0, "info"), {"x": [1, float("inf")]}, "holds the number inf"),
    (("methods", "svpp", 0, "bogus"), 1, "unknown key 'bogus'"),
    (("methods", "svpp", 0, "new"), _DELETE, "lacks the key 'new'"),
    (("methods", "oneshot", 1, "train_rows"), [5, 12, 13], r"train_rows does not hold the round's rows"),
    (("methods", "oneshot"), {"0": {}}, "must be a JSON list"),
    (("labels", "rows"), [5, 9, 11, 9], r"labels.rows\[3\] labels row 9 again, as 1 after 0"),
    (("labels", "values"), [1, 0, 2, 3], r"labels.values\[3\] is 3, outside \[0, 2\]"),
    (("labels", "values"), [1, 0, 2], "has 4 rows but 3 values"),
    (("labels", "rows"), [5, 9, 11, 10**30], r"outside \[0, 49\]"),
    (("labels",), {"rows": [], "values": [], "x": 1}, "unknown key 'x'"),
    (("memo", "ab12", "accuracy"), None, r"memo.ab12.accuracy must be a number"),
    (("stages", "extract_pool_s"), "2.5", "stages.extract_pool_s must be a number"),
    (("format",), 3, "format is 3; this version reads formats"),
    (("format",), "2", "format must be an integer"),
    (("config",), "seed=3", "config must be a JSON object"),
])
def test_a_damaged_state_names_the_file_and_field(tmp_path, path, value, message):
    raw = json.loads(valid_state().to_json())
    _mutate(raw, path, value)
    state_path = write_state(tmp_path, json.dumps(raw))
    with pytest.raises(StateError, match=message) as info:
        RunState.load(state_path, num_classes=3, n_pool=50)
    assert str(state_path) in str(info.value)


def test_duplicate_label_rows_that_agree_are_accepted(tmp_path):
    raw = json.loads(valid_state().to_json())
    raw["labels"] = {"rows": [5, 9, 11, 40, 9], "values": [1, 0, 2, 1, 0]}
    assert RunState.load(write_state(tmp_path, raw)).labels == {5: 1, 9: 0, 11: 2, 40: 1}


@pytest.mark.parametrize("text, message", [
    ("", "not valid JSON"),
    ('{"format": 2, "config": ' + _deep(100000) + "}", "nested too deeply"),
    ('{"format": 2, "config": {"a": ' + _deep(40) + '}, "labels": {"rows": [], "values": []}, "methods": {}}',
     "config is nested deeper than 32 levels"),
    ('{"format": ' + "1" * 5000 + "}", "not valid JSON"),
    ("[1, 2]", "the document must be a JSON object"),
    ("null", "the document must be a JSON object"),
])
def test_an_unreadable_state_is_a_state_error(tmp_path, text, message):
    with pytest.raises(StateError, match=message):
        RunState.load(write_state(tmp_path, text))
    (tmp_path / "state.json").unlink()
    (tmp_path / "state.json").mkdir()
    with pytest.raises(StateError, match="cannot be read"):
        RunState.load(tmp_path / "state.json")


def test_state_format_1_is_read_and_saved_as_the_current_format(tmp_path):
    assert STATE_FORMAT == 2
    raw = json.loads(valid_state().to_json())
    raw["format"] = 1
    del raw["methods"]["oneshot"]
    state = RunState.load(write_state(tmp_path, raw), num_classes=3, n_pool=50)
    state.save(tmp_path / "state.json")
    assert json.loads((tmp_path / "state.json").read_text())["format"] == 2
    raw = json.loads(valid_state().to_json())
    raw["format"] = 1  # format 1 has no "selected" stage
    with pytest.raises(StateError, match=r"methods.oneshot\[1\].stage is 'selected'; expected one of \['labelled', 'done'\]"):
        RunState.load(write_state(tmp_path, raw))


def test_the_run_refuses_a_damaged_selection_and_answers_outside_the_classes(tmp_path, fickle, monkeypatch):
    monkeypatch.setattr(Fickle, "select", lambda self, r, labelled, k: (np.array([0, POOL]), {}))
    with pytest.raises(ValueError, match=r"method 'fickle', round 1: the selection holds rows outside the pool \[0, 300\)"):
        run(config(methods=["fickle"]), tmp_path / "a", echo=quiet, report=False)
    assert len(json.loads((tmp_path / "a" / "state.json").read_text())["methods"]["fickle"]) == 1  # nothing saved
    monkeypatch.setattr(Fickle, "select",
                        lambda self, r, labelled, k: (np.setdiff1d(np.arange(POOL), labelled)[:k], {"score": math.nan}))
    with pytest.raises(ValueError, match="plain JSON with finite numbers"):
        run(config(methods=["fickle"]), tmp_path / "b", echo=quiet, report=False)
    monkeypatch.setattr(SimulatedOracle, "query", lambda self, rows, tag: np.full(len(rows), 7))
    with pytest.raises(OracleError, match=r"batch random-round000: row \d+ has label 7, not a class number in \[0, 4\)"):
        run(config(), tmp_path / "c", echo=quiet, report=False)
    monkeypatch.setattr(SimulatedOracle, "query", lambda self, rows, tag: np.zeros(len(rows)) + 0.5)
    with pytest.raises(OracleError, match="expected 20 class numbers"):
        run(config(), tmp_path / "d", echo=quiet, report=False)


# -- the file oracle's answers -------------------------------------------------------------------------
CLASSES = ["cat", "dog", "eel"]


def oracle_with_batch(tmp_path, rows=(4, 8, 15)):
    oracle = FileOracle(tmp_path, CLASSES, describe=lambda i: f"item {i}")
    with pytest.raises(LabelsPending):
        oracle.query(np.array(rows), "b")
    return oracle, oracle.path("b")


@pytest.mark.parametrize("body, message", [
    ("index,item,label\n4,x,cat\n8,x,dog\n15,x,²\n", r"line 4: row 15 has label '²', which is neither"),
    ("index,item,label\n4,x,cat\n8,x,dog\n15,x,-1\n", r"line 4: row 15 has label '-1'"),
    ("index,item,label\n4,x,cat\n8,x,dog\n15,x,3\n", r"row 15 has label '3'"),
    ("index,item,label\n4,x,cat\n8,x,dog\n١٥,x,eel\n", r"line 4: index '١٥' is not a row number"),
    ("index,item,label\n4,x,cat\n8,x,dog\n15,x,eel\n8,x,cat\n", r"line 5: row 8 appears again, with label 'cat' after 'dog' on line 3"),
    ("index,item,label\n4,x,cat\n8,x,dog\n15,x,eel\n16,x,eel\n", r"line 5: row 16 is not part of this batch"),
    ("index,item,label\n4,x,cat\n8,x,dog\n", r"lacks rows \[15\]"),
    ("item,label\nx,cat\n", "header line naming the columns 'index' and 'label'"),
    ("", "header line"),
    ("index,item,label\n4,x,cat\n8,x,dog\n1_5,x,eel\n", r"index '1_5' is not a row number"),
])
def test_unusable_answers_name_the_file_line_row_and_value(tmp_path, body, message):
    oracle, path = oracle_with_batch(tmp_path)
    path.write_text(body, encoding="utf-8")
    with pytest.raises(OracleError, match=message) as info:
        oracle.query(np.array([4, 8, 15]), "b")
    assert type(info.value) is OracleError and str(path) in str(info.value)


def test_answers_from_a_spreadsheet_are_read(tmp_path):
    oracle, path = oracle_with_batch(tmp_path)
    # a BOM, upper-case headers, other column order, blank and repeated lines that agree
    path.write_text("\ufeffLabel,Index\n Dog ,4\n\n2,8\n2,8\nCAT,15\n", encoding="utf-8")
    assert oracle.query(np.array([4, 8, 15]), "b").tolist() == [1, 2, 0]
    path.write_text("index,item,label\n4,x,cat\n8,x,\n15,x,eel\n")
    with pytest.raises(LabelsPending):
        oracle.query(np.array([4, 8, 15]), "b")
    path.unlink()
    path.mkdir()
    with pytest.raises(OracleError, match="cannot read the answer file"):
        oracle.query(np.array([4, 8, 15]), "b")
    path.rmdir()
    path.write_bytes(b"index,label\n4,\xff\xfe\n")
    with pytest.raises(OracleError, match="cannot read the answer file"):
        oracle.query(np.array([4, 8, 15]), "b")
