"""Run configuration: TOML or YAML, checked field by field before any work starts.

A config has these tables (every field but ``data.case`` has a default)::

    seed = 0
    methods = ["random", "svpp", "standard"]   # any registered method ("activeft-pre", "asvp", yours);
                                               # variants are tables with explicit fields:
                                               # {method = "standard", name = "standard:lp-ft", training = "lp-ft"}
                                               # {method = "asvp", name = "asvp:no-refresh", refresh = false}

    [data]        case = "wordnet-nouns" | "fashion-mnist" | "imagefolder" | "synthetic"
                  pool_size, test_size (built-ins); train_dir, test_dir, checkpoint, image_size (imagefolder)
    [cache]       dtype = "float16", batch_size = 128, num_workers = 0, device = "auto"
    [schedule]    initial = 100; steps = [{until = 2000, step = 200}, {until = 6000, step = 500}]
    [selection]   strategy = "margin"; space = "embedding" | "features"
    [proxy]       epochs = 50, lr = 0.01, weight_decay = 0.0, batch_size = 2048
    [training]    mode = "ft" | "lp-ft", epochs, head_lr, backbone_lr, lp_epochs, lp_lr, frozen = [...]
    [oracle]      kind = "simulated" | "file"; dir = "labels"
    [costs]       label_price, reviews, hourly_price (defaults: asvp_fast.metrics)
    [evaluation]  every_round = true

Errors are :class:`ConfigError` and name the field, e.g. ``schedule.steps[1].until``.
"""

from __future__ import annotations

import difflib
import json
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ... import metrics
from ...core.checks import parse_device
from ..methods import METHODS, MethodSpec
from ..models.proxy import ProxyConfig
from ..models.trainers import TRAINERS, TrainConfig
from ..selection.strategies import STRATEGIES

CASES = ("wordnet-nouns", "fashion-mnist", "imagefolder", "synthetic")


class ConfigError(ValueError):
    """A configuration field is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    case: str
    pool_size: Optional[int] = None
    test_size: Optional[int] = None
    train_dir: Optional[str] = None
    test_dir: Optional[str] = None
    checkpoint: Optional[str] = None
    image_size: Optional[int] = None
    max_length: int = 32
    seed: int = 0


@dataclass(frozen=True)
class CacheConfig:
    dtype: str = "float16"
    batch_size: int = 128
    num_workers: int = 0
    device: str = "auto"


@dataclass(frozen=True)
class ScheduleConfig:
    initial: int = 100
    steps: Tuple[Tuple[int, int], ...] = ((2000, 200),)

    def budgets(self, extra_rounds: int = 0) -> List[int]:
        """Cumulative label counts after each round, round 0 being the initial random set.

        ``extra_rounds`` continues past the last round with the last step size (the random
        baseline's curve must reach past the AL methods' accuracies to value their savings).
        """
        out = [self.initial]
        for until, step in self.steps:
            while out[-1] + step <= until:
                out.append(out[-1] + step)
            if out[-1] < until:  # a last, smaller step lands exactly on `until`
                out.append(until)
        for _ in range(extra_rounds):
            out.append(out[-1] + self.steps[-1][1])
        return out


@dataclass(frozen=True)
class SelectionConfig:
    strategy: str = "margin"
    space: str = "embedding"


@dataclass(frozen=True)
class OracleConfig:
    kind: str = "simulated"
    dir: str = "labels"


@dataclass(frozen=True)
class CostConfig:
    label_price: float = metrics.DEFAULT_LABEL_PRICE_USD
    reviews: int = metrics.DEFAULT_REVIEWS
    hourly_price: float = metrics.DEFAULT_HOURLY_PRICE_USD


@dataclass(frozen=True)
class EvaluationConfig:
    every_round: bool = True
    random_extra_rounds: int = 0  # random baseline rounds past the budget (see ScheduleConfig.budgets)


@dataclass(frozen=True)
class AsvpConfig:
    # Refresh when LogME-PED (asvp_fast.logme: mean over classes of log evidence / N, i.e. per
    # sample) changes by less than this between consecutive rounds. The paper's value is 1.
    threshold: float = 1.0
    force_refresh_round: Optional[int] = None  # refresh at this round whatever the scores (tests, ablations)
    # The paper updates the features once (its section 6.6 studies where); after the last allowed
    # refresh the method goes on as SVPp on the refreshed features, training with FT.
    max_refreshes: int = 1


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
    base_dir: str = "."  # where relative paths in the config are resolved (the config file's folder)

    @property
    def method_names(self) -> List[str]:
        """The names of the configured methods, in config order (state and reports use them)."""
        return [m.name for m in self.methods]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("base_dir")
        return d

    def digest_dict(self) -> Dict[str, Any]:
        """What must not change between a run and its resumption (JSON-normalised)."""
        return json.loads(json.dumps(self.to_dict()))

    def path(self, value: Optional[str]) -> Optional[Path]:
        if value is None:
            return None
        p = Path(value).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


# -- reading ---------------------------------------------------------------------------------------
def load_config(path: "Path | str") -> RunConfig:
    """Read and check a TOML (``.toml``) or YAML (``.yaml``/``.yml``) run configuration."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        raw = parse_toml(text, path)
    elif path.suffix.lower() in (".yaml", ".yml"):
        raw = _parse_yaml(text, path)
    else:
        raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    return parse_config(raw, base_dir=str(path.parent.resolve()))


def parse_toml(text: str, where: "Path | str") -> Dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python < 3.11
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from exc


def _parse_yaml(text: str, path: Path) -> Dict[str, Any]:
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"reading {path} needs PyYAML (pip install pyyaml), or write the config as TOML") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of tables at the top level")
    return raw


def parse_config(raw: Mapping[str, Any], *, base_dir: str = ".") -> RunConfig:
    """Check a config given as nested dicts and build the :class:`RunConfig`."""
    known = {"seed", "methods", "data", "cache", "schedule", "selection", "proxy", "training", "oracle", "costs", "evaluation",
             "asvp"}
    _no_unknown(raw, known, "")
    if "data" not in raw:
        raise ConfigError("missing table [data] (at least data.case)")
    data = _table(DataConfig, raw["data"], "data")
    if data.case not in CASES:
        raise ConfigError(f"data.case must be one of {list(CASES)}, got {data.case!r}")
    schedule = _schedule(raw.get("schedule", {}))
    selection = _table(SelectionConfig, raw.get("selection", {}), "selection")
    if selection.strategy not in STRATEGIES:
        raise ConfigError(f"selection.strategy: unknown strategy {selection.strategy!r}; choose one of {sorted(STRATEGIES)}")
    if selection.space not in ("embedding", "features"):
        raise ConfigError(f"selection.space must be 'embedding' or 'features', got {selection.space!r}")
    training = _table(TrainConfig, raw.get("training", {}), "training", tuples=("frozen",))
    oracle = _table(OracleConfig, raw.get("oracle", {}), "oracle")
    if oracle.kind not in ("simulated", "file"):
        raise ConfigError(f"oracle.kind must be 'simulated' or 'file', got {oracle.kind!r}")
    cache = _table(CacheConfig, raw.get("cache", {}), "cache")
    if cache.dtype not in ("float16", "float32"):
        raise ConfigError(f"cache.dtype must be 'float16' or 'float32', got {cache.dtype!r}")
    cfg = RunConfig(
        data=data, seed=_int(raw.get("seed", 0), "seed"), methods=_methods(raw.get("methods", ["random", "svpp", "standard"])),
        cache=cache, schedule=schedule, selection=selection, proxy=_table(ProxyConfig, raw.get("proxy", {}), "proxy"),
        training=training, oracle=oracle, costs=_table(CostConfig, raw.get("costs", {}), "costs"),
        evaluation=_table(EvaluationConfig, raw.get("evaluation", {}), "evaluation"),
        asvp=_table(AsvpConfig, raw.get("asvp", {}), "asvp"), base_dir=base_dir,
    )
    _check_positive(cfg)
    _check_devices(cfg)
    _check_paths(cfg)
    return cfg


def _methods(value: Any) -> Tuple[MethodSpec, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError('methods must be a non-empty list of method names or tables, e.g. ["random", "svpp", "standard"]')
    specs = tuple(_method_spec(item, f"methods[{i}]") for i, item in enumerate(value))
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"methods[{i}]: the name {name!r} is used twice; give one of them another name = \"...\"")
    return specs


def _method_spec(item: Any, where: str) -> MethodSpec:
    """A registered method's name, or a table {method, name, training, <the method's options>}."""
    if isinstance(item, str):
        return MethodSpec(_registered(item, f"{where}"))
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a method name or a table like {{method = \"svpp\", training = \"lp-ft\"}}, "
                          f"got {item!r}")
    if "method" not in item:
        raise ConfigError(f"{where} needs a 'method' field naming a registered method; registered: {sorted(METHODS)}")
    method = _registered(item["method"], f"{where}.method")
    options_cls = METHODS[method].Options
    own = {f.name: f for f in fields(options_cls)}
    _no_unknown(item, {"method", "name", "training"} | set(own), where)
    name = item.get("name", method)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name must be a non-empty string, got {name!r}")
    training = item.get("training")
    if training is not None and (not isinstance(training, str) or training not in TRAINERS):
        raise ConfigError(f"{where}.training: unknown training mode {training!r}; registered: {sorted(TRAINERS)}")
    options = {key: _coerce(value, own[key].default, f"{where}.{key}", False) for key, value in item.items() if key in own}
    return MethodSpec(method, name, training, options)


def _registered(name: Any, where: str) -> str:
    if not isinstance(name, str):
        raise ConfigError(f"{where} must be a string naming a registered method, got {name!r}")
    if name in METHODS:
        return name
    base, colon, variant = name.partition(":")
    if colon and base in METHODS:
        field_hint = "training = \"%s\"" % variant if variant in TRAINERS else "<the variant's fields>"
        raise ConfigError(f"{where}: {name!r}: variants are explicit fields now, write "
                          f"{{method = \"{base}\", name = \"{name}\", {field_hint}}}")
    close = difflib.get_close_matches(name, list(METHODS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{where}: unknown method {name!r}{hint}; registered: {sorted(METHODS)}")


def _schedule(raw: Any) -> ScheduleConfig:
    if not isinstance(raw, dict):
        raise ConfigError("[schedule] must be a table")
    _no_unknown(raw, {"initial", "steps"}, "schedule")
    initial = _int(raw.get("initial", ScheduleConfig.initial), "schedule.initial")
    steps_raw = raw.get("steps", [{"until": u, "step": s} for u, s in ScheduleConfig.steps])
    if not isinstance(steps_raw, list) or not steps_raw:
        raise ConfigError("schedule.steps must be a non-empty list of {until = N, step = K} tables")
    steps = []
    last = initial
    for i, st in enumerate(steps_raw):
        name = f"schedule.steps[{i}]"
        if not isinstance(st, dict) or set(st) != {"until", "step"}:
            raise ConfigError(f"{name} must be a table with exactly the keys 'until' and 'step'")
        until, step = _int(st["until"], f"{name}.until"), _int(st["step"], f"{name}.step")
        if step <= 0:
            raise ConfigError(f"{name}.step must be positive, got {step}")
        if until <= last:
            raise ConfigError(f"{name}.until ({until}) must be larger than the labels before it ({last})")
        steps.append((until, step))
        last = until
    if initial <= 0:
        raise ConfigError(f"schedule.initial must be positive, got {initial}")
    return ScheduleConfig(initial=initial, steps=tuple(steps))


def _table(cls: Any, raw: Any, name: str, tuples: Tuple[str, ...] = ()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    allowed = {f.name: f for f in fields(cls)}
    _no_unknown(raw, set(allowed), name)
    values = {}
    for key, value in raw.items():
        default = allowed[key].default
        values[key] = _coerce(value, default, f"{name}.{key}", key in tuples)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc
    except ValueError as exc:
        raise ConfigError(f"[{name}]: {exc}") from exc


def _coerce(value: Any, default: Any, name: str, as_tuple: bool) -> Any:
    if as_tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        return _int(value, name)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    if default is None and value is not None and not isinstance(value, (str, int)):
        raise ConfigError(f"{name} has an unexpected value {value!r}")
    return value


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return value


def _no_unknown(raw: Mapping[str, Any], allowed: set, where: str) -> None:
    for key in raw:
        if key not in allowed:
            place = f"[{where}]" if where else "the top level"
            raise ConfigError(f"unknown field {key!r} in {place}; known fields: {sorted(allowed)}")


def _check_positive(cfg: RunConfig) -> None:
    checks = {
        "training.epochs": cfg.training.epochs >= 0, "training.batch_size": cfg.training.batch_size > 0,
        "training.lp_epochs": cfg.training.lp_epochs >= 0, "training.head_lr": cfg.training.head_lr > 0,
        "training.backbone_lr": cfg.training.backbone_lr >= 0, "proxy.epochs": cfg.proxy.epochs > 0,
        "proxy.batch_size": cfg.proxy.batch_size > 1, "proxy.lr": cfg.proxy.lr > 0,
        "cache.batch_size": cfg.cache.batch_size > 0, "cache.num_workers": cfg.cache.num_workers >= 0,
        "costs.label_price": cfg.costs.label_price >= 0, "costs.reviews": cfg.costs.reviews >= 1,
        "costs.hourly_price": cfg.costs.hourly_price >= 0,
        "evaluation.random_extra_rounds": cfg.evaluation.random_extra_rounds >= 0,
        "asvp.max_refreshes": cfg.asvp.max_refreshes >= 0,
    }
    for name, ok in checks.items():
        if not ok:
            raise ConfigError(f"{name} is out of range")
    for name, value in (("data.pool_size", cfg.data.pool_size), ("data.test_size", cfg.data.test_size),
                        ("data.image_size", cfg.data.image_size)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def _check_devices(cfg: RunConfig) -> None:
    """Device strings follow the one device rule ("auto" | "cpu" | "cuda" | "cuda:N"), checked before any work."""
    for name, value in (("cache.device", cfg.cache.device), ("proxy.device", cfg.proxy.device),
                        ("training.device", cfg.training.device)):
        try:
            parse_device(value, name)
        except (TypeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None


def _check_paths(cfg: RunConfig) -> None:
    if cfg.data.case == "imagefolder":
        for name in ("train_dir", "test_dir"):
            value = getattr(cfg.data, name)
            if value is None:
                raise ConfigError(f"data.{name} is required for data.case = 'imagefolder'")
            if not cfg.path(value).is_dir():  # type: ignore[union-attr]
                raise ConfigError(f"data.{name}: {cfg.path(value)} is not a directory")
    if cfg.data.checkpoint is not None and not cfg.path(cfg.data.checkpoint).is_file():  # type: ignore[union-attr]
        raise ConfigError(f"data.checkpoint: {cfg.path(cfg.data.checkpoint)} does not exist")


def check_budget(cfg: RunConfig, pool_size: int) -> None:
    """The schedule must fit in the pool (checked once the pool is known, before any work)."""
    final = cfg.schedule.budgets()[-1]
    if final > pool_size:
        raise ConfigError(f"schedule: the last round needs {final} labels, but the pool has only {pool_size} items "
                          f"(lower schedule.steps[-1].until or raise data.pool_size)")
    extra = cfg.evaluation.random_extra_rounds
    if any(m.method == "random" for m in cfg.methods) and cfg.schedule.budgets(extra)[-1] > pool_size:
        raise ConfigError(f"evaluation.random_extra_rounds: {extra} extra random rounds need "
                          f"{cfg.schedule.budgets(extra)[-1]} labels, but the pool has only {pool_size} items")
