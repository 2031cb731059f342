"""The ``prunefuse`` and ``svp-net`` methods in the loop: runs, fusion, resume, config errors."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from asvp_fast.loop import ConfigError, parse_config, run  # noqa: E402
from asvp_fast.loop.engine.runner import Runner  # noqa: E402
from asvp_fast.loop.methods import PruneFuseMethod, PruneFuseOptions  # noqa: E402
from asvp_fast.prunefuse import IndexMap, fuse  # noqa: E402


def quiet(*args, **kwargs):
    pass


def config(methods, case=None, **overrides):
    raw = {
        "seed": 1,
        "methods": methods,
        "data": case or {"case": "synthetic", "pool_size": 240, "test_size": 80},
        "schedule": {"initial": 16, "steps": [{"until": 48, "step": 16}]},
        "selection": {"strategy": "least_confidence"},
        "training": {"epochs": 2, "batch_size": 16, "head_lr": 0.05, "backbone_lr": 0.05},
    }
    raw.update(overrides)
    return parse_config(raw)


def outcome(state):
    return {name: [(r.new, r.accuracy) for r in m.rounds] for name, m in state.methods.items()}


class Crash(Exception):
    pass


PF = [{"method": "prunefuse", "name": "pf"}, {"method": "prunefuse", "name": "pf:v2", "version": 2, "tsync": 1},
      {"method": "prunefuse", "name": "pf:v2-t2", "version": 2, "tsync": 2, "kd": False,
       "strategy": "badge"}, {"method": "standard-continued", "name": "continued"}]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(config(PF), tmp_path_factory.mktemp("ref"), echo=quiet, report=False)


@pytest.mark.parametrize("crash_at", [5, 11])  # in V2 with tsync 2 (round 1); in V1 (round 1)
def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, crash_at, reference):
    cfg = config(PF)
    calls = {"n": 0}
    original = Runner._train_and_evaluate

    def crashing(self, method, r, *, last):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash("simulated crash")
        return original(self, method, r, last=last)

    monkeypatch.setattr(Runner, "_train_and_evaluate", crashing)
    with pytest.raises(Crash):
        run(cfg, tmp_path / "crash", echo=quiet, report=False)
    monkeypatch.setattr(Runner, "_train_and_evaluate", original)
    resumed = run(cfg, tmp_path / "crash", resume=True, echo=quiet, report=False)
    assert outcome(resumed) == outcome(reference)
    v2 = tmp_path / "crash" / "work" / "prunefuse-pf-v2"
    assert sorted(p.name for p in v2.glob("sync-r*.pt")) == ["sync-r000.pt", "sync-r001.pt", "sync-r002.pt"]
    assert sorted(p.name for p in (tmp_path / "crash" / "work" / "prunefuse-pf-v2-t2").glob("sync-r*.pt")) == \
        ["sync-r000.pt", "sync-r002.pt"]
    assert sorted(p.name for p in (tmp_path / "crash" / "work" / "continued-continued").glob("*.pt")) == \
        ["model-r000.pt", "model-r001.pt", "model-r002.pt"]
    info = [r.info for r in resumed.methods["pf:v2"].rounds]
    assert [i.get("base_round") for i in info] == [None, 0, 1]  # V2 selects with the network synced last round
    assert [i.get("base_round") for i in (r.info for r in resumed.methods["pf"].rounds)] == [None, -1, -1]


def test_the_target_model_is_the_dense_init_with_the_trained_selector_fused_in(tmp_path, monkeypatch):
    cfg = config([{"method": "prunefuse", "name": "pf", "selector_epochs": 2, "kd": False}],
                 training={"epochs": 0, "batch_size": 16})  # the target is not trained: it is the fusion itself
    seen = {}
    monkeypatch.setattr(PruneFuseMethod, "on_trained", lambda self, r, model: seen.update({r: (self, model)}))
    state = run(cfg, tmp_path / "run", echo=quiet, report=False)
    method, model = seen[2]
    base = method.base_at(-1)
    rows = state.method("pf").train_rows(3)
    selector, _, fresh = method.trained_selector(rows, base)
    assert not fresh  # the trainer's selector was saved and is found again
    expected = fuse(copy.deepcopy(method.dense_init()), selector, base.index_map)
    for key, t in model.state_dict().items():
        assert torch.equal(t, expected.state_dict()[key]), key
    assert IndexMap.load(tmp_path / "run" / "work" / "prunefuse-pf" / "index-map-init.json") == base.index_map
    no_fuse = run(config([{"method": "prunefuse", "name": "nf", "fuse": False}], training={"epochs": 0}),
                  tmp_path / "nf", echo=quiet, report=False)
    assert no_fuse.methods["nf"].rounds[-1].info["fused"] is False


def test_scratch_image_case_with_diversity_strategies_and_svp(tmp_path):
    case = {"case": "fashion-mnist-scratch", "pool_size": 160, "test_size": 60, "depth": 8, "width": 4}
    cfg = config([{"method": "prunefuse", "name": "pf:kcenter", "strategy": "coreset", "ratio": 0.7},
                  {"method": "svp-net", "name": "svp", "depth": 8, "width": 2}],
                 case=case, schedule={"initial": 16, "steps": [{"until": 32, "step": 16}]},
                 training={"epochs": 1, "batch_size": 16})
    state = run(cfg, tmp_path / "run", echo=quiet, report=False)
    for name in ("pf:kcenter", "svp"):
        last = state.methods[name].rounds[-1]
        assert len(last.new) == 16 and 0.0 <= last.accuracy <= 1.0
    info = state.methods["pf:kcenter"].rounds[1].info
    assert info["selector_params"] < 0.2 * info["dense_params"] and info["selector_flops"] < 0.2 * info["dense_flops"]
    assert state.methods["svp"].rounds[1].info["selector_params"] < info["dense_params"] / 3
    saved = json.loads((tmp_path / "run" / "state.json").read_text())
    assert saved["methods"]["pf:kcenter"][1]["info"]["ratio"] == 0.7


@pytest.mark.parametrize("options, field", [({"ratio": 0}, "ratio"), ({"ratio": 1}, "ratio"), ({"ratio": -0.5}, "ratio"),
                                            ({"version": 3}, "version"), ({"tsync": 0}, "tsync"),
                                            ({"kd_weight": 2}, "kd_weight")])
def test_bad_options_are_config_errors(options, field):
    with pytest.raises(ConfigError, match=rf"methods\[0\]\.{field}"):
        config([{"method": "prunefuse", **options}])
    with pytest.raises(ConfigError, match="unknown field 'rati' in .*did you mean 'ratio'"):
        config([{"method": "prunefuse", "rati": 0.5}])


@pytest.mark.parametrize("options, message", [({"ratio": 0.0}, "ratio must be > 0"), ({"ratio": 1.0}, "ratio must be below 1"),
                                              ({"ratio": -1.0}, "ratio must be a finite number >= 0"),
                                              ({"version": 3}, "version must be 1 or 2"), ({"tsync": 0}, "tsync must be >= 1")])
def test_bad_options_from_python_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PruneFuseOptions(**options)


def test_svp_net_names_the_backbone_it_needs(tmp_path):
    with pytest.raises(ValueError, match="needs a CIFAR-style ResNet target.*TinyMLPBackbone"):
        run(config(["random", {"method": "svp-net"}]), tmp_path / "run", echo=quiet, report=False)


def test_scratch_case_checks_its_network():
    with pytest.raises(ConfigError, match="data.depth"):
        config(["random"], case={"case": "fashion-mnist-scratch", "depth": 9})
    assert np.isclose(config(["random"], case={"case": "fashion-mnist-scratch", "width": 8}).data.width, 8)


def test_a_finished_runs_trainer_does_not_keep_its_models_alive(tmp_path, monkeypatch):
    import gc
    import weakref

    from asvp_fast.loop.models.trainers import make_trainer

    seen = []
    original = PruneFuseMethod.on_trained
    monkeypatch.setattr(PruneFuseMethod, "on_trained",
                        lambda self, r, model: (seen.append(weakref.ref(self)), original(self, r, model))[1])
    run(config([{"method": "prunefuse", "name": "gone"}], training={"epochs": 0}), tmp_path / "run", echo=quiet,
        report=False)
    gc.collect()
    assert seen and seen[0]() is None
    with pytest.raises(RuntimeError, match="belonged to a run that has ended"):
        make_trainer("prunefuse[gone]")


def test_batchnorm_recalibration_measures_the_networks_own_activations():
    from asvp_fast.loop.cases.scratch import fashion_mnist_scratch_case
    from asvp_fast.loop.models.classifier import Classifier
    from asvp_fast.loop.models.netfit import recalibrate_batchnorm
    from asvp_fast.loop.models.trainers import TrainConfig

    case = fashion_mnist_scratch_case(pool_size=40, test_size=10, depth=8, width=4)
    model = Classifier(case.make_backbone(), 10).eval()
    bn = model.backbone.bn1
    bn.running_mean.fill_(5.0)  # stale statistics, as after pruning a trained network
    rows = np.arange(0, 40, 2)
    recalibrate_batchnorm(model, case.pool, case.collate, TrainConfig(eval_batch_size=5), rows)  # equal batches: mean of means
    with torch.no_grad():
        x = torch.stack([case.pool[int(r)] for r in rows])
        pre = model.backbone.conv1((x.float() - 127.5) / 127.5)
    torch.testing.assert_close(bn.running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training
    cfg = config([{"method": "prunefuse", "bn_recalibration": 64}])
    assert dict(cfg.methods[0].options)["bn_recalibration"] == 64


def test_prunefuse_on_a_text_encoder_prunes_heads_and_feed_forward_units(tmp_path):
    pytest.importorskip("transformers")
    from test_cases import make_encoder, make_texts, write_rows

    encoder = make_encoder(tmp_path / "encoder")
    texts, labels = make_texts(120)
    write_rows(tmp_path / "tickets.csv", texts, labels)
    case = {"case": "text", "path": str(tmp_path / "tickets.csv"), "model": str(encoder), "test_size": 40,
            "max_length": 16}
    cfg = config([{"method": "prunefuse", "name": "pf", "kd": False}], case=case,
                 schedule={"initial": 10, "steps": [{"until": 30, "step": 10}]}, training={"epochs": 1, "batch_size": 8})
    state = run(cfg, tmp_path / "run", echo=quiet, report=False)
    rounds = state.methods["pf"].rounds
    assert [len(r.new) for r in rounds] == [10, 10, 10] and all(0.0 <= r.accuracy <= 1.0 for r in rounds)
    info = rounds[1].info
    # one layer 16 wide, 2 heads of 8, 32 FFN units: one head (8 rows of Q, K, V with their biases: 3 x 136;
    # 8 columns of the attention output: 128) and 16 units (16 rows + biases: 272; 16 output columns: 256)
    assert info["dense_params"] - info["selector_params"] == 3 * 136 + 128 + 272 + 256
