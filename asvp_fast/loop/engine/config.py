"""Run configuration: TOML or YAML, every field checked before any work starts.

A config has these tables (every field but ``data.case`` and a case's required fields has a default)::

    seed = 0
    methods = ["random", "svpp", "standard"]   # any registered method ("activeft-pre", "asvp", yours);
                                               # variants are tables with explicit fields:
                                               # {method = "standard", name = "standard:lp-ft", training = "lp-ft"}
                                               # {method = "asvp", name = "asvp:no-refresh", refresh = false}

    [data]        case = any registered case (wordnet-nouns, fashion-mnist, imagefolder, synthetic, ...);
                  the other fields are that case's fields dataclass (cases/registry.py)
    [cache]       dtype = "float16", batch_size = 128, num_workers = 0, device = "auto"
    [schedule]    initial = 100; steps = [{until = 2000, step = 200}, {until = 6000, step = 500}]
    [selection]   strategy = "margin"; space = "embedding" | "features"
    [proxy]       epochs = 50, lr = 0.01, weight_decay = 0.0, batch_size = 2048, ... (models/proxy.py)
    [training]    mode = "ft" | "lp-ft", epochs, head_lr, backbone_lr, lp_epochs, lp_lr, frozen = [...]
    [oracle]      kind = "simulated" | "file" | "label-studio"; dir = "labels"
    [costs]       label_price, reviews, hourly_price (defaults: asvp_fast.metrics)
    [evaluation]  every_round = true, random_extra_rounds = 0
    [asvp]        threshold = 1.0, force_refresh_round, max_refreshes = 1
    [distributed] proxy = "ddp", target = "ddp" (under torchrun; "replicated": every rank trains whole)

Every table is a dataclass checked through pydantic (:mod:`.schema`): types are strict, ranges come
from field metadata, unknown fields are named with a suggestion, paths must exist. All problems are
reported at once in a :class:`ConfigError`, each naming its dotted field (``schedule.steps[1].until``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ... import metrics
from ..cases import builtin  # noqa: F401  (registers the built-in cases)
from ..cases.registry import CASES
from ..methods import METHODS, MethodSpec
from ..models.proxy import ProxyConfig
from ..models.trainers import TRAINERS, TrainConfig
from ..selection.strategies import STRATEGIES
from .schema import ConfigError, Problems, check_structure, config_error, machine_fields, show, unknown_field
from .schema import validate_table

MAX_ROUNDS = 100_000  # rounds in one run (schedule + random_extra_rounds): more is a typo, not a study
MAX_CONFIG_BYTES = 4 << 20
TOP_LEVEL = ("seed", "methods", "data", "cache", "schedule", "selection", "proxy", "training", "oracle", "costs",
             "evaluation", "asvp", "distributed")
__all__ = ["ConfigError", "RunConfig", "DataConfig", "check_budget", "load_config", "parse_config", "parse_toml"]


# data.case of a config without a [data] table: the run's case is passed in code
# (run(config, run_dir, case=...)); the command line refuses it
CASE_IN_CODE = ""


@dataclass(frozen=True)
class DataConfig:
    """``[data]``: the registered case and its fields (an instance of ``CASES[case].fields``);
    ``case == ""`` (:data:`CASE_IN_CODE`) when the config has no ``[data]`` table."""

    case: str
    fields: Any = None  # None: the case's defaults

    def __getattr__(self, name: str) -> Any:  # cfg.data.pool_size reads the case's field
        if name.startswith("_") or name in ("case", "fields"):
            raise AttributeError(name)
        try:
            return getattr(self.__dict__.get("fields"), name)
        except AttributeError:
            raise AttributeError(f"data.case = {self.__dict__.get('case')!r} has no field {name!r}") from None

    def to_dict(self) -> Dict[str, Any]:
        own = dataclasses.asdict(self.fields) if dataclasses.is_dataclass(self.fields) else {}
        return {"case": self.case, **own}


@dataclass(frozen=True)
class CacheConfig:
    dtype: str = field(default="float16", metadata={"choices": ("float16", "float32"), "what": "cache dtype"})
    # kept in the resume digest: the batch shapes (and a text batch's padding) change the extracted
    # features in their last bits, and one cache must not mix two extractions
    batch_size: int = field(default=128, metadata={"ge": 1})
    num_workers: int = field(default=0, metadata={"ge": 0, "le": 1024, "machine": True})
    device: str = field(default="auto", metadata={"device": True, "machine": True})
    # AFT/KD teachers' features (storage/teachers.py): "" = <run dir>/cache/teachers; a shared folder
    # (relative: to the config's folder) lets the runs of a study extract each teacher once
    teachers_dir: str = field(default="", metadata={"machine": True, "path": False})


@dataclass(frozen=True)
class ScheduleConfig:
    initial: int = 100
    steps: Tuple[Tuple[int, int], ...] = ((2000, 200),)

    def n_rounds(self, extra_rounds: int = 0) -> int:
        """How many rounds :meth:`budgets` has, computed without building it."""
        n, last = 1, self.initial
        for until, step in self.steps:
            if step <= 0:
                raise ConfigError(f"schedule: a step must be positive, got {step}")
            if until > last:
                n, last = n + -(-(until - last) // step), until
        return n + max(0, extra_rounds)

    def final_budget(self, extra_rounds: int = 0) -> int:
        """The labels after the last round (the last entry of :meth:`budgets`), computed arithmetically."""
        last = max([self.initial] + [until for until, _ in self.steps])
        return last + max(0, extra_rounds) * (self.steps[-1][1] if self.steps else 0)

    def budgets(self, extra_rounds: int = 0) -> List[int]:
        """Cumulative label counts after each round, round 0 being the initial random set.

        ``extra_rounds`` continues past the last round with the last step size (the random
        baseline's curve must reach past the AL methods' accuracies to value their savings).
        """
        rounds = self.n_rounds(extra_rounds)
        if rounds > MAX_ROUNDS:
            raise ConfigError(f"schedule: {rounds} rounds; at most {MAX_ROUNDS} are allowed")
        out = [self.initial]
        for until, step in self.steps:
            out.extend(range(out[-1] + step, until + 1, step))
            if out[-1] < until:  # a last, smaller step lands exactly on `until`
                out.append(until)
        if extra_rounds > 0:
            step = self.steps[-1][1]
            out.extend(range(out[-1] + step, out[-1] + step * extra_rounds + 1, step))
        return out


@dataclass(frozen=True)
class _Step:
    until: int = field(metadata={"ge": 1})
    step: int = field(metadata={"ge": 1})


@dataclass(frozen=True)
class _Schedule:
    initial: int = field(default=100, metadata={"ge": 1})
    steps: Tuple[_Step, ...] = (_Step(2000, 200),)


@dataclass(frozen=True)
class SelectionConfig:
    strategy: str = field(default="margin", metadata={"choices": lambda: STRATEGIES, "what": "strategy"})
    space: str = field(default="embedding", metadata={"choices": ("embedding", "features"), "what": "space"})


@dataclass(frozen=True)
class OracleConfig:
    kind: str = field(default="simulated", metadata={"choices": ("simulated", "file", "label-studio"),
                                                     "what": "oracle kind"})
    dir: str = field(default="labels", metadata={"path": False})  # inside the run directory


@dataclass(frozen=True)
class CostConfig:
    label_price: float = field(default=metrics.DEFAULT_LABEL_PRICE_USD, metadata={"ge": 0})
    reviews: int = field(default=metrics.DEFAULT_REVIEWS, metadata={"ge": 1})
    hourly_price: float = field(default=metrics.DEFAULT_HOURLY_PRICE_USD, metadata={"ge": 0})


@dataclass(frozen=True)
class EvaluationConfig:
    every_round: bool = True
    # random baseline rounds past the budget (see ScheduleConfig.budgets)
    random_extra_rounds: int = field(default=0, metadata={"ge": 0, "le": MAX_ROUNDS})


@dataclass(frozen=True)
class AsvpConfig:
    # Refresh when LogME-PED (asvp_fast.logme: mean over classes of log evidence / N, i.e. per
    # sample) changes by less than this between consecutive rounds. The paper's value is 1.
    threshold: float = field(default=1.0, metadata={"ge": 0})
    # refresh at this round whatever the scores (tests, ablations); rounds after 0 select
    force_refresh_round: Optional[int] = field(default=None, metadata={"ge": 1})
    # The paper updates the features once (its section 6.6 studies where); after the last allowed
    # refresh the method goes on as SVPp on the refreshed features, training with FT.
    max_refreshes: int = field(default=1, metadata={"ge": 0, "le": MAX_ROUNDS})


_TRAINING_KINDS = ("ddp", "replicated")


@dataclass(frozen=True)
class DistributedConfig:
    """``[distributed]``: how a run under ``torchrun`` trains (ignored on one process).

    ``"ddp"``: each rank trains on its part of every global batch (DistributedDataParallel,
    BatchNorm over the global batch): a W-th of the work per rank, the model one process trains up
    to float32 summation order. ``"replicated"``: every rank trains on the whole batches, as one
    process does: bit-identical to a one-process run with the same thread count, no speed-up (for
    the small MLP proxy it costs little and makes the selections reproducible across rank counts).
    Machine settings: a run may resume with other values (and other rank counts).
    """

    proxy: str = field(default="ddp", metadata={"choices": _TRAINING_KINDS, "what": "proxy training", "machine": True})
    target: str = field(default="ddp", metadata={"choices": _TRAINING_KINDS, "what": "target-model training",
                                                 "machine": True})


@dataclass(frozen=True)
class _Top:
    seed: int = field(default=0, metadata={"ge": 0})


TABLES: Dict[str, type] = {"cache": CacheConfig, "selection": SelectionConfig, "proxy": ProxyConfig,
                           "training": TrainConfig, "oracle": OracleConfig, "costs": CostConfig,
                           "evaluation": EvaluationConfig, "asvp": AsvpConfig, "distributed": DistributedConfig}


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig
    seed: int = 0
    methods: Tuple[MethodSpec, ...] = tuple(MethodSpec(m) for m in ("random", "svpp", "standard"))
    cache: CacheConfig = field(default_factory=CacheConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    costs: CostConfig = field(default_factory=CostConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    asvp: AsvpConfig = field(default_factory=AsvpConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    base_dir: str = "."  # where relative paths in the config are resolved (the config file's folder)

    @property
    def method_names(self) -> List[str]:
        """The names of the configured methods, in config order (state and reports use them)."""
        return [m.name for m in self.methods]

    def to_dict(self) -> Dict[str, Any]:
        """Every field (``base_dir`` aside), ``[data]`` flat as in the config file."""
        out: Dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "base_dir":
                continue
            if f.name == "data":
                out["data"] = value.to_dict()
            elif f.name == "methods":
                out["methods"] = [{"method": m.method, "name": m.name, "training": m.training, "options": dict(m.options)}
                                  for m in value]
            else:
                out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return out

    def digest_dict(self) -> Dict[str, Any]:
        """What must not change between a run and its resumption (JSON-normalised): every field
        that changes results. Machine-specific fields (devices, worker counts, inference batch
        sizes: metadata ``machine``) are left out, so a run can continue on another machine."""
        d = self.to_dict()
        for table in TABLES:
            for name in machine_fields(type(getattr(self, table))):
                d[table].pop(name, None)
            for f in dataclasses.fields(type(getattr(self, table))):  # fields added later, at their default
                if f.metadata.get("omit_default") and d[table].get(f.name) == f.default:
                    d[table].pop(f.name, None)
            if not d[table]:  # a table of machine settings only ([distributed]) is no part of the digest
                d.pop(table)
        if dataclasses.is_dataclass(self.data.fields):
            for name in machine_fields(type(self.data.fields)):
                d["data"].pop(name, None)
            for f in dataclasses.fields(type(self.data.fields)):  # case fields added later, at their default
                if f.metadata.get("omit_default") and d["data"].get(f.name) == f.default:
                    d["data"].pop(f.name, None)
        for spec, entry in zip(self.methods, d["methods"]):
            options_cls = getattr(METHODS.get(spec.method), "Options", None)
            if dataclasses.is_dataclass(options_cls):
                for name in machine_fields(options_cls):
                    entry["options"].pop(name, None)
        return json.loads(json.dumps(d))

    def path(self, value: Optional[str]) -> Optional[Path]:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


# -- reading files (untrusted: every failure is a ConfigError naming the file) ---------------------
def load_config(path: "Path | str") -> RunConfig:
    """Read and check a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run configuration."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".yaml", ".yml"):
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    try:
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory, not a file")
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        base_dir = str(path.parent.resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # unreadable, a loop of links, a NUL in the name
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MB; this is not a run config")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {data[exc.start:exc.start + 1]!r})") from None
    raw = parse_toml(text, path) if suffix == ".toml" else _parse_yaml(text, path)
    return parse_config(raw, base_dir=base_dir, source=str(path))


def parse_toml(text: str, where: "Path | str") -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not a usable config: nested too deeply") from None
    except Exception as exc:  # anything else the parser raises on bad text (a 5000-digit integer, ...)
        raise ConfigError(f"{where} is not valid TOML: {type(exc).__name__}: {show(str(exc))}") from None


def _parse_yaml(text: str, path: Path) -> Dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading {path} needs PyYAML (pip install pyyaml), or write the config as TOML") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path} is not a usable config: nested too deeply") from None
    except Exception as exc:  # e.g. a timestamp that is no date (ValueError from the constructor)
        raise ConfigError(f"{path} is not valid YAML: {type(exc).__name__}: {show(str(exc))}") from None
    if raw is None:
        raise ConfigError(f"{path} is empty; a config needs at least [data] case = ...")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of tables at the top level, got {type(raw).__name__}")
    return raw


# -- checking ---------------------------------------------------------------------------------------
def parse_config(raw: Mapping[str, Any], *, base_dir: str = ".", source: Optional[str] = None) -> RunConfig:
    """Check a config given as nested dicts and build the :class:`RunConfig`.

    Every table is checked, and every problem found is reported in one :class:`ConfigError`
    (``source``, the file, heads the message)."""
    where = source or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: the top level must be a table of tables, got {type(raw).__name__}")
    check_structure(raw, where)
    problems: List[str] = []
    parts: Dict[str, Any] = {}

    def section(name: str, check: Any, *args: Any) -> None:
        try:
            parts[name] = check(*args)
        except Problems as exc:
            problems.extend(exc.messages)

    problems.extend(unknown_field(k, "", TOP_LEVEL) for k in raw if k not in TOP_LEVEL)
    section("seed", lambda: validate_table(_Top, {k: raw[k] for k in ("seed",) if k in raw}, ()).seed)
    section("data", _data, raw.get("data"), base_dir)
    section("methods", _methods, raw.get("methods", ["random", "svpp", "standard"]))
    section("schedule", _schedule, raw.get("schedule", {}))
    for name, cls in TABLES.items():
        section(name, validate_table, cls, raw.get(name, {}), (name,))
    if not problems:
        problems.extend(_cross_checks(parts))
    if problems:
        raise config_error(problems, source or "")
    return RunConfig(base_dir=base_dir, **parts)


def _data(raw: Any, base_dir: str) -> DataConfig:
    if raw is None:  # the data come from code: run(config, run_dir, case=...)
        return DataConfig(CASE_IN_CODE)
    if not isinstance(raw, Mapping):
        raise Problems([f"[data] must be a table, got {show(raw)}"])
    case = raw.get("case")
    if case is None:
        raise Problems([f"data.case is required; registered cases: {sorted(CASES)}"])
    if not isinstance(case, str) or case not in CASES:
        close = difflib.get_close_matches(case, list(CASES), n=1) if isinstance(case, str) else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise Problems([f"data.case: unknown case {show(case)}{hint}; registered: {sorted(CASES)}"])
    rest = {k: v for k, v in raw.items() if k != "case"}
    kind = CASES[case].fields
    return DataConfig(case, validate_table(kind, rest, ("data",), base_dir=base_dir, missing_hint=f" for data.case = {case!r}"))


def _schedule(raw: Any) -> ScheduleConfig:
    if isinstance(raw, Mapping) and isinstance(raw.get("steps"), list) and not raw["steps"]:
        raise Problems(["schedule.steps must be a non-empty list of {until = N, step = K} tables"])
    table = validate_table(_Schedule, raw, ("schedule",))
    problems, last = [], table.initial
    for i, st in enumerate(table.steps):
        if st.until <= last:
            problems.append(f"schedule.steps[{i}].until ({st.until}) must be larger than the labels before it ({last})")
        last = max(last, st.until)
    if problems:
        raise Problems(problems)
    return ScheduleConfig(initial=table.initial, steps=tuple((st.until, st.step) for st in table.steps))


def _methods(value: Any) -> Tuple[MethodSpec, ...]:
    if not isinstance(value, list) or not value:
        raise Problems(['methods must be a non-empty list of method names or tables, e.g. ["random", "svpp", "standard"]'])
    specs, problems = [], []
    for i, item in enumerate(value):
        try:
            specs.append(_method_spec(item, i))
        except Problems as exc:
            problems.extend(exc.messages)
    names = [s.name for s in specs]
    if not problems:
        for i, name in enumerate(names):
            if name in names[:i]:
                problems.append(f"methods[{i}]: the name {name!r} is used twice; give one of them another name = \"...\"")
    if problems:
        raise Problems(problems)
    return tuple(specs)


_ENTRIES: Dict[type, type] = {}


def _entry_class(options_cls: type) -> type:
    """A method table's fields: ``method``, ``name``, ``training`` and the method's options."""
    if options_cls not in _ENTRIES:
        try:
            hints = typing.get_type_hints(options_cls, include_extras=True)
        except Exception:
            hints = {}
        own = [(f.name, hints.get(f.name, type(f.default) if f.default is not dataclasses.MISSING else Any),
                field(default=f.default, default_factory=f.default_factory, metadata=f.metadata))  # type: ignore[call-overload]
               for f in fields(options_cls) if f.init and f.name not in ("method", "name", "training")]
        base = [("method", str, field(default="", metadata={"path": False})),
                ("name", str, field(default="", metadata={"path": False})),
                ("training", Optional[str], field(default=None, metadata={"choices": lambda: TRAINERS, "what": "training mode"}))]
        _ENTRIES[options_cls] = dataclasses.make_dataclass(f"{options_cls.__name__}Entry", base + own, frozen=True)
    return _ENTRIES[options_cls]


def _method_spec(item: Any, i: int) -> MethodSpec:
    """A registered method's name, or a table {method, name, training, <the method's options>}."""
    where = f"methods[{i}]"
    if isinstance(item, str):
        return MethodSpec(_registered(item, where))
    if not isinstance(item, Mapping):
        raise Problems([f"{where} must be a method name or a table like {{method = \"svpp\", training = \"lp-ft\"}}, "
                        f"got {show(item)}"])
    if "method" not in item:
        raise Problems([f"{where} needs a 'method' field naming a registered method; registered: {sorted(METHODS)}"])
    method = _registered(item["method"], f"{where}.method")
    options_cls = METHODS[method].Options
    entry = validate_table(_entry_class(options_cls), item, ("methods", i))
    if "name" in item and not entry.name.strip():
        raise Problems([f"{where}.name must be a non-empty string, got {show(entry.name)}"])
    own = {f.name for f in fields(options_cls)}
    options = {k: getattr(entry, k) for k in item if k in own and k not in ("method", "name", "training")}
    return MethodSpec(method, entry.name or method, entry.training, options)


def _registered(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise Problems([f"{where} must be a string naming a registered method, got {show(name)}"])
    if name in METHODS:
        return name
    base, colon, variant = name.partition(":")
    if colon and base in METHODS:
        field_hint = "training = \"%s\"" % variant if variant in TRAINERS else "<the variant's fields>"
        raise Problems([f"{where}: {name!r}: variants are explicit fields now, write "
                        f"{{method = \"{base}\", name = \"{name}\", {field_hint}}}"])
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise Problems([f"{where}: unknown method {show(name)}{hint}; registered: {sorted(METHODS)}"])


def _cross_checks(parts: Mapping[str, Any]) -> List[str]:
    """What no single field shows: the number of rounds (computed, never built), the forced refresh."""
    schedule, methods = parts["schedule"], parts["methods"]
    extra = parts["evaluation"].random_extra_rounds if any(m.method == "random" for m in methods) else 0
    problems = []
    rounds = schedule.n_rounds()
    if rounds > MAX_ROUNDS:
        problems.append(f"schedule: initial = {schedule.initial} and steps {[list(s) for s in schedule.steps]} make "
                        f"{rounds} rounds; at most {MAX_ROUNDS} are allowed (raise schedule.steps[].step)")
    elif rounds + extra > MAX_ROUNDS:
        problems.append(f"evaluation.random_extra_rounds: {extra} extra rounds make {rounds + extra} rounds of the random "
                        f"baseline; at most {MAX_ROUNDS} are allowed")
    forced = parts["asvp"].force_refresh_round
    if forced is not None and any(m.method == "asvp" for m in methods) and forced >= rounds:
        problems.append(f"asvp.force_refresh_round = {forced} never comes: the schedule has rounds 0 to {rounds - 1}")
    return problems


def check_budget(cfg: RunConfig, pool_size: int) -> None:
    """The schedule must fit in the pool (checked once the pool is known, before any work;
    computed arithmetically, without building the list of budgets)."""
    final = cfg.schedule.final_budget()
    if final > pool_size:
        raise ConfigError(f"schedule: the last round needs {final} labels, but the pool has only {pool_size} items "
                          f"(lower schedule.steps[-1].until or raise data.pool_size)")
    extra = cfg.evaluation.random_extra_rounds
    if any(m.method == "random" for m in cfg.methods) and cfg.schedule.final_budget(extra) > pool_size:
        raise ConfigError(f"evaluation.random_extra_rounds: {extra} extra random rounds need "
                          f"{cfg.schedule.final_budget(extra)} labels, but the pool has only {pool_size} items")
