"""Feature cache: a backbone's features of a dataset in a memory-mapped file plus a manifest.

Layout under the cache root, per split (``pool``, ``test``) and version (0 = the pre-trained
backbone; ASVP writes 1, 2, ... when it refreshes features after fine-tuning)::

    pool.v0.float16.bin        N x dim rows, C order, native little-endian
    pool.v0.manifest.json      backbone id, dataset id, N, dim, dtype, version, checksum

Extraction writes ``*.bin.partial`` plus ``*.progress.json`` (rows done so far, flushed to disk
first), so a crash or Ctrl-C resumes where it stopped; the finished file is renamed into place and
its manifest written last, both atomically, so a manifest always describes a complete file.
Loading checks the manifest against the file (size, checksum) and against what the caller
expects (backbone, dataset, dim), and names the problem when they disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ...core.progress import task_bar
from ...core.devices import torch_device
from ..models.backbones.base import Backbone
from .files import atomic_write_text, file_checksum

CACHE_FORMAT = 1
_DTYPES = {"float16": np.float16, "float32": np.float32}
_CHECKSUM_BLOCK = 16 << 20


class CacheError(RuntimeError):
    """A feature cache file is missing, truncated, corrupt or built for something else."""


@dataclass(frozen=True)
class CacheManifest:
    backbone_id: str
    dataset_id: str
    split: str
    version: int
    n: int
    dim: int
    dtype: str
    checksum: str = ""
    format: int = CACHE_FORMAT
    created: float = 0.0
    seconds: float = 0.0

    def spec(self) -> Dict[str, Any]:
        """The fields that identify what the file holds (everything but checksum and timings)."""
        d = asdict(self)
        for key in ("checksum", "created", "seconds"):
            d.pop(key)
        return d


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"{what} {path} is unreadable or corrupt ({exc}); delete it to rebuild") from exc
    if not isinstance(data, dict):
        raise CacheError(f"{what} {path} is corrupt (not a JSON object); delete it to rebuild")
    return data


def extraction_order(n: int, lengths: Optional[np.ndarray]) -> np.ndarray:
    """Row order for extraction: by length when lengths are known (less padding for text)."""
    if lengths is None:
        return np.arange(n, dtype=np.int64)
    lengths = np.asarray(lengths)
    if lengths.shape != (n,):
        raise ValueError(f"lengths has shape {lengths.shape}, expected ({n},)")
    return np.argsort(lengths, kind="stable").astype(np.int64)


class FeatureCache:
    """Versioned feature files of one dataset under ``root`` (see the module docstring)."""

    def __init__(self, root: "os.PathLike[str] | str") -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------------------
    def data_path(self, split: str, version: int, dtype: str) -> Path:
        return self.root / f"{split}.v{version}.{dtype}.bin"

    def manifest_path(self, split: str, version: int) -> Path:
        return self.root / f"{split}.v{version}.manifest.json"

    def versions(self, split: str) -> List[int]:
        """Versions of ``split`` whose extraction has finished (a manifest exists)."""
        found = []
        for p in self.root.glob(f"{split}.v*.manifest.json"):
            middle = p.name[len(split) + 2 : -len(".manifest.json")]
            if middle.isdigit():
                found.append(int(middle))
        return sorted(found)

    def has(self, split: str, version: int) -> bool:
        return self.manifest_path(split, version).exists()

    # -- loading -------------------------------------------------------------------------------
    def manifest(self, split: str, version: int) -> CacheManifest:
        path = self.manifest_path(split, version)
        if not path.exists():
            raise CacheError(f"no finished feature cache for {split!r} version {version} under {self.root}")
        data = _read_json(path, "feature-cache manifest")
        try:
            manifest = CacheManifest(**data)
        except TypeError as exc:
            raise CacheError(f"feature-cache manifest {path} has unexpected fields ({exc}); delete it to rebuild") from exc
        if manifest.format != CACHE_FORMAT:
            raise CacheError(f"feature-cache manifest {path} has format {manifest.format}, this version reads {CACHE_FORMAT}")
        if manifest.dtype not in _DTYPES:
            raise CacheError(f"feature-cache manifest {path} names dtype {manifest.dtype!r}; expected float16 or float32")
        return manifest

    def load(
        self,
        split: str,
        version: int,
        *,
        verify: bool = True,
        backbone_id: Optional[str] = None,
        dataset_id: Optional[str] = None,
        n: Optional[int] = None,
        dim: Optional[int] = None,
    ) -> np.memmap:
        """The features as a read-only memmap, after checking the manifest and the file.

        ``verify`` recomputes the checksum (reads the whole file once); the size check always
        runs. The keyword expectations, when given, must match the manifest.
        """
        m = self.manifest(split, version)
        for name, want, have in (("backbone", backbone_id, m.backbone_id), ("dataset", dataset_id, m.dataset_id),
                                 ("row count", n, m.n), ("feature dim", dim, m.dim)):
            if want is not None and want != have:
                raise CacheError(
                    f"feature cache {self.manifest_path(split, version)} was built for {name} {have!r}, "
                    f"but {want!r} was asked for; use another cache directory or delete it to rebuild"
                )
        path = self.data_path(split, version, m.dtype)
        if not path.exists():
            raise CacheError(f"feature cache file {path} is missing (its manifest exists); delete the manifest to rebuild")
        expected = m.n * m.dim * np.dtype(_DTYPES[m.dtype]).itemsize
        size = path.stat().st_size
        if size != expected:
            raise CacheError(
                f"feature cache file {path} is truncated or mismatched: {size} bytes, expected {expected} "
                f"({m.n} x {m.dim} {m.dtype}); delete it and its manifest to rebuild"
            )
        if verify and m.checksum and file_checksum(path) != m.checksum:
            raise CacheError(f"feature cache file {path} is corrupt: its checksum does not match the manifest; delete it to rebuild")
        if m.n == 0:
            return np.zeros((0, m.dim), dtype=_DTYPES[m.dtype])  # type: ignore[return-value]
        return np.memmap(path, dtype=_DTYPES[m.dtype], mode="r", shape=(m.n, m.dim))

    # -- writing -------------------------------------------------------------------------------
    def write_array(self, split: str, version: int, features: np.ndarray, *, backbone_id: str, dataset_id: str,
                    dtype: str = "float16") -> np.memmap:
        """Store features computed elsewhere (e.g. chunk by chunk) as a finished cache entry."""
        manifest = CacheManifest(backbone_id=backbone_id, dataset_id=dataset_id, split=split, version=version,
                                 n=int(features.shape[0]), dim=int(features.shape[1]), dtype=_check_dtype(dtype))
        writer = _PartialWriter(self, manifest, order_digest="array")
        out = writer.open()
        for start in range(0, manifest.n, 65536):
            out[start : start + 65536] = features[start : start + 65536]
        return writer.finish(out, seconds=0.0)

    def extract(
        self,
        backbone: Backbone,
        dataset: Any,
        collate: Callable[[List[Any]], Any],
        *,
        split: str,
        dataset_id: str,
        version: int = 0,
        backbone_id: Optional[str] = None,
        dtype: str = "float16",
        batch_size: int = 128,
        num_workers: int = 0,
        device: str = "auto",
        lengths: Optional[np.ndarray] = None,
        flush_every_s: float = 10.0,
        progress: Optional[bool] = None,
        verify: bool = True,
    ) -> np.memmap:
        """Features of every item of ``dataset`` (in dataset order), extracted once and cached.

        Returns the finished cache at once when it exists (after validating it); continues an
        interrupted extraction of the same spec; starts over when the spec changed.
        """
        import torch
        from torch.utils.data import DataLoader, Subset

        n = len(dataset)
        manifest = CacheManifest(backbone_id=backbone_id or backbone.backbone_id, dataset_id=dataset_id, split=split,
                                 version=version, n=n, dim=int(backbone.feature_dim), dtype=_check_dtype(dtype))
        if self.has(split, version):
            return self.load(split, version, verify=verify, backbone_id=manifest.backbone_id,
                             dataset_id=dataset_id, n=n, dim=manifest.dim)
        order = extraction_order(n, lengths)
        writer = _PartialWriter(self, manifest, order_digest=_digest(order))
        out = writer.open()
        done = writer.rows_done
        dev = torch_device(device)
        backbone = backbone.to(dev).eval()
        loader = DataLoader(Subset(dataset, order[done:].tolist()), batch_size=batch_size, shuffle=False,
                            num_workers=num_workers, collate_fn=collate, pin_memory=dev.type == "cuda",
                            persistent_workers=False)
        started = time.perf_counter()
        last_flush = started
        bar: Any = task_bar(n, f"features {split} v{version}", progress, unit="item")
        if bar is not None:
            bar.update(done)
        try:
            with torch.inference_mode(), _autocast(dev):
                for batch in loader:
                    feats = backbone(backbone.to_device(batch, dev)).float()
                    rows = order[done : done + feats.shape[0]]
                    _check_finite(feats, rows, split)
                    out[rows] = _to_cache_dtype(feats.cpu().numpy(), out.dtype, rows, split)
                    done += feats.shape[0]
                    if bar is not None:
                        bar.update(feats.shape[0])
                    now = time.perf_counter()
                    if now - last_flush >= flush_every_s:
                        writer.checkpoint(out, done)
                        last_flush = now
        except BaseException:
            writer.checkpoint(out, done)  # keep what is done: a rerun continues from here
            raise
        finally:
            if bar is not None:
                bar.close()
        if done != n:
            raise CacheError(f"the data loader yielded {done} items for {split!r}, but the dataset has {n}")
        return writer.finish(out, seconds=time.perf_counter() - started)


class _PartialWriter:
    """The ``.partial`` file of one extraction and its progress record."""

    def __init__(self, cache: FeatureCache, manifest: CacheManifest, order_digest: str) -> None:
        self.cache = cache
        self.manifest = manifest
        self.order_digest = order_digest
        final = cache.data_path(manifest.split, manifest.version, manifest.dtype)
        self.partial = final.with_name(final.name + ".partial")
        self.progress = final.with_name(final.name + ".progress.json")
        self.final = final
        self.rows_done = 0

    def _spec(self) -> Dict[str, Any]:
        return {"manifest": self.manifest.spec(), "order": self.order_digest}

    def open(self) -> np.memmap:
        m = self.manifest
        self.cache.root.mkdir(parents=True, exist_ok=True)
        nbytes = m.n * m.dim * np.dtype(_DTYPES[m.dtype]).itemsize
        resumable = self.partial.exists() and self.progress.exists()
        if resumable:
            try:
                record = _read_json(self.progress, "extraction progress file")
                resumable = record.get("spec") == self._spec() and self.partial.stat().st_size == nbytes
                self.rows_done = int(record.get("rows_done", 0)) if resumable else 0
            except CacheError:
                resumable = False
        if not resumable:
            self.rows_done = 0
            with open(self.partial, "wb") as f:
                f.truncate(nbytes)
        shape = (max(m.n, 1), m.dim) if m.n == 0 else (m.n, m.dim)
        if m.n == 0:
            return np.zeros(shape, dtype=_DTYPES[m.dtype])[:0]  # type: ignore[return-value]
        return np.memmap(self.partial, dtype=_DTYPES[m.dtype], mode="r+", shape=shape)

    def checkpoint(self, out: np.ndarray, rows_done: int) -> None:
        """Flush the rows written so far, then record how many there are."""
        if isinstance(out, np.memmap):
            out.flush()
        atomic_write_text(self.progress, json.dumps({"spec": self._spec(), "rows_done": int(rows_done)}))

    def finish(self, out: np.ndarray, seconds: float) -> np.memmap:
        if isinstance(out, np.memmap):
            out.flush()
            del out
        with open(self.partial, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.partial, self.final)
        m = self.manifest
        done = CacheManifest(**{**asdict(m), "checksum": file_checksum(self.final), "created": time.time(),
                                "seconds": round(seconds, 3)})
        atomic_write_text(self.cache.manifest_path(m.split, m.version), json.dumps(asdict(done), indent=1))
        if self.progress.exists():
            self.progress.unlink()
        return self.cache.load(m.split, m.version, verify=False)


def _check_dtype(dtype: str) -> str:
    if dtype not in _DTYPES:
        raise ValueError(f"cache dtype must be 'float16' or 'float32', got {dtype!r}")
    return dtype


def _digest(order: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(order).tobytes(), digest_size=8).hexdigest()


def _check_finite(feats: Any, rows: np.ndarray, split: str) -> None:
    import torch

    bad = ~torch.isfinite(feats).all(dim=1)
    if bool(bad.any()):
        first = int(rows[int(torch.nonzero(bad)[0, 0])])
        raise CacheError(f"the backbone produced NaN/Inf features for {split} item {first}")


def _to_cache_dtype(feats: np.ndarray, dtype: np.dtype, rows: np.ndarray, split: str) -> np.ndarray:
    """Cast to the cache's dtype, refusing values that float16 cannot hold (they would become inf)."""
    if dtype == np.float16:
        big = np.abs(feats).max(axis=1) > float(np.finfo(np.float16).max)
        if big.any():
            first = int(np.argmax(big))
            raise CacheError(
                f"{split} item {int(rows[first])} has features of magnitude {float(np.abs(feats[first]).max()):.3g}, "
                f"beyond float16's range: use cache.dtype = 'float32' (or check the backbone)"
            )
    return feats.astype(dtype, copy=False)


def _autocast(dev: Any) -> Any:
    """fp16 autocast on CUDA (features are cached in fp16 anyway); a no-op context on the CPU."""
    import contextlib

    import torch

    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
