"""The active-learning loop on several processes, launched as users launch it:
``torchrun --standalone --nproc-per-node N -m asvp_fast run CONFIG -o DIR`` (gloo on the CPU).

A 2-rank run equals the 1-process run of the same config (the same rows bought in every round of
every method, the same accuracies); a run paused for labels resumes with another number of ranks
and ends as the 1-process run; a rank that fails stops every rank with a clear error, no hang;
methods that do not run on shards are refused before any work.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from asvp_fast.loop import run  # noqa: E402
from asvp_fast.loop.cases.builtin import synthetic_case  # noqa: E402
from asvp_fast.loop.engine.config import load_config  # noqa: E402

# every strategy family the loop shards exactly: uncertainty (margin), k-center (coreset), BADGE;
# the proxy (SVPp), the target model (standard AL) and ASVP with a forced feature refresh
# (data-parallel fine-tuning + a sharded re-extraction)
ALL_METHODS = """["random", "svpp", { method = "svpp", name = "svpp-badge", strategy = "badge" },
           { method = "svpp", name = "svpp-coreset", strategy = "coreset" },
           { method = "svpp", name = "svpp-typiclust", strategy = "typiclust" }, "standard", "asvp", "activeft-pre"]"""
CONFIG = """seed = 5
methods = {methods}
[data]
case = "synthetic"
pool_size = 601
test_size = 203
[schedule]
initial = 40
steps = [{{ until = 120, step = 40 }}]
[training]
epochs = 2
batch_size = 16
lp_epochs = 2
[proxy]
epochs = 8
batch_size = 32
[asvp]
force_refresh_round = 1
[oracle]
kind = "{oracle}"
"""


def _config(path: Path, *, oracle: str = "simulated", methods: str = ALL_METHODS) -> Path:
    path.write_text(CONFIG.format(oracle=oracle, methods=methods))
    return path


def _torchrun(ranks: int, config: Path, out: Path, *extra: str, env: "dict | None" = None,
              launcher: "tuple[str, ...]" = ()) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node RANKS -m asvp_fast run CONFIG -o OUT`` (one
    thread per rank, as torchrun sets by default; a 120 s group timeout). It runs in the config's
    folder, so the installed asvp_fast is imported (``-m`` would put a checkout in the working
    directory first), through whatever PYTHONPATH the tests run with."""
    environment = {**os.environ, "ASVP_DIST_TIMEOUT_S": "120", "OMP_NUM_THREADS": "1", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", *launcher,
               "-m", "asvp_fast", "run", str(config), "-o", str(out), "--no-progress", *extra]
    for _attempt in range(3):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600, cwd=config.parent)
        # the launcher's free port taken by another process between its choice and its bind: launch again
        if done.returncode == 0 or "Address already in use" not in done.stderr:
            return done
    return done


def _outcome(state_path: Path):
    """Per method and round: the rows bought, the label count, the accuracy (6 decimals), the
    stage; and every label."""
    state = json.loads(state_path.read_text())
    rounds = {name: [(r["round"], r["n_labels"], r["new"], round(r["accuracy"], 6) if r.get("accuracy") is not None
                      else None, r["stage"]) for r in rs] for name, rs in state["methods"].items()}
    return rounds, state["labels"]


def _run_one_process(config: Path, out: Path) -> None:
    """The reference: ``config`` on this process, with the ranks' one thread (the same float
    summation order in BLAS), the caller's thread count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(load_config(config), out, echo=lambda *a, **k: None, report=False)
    finally:
        torch.set_num_threads(before)


def _hook_env(tmp_path: Path, source: str) -> dict:
    """A ``sitecustomize`` module with ``source`` that every rank imports at start (how a test
    registers plugins or injects a failure in the ranks), as the environment to launch with."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(source)
    paths = [str(hook)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: the same config on one process (in this interpreter, one thread)."""
    path = _config(tmp_path_factory.mktemp("one") / "run.toml")
    _run_one_process(path, path.parent / "out")
    return _outcome(path.parent / "out" / "state.json")


def test_two_ranks_buy_the_rows_one_process_buys(one_process, tmp_path):
    config = _config(tmp_path / "run.toml")
    done = _torchrun(2, config, tmp_path / "out")
    assert done.returncode == 0, done.stderr[-4000:]
    rounds, labels = _outcome(tmp_path / "out" / "state.json")
    assert labels == one_process[1]
    assert rounds == one_process[0]
    # one sharded cache, written by both ranks, read back whole; the report by rank 0 only
    whole = json.loads((tmp_path / "out" / "cache" / "pool.v0.shards.json").read_text())
    assert whole["bounds"] == [0, 300, 601] and whole["n"] == 601
    assert (tmp_path / "out" / "results.md").exists()
    assert done.stdout.count("run directory:") == 1


def _answer(pending: Path, truth) -> None:
    rows = list(csv.DictReader(io.StringIO(pending.read_text())))
    with pending.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "item", "label"])
        for r in rows:
            w.writerow([r["index"], r["item"], int(truth.pool_labels[int(r["index"])])])


def test_a_paused_run_resumes_with_another_number_of_ranks(one_process, tmp_path):
    """The file oracle pauses the run at every batch; each resume uses another rank count
    (2, 1, 3, 2, ...) and the finished run equals the 1-process run with simulated labels."""
    config = _config(tmp_path / "run.toml", oracle="file", methods='["svpp", "asvp"]')
    truth = synthetic_case(pool_size=601, test_size=203, seed=0)
    out = tmp_path / "out"
    ranks = [2, 1, 3]
    for attempt in range(12):
        extra = ("--resume",) if (out / "state.json").exists() else ()
        done = _torchrun(ranks[attempt % 3], config, out, *extra)
        if done.returncode == 0:
            break
        assert done.returncode != 0 and "items to label were written to" in done.stderr, done.stderr[-4000:]
        for pending in (out / "labels").glob("*.csv"):
            if list(csv.DictReader(io.StringIO(pending.read_text())))[0]["label"] == "":
                _answer(pending, truth)
    else:
        pytest.fail("the run did not finish")
    rounds, labels = _outcome(out / "state.json")
    assert rounds == {name: one_process[0][name] for name in ("svpp", "asvp")}


def test_a_failing_rank_stops_every_rank_with_a_clear_error(tmp_path):
    """Rank 1 fails inside its proxy training (an unreadable feature row, simulated); rank 0
    must not hang in the next collective but stop with an error naming the stage."""
    config = _config(tmp_path / "run.toml", methods='["svpp"]')
    failure = ("import os\n"
               "if os.environ.get('RANK') == '1':\n"
               "    import asvp_fast.loop.models.proxy as proxy\n"
               "    def broken(*args, **kwargs):\n"
               "        raise OSError('simulated: a feature shard cannot be read on rank 1')\n"
               "    proxy.train_proxy = broken\n"
               "    import asvp_fast.loop.selection.selectors as selectors\n"
               "    selectors.train_proxy = broken\n")
    # torchrun checks its workers every 10 s here, so it does not stop rank 0 before rank 0 has
    # met the failure itself (it would, within its default 0.1 s, once rank 1 exits)
    done = _torchrun(2, config, tmp_path / "out", env={**_hook_env(tmp_path, failure), "ASVP_DIST_TIMEOUT_S": "60"},
                     launcher=("--monitor-interval=10",))
    assert done.returncode != 0
    assert "simulated: a feature shard cannot be read on rank 1" in done.stderr
    # rank 0 did not hang: it stopped at its next collective, naming the stage
    assert "DistributedRunError: rank 0 of 2: method 'svpp', selection of round 1 stopped because another rank" \
        in done.stderr
    # the state on disk is intact: round 0 bought and trained, round 1 not selected
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert [r["stage"] for r in state["methods"]["svpp"]] == ["done"]


PLUGIN_HOOK = """from asvp_fast.loop import register_method
from asvp_fast.loop.methods.random import RandomMethod
from asvp_fast.loop.models.trainers import FineTune, register_trainer


class Mine(RandomMethod):
    distributed = False  # a user's method that has not declared it runs on shards


class MyTrainer(FineTune):
    data_parallel = False  # a user's trainer that has not declared it trains data-parallel


register_method("mine", Mine)
register_trainer("my-ft", MyTrainer)
"""


@pytest.mark.parametrize("methods, words", [
    ('["mine"]', "method 'mine' does not run under torchrun"),
    ('[{ method = "random", training = "my-ft" }]', "trains with 'my-ft', which does not train data-parallel yet"),
])
def test_methods_and_trainers_that_do_not_declare_it_are_refused_before_any_work(tmp_path, methods, words):
    """A user's method or trainer must declare that it runs distributed (``Method.distributed``,
    ``Trainer.data_parallel``); otherwise a torchrun run stops before any work, naming it."""
    config = _config(tmp_path / "run.toml", methods=methods)
    done = _torchrun(2, config, tmp_path / "out", env=_hook_env(tmp_path, PLUGIN_HOOK))
    assert done.returncode != 0  # torchrun's own code for a failed worker (the workers exit with 2)
    assert "exitcode  : 2" in done.stderr
    assert words in done.stderr
    assert not (tmp_path / "out" / "state.json").exists()


def test_replicated_training_is_bit_identical_to_one_process_at_any_size(tmp_path):
    """``[distributed] proxy = target = "replicated"``: every rank trains the whole model as one
    process does, so even where data-parallel rounding makes standard AL diverge (20,000 rows,
    bench/RESULTS.md) every round of every method equals the 1-process run."""
    config = tmp_path / "big.toml"
    config.write_text('''seed = 0
methods = ["svpp", { method = "svpp", name = "svpp-coreset", strategy = "coreset" }, "standard"]
[data]
case = "synthetic"
pool_size = 20000
test_size = 2000
in_dim = 64
feature_dim = 64
num_classes = 10
[schedule]
initial = 200
steps = [{ until = 600, step = 200 }]
[training]
epochs = 3
batch_size = 64
[proxy]
epochs = 20
batch_size = 256
[distributed]
proxy = "replicated"
target = "replicated"
''')
    _run_one_process(config, tmp_path / "one")
    done = _torchrun(2, config, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert _outcome(tmp_path / "two" / "state.json") == _outcome(tmp_path / "one" / "state.json")


@pytest.mark.cuda
def test_two_gpus_run_the_loop_with_nccl(tmp_path):
    """The NCCL path: ``torchrun`` on 2 GPUs (each rank on its LOCAL_RANK's device, NCCL beside
    gloo picked because CUDA is available) buys the rows a 1-GPU run buys, with replicated training (bit for
    bit one process's model, so only the sharded selection differs from the 1-GPU run)."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs at least 2 CUDA devices")
    config = _config(tmp_path / "gpu.toml", methods='["svpp", { method = "svpp", name = "svpp-badge", strategy = "badge" }]')
    config.write_text(config.read_text() + '[distributed]\nproxy = "replicated"\ntarget = "replicated"\n')
    one = subprocess.run([sys.executable, "-m", "asvp_fast", "run", str(config), "-o", str(tmp_path / "one"),
                          "--no-progress"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-4000:]
    two = _torchrun(2, config, tmp_path / "two")
    assert two.returncode == 0, two.stderr[-4000:]
    assert _outcome(tmp_path / "two" / "state.json") == _outcome(tmp_path / "one" / "state.json")


PRUNEFUSE = """seed = 1
methods = [{ method = "prunefuse", name = "pf", strategy = "coreset", ratio = 0.5 },
           { method = "prunefuse", name = "pf-v2", version = 2, tsync = 1, strategy = "margin" },
           { method = "svp-net", name = "svp", depth = 8, width = 2 }, "standard-continued"]
[data]
case = "fashion-mnist-scratch"
pool_size = 160
test_size = 60
depth = 8
width = 4
[schedule]
initial = 16
steps = [{ until = 48, step = 16 }]
[selection]
strategy = "least_confidence"
[training]
epochs = 1
batch_size = 16
head_lr = 0.05
backbone_lr = 0.05
[distributed]
proxy = "replicated"
target = "replicated"
"""


def test_prunefuse_and_svp_net_run_on_two_ranks_as_on_one(tmp_path):
    """PruneFuse V1 and V2 (a pruned selector trained, saved by rank 0, fused back), SVP with a
    small network and the continued-training baseline under torchrun: with replicated training
    every round equals the 1-process run; every saved network is written once."""
    config = tmp_path / "pf.toml"
    config.write_text(PRUNEFUSE)
    _run_one_process(config, tmp_path / "one")
    done = _torchrun(2, config, tmp_path / "two")
    assert done.returncode == 0, done.stderr[-4000:]
    assert _outcome(tmp_path / "two" / "state.json") == _outcome(tmp_path / "one" / "state.json")
    saved = sorted(p.name for p in (tmp_path / "two" / "work" / "prunefuse-pf-v2").iterdir())
    assert saved == sorted(p.name for p in (tmp_path / "one" / "work" / "prunefuse-pf-v2").iterdir())
    assert not any(name.endswith(".tmp") for name in saved)


TEACHER_HOOK = """from asvp_fast.loop.models.backbones import TinyMLPBackbone
from asvp_fast.loop.models.teachers import register_teacher
register_teacher("mlp-a", lambda: TinyMLPBackbone(16, 6, seed=11))
register_teacher("mlp-b", lambda: TinyMLPBackbone(16, 5, seed=12))
"""


@pytest.mark.parametrize("training", ["ddp", "replicated"])
def test_aft_and_kd_run_under_torchrun(tmp_path, training):
    """The AFT and KD trainers under torchrun: each rank extracts its shard of every teacher's
    features; data-parallel, each rank gathers the global batch's φ and teacher rows so AFT's
    kernels span the global batch as on one process. Both settings equal the 1-process run here
    (replicated: bit for bit by construction), and a one-process run reads the sharded teachers."""
    from asvp_fast.loop.models.teachers import TEACHERS

    env = _hook_env(tmp_path, TEACHER_HOOK)  # the teachers, registered in every rank
    exec(TEACHER_HOOK, {})  # ... and here, for the 1-process run
    try:
        config = _config(tmp_path / "aft.toml", methods='[{ method = "random", training = "aft" }, '
                                                         '{ method = "svpp", training = "kd" }]')
        text = config.read_text().replace("[training]\n", '[training]\nteachers = ["mlp-a", "mlp-b"]\nbeta = 2.0\n')
        config.write_text(text + f'[distributed]\ntarget = "{training}"\n')
        _run_one_process(config, tmp_path / "one")
        done = _torchrun(2, config, tmp_path / "two", env=env)
        assert done.returncode == 0, done.stderr[-4000:]
        assert _outcome(tmp_path / "two" / "state.json") == _outcome(tmp_path / "one" / "state.json")
        teachers = tmp_path / "two" / "cache" / "teachers"
        assert sorted(p.name for p in teachers.iterdir()) == ["mlp-a", "mlp-b"]
        assert (teachers / "mlp-a" / "pool.v0.shards.json").exists()  # extracted by shards
        # a one-process run sharing that teachers' cache reads the shards as they are
        config.write_text(config.read_text().replace("[cache]\n", "") + f"[cache]\nteachers_dir = '{teachers}'\n")
        _run_one_process(config, tmp_path / "three")
        assert not list((teachers / "mlp-a").glob("pool.v0.manifest.json"))
        assert _outcome(tmp_path / "three" / "state.json") == _outcome(tmp_path / "one" / "state.json")
    finally:
        TEACHERS.pop("mlp-a", None)
        TEACHERS.pop("mlp-b", None)
