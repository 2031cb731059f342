"""The feature cache's manifest: its fields, how a manifest file is checked, and the fingerprint
of the weights that extracted it."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from .fields import MAX_INT, Fields

CACHE_FORMAT = 2  # 2: manifests record the weights' fingerprint; format-1 manifests are still read
READ_FORMATS = (1, 2)
DTYPES = {"float16": np.float16, "float32": np.float32}
REBUILD = "; delete it to rebuild"
_SPLIT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")


class CacheError(RuntimeError):
    """A feature cache file is missing, truncated, corrupt or built for something else."""


@dataclass(frozen=True)
class CacheManifest:
    """What a finished cache file holds. ``weights``: :func:`weights_digest` of the backbone that
    extracted it ("" for features stored with :meth:`FeatureCache.write_array` without one, and
    in format-1 manifests)."""

    backbone_id: str
    dataset_id: str
    split: str
    version: int
    n: int
    dim: int
    dtype: str
    checksum: str = ""
    weights: str = ""
    format: int = CACHE_FORMAT
    created: float = 0.0
    seconds: float = 0.0

    def spec(self) -> Dict[str, Any]:
        """The fields that identify what the file holds (everything but checksum and timings)."""
        d = asdict(self)
        for key in ("checksum", "created", "seconds"):
            d.pop(key)
        return d


def parse_manifest(data: Any, path: "Path | str", split: Optional[str] = None, version: Optional[int] = None, *,
                   what: str = "feature-cache manifest", hint: str = REBUILD) -> CacheManifest:
    """A manifest from its decoded JSON, every field checked (type, range, and the ``split`` and
    ``version`` its file name promises); damage is a :class:`CacheError` naming the field."""
    f = Fields(CacheError, what, path, hint)
    required = ("backbone_id", "dataset_id", "split", "version", "n", "dim", "dtype", "format")
    f.obj(data, "the document", required, ("checksum", "weights", "created", "seconds"))
    fmt = f.int(data["format"], "format")
    if fmt not in READ_FORMATS:
        f.fail("format", f"is {fmt}; this version reads formats {list(READ_FORMATS)}")
    if fmt == 1 and "weights" in data:
        f.fail("weights", "is not a field of format 1")
    m = CacheManifest(
        backbone_id=f.str(data["backbone_id"], "backbone_id"),
        dataset_id=f.str(data["dataset_id"], "dataset_id"),
        split=f.str(data["split"], "split", _SPLIT, "a split name (letters, digits, '-', '_')"),
        version=f.int(data["version"], "version"),
        n=f.int(data["n"], "n"),
        dim=f.int(data["dim"], "dim", lo=1),
        dtype=f.str(data["dtype"], "dtype", re.compile("|".join(DTYPES)), "'float16' or 'float32'"),
        checksum=_hex_or_empty(f, data.get("checksum", ""), "checksum"),
        weights=_hex_or_empty(f, data.get("weights", ""), "weights"),
        format=fmt,
        created=f.num(data.get("created", 0.0), "created", lo=0.0),
        seconds=f.num(data.get("seconds", 0.0), "seconds", lo=0.0),
    )
    if m.n * m.dim * np.dtype(DTYPES[m.dtype]).itemsize > MAX_INT:
        f.fail("n", f"x dim ({m.n} x {m.dim}) is beyond any file size")
    if split is not None and m.split != split:
        f.fail("split", f"is {m.split!r}, but the file is named for {split!r}")
    if version is not None and m.version != version:
        f.fail("version", f"is {m.version}, but the file is named for version {version}")
    return m


def _hex_or_empty(f: Fields, value: Any, field: str) -> str:
    text = f.str(value, field)
    if text and not _HEX32.fullmatch(text):
        f.fail(field, f"is {text[:40]!r}; expected 32 lowercase hex digits")
    return text


def weights_digest(module: Any, chunk_bytes: int = 16 << 20) -> str:
    """32 hex digits of blake2b over a module's state dict: every parameter's and buffer's name,
    dtype, shape and bytes, in state-dict order, hashed chunk by chunk (a GPU tensor is copied to
    the host one chunk at a time). "" for an object without ``state_dict``. Two weights get the
    same digest only if every value is bit-identical: it keys partial extractions and derived
    cache versions (a name such as "fine-tuned at round 3" does not say which weights)."""
    import torch

    state_dict = getattr(module, "state_dict", None)
    if not callable(state_dict):
        return ""
    h = hashlib.blake2b(digest_size=16)
    for name, value in state_dict().items():
        h.update(f"{name}\0".encode("utf-8", "backslashreplace"))
        if not isinstance(value, torch.Tensor):
            h.update(f"{type(value).__name__}:{value!r}\0".encode("utf-8", "backslashreplace"))
            continue
        t = value.detach()
        if t.is_quantized:
            t = t.dequantize()
        if t.layout != torch.strided:
            t = t.to_dense()
        h.update(f"{t.dtype}:{tuple(t.shape)}\0".encode())
        flat = t.reshape(-1)
        step = max(1, chunk_bytes // max(1, t.element_size()))
        for start in range(0, flat.numel(), step):
            part = flat[start : start + step].to("cpu").contiguous()
            h.update(part.view(torch.uint8).numpy())
    return h.hexdigest()
