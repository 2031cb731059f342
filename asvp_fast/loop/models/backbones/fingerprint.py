"""Short, stable names for files, model directories and module weights.

They go into backbone and dataset ids, which name feature caches: two different files (or
weights) must never get the same name, and naming must stay cheap on multi-GB inputs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]
_BLOCK = 1 << 20  # 1 MiB
_SAMPLES = 16     # extra 64 KiB blocks spread over a large file
FULL_HASH_BYTES = 256 << 20  # files up to this size are hashed whole (well under a second)


def file_fingerprint(path: PathLike, *, full: bool = False) -> str:
    """``name:size:hash`` of a file (12 hex digits of sha256).

    Files up to :data:`FULL_HASH_BYTES` (or any file with ``full=True``) are hashed whole: the
    name follows the content only. Larger ones hash the first and the last MiB, 16 evenly spaced
    64 KiB blocks and the modification time (nanoseconds): cheap on a multi-GB embedding file, and
    a file rewritten in place gets a new name (so does a copy that does not keep the mtime: its
    feature cache is then rebuilt, never shared).
    """
    file = Path(path)
    stat = file.stat()
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        if full or stat.st_size <= FULL_HASH_BYTES:
            for block in iter(lambda: handle.read(16 * _BLOCK), b""):
                digest.update(block)
        else:
            digest.update(handle.read(_BLOCK))
            for k in range(1, _SAMPLES + 1):
                handle.seek(stat.st_size * k // (_SAMPLES + 2))
                digest.update(handle.read(64 << 10))
            handle.seek(stat.st_size - _BLOCK)
            digest.update(handle.read(_BLOCK))
            digest.update(str(stat.st_mtime_ns).encode())
    return f"{file.name}:{stat.st_size}:{digest.hexdigest()[:12]}"


def files_fingerprint(paths: Iterable[PathLike], *, full: bool = False) -> str:
    """One 12-digit hash over the fingerprints of several files (order matters)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(file_fingerprint(path, full=full).encode() + b"\n")
    return digest.hexdigest()[:12]


def directory_fingerprint(path: PathLike) -> str:
    """``name:hash`` of a model directory: every regular file directly inside it (weights,
    config, tokenizer files), by name and :func:`file_fingerprint`."""
    root = Path(path)
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return f"{root.name}:{files_fingerprint(files)}"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """12 hex digits of sha256 over a module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]
