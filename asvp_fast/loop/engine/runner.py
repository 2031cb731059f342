"""A configured run: feature cache → rounds of selection, labelling, training → results.

``run(config, run_dir)`` writes into ``run_dir``: ``config.json`` (the checked config), ``cache/``
(pre-trained features), ``state.json`` after every step (labels bought, rounds, accuracies,
timings), ``labels/`` (CSV batches of the file oracle), and at the end ``results.md`` with the
PNG plots. With ``resume=True`` it continues from the state file: rounds already done are kept,
labels already bought are never asked for again, and because every random choice is seeded from
the config's seed and the round, the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

from ..storage.cache import FeatureCache, atomic_write_text
from .config import ConfigError, RunConfig, check_budget
from .oracle import FileOracle, SimulatedOracle
from ..methods.base import Method, derive_seed, make_method
from .state import RunState, StateError, config_differences, remove_if_exists
from ..models.training import Classifier, accuracy, predict, train_classifier
from ..cases.case import Backbone, Case

log = logging.getLogger("asvp_fast")


def build_case(cfg: RunConfig) -> Case:
    """The data case a config names (cheap: lists files / reads the shipped subsets)."""

    d = cfg.data
    sizes = {k: v for k, v in (("pool_size", d.pool_size), ("test_size", d.test_size)) if v is not None}
    if d.case == "wordnet-nouns":
        return builtin.wordnet_nouns_case(**sizes, seed=d.seed, max_length=d.max_length)
    if d.case == "fashion-mnist":
        return builtin.fashion_mnist_case(**sizes, seed=d.seed, **({"image_size": d.image_size} if d.image_size else {}))
    if d.case == "synthetic":
        return builtin.synthetic_case(**sizes, seed=d.seed)
    return builtin.imagefolder_case(str(cfg.path(d.train_dir)), str(cfg.path(d.test_dir)),
                                 checkpoint=str(cfg.path(d.checkpoint)) if d.checkpoint else None,
                                 image_size=d.image_size or 224, pool_size=d.pool_size, test_size=d.test_size, seed=d.seed)


@dataclass
class RunContext:
    """What methods see of the run."""

    config: RunConfig
    case: Case
    run_dir: Path
    state: RunState
    progress: Optional[bool]
    pool_features_or_none: Optional[np.ndarray] = None
    _pristine: Optional[Backbone] = None

    @property
    def n_pool(self) -> int:
        return len(self.case.pool)  # type: ignore[arg-type]

    @property
    def work_dir(self) -> Path:
        path = self.run_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def pool_features(self) -> np.ndarray:
        if self.pool_features_or_none is None:
            raise RuntimeError("the pre-trained feature cache was not extracted for this run")
        return self.pool_features_or_none

    @property
    def needs_embedding(self) -> bool:
        return self.config.selection.strategy in ("coreset", "badge", "activeft")

    def extract(self, cache: FeatureCache, backbone: Backbone, *, version: int, backbone_id: Optional[str] = None) -> np.ndarray:
        c = self.config.cache
        return cache.extract(backbone, self.case.pool, self.case.collate, split="pool", dataset_id=self.case.dataset_id,
                             version=version, backbone_id=backbone_id, dtype=c.dtype, batch_size=c.batch_size,
                             num_workers=c.num_workers, device=c.device, lengths=self.case.pool_lengths,
                             progress=self.progress)

    def drop_cache_version(self, cache: FeatureCache, version: int) -> None:
        m = cache.manifest(version=version, split="pool")
        remove_if_exists(cache.manifest_path("pool", version))
        remove_if_exists(cache.data_path("pool", version, m.dtype))

    def fresh_backbone(self) -> Backbone:
        """A copy of the pre-trained backbone (loaded from disk once per run, copied per training)."""
        if self._pristine is None:
            self._pristine = self.case.make_backbone()
        return copy.deepcopy(self._pristine)

    def train(self, rows: np.ndarray, mode: str) -> Classifier:
        """The target model trained on ``rows`` (seeded by the label count: methods share round 0)."""
        from dataclasses import replace

        cfg = replace(self.config.training, mode=mode)
        return train_classifier(self.fresh_backbone, self.case.pool, self.case.collate, rows,
                                self.state.labels_of(rows), self.case.num_classes, cfg,
                                seed=derive_seed(self.config.seed, "train", len(rows)),
                                lp_features=self.pool_features_or_none, progress=self.progress)

    def evaluate(self, model: Classifier) -> float:
        pred = predict(model, self.case.test, self.case.collate, self.config.training, lengths=self.case.test_lengths,
                       progress=self.progress)
        return accuracy(pred, self.case.test_labels)


class Runner:
    def __init__(self, config: RunConfig, run_dir: Path, *, resume: bool = False, progress: Optional[bool] = None,
                 echo: Any = print) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.echo = echo
        self.state_path = self.run_dir / "state.json"

    # -- set-up (everything that can fail on a bad config happens here, before any work) ------
    def prepare(self) -> RunContext:
        cfg = self.config
        case = build_case(cfg)
        check_budget(cfg, len(case.pool))  # type: ignore[arg-type]
        if cfg.oracle.kind == "simulated" and case.pool_labels is None:
            raise ConfigError("oracle.kind = 'simulated' needs pool labels, and this data has none; use oracle.kind = 'file'")
        state = self._open_state()
        ctx = RunContext(cfg, case, self.run_dir, state, self.progress)
        self.methods = [make_method(spec, ctx) for spec in cfg.methods]
        if cfg.oracle.kind == "file":
            self.oracle: Any = FileOracle(self.run_dir / cfg.oracle.dir, case.class_names, case.describe)
        else:
            self.oracle = SimulatedOracle(case.pool_labels)  # type: ignore[arg-type]
        return ctx

    def _open_state(self) -> RunState:
        cfg_dict = self.config.digest_dict()
        if self.state_path.exists():
            if not self.resume:
                raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume or choose another output directory")
            state = RunState.load(self.state_path)
            changed = config_differences(state.config, cfg_dict)
            if changed:
                raise StateError(f"the config changed since this run started ({', '.join(changed)}); "
                                 f"resume with the original config or start a new run directory")
            return state
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "config.json", json.dumps(cfg_dict, indent=1))
        state = RunState(config=cfg_dict)
        state.save(self.state_path)
        return state

    # -- the run -------------------------------------------------------------------------------
    def run(self) -> RunState:
        ctx = self.prepare()
        self.ctx = ctx
        if any(m.uses_cache for m in self.methods) or self.config.training.mode == "lp-ft" or any(m.mode == "lp-ft" for m in self.methods):
            start = time.perf_counter()
            ctx.pool_features_or_none = ctx.extract(FeatureCache(self.run_dir / "cache"), ctx.fresh_backbone(), version=0)
            if "extract_pool_s" not in ctx.state.stages:
                ctx.state.stages["extract_pool_s"] = round(time.perf_counter() - start, 3)
                ctx.state.save(self.state_path)
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
                self._acquire(method, r, target)
            self._train_and_evaluate(method, r, last=r == len(budgets) - 1)

    def _acquire(self, method: Method, r: int, target: int) -> None:
        from .state import RoundRecord

        state = self.ctx.state
        mstate = state.method(method.name)
        labelled = mstate.labelled()
        start = time.perf_counter()
        if r == 0:
            picked, info = method.initial(target), {}  # type: Tuple[np.ndarray, Dict[str, Any]]
        else:
            picked, info = method.select(r, labelled if method.nested else mstate.train_rows(r), target - len(labelled) if method.nested else target)
        select_s = time.perf_counter() - start if r > 0 else 0.0
        if method.nested:
            new, train_rows = picked, None
        else:
            new = np.setdiff1d(picked, labelled)
            train_rows = [int(x) for x in picked]
        unknown = np.array([x for x in new if int(x) not in state.labels], dtype=np.int64)
        if unknown.size:
            answers = self.oracle.query(unknown, f"{method.slug}-round{r:03d}")
            state.labels.update({int(x): int(y) for x, y in zip(unknown, answers)})
        mstate.rounds.append(RoundRecord(round=r, n_labels=int(len(train_rows) if train_rows is not None else len(labelled) + len(new)),
                                         new=[int(x) for x in new], train_rows=train_rows, select_s=round(select_s, 3), info=info))
        state.save(self.state_path)  # labels bought are on disk before any training starts
        self.echo(f"[{method.name}] round {r}: {mstate.rounds[-1].n_labels} labels (selection {select_s:.1f} s)")

    def _train_and_evaluate(self, method: Method, r: int, *, last: bool) -> None:
        state = self.ctx.state
        rec = state.method(method.name).rounds[r]
        if not (self.config.evaluation.every_round or last or method.base == "random" or method.trains_every_round):
            rec.stage = "done"
            state.save(self.state_path)
            return
        rows = state.method(method.name).train_rows(r + 1)
        rec.info["mode"] = method.mode  # FT or LP-FT (ASVP switches at its trigger)
        key = self._memo_key(rows, method.mode)
        if key in state.memo and not method.trains_every_round:
            hit = state.memo[key]
            rec.accuracy, rec.train_s, rec.eval_s, rec.info["memo"] = hit["accuracy"], hit["train_s"], hit["eval_s"], True
        else:
            start = time.perf_counter()
            model = self.ctx.train(rows, method.mode)
            rec.train_s = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            rec.accuracy = self.ctx.evaluate(model)
            rec.eval_s = round(time.perf_counter() - start, 3)
            state.memo[key] = {"accuracy": rec.accuracy, "train_s": rec.train_s, "eval_s": rec.eval_s}
            method.on_trained(r, model)
        rec.stage = "done"
        state.save(self.state_path)
        self.echo(f"[{method.name}] round {r}: accuracy {rec.accuracy:.4f} (train {rec.train_s:.1f} s, eval {rec.eval_s:.1f} s)")

    def _memo_key(self, rows: np.ndarray, mode: str) -> str:
        import hashlib

        h = hashlib.blake2b(digest_size=12)
        h.update(np.sort(np.asarray(rows, dtype=np.int64)).tobytes())
        h.update(mode.encode())
        return h.hexdigest()


def run(config: RunConfig, run_dir: "Path | str", *, resume: bool = False, progress: Optional[bool] = None,
        echo: Any = print, report: bool = True) -> RunState:
    """Run (or resume) a configured experiment in ``run_dir``; returns the final state."""
    runner = Runner(config, Path(run_dir), resume=resume, progress=progress, echo=echo)
    state = runner.run()
    if report:
        from ..reporting.report import write_report

        write_report(state, config, Path(run_dir), echo=echo)
    return state


def copy_config_file(src: Path, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / f"config{src.suffix}"
    if not target.exists():
        shutil.copyfile(src, target)


def method_names(state: RunState) -> List[str]:
    return list(state.methods)
