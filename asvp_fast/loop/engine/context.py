"""What the engine hands to methods: the run's config, case, state, cache and training (a
:class:`~..methods.base.MethodContext`), and the case a config names."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
from torch.utils.data import Subset

from ..cases import builtin  # noqa: F401  (registers the built-in cases)
from ..cases.registry import case_type
from ..cases.case import Case
from ..methods import derive_seed
from ..models.backbones.base import Backbone
from ..models.classifier import Classifier, accuracy, predict
from ..models.trainers import needs_teachers, train_classifier
from ..selection.strategies import EMBEDDING_STRATEGIES
from ..models.ranks import barrier, from_root, rank_and_world, shard_range, stage
from ..storage.cache import FeatureCache
from ..storage.manifest import weights_digest
from ..storage.sharded_cache import ShardedFeatureCache, shard_bounds
from ..models.teachers import make_teacher, teacher_collate
from ..storage.teachers import ConcatenatedFeatures, MultiModelCache
from .config import CASE_IN_CODE, ConfigError, RunConfig
from .state import RunState


def build_case(cfg: RunConfig) -> Case:
    """The data case a config names (cheap: lists files / reads the shipped subsets); its fields
    were checked against the case's fields dataclass when the config was read."""
    if cfg.data.case == CASE_IN_CODE:
        raise ConfigError("the config has no [data] table: name the data there (data.case = ...), or pass "
                          "your own case in code: run(config, run_dir, case=...)")
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
    # a distributed run's process group (None: one process); see .distributed
    group: Any = None
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

    def extract(self, cache: FeatureCache, backbone: Backbone, *, version: int, backbone_id: Optional[str] = None,
                collate: Any = None) -> np.ndarray:
        """The pool's features under ``backbone`` in ``cache`` (extracted, or resumed, or read). In a
        distributed run each rank extracts its shard and gets a view of the whole pool. A finished
        version with these very weights is read whichever layout wrote it (one process or any
        number of ranks), so a run resumes with another number of ranks without extracting again.
        ``collate``: the backbone's own batch maker (a teacher's), default the case's."""
        collate = self.case.collate if collate is None else collate
        # one process reads (and checks) its own layout in cache.extract below; only the other
        # layout is looked up here
        done = self._finished(cache, backbone, version, plain=self.group is not None)
        if done is not None:
            return done
        if self.group is not None:
            return self._extract_sharded(cache, backbone, version=version, backbone_id=backbone_id, collate=collate)
        c = self.config.cache
        return cache.extract(backbone, self.case.pool, collate, split="pool", dataset_id=self.case.dataset_id,
                             version=version, backbone_id=backbone_id, dtype=c.dtype, batch_size=c.batch_size,
                             num_workers=c.num_workers, device=c.device, lengths=self.case.pool_lengths,
                             progress=self.progress)

    def _finished(self, cache: FeatureCache, backbone: Backbone, version: int, *, plain: bool) -> Optional[Any]:
        """The finished ``version`` (sharded, or also plain with ``plain``) if it holds
        ``backbone``'s features, else None."""
        sharded = ShardedFeatureCache(cache.root)
        plain = plain and cache.has("pool", version)
        if not plain and not sharded.has("pool", version):
            return None
        digest = weights_digest(backbone)
        if plain and cache.manifest("pool", version).weights == digest:
            return cache.load("pool", version, verify=False, dataset_id=self.case.dataset_id, n=self.n_pool)
        if sharded.has("pool", version) and sharded.manifest("pool", version).weights == digest:
            return sharded.load("pool", version, verify=False, dataset_id=self.case.dataset_id, n=self.n_pool)
        return None

    def _extract_sharded(self, cache: FeatureCache, backbone: Backbone, *, version: int,
                         backbone_id: Optional[str], collate: Any) -> Any:
        sharded = ShardedFeatureCache(cache.root, replace_stale=cache.replace_stale)
        rank, world = rank_and_world(self.group)
        n = self.n_pool
        c = self.config.cache
        lo, hi = shard_bounds(n, world)[rank:rank + 2]
        lengths = None if self.case.pool_lengths is None else np.asarray(self.case.pool_lengths)[lo:hi]
        with stage(self.group, f"feature extraction (cache version {version})"):
            sharded.extract_shard(backbone, self.case.pool, collate, split="pool",
                                  dataset_id=self.case.dataset_id, rank=rank, world=world, version=version,
                                  backbone_id=backbone_id, dtype=c.dtype, batch_size=c.batch_size,
                                  num_workers=c.num_workers, device=c.device, lengths=lengths, progress=self.progress)
        barrier(self.group, "waiting for every rank's feature shard")
        from_root(self.group, "writing the sharded cache's manifest",
                  lambda: sharded.finish("pool", version, world, n=n, dataset_id=self.case.dataset_id))
        return sharded.load("pool", version, verify=False, dataset_id=self.case.dataset_id, n=n)

    def load_features(self, cache: FeatureCache, version: int) -> Any:
        """A finished version of the pool's features in ``cache``, whichever layout wrote it."""
        if cache.has("pool", version):
            return cache.load("pool", version, verify=False)
        return ShardedFeatureCache(cache.root).load("pool", version, verify=False)

    def cache_versions(self, cache: FeatureCache) -> List[int]:
        """The finished versions of the pool in ``cache`` (either layout)."""
        return sorted(set(cache.versions("pool")) | set(ShardedFeatureCache(cache.root).versions("pool")))

    def drop_cache_version(self, cache: FeatureCache, version: int) -> None:
        """Remove a version in both layouts (rank 0, once every rank is past reading it)."""
        def drop() -> None:
            cache.discard("pool", version)
            ShardedFeatureCache(cache.root).discard("pool", version)

        barrier(self.group, "before dropping an old cache version")
        from_root(self.group, "dropping an old cache version", drop)

    def fresh_backbone(self) -> Backbone:
        """A copy of the pre-trained backbone (loaded from disk once per run, copied per training)."""
        if self._pristine is None:
            self._pristine = self.case.make_backbone()
        return copy.deepcopy(self._pristine)

    def teacher_features(self) -> ConcatenatedFeatures:
        """The pool features of ``training.teachers`` (AFT/KD), extracted once into the multi-model
        cache (``cache.teachers_dir``, default ``<run dir>/cache/teachers``) and memory-mapped; in a
        distributed run each rank extracts its shard of every teacher."""
        if self._teachers is None:
            c = self.config.cache
            root = Path(self.config.base_dir) / c.teachers_dir if c.teachers_dir else self.run_dir / "cache" / "teachers"
            start = time.perf_counter()

            teachers = self.config.training.teachers
            if self.group is not None or any(ShardedFeatureCache(root / t).has("pool", 0) for t in teachers):
                self._teachers = self._teacher_features_by_shards(root)
            else:
                self._teachers = MultiModelCache(root).extract(
                    teachers, self.case.pool, self.case.collate, split="pool", dataset_id=self.case.dataset_id,
                    lengths=self.case.pool_lengths, dtype=c.dtype, batch_size=c.batch_size,
                    num_workers=c.num_workers, device=c.device, progress=self.progress)
            # saved with the next state save (0 when the features were already extracted)
            self.state.stages.setdefault("extract_teachers_s", round(time.perf_counter() - start, 3))
        return self._teachers

    def _teacher_features_by_shards(self, root: Path) -> ConcatenatedFeatures:
        """Each teacher's features through :meth:`extract`: sharded over the ranks in a distributed
        run, and a finished cache of either layout read as it is (a run resumed on one process
        reads what its ranks extracted, and the other way round)."""
        parts = []
        names = list(self.config.training.teachers)
        for name in names:
            teacher = make_teacher(name)
            parts.append(self.extract(MultiModelCache(root).cache(name), teacher, version=0,
                                      collate=teacher_collate(teacher, self.case.collate)))
            del teacher
        return ConcatenatedFeatures(parts, names)

    def train(self, rows: np.ndarray, mode: str) -> Classifier:
        """The target model trained on ``rows`` (seeded by the label count: methods share round 0)."""
        cfg = replace(self.config.training, mode=mode)
        with stage(self.group, f"training ({mode}) on {len(rows)} labels"):
            return train_classifier(self.fresh_backbone, self.case.pool, self.case.collate, rows,
                                    self.state.labels_of(rows), self.case.num_classes, cfg,
                                    seed=derive_seed(self.config.seed, "train", len(rows)),
                                    lp_features=self.pool_features_or_none, progress=self.progress,
                                    teacher_features=self.teacher_features() if needs_teachers(mode) else None,
                                    group=self.group if self.config.distributed.target == "ddp" else None)

    def evaluate(self, model: Classifier) -> float:
        """Test accuracy; in a distributed run each rank predicts its shard of the test set."""
        if self.group is None:
            pred = predict(model, self.case.test, self.case.collate, self.config.training,
                           lengths=self.case.test_lengths, progress=self.progress)
            return accuracy(pred, self.case.test_labels)
        import torch
        import torch.distributed as dist

        lo, hi = shard_range(len(self.case.test), self.group)  # type: ignore[arg-type]
        lengths = None if self.case.test_lengths is None else np.asarray(self.case.test_lengths)[lo:hi]
        pred = predict(model, Subset(self.case.test, range(lo, hi)), self.case.collate, self.config.training,
                       lengths=lengths, progress=self.progress)
        labels = np.asarray(self.case.test_labels)
        counts = torch.tensor([float((pred == labels[lo:hi]).sum()), float(hi - lo)], dtype=torch.float64,
                              device=next(model.parameters()).device)
        with stage(self.group, "evaluation"):
            dist.all_reduce(counts, group=self.group)
        return float(counts[0].item()) / float(counts[1].item()) if labels.size else float("nan")


