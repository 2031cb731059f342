"""Run configs are untrusted input: every mistake is a ConfigError that names its field (dotted
path) and the file, raised before a run directory exists; the resume digest holds only fields
that change results."""

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pydantic")
hypothesis = pytest.importorskip("hypothesis")
yaml = pytest.importorskip("yaml")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from asvp_fast import cli  # noqa: E402
from asvp_fast.loop import ConfigError, load_config, parse_config, run  # noqa: E402
from asvp_fast.loop.engine.config import MAX_ROUNDS, ScheduleConfig, check_budget  # noqa: E402
from asvp_fast.loop.engine.state import StateError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

BASE = """\
seed = 1
methods = ["random", {method = "asvp", name = "asvp:x"}]

[data]
case = "synthetic"
pool_size = 200
test_size = 80

[schedule]
initial = 20
steps = [{until = 40, step = 20}]

[proxy]
epochs = 5

[training]
epochs = 1
batch_size = 32
"""


def quiet(*_args, **_kwargs):
    pass


def with_table(table: str, lines: str, base: str = BASE) -> str:
    """BASE with each ``key = value`` of ``lines`` set in ``[table]`` ("" the top level): an existing
    key's line is replaced, a new one added (the table is created when BASE has none)."""
    out = base.splitlines()
    for line in lines.splitlines():
        key = line.split("=", 1)[0].strip()
        start = 0 if table == "" else next((i + 1 for i, x in enumerate(out) if x == f"[{table}]"), None)
        if start is None:
            out += ["", f"[{table}]"]
            start = len(out)
        end = next((i for i in range(start, len(out)) if out[i].startswith("[")), len(out))
        hit = next((i for i in range(start, end) if out[i].split("=", 1)[0].strip() == key), None)
        if hit is not None:
            out[hit] = line
        else:
            out.insert(start, line)
    return "\n".join(out) + "\n"


def cli_run(path: Path, out: Path, capsys) -> tuple:
    rc = cli.main(["run", str(path), "-o", str(out), "--no-progress"])
    captured = capsys.readouterr()
    return rc, captured.err


# -- every class of mistake: the field named, the file named, no run directory -----------------------
MISTAKES = [
    # wrong types
    ("data", 'pool_size = "4000"', "data.pool_size must be an integer, got '4000' (a quoted string"),
    ("data", "seed = true", "data.seed must be an integer, got true"),
    ("proxy", 'lr = "fast"', "proxy.lr must be a number, got 'fast'"),
    ("asvp", 'force_refresh_round = "2"', "asvp.force_refresh_round must be an integer, got '2'"),
    ("training", "amp = 1", "training.amp must be true or false, got 1"),
    ("training", 'frozen = "model.embeddings"', "training.frozen must be a list"),
    ("training", "frozen = [1]", "training.frozen[0] must be a string, got 1"),
    ("", "seed = 1.5", "seed must be an integer, got 1.5"),
    ("schedule", "steps = [{until = 40, step = 20}, {until = \"80\", step = 20}]", "schedule.steps[1].until must be an integer"),
    ("", 'methods = ["random", {method = "asvp", refresh = "no"}]', "methods[1].refresh must be true or false, got 'no'"),
    # out of range
    ("proxy", "lr = inf", "proxy.lr must be a finite number, got inf"),
    ("proxy", "lr = nan", "proxy.lr must be a finite number"),
    ("proxy", "lr = 1" + "0" * 400, "proxy.lr must be a finite number, got an integer of"),
    ("proxy", "lr = 0", "proxy.lr must be > 0"),
    ("proxy", "momentum = 1.0", "proxy.momentum must be < 1"),
    ("proxy", "batch_size = 1", "proxy.batch_size must be ≥ 2"),
    ("proxy", "hidden = 0", "proxy.hidden must be ≥ 1"),
    ("training", "weight_decay = -0.1", "training.weight_decay must be ≥ 0"),
    ("training", "momentum = -0.5", "training.momentum must be ≥ 0"),
    ("training", "eval_batch_size = 0", "training.eval_batch_size must be ≥ 1"),
    ("training", "lp_lr = -1", "training.lp_lr must be > 0"),
    ("training", "epochs = -1", "training.epochs must be ≥ 0"),
    ("training", 'device = "tpu"', "training.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got 'tpu'"),
    ("cache", 'device = "gpu"', "cache.device must be"),
    ("cache", 'dtype = "int8"', "cache.dtype: unknown cache dtype 'int8'"),
    ("asvp", "threshold = nan", "asvp.threshold must be a finite number"),
    ("asvp", "force_refresh_round = 9", "asvp.force_refresh_round = 9 never comes"),
    ("costs", "label_price = -0.01", "costs.label_price must be ≥ 0"),
    ("oracle", 'kind = "crowd"', "oracle.kind: unknown oracle kind 'crowd'"),
    ("selection", 'strategy = "marginn"', "selection.strategy: unknown strategy 'marginn' (did you mean 'margin'?)"),
    ("data", "pool_size = 0", "data.pool_size must be ≥ 1"),
    ("", "seed = -1", "seed must be ≥ 0"),
    ("schedule", "initial = 50", "schedule.steps[0].until (40) must be larger than the labels before it (50)"),
    # unknown fields, with a suggestion
    ("proxy", "lr_rate = 0.1", "unknown field 'lr_rate' in [proxy]; did you mean 'lr'?"),
    ("data", "pool_sise = 10", "unknown field 'pool_sise' in [data]; did you mean 'pool_size'?"),
    ("", "sed = 3", "unknown field 'sed' in the top level; did you mean 'seed'?"),
    ("", 'methods = [{method = "asvp", refesh = false}]', "unknown field 'refesh' in [methods[0]]; did you mean 'refresh'?"),
    ("schedule", "steps = [{until = 40, stop = 20}]", "unknown field 'stop' in [schedule.steps[0]]; did you mean 'step'?"),
    ("", 'methods = ["svp"]', "methods[0]: unknown method 'svp' (did you mean 'svpp'?)"),
    # absurd schedules: refused arithmetically, nothing is allocated
    ("schedule", "initial = 1\nsteps = [{until = 1000000000000000, step = 1}]", "rounds; at most 100000 are allowed"),
    ("evaluation", "random_extra_rounds = 1000000000000", "evaluation.random_extra_rounds must be ≤ 100000"),
    ("evaluation", "random_extra_rounds = 99999", "evaluation.random_extra_rounds: 99999 extra rounds make"),
]


@pytest.mark.parametrize("table, lines, message", MISTAKES, ids=[m[2][:40] for m in MISTAKES])
def test_each_mistake_names_its_field_before_any_work(tmp_path, capsys, table, lines, message):
    text = with_table(table, lines)
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)  # the file is named
    out = tmp_path / "run"
    rc, stderr = cli_run(path, out, capsys)
    assert rc == 2 and message in stderr
    assert not out.exists()


def test_all_problems_are_reported_at_once():
    raw = {"data": {"case": "synthetic", "pool_size": "10"}, "proxy": {"lr": -1, "hiden": 3}, "cache": {"device": "tpu"}}
    with pytest.raises(ConfigError) as err:
        parse_config(raw)
    text = str(err.value)
    assert text.startswith("4 problems in the config:")
    for part in ("data.pool_size", "proxy.lr", "unknown field 'hiden' in [proxy]; did you mean 'hidden'?", "cache.device"):
        assert part in text


def test_a_valid_base_config_runs_so_the_mistakes_above_are_the_only_cause(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(BASE, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.data.case == "synthetic" and cfg.data.pool_size == 200 and cfg.data.fields.test_size == 80


# -- [data]: the registered case's fields ------------------------------------------------------------
def test_data_is_checked_against_the_cases_fields(tmp_path):
    # no [data] table: the case comes in code (run(..., case=)); naming none there is the error
    assert parse_config({}).data.case == ""
    with pytest.raises(ConfigError, match="no \\[data\\] table: name the data there"):
        run(parse_config({"methods": ["random"]}), tmp_path / "no-data", echo=lambda *a, **k: None)
    assert not (tmp_path / "no-data").exists()
    with pytest.raises(ConfigError, match="data.case is required"):
        parse_config({"data": {"pool_size": 3}})
    with pytest.raises(ConfigError, match="data.case: unknown case 'synthetc' \\(did you mean 'synthetic'\\?\\)"):
        parse_config({"data": {"case": "synthetc"}})
    with pytest.raises(ConfigError) as err:
        parse_config({"data": {"case": "imagefolder"}})
    assert "data.train_dir is required for data.case = 'imagefolder'" in str(err.value)
    assert "data.test_dir is required" in str(err.value)
    with pytest.raises(ConfigError, match="data.image_size must be an integer"):
        parse_config({"data": {"case": "imagefolder", "train_dir": ".", "test_dir": ".", "image_size": 2.5}})


def test_paths_must_exist_relative_to_the_config(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    (tmp_path / "weights.pth").write_bytes(b"x")
    table = 'case = "imagefolder"\ntrain_dir = "train"\ntest_dir = "test"\n'
    path = tmp_path / "c.toml"
    path.write_text(f'methods = ["random"]\n[data]\n{table}checkpoint = "weights.pth"\n', encoding="utf-8")
    cfg = load_config(path)
    assert cfg.data.train_dir == "train" and cfg.path(cfg.data.checkpoint) == tmp_path / "weights.pth"
    cases = [("train_dir", '"nowhere"', "data.train_dir: " + str(tmp_path / "nowhere") + " is not a directory"),
             ("checkpoint", '"train"', "data.checkpoint: " + str(tmp_path / "train") + " is not a file"),
             ("checkpoint", '""', "data.checkpoint must name a file or directory")]
    for key, value, message in cases:
        text = f'methods = ["random"]\n[data]\n{table}'
        text = text.replace(f'{key} = "train"', f"{key} = {value}") if key == "train_dir" else text + f"{key} = {value}\n"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert message in str(err.value)
        out = tmp_path / "out"
        assert cli.main(["run", str(path), "-o", str(out)]) == 2 and not out.exists()


def test_the_shipped_configs_load_and_imagenet_and_cifar10_fail_only_on_their_paths():
    configs = sorted((REPO / "asvp_fast" / "configs").glob("*.toml")) + sorted((REPO / "bench").glob("*.toml"))
    assert len(configs) >= 5
    for path in configs:
        if path.name in ("imagenet_resnet50.toml", "cifar10_prunefuse.toml"):  # data the user provides
            with pytest.raises(ConfigError) as err:
                load_config(path)
            lines = str(err.value).splitlines()[1:]
            assert lines and all(line.strip().startswith(("data.train_dir:", "data.test_dir:", "data.checkpoint:"))
                                 for line in lines), str(err.value)
        else:
            cfg = load_config(path)
            assert cfg.schedule.n_rounds() == len(cfg.schedule.budgets())


def test_a_case_registered_in_python_is_validated_like_the_built_ins(tmp_path):
    from typing import List, Optional

    from asvp_fast.loop.cases.registry import CASES, register_case

    @dataclasses.dataclass(frozen=True)
    class MyFields:
        table: str
        columns: List[str] = dataclasses.field(default_factory=list)
        model: str = dataclasses.field(default="tiny", metadata={"path": "exists", "names": ("tiny",)})
        rate: float = dataclasses.field(default=0.5, metadata={"gt": 0, "lt": 1})
        worker_device: str = "cpu"
        limit: Optional[int] = None

    register_case("mine", MyFields, lambda f, base: None)  # type: ignore[arg-type,return-value]
    try:
        (tmp_path / "t.csv").write_text("a\n")
        cfg = parse_config({"data": {"case": "mine", "table": "t.csv", "columns": ["a"]}}, base_dir=str(tmp_path))
        assert cfg.data.fields == MyFields("t.csv", ["a"])
        assert "worker_device" not in cfg.digest_dict()["data"] and "rate" in cfg.digest_dict()["data"]
        for table, message in [
            ({}, "data.table is required for data.case = 'mine'"),
            ({"table": "t.csv", "model": "big"}, "data.model: " + str(tmp_path / "big") + " does not exist"),
            ({"table": "t.csv", "rate": 1}, "data.rate must be < 1"),
            ({"table": "t.csv", "worker_device": "tpu"}, "data.worker_device must be"),
            ({"table": "t.csv", "columns": ["a", 2]}, "data.columns[1] must be a string"),
            ({"table": "t.csv", "limit": "7"}, "data.limit must be an integer, got '7'"),
            ({"table": "t.csv", "colums": []}, "did you mean 'columns'?"),
        ]:
            with pytest.raises(ConfigError) as err:
                parse_config({"data": {"case": "mine", **table}}, base_dir=str(tmp_path))
            assert message in str(err.value)
    finally:
        CASES.pop("mine", None)


# -- files are untrusted ------------------------------------------------------------------------------
def _damaged(tmp_path: Path):
    valid = BASE.encode()
    yield "truncated TOML", "c.toml", valid[: valid.index(b"test_size") + 6], "is not valid TOML"
    yield "binary garbage", "c.toml", bytes(range(128, 256)) * 3, "is not UTF-8 text"
    yield "NUL bytes", "c.toml", b"seed = 1\x00\x00\n", "is not valid TOML"
    yield "deep TOML", "c.toml", b"a = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"
    yield "deep but parsable", "c.toml", b"a = " + b"[" * 60 + b"]" * 60, "nested more than 32 levels"
    yield "deep YAML", "c.yaml", b"data: " + b"[" * 5000 + b"]" * 5000, "nested too deeply"
    yield "YAML list", "c.yaml", b"- a\n- b\n", "must hold a mapping of tables"
    yield "empty YAML", "c.yaml", b"", "is empty"
    yield "YAML self-reference", "c.yaml", b"data: &a [*a]\n", "nested more than 32 levels"
    yield "YAML bad date", "c.yaml", b"seed: 2001-13-45\ndata: {case: synthetic}\n", "is not valid YAML"
    yield "YAML int key", "c.yaml", b"1: x\ndata: {case: synthetic}\n", "has a key 1 that is not a string"
    yield "YAML 1e3", "c.yaml", b"data: {case: synthetic, pool_size: 1e3}\n", "YAML 1.1 reads 1e3 as a string; write 1000"
    yield "a 5000-digit integer", "c.toml", b"seed = 1" + b"0" * 5000 + b"\n", "is not valid TOML"
    yield "wrong suffix", "c.json", b"{}", "must end in .toml, .yaml or .yml"


@pytest.mark.parametrize("label", [d[0] for d in _damaged(Path("."))])
def test_damaged_files_are_config_errors_naming_the_file(tmp_path, capsys, label):
    _, name, data, message = next(d for d in _damaged(tmp_path) if d[0] == label)
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value) and str(path) in str(err.value)
    out = tmp_path / "run"
    rc, stderr = cli_run(path, out, capsys)
    assert rc == 2 and message in stderr and not out.exists()


def test_a_directory_and_a_missing_file_are_config_errors(tmp_path, capsys):
    (tmp_path / "d.toml").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path / "d.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    rc, stderr = cli_run(tmp_path / "d.toml", tmp_path / "run", capsys)
    assert rc == 2 and "is a directory" in stderr and not (tmp_path / "run").exists()


# -- schedules and budgets: arithmetic, never allocation ---------------------------------------------
def test_schedule_rounds_and_final_budget_are_computed_without_the_list():
    sched = ScheduleConfig(initial=100, steps=((350, 100), (1000, 200)))
    budgets = sched.budgets(3)
    assert budgets == [100, 200, 300, 350, 550, 750, 950, 1000, 1200, 1400, 1600]
    assert sched.n_rounds(3) == len(budgets) and sched.final_budget(3) == budgets[-1]
    assert sched.final_budget() == sched.budgets()[-1] == 1000
    huge = ScheduleConfig(initial=1, steps=((10**15, 1),))
    assert huge.n_rounds() == 10**15  # counted, not built
    with pytest.raises(ConfigError, match="at most 100000"):
        huge.budgets()


def test_check_budget_against_the_pool_is_arithmetic(tmp_path):
    cfg = parse_config({"methods": ["random"], "data": {"case": "synthetic", "pool_size": 200, "test_size": 80},
                        "schedule": {"initial": 20, "steps": [{"until": 10**15, "step": 10**14}]}})
    with pytest.raises(ConfigError, match="pool has only 200"):
        check_budget(cfg, 200)
    with pytest.raises(ConfigError, match="pool has only 200"):
        run(cfg, tmp_path / "r", echo=quiet)
    assert not (tmp_path / "r").exists()
    extra = parse_config({"methods": ["random"], "data": {"case": "synthetic"}, "evaluation": {"random_extra_rounds": MAX_ROUNDS - 2},
                          "schedule": {"initial": 20, "steps": [{"until": 40, "step": 20}]}})
    with pytest.raises(ConfigError, match="evaluation.random_extra_rounds"):
        check_budget(extra, 600)


def test_cli_budget_error_leaves_no_run_directory(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(BASE.replace("until = 40", "until = 400"), encoding="utf-8")
    rc, stderr = cli_run(path, tmp_path / "run", capsys)
    assert rc == 2 and "pool has only" in stderr
    assert not (tmp_path / "run").exists()


# -- the resume digest ---------------------------------------------------------------------------------
def test_the_digest_leaves_out_machine_fields_only():
    cfg = parse_config({"data": {"case": "synthetic"}, "methods": ["random", {"method": "asvp", "refresh": False}]})
    digest = cfg.digest_dict()
    full = cfg.to_dict()
    assert json.loads(json.dumps(full)) != digest
    for table, name in [("training", "device"), ("training", "num_workers"), ("training", "eval_batch_size"),
                        ("proxy", "device"), ("proxy", "inference_batch_size"), ("cache", "device"),
                        ("cache", "num_workers")]:
        assert name in full[table] and name not in digest[table], (table, name)
    for table, name in [("cache", "batch_size"), ("cache", "dtype"), ("training", "head_lr"), ("training", "amp"),
                        ("proxy", "lr"), ("proxy", "batch_size"), ("data", "pool_size"), ("data", "case")]:
        assert name in digest[table], (table, name)
    assert digest["methods"][1] == {"method": "asvp", "name": "asvp", "training": None, "options": {"refresh": False}}
    assert digest["seed"] == 0 and digest["schedule"] == {"initial": 100, "steps": [[2000, 200]]}


def test_resume_accepts_another_device_and_refuses_another_learning_rate(tmp_path):
    raw = {"seed": 0, "methods": ["random"], "data": {"case": "synthetic", "pool_size": 200, "test_size": 80},
           "schedule": {"initial": 20, "steps": [{"until": 40, "step": 20}]}, "training": {"epochs": 1, "batch_size": 32}}
    first = run(parse_config(raw), tmp_path / "r", echo=quiet, report=False)
    moved = {**raw, "training": {**raw["training"], "device": "cpu", "num_workers": 0, "eval_batch_size": 64},
             "proxy": {"inference_batch_size": 128}, "cache": {"num_workers": 0, "device": "cpu"}}
    again = run(parse_config(moved), tmp_path / "r", resume=True, echo=quiet, report=False)
    assert [r.accuracy for r in again.methods["random"].rounds] == [r.accuracy for r in first.methods["random"].rounds]
    changed = {**raw, "training": {**raw["training"], "head_lr": 0.05}}
    with pytest.raises(StateError, match="training.head_lr"):
        run(parse_config(changed), tmp_path / "r", resume=True, echo=quiet, report=False)


def test_replace_keeps_working_on_a_checked_config():
    cfg = parse_config({"data": {"case": "synthetic"}, "seed": 4})
    other = dataclasses.replace(cfg, seed=5)
    assert other.seed == 5 and other.data == cfg.data and other.digest_dict()["seed"] == 5


# -- fuzzing: only ConfigError may come out ----------------------------------------------------------
VALID = {"seed": 1, "methods": ["random", {"method": "asvp", "name": "a", "refresh": False}],
         "data": {"case": "synthetic", "pool_size": 200, "test_size": 80},
         "schedule": {"initial": 20, "steps": [{"until": 40, "step": 20}, {"until": 100, "step": 30}]},
         "proxy": {"epochs": 5, "lr": 0.01, "hidden": 8}, "training": {"epochs": 1, "frozen": ["a"], "device": "cpu"},
         "cache": {"dtype": "float32"}, "asvp": {"threshold": 0.5, "force_refresh_round": 1},
         "evaluation": {"random_extra_rounds": 2}, "oracle": {"kind": "file"}, "costs": {"reviews": 2}}

scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats()
           | st.text(max_size=8) | st.sampled_from(["auto", "cuda:x", "1e3", "4000", "synthetic", "random", "asvp", "inf"]))
keys = st.sampled_from(sorted({k for v in VALID.values() if isinstance(v, dict) for k in v} | set(VALID))) | st.text(max_size=6)
anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                        max_leaves=20)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


def _replace(value, path, new):
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _outcome(call):
    try:
        call()
    except ConfigError as exc:
        assert str(exc)
    # anything else propagates and fails the test


# ASVP_FUZZ_EXAMPLES=5000 for a longer search than CI's
FUZZ = settings(max_examples=int(os.environ.get("ASVP_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.data())
def test_fuzz_parse_config_mutations_of_a_valid_config(data):
    paths = list(_paths(VALID))
    path = data.draw(st.sampled_from(paths))
    mutated = _replace(VALID, path, data.draw(anything))
    _outcome(lambda: parse_config(mutated))


@FUZZ
@given(raw=st.dictionaries(keys, anything, max_size=6))
def test_fuzz_parse_config_random_nesting(raw):
    _outcome(lambda: parse_config(raw))


def _fuzz_file(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        _outcome(lambda: load_config(path))


VALID_TOML = b"""seed = 1
methods = ["random", {method = "asvp", name = "a", refresh = false}]
[data]
case = "synthetic"
pool_size = 200
test_size = 80
[schedule]
initial = 20
steps = [{until = 40, step = 20}, {until = 100, step = 30}]
[proxy]
epochs = 5
lr = 0.01
hidden = 8
[training]
epochs = 1
frozen = ["a"]
device = "cpu"
[cache]
dtype = "float32"
[asvp]
threshold = 0.5
force_refresh_round = 1
[evaluation]
random_extra_rounds = 2
[oracle]
kind = "file"
[costs]
reviews = 2
"""


VALID_YAML = yaml.safe_dump(VALID).encode()
VALID_FILES = {"c.toml": VALID_TOML, "c.yaml": VALID_YAML}


def test_the_fuzzed_valid_texts_are_valid(tmp_path):
    expected = dataclasses.replace(parse_config(VALID), base_dir=str(tmp_path.resolve()))
    for name, text in VALID_FILES.items():
        (tmp_path / name).write_bytes(text)
        assert load_config(tmp_path / name) == expected


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from(["c.toml", "c.yaml"]))
def test_fuzz_load_config_random_bytes(data, suffix):
    _fuzz_file(suffix, data)


@FUZZ
@given(name=st.sampled_from(sorted(VALID_FILES)), data=st.data())
def test_fuzz_load_config_truncation_and_bit_flips(name, data):
    text = bytearray(VALID_FILES[name])
    for pos, bit in data.draw(st.lists(st.tuples(st.integers(0, len(text) - 1), st.integers(0, 7)), max_size=4)):
        text[pos] ^= 1 << bit
    cut = data.draw(st.integers(0, len(text)))
    _fuzz_file(name, bytes(text[:cut]))


def test_floats_in_messages_and_finite_values_pass():
    cfg = parse_config({"data": {"case": "synthetic"}, "proxy": {"lr": 1, "weight_decay": 0}, "asvp": {"threshold": 0}})
    assert cfg.proxy.lr == 1.0 and isinstance(cfg.proxy.lr, float) and math.isfinite(cfg.asvp.threshold)
