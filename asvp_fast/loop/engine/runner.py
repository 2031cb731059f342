"""A configured run: feature cache → rounds of selection, labelling, training → results.

``run(config, run_dir)`` writes into ``run_dir``: ``config.json`` (the checked config), ``cache/``
(pre-trained features), ``state.json`` after every step (labels bought, rounds, accuracies,
timings), ``labels/`` (CSV batches of the file oracle), and at the end ``results.md`` with the
PNG plots. With ``resume=True`` it continues from the state file: rounds already done are kept,
labels already bought are never asked for again, a round whose selection is saved but whose
labels are not in yet asks for exactly the saved rows (the selection is never recomputed), and
because every random choice is seeded from the config's seed and the round, the result equals
that of an uninterrupted run.

A round is saved three times (see :mod:`.state`): ``"selected"`` (rows, info, timings) before
the oracle is asked, ``"labelled"`` once it answered, ``"done"`` once trained and evaluated.
Oracles come from :data:`ORACLES`, keyed by ``config.oracle.kind``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol

import numpy as np

from ..methods import METHODS, Method, make_method, method_class
from ..models.trainers import TRAINERS, needs_teachers
from ..storage.cache import FeatureCache
from ..storage.files import atomic_write_text
from .config import ConfigError, RunConfig, check_budget
from ..cases.case import Case
from .context import RunContext, build_case
from ..models.ranks import from_root, is_root, stage
from .oracle import FileOracle, OracleError, SimulatedOracle
from .labelstudio import LabelStudioOracle
from .state import RoundRecord, RunState, StateError, config_differences

log = logging.getLogger("asvp_fast")


class Oracle(Protocol):
    """Where labels come from: ``query(rows, tag)`` returns one class number per row (pool order
    of ``rows``) or raises :class:`~.oracle.LabelsPending` until a person has answered. ``tag``
    names the batch (e.g. ``"svpp-round002"``), the same on every resume of that round."""

    def query(self, rows: np.ndarray, tag: str) -> np.ndarray: ...


def file_oracle(config: RunConfig, case: Case, run_dir: Path) -> Oracle:
    return FileOracle(run_dir / config.oracle.dir, case.class_names, case.describe)


def simulated_oracle(config: RunConfig, case: Case, run_dir: Path) -> Oracle:
    if case.pool_labels is None:
        raise ConfigError("oracle.kind = 'simulated' needs pool labels, and this data has none; use oracle.kind = 'file'")
    return SimulatedOracle(case.pool_labels)


# config.oracle.kind → factory(config, case, run_dir). Called in Runner.prepare, before any work:
# a factory raises ConfigError for a setting it cannot serve.
def label_studio_oracle(config: RunConfig, case: Case, run_dir: Path) -> Oracle:
    return LabelStudioOracle(run_dir / config.oracle.dir, case.class_names, case.describe)


ORACLES: Dict[str, Callable[[RunConfig, Case, Path], Oracle]] = {
    "file": file_oracle, "simulated": simulated_oracle, "label-studio": label_studio_oracle,
}


def make_oracle(config: RunConfig, case: Case, run_dir: Path) -> Oracle:
    try:
        factory = ORACLES[config.oracle.kind]
    except KeyError:
        raise ConfigError(f"oracle.kind = {config.oracle.kind!r} has no oracle; known: {sorted(ORACLES)}") from None
    return factory(config, case, run_dir)


class Runner:
    """One run of a config (see the module docstring). ``group``: a ``torch.distributed`` process
    group to run on several processes (:mod:`.distributed`); rank 0 asks the oracle, writes the
    state and echoes, every rank computes."""

    def __init__(self, config: RunConfig, run_dir: Path, *, resume: bool = False, progress: Optional[bool] = None,
                 echo: Any = print, case: Optional[Case] = None, group: Any = None) -> None:
        self.config = config
        self.case = case
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.group = group
        root = is_root(group)
        self.progress = progress if root else False
        self.echo = echo if root else (lambda *args, **kwargs: None)
        self.state_path = self.run_dir / "state.json"

    def _save(self, state: RunState) -> None:
        """The state on disk (atomically; by rank 0 only in a distributed run)."""
        if is_root(self.group):
            state.save(self.state_path)

    # -- set-up (everything that can fail on a bad config happens here, before any work) ------
    def prepare(self) -> RunContext:
        cfg = self.config
        case = self.case if self.case is not None else build_case(cfg)
        check_budget(cfg, len(case.pool))  # type: ignore[arg-type]
        self.oracle = make_oracle(cfg, case, self.run_dir) if is_root(self.group) else None
        for spec in cfg.methods:  # before anything is written
            mode = spec.training or method_class(spec.method).default_training or cfg.training.mode
            if needs_teachers(mode) and not cfg.training.teachers:
                raise ConfigError(f"method {spec.name!r} trains with {mode!r}, which needs pre-trained teachers: "
                                  "list them in [training] teachers = [...] (backbone ids)")
            if self.group is not None:
                check_distributed(spec.name, method_class(spec.method), mode, replicated=cfg.distributed.target == "replicated")
        state = from_root(self.group, "opening the run state", lambda: self._open_state(case))
        ctx = RunContext(cfg, case, self.run_dir, state, self.progress, group=self.group)
        self.methods = [make_method(spec, ctx) for spec in cfg.methods]
        return ctx

    def _open_state(self, case: Case) -> RunState:
        cfg_dict = self.config.digest_dict()
        if self.state_path.exists():
            if not self.resume:
                raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume or choose another output directory")
            state = RunState.load(self.state_path, num_classes=case.num_classes, n_pool=len(case.pool))  # type: ignore[arg-type]
            changed = config_differences(state.config, cfg_dict)
            if changed:
                raise StateError(f"the config changed since this run started ({', '.join(changed)}); "
                                 f"resume with the original config or start a new run directory")
            return state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(cfg_dict, indent=1))
        state = RunState(config=cfg_dict)
        self._save(state)
        return state

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> RunState:
        ctx = self.prepare()
        self.ctx = ctx
        if any(m.uses_cache or m.training_mode() == "lp-ft" for m in self.methods):
            start = time.perf_counter()
            ctx.pool_features_or_none = ctx.extract(FeatureCache(self.run_dir / "cache"), ctx.fresh_backbone(), version=0)
            if "extract_pool_s" not in ctx.state.stages:
                ctx.state.stages["extract_pool_s"] = round(time.perf_counter() - start, 3)
                self._save(ctx.state)
        # Methods whose selection trains the target model go first: their round-0 model trains once
        # and its accuracy is shared (memo) with every method that starts from the same labels.
        for method in sorted(self.methods, key=lambda m: not m.trains_every_round):
            self._run_method(method)
        return ctx.state

    def _run_method(self, method: Method) -> None:
        extra = self.config.evaluation.random_extra_rounds if method.base == "random" else 0
        budgets = self.config.schedule.budgets(extra)
        mstate = self.ctx.state.method(method.name)
        for r, target in enumerate(budgets):
            if r < len(mstate.rounds) and mstate.rounds[r].stage == "done":
                continue
            if r == len(mstate.rounds):
                self._select(method, r, target)
            if mstate.rounds[r].stage == "selected":
                self._label(method, r)
            self._train_and_evaluate(method, r, last=r == len(budgets) - 1)

    def _select(self, method: Method, r: int, target: int) -> None:
        """Select round ``r``'s rows and save them (stage "selected") before anyone is asked."""
        state = self.ctx.state
        mstate = state.method(method.name)
        labelled = mstate.labelled()
        start = time.perf_counter()
        if r == 0:
            picked, info = method.initial(target), {}  # type: Tuple[np.ndarray, Dict[str, Any]]
        else:
            with stage(self.group, f"method {method.name!r}, selection of round {r}"):
                picked, info = method.select(r, labelled if method.nested else mstate.train_rows(r),
                                             target - len(labelled) if method.nested else target)
        select_s = time.perf_counter() - start if r > 0 else 0.0
        picked = self._checked_selection(method, r, picked, info, labelled)
        if method.nested:
            new, train_rows = picked, None
        else:
            new = np.setdiff1d(picked, labelled)
            train_rows = [int(x) for x in picked]
        mstate.rounds.append(RoundRecord(round=r, n_labels=int(len(train_rows) if train_rows is not None else len(labelled) + len(new)),
                                         new=[int(x) for x in new], train_rows=train_rows, stage="selected",
                                         select_s=round(select_s, 3), info=info))
        self._save(state)  # the choice is on disk before the oracle is asked: a resume reuses it

    def _label(self, method: Method, r: int) -> None:
        """Ask the oracle for the labels of round ``r``'s saved rows that are not known yet."""
        state = self.ctx.state
        rec = state.method(method.name).rounds[r]
        unknown = np.array([x for x in rec.new if int(x) not in state.labels], dtype=np.int64)
        if unknown.size:
            tag = f"{method.slug}-round{r:03d}"
            # rank 0 asks; its answers (or its LabelsPending / error) reach every rank
            answers = from_root(self.group, f"labelling batch {tag}", lambda: self._ask(rec, unknown, tag))
            state.labels.update({int(x): int(y) for x, y in zip(unknown, answers)})
        rec.stage = "labelled"
        self._save(state)  # labels bought are on disk before any training starts
        self.echo(f"[{method.name}] round {r}: {rec.n_labels} labels (selection {rec.select_s:.1f} s)")

    def _ask(self, rec: RoundRecord, unknown: np.ndarray, tag: str) -> np.ndarray:
        if hasattr(self.oracle, "set_hints"):  # the selector's top class and uncertainty, saved at selection
            hints = (rec.info or {}).get("hints") or {}
            self.oracle.set_hints({int(row): (int(c), float(u)) for row, (c, u) in hints.items()})
        return self._checked_answers(self.oracle.query(unknown, tag), unknown, tag)  # type: ignore[union-attr]

    def _checked_selection(self, method: Method, r: int, picked: Any, info: Any, labelled: np.ndarray) -> np.ndarray:
        """The method's rows as int64 after checking them (pool rows, no repeats, nothing bought
        again by a nested method) and its info (a JSON object of finite values): a bad choice
        must fail here, not make the saved state unreadable."""
        where = f"method {method.name!r}, round {r}"
        arr = np.asarray(picked)
        if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
            raise ValueError(f"{where}: the selection must be a 1-D array of row numbers, got {arr.dtype} shape {arr.shape}")
        arr = arr.astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() >= self.ctx.n_pool):
            raise ValueError(f"{where}: the selection holds rows outside the pool [0, {self.ctx.n_pool})")
        if np.unique(arr).size != arr.size:
            raise ValueError(f"{where}: the selection repeats rows")
        if method.nested and np.isin(arr, labelled).any():
            raise ValueError(f"{where}: the selection holds rows this method already bought")
        if not isinstance(info, dict):
            raise ValueError(f"{where}: the selection info must be a dict, got {type(info).__name__}")
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: the selection info must be plain JSON with finite numbers ({exc})") from exc
        return arr

    def _checked_answers(self, answers: Any, rows: np.ndarray, tag: str) -> np.ndarray:
        """One class number per asked row, each below the number of classes."""
        arr = np.asarray(answers)
        k = int(self.ctx.case.num_classes)
        if arr.shape != rows.shape or (arr.size and arr.dtype.kind not in "iu"):
            raise OracleError(f"the oracle answered batch {tag} with {arr.dtype} shape {arr.shape}; "
                              f"expected {rows.size} class numbers")
        bad = np.flatnonzero((arr < 0) | (arr >= k))
        if bad.size:
            i = int(bad[0])
            raise OracleError(f"the oracle answered batch {tag}: row {int(rows[i])} has label {arr[i].item()!r}, "
                              f"not a class number in [0, {k})")
        return arr.astype(np.int64)

    def _train_and_evaluate(self, method: Method, r: int, *, last: bool) -> None:
        state = self.ctx.state
        rec = state.method(method.name).rounds[r]
        if not (self.config.evaluation.every_round or last or method.base == "random" or method.trains_every_round):
            rec.stage = "done"
            self._save(state)
            return
        rows = state.method(method.name).train_rows(r + 1)
        mode = method.training_mode()
        rec.info["mode"] = mode  # FT or LP-FT (ASVP switches at its trigger)
        key = self._memo_key(rows, mode)
        if key in state.memo and not method.trains_every_round:
            hit = state.memo[key]
            rec.accuracy, rec.train_s, rec.eval_s, rec.info["memo"] = hit["accuracy"], hit["train_s"], hit["eval_s"], True
        else:
            start = time.perf_counter()
            model = self.ctx.train(rows, mode)
            rec.train_s = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            rec.accuracy = self.ctx.evaluate(model)
            rec.eval_s = round(time.perf_counter() - start, 3)
            state.memo[key] = {"accuracy": rec.accuracy, "train_s": rec.train_s, "eval_s": rec.eval_s}
            method.on_trained(r, model)
        rec.stage = "done"
        self._save(state)
        self.echo(f"[{method.name}] round {r}: accuracy {rec.accuracy:.4f} (train {rec.train_s:.1f} s, eval {rec.eval_s:.1f} s)")

    def _memo_key(self, rows: np.ndarray, mode: str) -> str:
        h = hashlib.blake2b(digest_size=12)
        h.update(np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        h.update(mode.encode())
        return h.hexdigest()


def check_distributed(name: str, method: Any, mode: str, *, replicated: bool) -> None:
    """ConfigError unless method ``name`` and its trainer ``mode`` run on several processes
    (``replicated``: every rank trains the target model whole, so any trainer does)."""
    if not method.distributed:
        runs = sorted(n for n, cls in METHODS.items() if cls.distributed)
        raise ConfigError(f"method {name!r} does not run under torchrun (several processes) yet; the methods that do: "
                          f"{runs}. Run it on one process.")
    if not replicated and not getattr(TRAINERS.get(mode), "data_parallel", False):
        parallel = sorted(n for n, f in TRAINERS.items() if getattr(f, "data_parallel", False))
        raise ConfigError(f"method {name!r} trains with {mode!r}, which does not train data-parallel yet; under "
                          f"torchrun set [distributed] target = \"replicated\" (every rank trains the whole model) "
                          f"or use one of {parallel}")


def execute(config: RunConfig, run_dir: "Path | str", *, resume: bool = False, progress: Optional[bool] = None,
            echo: Any = print, case: Optional[Case] = None, group: Any = None) -> RunState:
    """Run (or resume) a configured experiment in ``run_dir``; returns the final state (no report:
    :func:`asvp_fast.loop.run` adds it). ``case``: a user-built :class:`Case` instead of the one
    the config's ``[data]`` names. ``group``: a ``torch.distributed`` process group to run on
    several processes (every rank calls this with the same arguments; see :mod:`.distributed`)."""
    return Runner(config, Path(run_dir), resume=resume, progress=progress, echo=echo, case=case, group=group).run()
