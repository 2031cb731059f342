"""Feature cache: a backbone's features of a dataset in a memory-mapped file plus a manifest.

Layout under the cache root, per split (``pool``, ``test``) and version (0 = the pre-trained
backbone; ASVP writes 1, 2, ... when it refreshes features after fine-tuning)::

    pool.v0.float16.bin        N x dim rows, C order, native little-endian
    pool.v0.manifest.json      backbone id, dataset id, N, dim, dtype, version, checksum, weights

Extraction writes ``*.bin.partial`` plus ``*.progress.json`` (rows done so far, flushed to disk
first), so a crash or Ctrl-C resumes where it stopped, if the backbone's weights are bit-identical
(their :func:`weights_digest` is part of the progress record, whatever the backbone's name); the
finished file is renamed into place and its manifest written last, both atomically, so a
manifest always describes a complete file. The files are untrusted input: loading checks every
manifest field (:func:`parse_manifest`), the file against the manifest (size, checksum: a
manifest without one fails verification) and against what the caller expects (backbone,
dataset, dim), and names the problem when they disagree, always as a :class:`CacheError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ...core.progress import task_bar
from ...core.devices import torch_device
from ..models.backbones.base import Backbone
from .files import UnreadableJSON, atomic_write_text, file_checksum, read_json, remove_if_exists
from .manifest import CACHE_FORMAT, DTYPES, REBUILD, CacheError, CacheManifest, parse_manifest, weights_digest

__all__ = ["CACHE_FORMAT", "CacheError", "CacheManifest", "FeatureCache", "extraction_order", "parse_manifest",
           "weights_digest"]

_DTYPES = DTYPES
_REBUILD = REBUILD
_MANIFEST_MAX_BYTES = 1 << 20
_VERSION = re.compile(r"0|[1-9][0-9]{0,17}")  # ASCII digits only, no leading zeros


def _read_json(path: Path, what: str) -> Dict[str, Any]:
    try:
        data = read_json(path, max_bytes=_MANIFEST_MAX_BYTES)
    except UnreadableJSON as exc:
        raise CacheError(f"{what} {path} is unreadable or corrupt: it {exc}{_REBUILD}") from exc
    if not isinstance(data, dict):
        raise CacheError(f"{what} {path} is corrupt (not a JSON object){_REBUILD}")
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
    """Versioned feature files of one dataset under ``root`` (see the module docstring).

    ``replace_stale``: for caches of derived weights (fine-tuned backbones), which the run
    re-creates deterministically: a finished version that :meth:`extract` finds built from other
    weights (or damaged) is a leftover of an interrupted attempt and is replaced, instead of
    being an error as it is for the pre-trained cache (which only the user can judge).
    """

    def __init__(self, root: "os.PathLike[str] | str", *, replace_stale: bool = False) -> None:
        self.root = Path(root)
        self.replace_stale = replace_stale

    # -- paths ---------------------------------------------------------------------------------
    def data_path(self, split: str, version: int, dtype: str) -> Path:
        return self.root / f"{split}.v{version}.{dtype}.bin"

    def manifest_path(self, split: str, version: int) -> Path:
        return self.root / f"{split}.v{version}.manifest.json"

    def versions(self, split: str) -> List[int]:
        """Versions of ``split`` whose extraction has finished (a manifest exists); files whose
        version is not a plain ASCII number are ignored."""
        found = []
        for p in self.root.glob(f"{split}.v*.manifest.json"):
            middle = p.name[len(split) + 2 : -len(".manifest.json")]
            if _VERSION.fullmatch(middle):
                found.append(int(middle))
        return sorted(found)

    def has(self, split: str, version: int) -> bool:
        return self.manifest_path(split, version).exists()

    def discard(self, split: str, version: int) -> None:
        """Remove a version: its manifest first (a manifest must never describe a missing file),
        then its data and any partial extraction of it."""
        remove_if_exists(self.manifest_path(split, version))
        for dtype in _DTYPES:
            final = self.data_path(split, version, dtype)
            for path in (final, final.with_name(final.name + ".partial"), final.with_name(final.name + ".progress.json")):
                remove_if_exists(path)

    # -- loading -------------------------------------------------------------------------------
    def manifest(self, split: str, version: int) -> CacheManifest:
        path = self.manifest_path(split, version)
        if not path.exists():
            raise CacheError(f"no finished feature cache for {split!r} version {version} under {self.root}")
        return parse_manifest(_read_json(path, "feature-cache manifest"), path, split, version)

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
        weights: Optional[str] = None,
    ) -> np.memmap:
        """The features as a read-only memmap, after checking the manifest and the file.

        ``verify`` recomputes the checksum (reads the whole file once; a manifest without a
        checksum then fails); the size check always runs. The keyword expectations, when given,
        must match the manifest (``weights``: only when the manifest records one).
        """
        m = self.manifest(split, version)
        for name, want, have in (("backbone", backbone_id, m.backbone_id), ("dataset", dataset_id, m.dataset_id),
                                 ("row count", n, m.n), ("feature dim", dim, m.dim),
                                 ("weights", weights if m.weights else None, m.weights)):
            if want is not None and want != have:
                raise CacheError(
                    f"feature cache {self.manifest_path(split, version)} was built for {name} {have!r}, "
                    f"but {want!r} was asked for; use another cache directory or delete it to rebuild"
                )
        path = self.data_path(split, version, m.dtype)
        expected = m.n * m.dim * np.dtype(_DTYPES[m.dtype]).itemsize
        try:
            if not path.is_file():
                raise CacheError(f"feature cache file {path} is missing (its manifest exists); delete the manifest to rebuild")
            size = path.stat().st_size
            if size != expected:
                raise CacheError(
                    f"feature cache file {path} is truncated or mismatched: {size} bytes, expected {expected} "
                    f"({m.n} x {m.dim} {m.dtype}); delete it and its manifest to rebuild"
                )
            if verify and not m.checksum:
                raise CacheError(f"feature-cache manifest {self.manifest_path(split, version)}: checksum is missing or "
                                 f"empty, so {path} cannot be verified{_REBUILD}")
            if verify and file_checksum(path) != m.checksum:
                raise CacheError(f"feature cache file {path} is corrupt: its checksum does not match the manifest{_REBUILD}")
            if m.n == 0:
                return np.zeros((0, m.dim), dtype=_DTYPES[m.dtype])  # type: ignore[return-value]
            return np.memmap(path, dtype=_DTYPES[m.dtype], mode="r", shape=(m.n, m.dim))
        except (OSError, ValueError) as exc:
            raise CacheError(f"feature cache file {path} cannot be read ({type(exc).__name__}: {exc}){_REBUILD}") from exc

    # -- writing -------------------------------------------------------------------------------
    def write_array(self, split: str, version: int, features: Any, *, backbone_id: str, dataset_id: str,
                    dtype: str = "float16", weights: str = "") -> np.memmap:
        """Store features computed elsewhere (e.g. chunk by chunk) as a finished cache entry.

        Refuses what :meth:`extract` and :meth:`load` would refuse: anything but a 2-D array of
        real numbers, NaN or infinite values, values beyond ``dtype``'s range (float16 would store
        them as inf), and malformed names, with a :class:`CacheError` naming the first bad row.
        """
        if not isinstance(features, np.ndarray):
            try:
                features = np.asarray(features)
            except (TypeError, ValueError) as exc:
                raise CacheError(f"features for {split!r} must be a 2-D numeric array ({exc})") from exc
        if features.ndim != 2:
            raise CacheError(f"features for {split!r} must be a 2-D array (rows x dim), got shape {features.shape}")
        if features.dtype.kind not in "fiu":
            raise CacheError(f"features for {split!r} must be real numbers, got dtype {features.dtype}")
        if features.shape[1] < 1:
            raise CacheError(f"features for {split!r} have no columns (shape {features.shape})")
        manifest = _new_manifest(backbone_id, dataset_id, split, version, int(features.shape[0]), int(features.shape[1]),
                                 dtype, weights)
        writer = _PartialWriter(self, manifest, order_digest="array")
        out = writer.open(resume=False)
        step = max(1, (8 << 20) // (manifest.dim * 8))
        try:
            for start in range(0, manifest.n, step):
                chunk = np.asarray(features[start : start + step])
                if chunk.dtype.kind in "iu":
                    chunk = chunk.astype(np.float64)
                rows = np.arange(start, start + chunk.shape[0])
                bad = ~np.isfinite(chunk).all(axis=1)
                if bad.any():
                    raise CacheError(f"features for {split!r}: row {int(rows[np.argmax(bad)])} has NaN or infinite values")
                out[start : start + chunk.shape[0]] = _to_cache_dtype(chunk, out.dtype, rows, split, noun="row")
        except BaseException:
            del out
            remove_if_exists(writer.partial)  # nothing half-written stays behind
            raise
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
        interrupted extraction of the same spec and the same weights (their :func:`weights_digest`);
        starts over when either changed.
        """
        import torch
        from torch.utils.data import DataLoader, Subset

        n = len(dataset)
        manifest = _new_manifest(backbone_id or backbone.backbone_id, dataset_id, split, version, n,
                                 int(backbone.feature_dim), dtype, weights_digest(backbone))
        if self.has(split, version):
            expect = dict(backbone_id=manifest.backbone_id, dataset_id=dataset_id, n=n, dim=manifest.dim)
            if not self.replace_stale:
                return self.load(split, version, verify=verify, **expect)  # type: ignore[arg-type]
            try:
                return self.load(split, version, verify=verify, weights=manifest.weights or None, **expect)  # type: ignore[arg-type]
            except CacheError:
                self.discard(split, version)  # a leftover of an interrupted attempt with other weights
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


def _new_manifest(backbone_id: Any, dataset_id: Any, split: Any, version: Any, n: int, dim: int, dtype: str,
                  weights: str) -> CacheManifest:
    """The manifest of a cache entry about to be written, checked as a reader would check it."""
    m = CacheManifest(backbone_id=backbone_id, dataset_id=dataset_id, split=split, version=version, n=n, dim=dim,
                      dtype=_check_dtype(dtype), weights=weights)
    parse_manifest(asdict(m), f"for {split!r} version {version}", what="feature cache to write", hint="")
    return m


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

    def _rows_resumable(self, nbytes: int) -> int:
        """Rows already written by an interrupted extraction of exactly this spec (and weights),
        else 0: any doubt about the progress record means starting over."""
        try:
            record = _read_json(self.progress, "extraction progress file")
            done = record.get("rows_done")
            if isinstance(done, bool) or not isinstance(done, int) or not 0 <= done <= self.manifest.n:
                return 0
            if record.get("check") != self._check(done) or self.partial.stat().st_size != nbytes:
                return 0  # another spec, other weights, or a damaged record
            return done
        except (CacheError, OSError):
            return 0

    def _check(self, rows_done: int) -> str:
        """Seals the progress record: a damaged one (say, rows_done raised by a bit flip) does not
        match it, so the extraction starts over instead of trusting rows never written."""
        text = json.dumps({"spec": self._spec(), "rows_done": int(rows_done)}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()

    def open(self, resume: bool = True) -> np.memmap:
        m = self.manifest
        self.cache.root.mkdir(parents=True, exist_ok=True)
        nbytes = m.n * m.dim * np.dtype(_DTYPES[m.dtype]).itemsize
        resumable = resume and self.partial.exists() and self.progress.exists()
        self.rows_done = self._rows_resumable(nbytes) if resumable else 0
        if self.rows_done == 0:
            remove_if_exists(self.progress)
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
        atomic_write_text(self.progress, json.dumps({"spec": self._spec(), "rows_done": int(rows_done),
                                                     "check": self._check(rows_done)}))

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
        remove_if_exists(self.progress)
        return self.cache.load(m.split, m.version, verify=False)


def _check_dtype(dtype: str) -> str:
    if not isinstance(dtype, str) or dtype not in _DTYPES:
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


def _to_cache_dtype(feats: np.ndarray, dtype: np.dtype, rows: np.ndarray, split: str, noun: str = "item") -> np.ndarray:
    """Cast to the cache's dtype, refusing values that it cannot hold (they would become inf)."""
    limit = float(np.finfo(dtype).max)
    if feats.size:
        big = np.abs(feats).max(axis=1) > limit
        if big.any():
            first = int(np.argmax(big))
            advice = "use cache.dtype = 'float32' (or check the backbone)" if dtype == np.float16 else "rescale the features"
            raise CacheError(
                f"{split} {noun} {int(rows[first])} has features of magnitude {float(np.abs(feats[first]).max()):.3g}, "
                f"beyond {np.dtype(dtype).name}'s range: {advice}"
            )
    return feats.astype(dtype, copy=False)


def _autocast(dev: Any) -> Any:
    """fp16 autocast on CUDA (features are cached in fp16 anyway); a no-op context on the CPU."""
    import contextlib

    import torch

    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()
