"""Sharded feature caches: in a distributed run each rank extracts and owns a contiguous shard of
the pool; any number of ranks reads the result back (re-sharding on load).

Layout under the cache root, for a split, a version and the W ranks that wrote it::

    shards/pool.v0.of4/rank0/pool.v0.float16.bin   rows [b_0, b_1) as an ordinary FeatureCache
    shards/pool.v0.of4/rank0/pool.v0.manifest.json (its own manifest, partial file and progress
    ...                                             record: each shard resumes on its own)
    pool.v0.shards.json                            the whole: rows, dim, dtype, backbone, dataset,
                                                   weights, and each shard's row range and checksum

Rank r of W owns rows ``shard_bounds(n, W)[r:r + 2]`` (consecutive, sizes differing by at most
one, in rank order: the layout of the ``group=`` selection functions). A shard's dataset id is
the whole's with its row range, so a shard of another layout is never mistaken for it. The whole's
manifest is written (atomically) only once every shard is finished and consistent, by whichever
rank calls :meth:`ShardedFeatureCache.finish` (rank 0 after a barrier, in the loop).

Reading: :meth:`ShardedFeatureCache.load` checks the whole's manifest and every shard against it
(row counts, dims, checksums) and returns :class:`ShardedFeatures`, a row-addressable view over
the shards' memory maps: ``rows(lo, hi)`` is a memmap view when the range lies in one shard,
else a copy of just those rows; ``for_rank(rank, world)`` gives any other layout's shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from .cache import FeatureCache
from .files import UnreadableJSON, atomic_write_text, read_json
from .manifest import DTYPES, CacheError, CacheManifest

__all__ = ["ShardedFeatureCache", "ShardedFeatures", "ShardedManifest", "shard_bounds"]

SHARDED_FORMAT = 1
_MAX_RANKS = 1 << 16


def shard_bounds(n: int, world: int) -> List[int]:
    """Row boundaries of ``world`` consecutive shards of ``n`` rows: shard r is [b[r], b[r + 1])."""
    if not isinstance(world, int) or isinstance(world, bool) or not 1 <= world <= _MAX_RANKS:
        raise ValueError(f"world must be an int in [1, {_MAX_RANKS}], got {world!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    return [r * n // world for r in range(world + 1)]


@dataclass(frozen=True)
class ShardedManifest:
    """The whole of a sharded cache entry (``<split>.v<version>.shards.json``)."""

    backbone_id: str
    dataset_id: str
    split: str
    version: int
    n: int
    dim: int
    dtype: str
    weights: str
    bounds: Tuple[int, ...]      # W + 1 row boundaries
    checksums: Tuple[str, ...]   # W shard checksums
    format: int = SHARDED_FORMAT

    @property
    def world(self) -> int:
        return len(self.bounds) - 1


def _parse_sharded(data: Any, path: Path) -> ShardedManifest:
    """A validated :class:`ShardedManifest` from untrusted JSON (CacheError naming the field)."""
    def bad(field: str, why: str) -> CacheError:
        return CacheError(f"sharded-cache manifest {path}: {field} {why}; delete it to rebuild")

    if not isinstance(data, dict):
        raise bad("the file", "is not a JSON object")
    if data.get("format") != SHARDED_FORMAT:
        raise bad("format", f"is {data.get('format')!r}, expected {SHARDED_FORMAT}")
    for field in ("backbone_id", "dataset_id", "split", "dtype", "weights"):
        if not isinstance(data.get(field), str):
            raise bad(field, "is missing or not a string")
    for field in ("version", "n", "dim"):
        value = data.get(field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(field, "is missing or not a non-negative int")
    if data["dtype"] not in DTYPES:
        raise bad("dtype", f"is {data['dtype']!r}, not one of {sorted(DTYPES)}")
    bounds, checksums = data.get("bounds"), data.get("checksums")
    if (not isinstance(bounds, list) or not 2 <= len(bounds) <= _MAX_RANKS + 1
            or any(not isinstance(b, int) or isinstance(b, bool) for b in bounds)):
        raise bad("bounds", "is not a list of 2 or more ints")
    if bounds != shard_bounds(data["n"], len(bounds) - 1):
        raise bad("bounds", f"are not the consecutive shards of {data['n']} rows")
    if not isinstance(checksums, list) or len(checksums) != len(bounds) - 1 or any(
            not isinstance(c, str) or not c for c in checksums):
        raise bad("checksums", "are not one non-empty string per shard")
    known = {f for f in ShardedManifest.__dataclass_fields__}
    return ShardedManifest(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})


class ShardedFeatures:
    """The rows of a sharded cache seen as one (n, dim) matrix, read shard by shard on demand."""

    def __init__(self, parts: List[np.ndarray], bounds: List[int]) -> None:
        self.parts, self.bounds = parts, bounds
        dims = {int(p.shape[1]) for p in parts}
        self.dtype = parts[0].dtype
        self.shape = (bounds[-1], dims.pop() if dims else 0)

    @property
    def ndim(self) -> int:
        return 2

    def __len__(self) -> int:
        return self.shape[0]

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi): a memmap view when they lie in one shard, else a copy of just them."""
        if not 0 <= lo <= hi <= self.shape[0]:
            raise IndexError(f"rows [{lo}, {hi}) are outside [0, {self.shape[0]})")
        pieces = []
        for part, start, stop in zip(self.parts, self.bounds[:-1], self.bounds[1:]):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                pieces.append(part[a - start:b - start])
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate(pieces) if pieces else np.zeros((0, self.shape[1]), dtype=self.dtype)

    def for_rank(self, rank: int, world: int) -> np.ndarray:
        """The shard rank ``rank`` of a ``world``-rank run owns (any W, whatever W wrote the cache)."""
        bounds = shard_bounds(self.shape[0], world)
        if not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank!r}")
        return self.rows(bounds[rank], bounds[rank + 1])

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, slice) and index.step in (None, 1):
            lo, hi, _ = index.indices(self.shape[0])
            return self.rows(lo, max(lo, hi))
        rows = np.arange(self.shape[0])[index]
        if np.ndim(rows) == 0:
            return self.rows(int(rows), int(rows) + 1)[0]
        owner = np.searchsorted(np.asarray(self.bounds[1:]), rows, side="right")
        out = np.empty((rows.size, self.shape[1]), dtype=self.dtype)
        for s in np.unique(owner):
            where = owner == s
            out[where] = self.parts[s][rows[where] - self.bounds[s]]
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        whole = self.rows(0, self.shape[0])
        return np.asarray(whole, dtype=dtype)


class ShardedFeatureCache:
    """Extraction by shards and re-sharded reading (see the module docstring)."""

    def __init__(self, root: "Path | str", *, replace_stale: bool = False) -> None:
        self.root = Path(root)
        self.replace_stale = replace_stale  # passed to each shard's FeatureCache

    def manifest_path(self, split: str, version: int) -> Path:
        return self.root / f"{split}.v{int(version)}.shards.json"

    def shard_cache(self, split: str, version: int, rank: int, world: int) -> FeatureCache:
        """The ordinary cache holding rank ``rank`` of ``world``'s rows."""
        return FeatureCache(self.root / "shards" / f"{split}.v{int(version)}.of{int(world)}" / f"rank{int(rank)}",
                            replace_stale=self.replace_stale)

    def versions(self, split: str) -> List[int]:
        """Versions of ``split`` whose whole manifest exists (all shards finished)."""
        found = []
        for p in self.root.glob(f"{split}.v*.shards.json"):
            middle = p.name[len(split) + 2 : -len(".shards.json")]
            if middle.isascii() and middle.isdigit():
                found.append(int(middle))
        return sorted(found)

    def discard(self, split: str, version: int) -> None:
        """Remove a version: the whole's manifest first (it must never describe missing shards),
        then every layout's shards of it."""
        import shutil

        path = self.manifest_path(split, version)
        if path.exists():
            path.unlink()
        for layout in (self.root / "shards").glob(f"{split}.v{int(version)}.of*"):
            shutil.rmtree(layout, ignore_errors=True)

    @staticmethod
    def shard_dataset_id(dataset_id: str, lo: int, hi: int) -> str:
        return f"{dataset_id}[{lo}:{hi}]"

    def has(self, split: str, version: int) -> bool:
        return self.manifest_path(split, version).exists()

    def extract_shard(self, backbone: Any, dataset: Any, collate: Callable[[List[Any]], Any], *, split: str,
                      dataset_id: str, rank: int, world: int, version: int = 0, **options: Any) -> np.ndarray:
        """Rank ``rank`` of ``world`` extracts its rows of ``dataset`` into its own shard cache
        (resumable after a crash, like :meth:`FeatureCache.extract`, whose ``options`` it takes)."""
        from torch.utils.data import Subset

        bounds = shard_bounds(len(dataset), world)
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world:
            raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
        lo, hi = bounds[rank], bounds[rank + 1]
        cache = self.shard_cache(split, version, rank, world)
        return cache.extract(backbone, Subset(dataset, range(lo, hi)), collate, split=split,
                             dataset_id=self.shard_dataset_id(dataset_id, lo, hi), version=version, **options)

    def finish(self, split: str, version: int, world: int, *, n: int, dataset_id: str) -> ShardedManifest:
        """Writes the whole's manifest once every shard is finished and consistent (CacheError
        naming the first shard that is not)."""
        bounds = shard_bounds(n, world)
        manifests: List[CacheManifest] = []
        for rank in range(world):
            cache = self.shard_cache(split, version, rank, world)
            if not cache.has(split, version):
                raise CacheError(f"shard {rank} of {world} of {split!r} v{version} is not finished "
                                 f"({cache.root}); run its extraction (it resumes where it stopped)")
            m = cache.manifest(split, version)
            lo, hi = bounds[rank], bounds[rank + 1]
            if m.n != hi - lo or m.dataset_id != self.shard_dataset_id(dataset_id, lo, hi):
                raise CacheError(f"shard {rank} of {world} holds {m.n} rows of {m.dataset_id!r}, expected rows "
                                 f"[{lo}, {hi}) of {dataset_id!r}")
            manifests.append(m)
        first = manifests[0]
        for rank, m in enumerate(manifests):
            for field in ("backbone_id", "dim", "dtype", "weights"):
                if getattr(m, field) != getattr(first, field):
                    raise CacheError(f"shard {rank} of {world} has {field} {getattr(m, field)!r} but shard 0 has "
                                     f"{getattr(first, field)!r}: the ranks extracted with different models")
        whole = ShardedManifest(backbone_id=first.backbone_id, dataset_id=dataset_id, split=split, version=int(version),
                                n=n, dim=first.dim, dtype=first.dtype, weights=first.weights, bounds=tuple(bounds),
                                checksums=tuple(m.checksum for m in manifests))
        atomic_write_text(self.manifest_path(split, version), _dumps(whole))
        return whole

    def manifest(self, split: str, version: int) -> ShardedManifest:
        path = self.manifest_path(split, version)
        if not path.exists():
            raise CacheError(f"no finished sharded feature cache for {split!r} version {version} under {self.root}")
        try:
            data = read_json(path, max_bytes=16 << 20)
        except UnreadableJSON as exc:
            raise CacheError(f"sharded-cache manifest {path} is unreadable or corrupt: it {exc}; delete it to rebuild") from exc
        return _parse_sharded(data, path)

    def load(self, split: str, version: int, *, verify: bool = True, backbone_id: Optional[str] = None,
             dataset_id: Optional[str] = None, n: Optional[int] = None, dim: Optional[int] = None) -> ShardedFeatures:
        """Every shard, checked against the whole's manifest and the caller's expectations."""
        whole = self.manifest(split, version)
        for name, want, have in (("backbone", backbone_id, whole.backbone_id), ("dataset", dataset_id, whole.dataset_id),
                                 ("row count", n, whole.n), ("feature dim", dim, whole.dim)):
            if want is not None and want != have:
                raise CacheError(f"sharded feature cache {self.manifest_path(split, version)} was built for {name} "
                                 f"{have!r}, but {want!r} was asked for")
        parts = []
        for rank, (lo, hi) in enumerate(zip(whole.bounds[:-1], whole.bounds[1:])):
            cache = self.shard_cache(split, version, rank, whole.world)
            if cache.has(split, version) and cache.manifest(split, version).checksum != whole.checksums[rank]:
                raise CacheError(f"shard {rank} of {whole.world} ({cache.root}) is not the one the whole's manifest "
                                 "records (its checksum differs); delete the cache to rebuild")
            parts.append(cache.load(split, version, verify=verify, backbone_id=whole.backbone_id, n=hi - lo,
                                    dim=whole.dim, dataset_id=self.shard_dataset_id(whole.dataset_id, lo, hi)))
        return ShardedFeatures(parts, list(whole.bounds))


def _dumps(m: ShardedManifest) -> str:
    import json

    data: Dict[str, Any] = asdict(m)
    data["bounds"], data["checksums"] = list(m.bounds), list(m.checksums)
    return json.dumps(data, indent=1)
