"""Crash-safe file writing shared by the cache, the run state and the oracles."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHECKSUM_BLOCK = 16 << 20


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (where the platform allows directory fds)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def file_checksum(path: Path) -> str:
    """blake2b-128 of the file's bytes (about 1 GB/s: cheap next to extracting the features)."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHECKSUM_BLOCK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def remove_if_exists(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class UnreadableJSON(ValueError):
    """A JSON file that cannot be read or parsed (the message says why, without the path)."""


def read_json(path: Path, *, max_bytes: int = 1 << 30) -> object:
    """The decoded JSON document in ``path``; any failure to read or parse it (missing file,
    directory, unreadable bytes, bad UTF-8, invalid JSON, nesting too deep, an integer literal
    too long, a file over ``max_bytes``) is an :class:`UnreadableJSON`."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise UnreadableJSON(f"cannot be read ({type(exc).__name__}: {exc.strerror or exc})") from exc
    if len(data) > max_bytes:
        raise UnreadableJSON(f"is larger than {max_bytes} bytes")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UnreadableJSON(f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise UnreadableJSON("is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, and integer literals beyond Python's digit limit
        raise UnreadableJSON(f"is not valid JSON ({exc})") from exc
