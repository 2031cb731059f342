"""Loading users' checkpoints into a backbone: tensors only by default, nested and prefixed
state dicts found, mismatched keys named."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
from torch import nn

PathLike = Union[str, "os.PathLike[str]"]


# Keys under which training frameworks nest the model's weights, tried in this order.
_NESTED_KEYS = ("state_dict", "model", "model_state_dict", "online_backbone", "backbone", "encoder", "module", "net")
# Prefixes that wrappers (DataParallel, SSL frameworks) add to the torchvision names.
_PREFIXES = ("module.", "backbone.", "encoder.", "model.")
_IGNORED = ("fc.",)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: str) -> Mapping[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself or one nested under a known key."""
    if _is_state_dict(obj):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, Mapping):
        for key in _NESTED_KEYS:
            if key in obj:
                try:
                    return _find_state_dict(obj[key], path)
                except ValueError:
                    continue
        keys = ", ".join(map(repr, list(obj)[:10]))
        raise ValueError(
            f"{path}: no state dict found: expected a mapping of tensors, or one under one of the keys "
            f"{list(_NESTED_KEYS)}; the checkpoint's top-level keys are {keys}"
        )
    raise ValueError(f"{path}: a checkpoint must be a dict, got {type(obj).__name__}")


def _strip_prefixes(name: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _short_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def load_checkpoint(module: nn.Module, path: PathLike, *, weights_only: bool = True,
                    ignore: Sequence[str] = _IGNORED, what: str = "torchvision-format ResNet-50") -> None:
    """Load a torchvision-format ResNet checkpoint into ``module`` (names must match exactly).

    Accepted layouts: a raw state dict, or a dict holding one under ``state_dict``, ``model``,
    ``online_backbone`` (BYOL-style) and similar keys. ``module.``, ``backbone.``, ``encoder.``
    and ``model.`` prefixes are stripped, the classifier's keys (``ignore``: ``fc.*`` by default)
    are dropped (features only), and BatchNorm
    ``num_batches_tracked`` counters may be absent (old checkpoints).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If no state dict is found, or if keys are missing/unexpected or shapes differ.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # pickle errors come in many types
        hint = ""
        if weights_only:
            hint = " (it stores more than tensors: pass trust_checkpoint=True if you trust the file)"
        raise ValueError(f"cannot read checkpoint {path}: {exc}{hint}") from exc
    source = _find_state_dict(raw, path)
    state = {}
    for name, tensor in source.items():
        clean = _strip_prefixes(name)
        if not clean.startswith(tuple(ignore)):
            state[clean] = tensor
    _check_keys(module, state, path, what)
    module.load_state_dict(state, strict=False)


def _check_keys(module: nn.Module, state: Mapping[str, torch.Tensor], path: str, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in state
        if k in own and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_short_list(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_short_list(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches (checkpoint vs model): {_short_list(mismatched)}")
        raise ValueError(
            f"{path} is not a {what} checkpoint ({type(module).__name__}); "
            + "; ".join(problems)
        )


def checkpoint_fingerprint(path: PathLike) -> str:
    """``name:size:hash`` of a checkpoint file (sha256 of its first MiB, 12 hex digits).

    Cheap on multi-GB files, yet two different weight files practically never share it.
    """
    file = Path(path)
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        digest.update(handle.read(1 << 20))
    return f"{file.name}:{file.stat().st_size}:{digest.hexdigest()[:12]}"

