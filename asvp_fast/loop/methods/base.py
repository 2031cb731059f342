"""What a method is: the base class, its options, the registry, and what it may see of a run.

A method decides, each round, which pool rows to label next (:meth:`Method.select`) and which
trainer fits its final model (:meth:`Method.training_mode`). The engine (:mod:`..engine.runner`)
owns the rounds, the oracle, the state file, training and evaluation, and hands each method a
:class:`MethodContext`. Methods are composed from a selector (:mod:`..selection.selectors`), a
query strategy (:mod:`..selection.strategies`) and a trainer (:mod:`..models.trainers`), and are
registered by name; a config names any registered method::

    methods = ["random", "svpp", {method = "asvp", name = "asvp:ft", training = "ft"}]

A method's own options are the fields of its :attr:`Method.Options` dataclass, given next to
``method`` in such a table (e.g. ``refresh = false`` for ASVP). Register your own with
:func:`register_method`.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, Mapping, Optional, Protocol, Tuple, Type

import numpy as np

from ..models.classifier import Classifier
from ..selection.strategies import select
from ..selection.view import SelectorView


def derive_seed(base: int, *parts: Any) -> int:
    """A 32-bit seed from the run seed and a path of names/numbers (stable across runs and resumes)."""
    words = [int(base) & 0xFFFFFFFF] + [zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(1)[0])


@dataclass(frozen=True)
class MethodSpec:
    """One entry of the config's ``methods`` list.

    ``method``: the registered method; ``name``: how the run, its state and its reports call it
    (default: ``method``; two entries need two names); ``training``: the trainer of the method's
    final model (None: the method's default, else ``training.mode``); ``options``: the method's own
    options (its :attr:`Method.Options`), already checked.
    """

    method: str
    name: str = ""
    training: Optional[str] = None
    options: Tuple[Tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.method)
        if isinstance(self.options, Mapping):  # accept a dict; stored as sorted pairs (hashable)
            object.__setattr__(self, "options", tuple(sorted(self.options.items())))

    @property
    def slug(self) -> str:
        """The name made safe for file names."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)


class MethodContext(Protocol):
    """What a method sees of the run (the engine's ``RunContext`` provides it)."""

    config: Any  # the RunConfig
    case: Any  # the data Case
    state: Any  # the RunState
    run_dir: Path
    progress: Optional[bool]
    group: Any  # a distributed run's process group, None on one process

    @property
    def n_pool(self) -> int: ...

    @property
    def work_dir(self) -> Path: ...

    @property
    def pool_features(self) -> np.ndarray: ...

    @property
    def pool_features_or_none(self) -> Optional[np.ndarray]: ...

    @property
    def needs_embedding(self) -> bool: ...

    def extract(self, cache: Any, backbone: Any, *, version: int, backbone_id: Optional[str] = None) -> np.ndarray: ...

    def drop_cache_version(self, cache: Any, version: int) -> None: ...

    def load_features(self, cache: Any, version: int) -> np.ndarray: ...

    def cache_versions(self, cache: Any) -> "list[int]": ...

    def train(self, rows: np.ndarray, mode: str) -> Classifier: ...


@dataclass(frozen=True)
class NoOptions:
    """A method without options of its own."""


class Method:
    """Base class: one active-learning pipeline. Subclasses implement :meth:`select`.

    Class attributes describe the method to the engine and the reports:
    ``default_training`` (None: the config's ``training.mode``), ``trains_every_round`` (its
    selection needs the target model of every round, as standard AL does), ``uses_cache`` (reads
    the pre-trained feature cache), ``nested`` (each round adds rows to the previous ones; False
    for one-shot methods that select each budget afresh) and ``compute`` (what its compute cost
    counts: ``"every-round"`` trainings, ``"final"`` training only, or ``"selection"``: feature
    extraction + selections + the final training). ``distributed``: the method runs under
    ``torchrun`` (its selector and strategy work on row shards with ``ctx.group``).
    """

    Options: ClassVar[Type[Any]] = NoOptions
    default_training: ClassVar[Optional[str]] = None
    trains_every_round: ClassVar[bool] = False
    uses_cache: ClassVar[bool] = False
    nested: ClassVar[bool] = True
    compute: ClassVar[str] = "selection"
    distributed: ClassVar[bool] = False

    def __init__(self, spec: MethodSpec, ctx: MethodContext) -> None:
        self.spec = spec
        self.name = spec.name
        self.slug = spec.slug
        self.base = spec.method
        self.ctx = ctx
        self.options = self.Options(**dict(spec.options))

    def training_mode(self) -> str:
        """The trainer of this round's target model (a registered training mode)."""
        return self.spec.training or self.default_training or self.ctx.config.training.mode

    def initial(self, k: int) -> np.ndarray:
        """Round 0: the initial random set, the same for every nested method."""
        return select("random", SelectorView(self.ctx.n_pool), np.empty(0, np.int64), k,
                      seed=derive_seed(self.ctx.config.seed, "initial"))

    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        """``k`` new rows to label (or, for one-shot methods, the whole training set) and info to record."""
        raise NotImplementedError

    def on_trained(self, round_: int, model: Classifier) -> None:
        """Called with the target model trained on round ``round_``'s labels."""

    def strategy_seed(self, round_: int) -> int:
        return derive_seed(self.ctx.config.seed, "select", self.name, round_)


MethodFactory = Callable[[MethodSpec, MethodContext], Method]

METHODS: Dict[str, Type[Method]] = {}


def register_method(name: str, cls: Type[Method]) -> None:
    """Make ``cls`` (a :class:`Method` subclass) available in configs as ``name``."""
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"a method name must be a non-empty string without ':', got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"register_method needs a Method subclass, got {cls!r}")
    if not dataclasses.is_dataclass(cls.Options):
        raise TypeError(f"{cls.__name__}.Options must be a dataclass of the method's options")
    METHODS[name] = cls


def method_class(name: str) -> Type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}") from None


def make_method(spec: MethodSpec, ctx: MethodContext) -> Method:
    return method_class(spec.method)(spec, ctx)
