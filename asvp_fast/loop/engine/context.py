"""What the engine hands to methods: the run's config, case, state, cache and training (a
:class:`~..methods.base.MethodContext`), and the case a config names."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..cases import builtin  # noqa: F401  (registers the built-in cases)
from ..cases.registry import case_type
from ..cases.case import Case
from ..methods import derive_seed
from ..models.backbones.base import Backbone
from ..models.classifier import Classifier, accuracy, predict
from ..models.trainers import needs_teachers, train_classifier
from ..selection.strategies import EMBEDDING_STRATEGIES
from ..storage.cache import FeatureCache
from ..storage.teachers import ConcatenatedFeatures, MultiModelCache
from .config import RunConfig
from .state import RunState


def build_case(cfg: RunConfig) -> Case:
    """The data case a config names (cheap: lists files / reads the shipped subsets); its fields
    were checked against the case's fields dataclass when the config was read."""
    kind = case_type(cfg.data.case)
    fields = cfg.data.fields if cfg.data.fields is not None else kind.fields()
    return kind.build(fields, Path(cfg.base_dir))


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
    _teachers: Optional[ConcatenatedFeatures] = None

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
        return self.config.selection.strategy in EMBEDDING_STRATEGIES

    def extract(self, cache: FeatureCache, backbone: Backbone, *, version: int, backbone_id: Optional[str] = None) -> np.ndarray:
        c = self.config.cache
        return cache.extract(backbone, self.case.pool, self.case.collate, split="pool", dataset_id=self.case.dataset_id,
                             version=version, backbone_id=backbone_id, dtype=c.dtype, batch_size=c.batch_size,
                             num_workers=c.num_workers, device=c.device, lengths=self.case.pool_lengths,
                             progress=self.progress)

    def drop_cache_version(self, cache: FeatureCache, version: int) -> None:
        cache.discard("pool", version)

    def fresh_backbone(self) -> Backbone:
        """A copy of the pre-trained backbone (loaded from disk once per run, copied per training)."""
        if self._pristine is None:
            self._pristine = self.case.make_backbone()
        return copy.deepcopy(self._pristine)

    def teacher_features(self) -> ConcatenatedFeatures:
        """The pool features of ``training.teachers`` (AFT/KD), extracted once into the multi-model
        cache (``cache.teachers_dir``, default ``<run dir>/cache/teachers``) and memory-mapped."""
        if self._teachers is None:
            c = self.config.cache
            root = Path(self.config.base_dir) / c.teachers_dir if c.teachers_dir else self.run_dir / "cache" / "teachers"
            start = time.perf_counter()
            self._teachers = MultiModelCache(root).extract(
                self.config.training.teachers, self.case.pool, self.case.collate, split="pool",
                dataset_id=self.case.dataset_id, lengths=self.case.pool_lengths, dtype=c.dtype, batch_size=c.batch_size,
                num_workers=c.num_workers, device=c.device, progress=self.progress)
            # saved with the next state save (0 when the features were already extracted)
            self.state.stages.setdefault("extract_teachers_s", round(time.perf_counter() - start, 3))
        return self._teachers

    def train(self, rows: np.ndarray, mode: str) -> Classifier:
        """The target model trained on ``rows`` (seeded by the label count: methods share round 0)."""
        cfg = replace(self.config.training, mode=mode)
        return train_classifier(self.fresh_backbone, self.case.pool, self.case.collate, rows,
                                self.state.labels_of(rows), self.case.num_classes, cfg,
                                seed=derive_seed(self.config.seed, "train", len(rows)),
                                lp_features=self.pool_features_or_none, progress=self.progress,
                                teacher_features=self.teacher_features() if needs_teachers(mode) else None)

    def evaluate(self, model: Classifier) -> float:
        pred = predict(model, self.case.test, self.case.collate, self.config.training, lengths=self.case.test_lengths,
                       progress=self.progress)
        return accuracy(pred, self.case.test_labels)


