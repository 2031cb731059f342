"""Structured L2-norm channel pruning that remembers what it kept, and fusion back into the dense net.

:func:`prune` finds the channel groups of a network (:mod:`.graph`), keeps in every prunable group
the ``round((1 - ratio) * C)`` channels (at least one) whose producing weights have the largest L2
norm — the norm over every convolution/linear row that makes the channel, so channels tied by a
residual connection are ranked together — and returns a smaller copy of the network plus an
:class:`IndexMap`: for every state tensor, the dense indices kept along each pruned dimension.
In a BERT-style encoder (MiniLM) the units are each layer's attention heads and feed-forward units
instead (:mod:`.transformer`).

:func:`fuse` copies each tensor of a (trained) pruned network into the positions of the dense
network it came from (in place); everything else keeps the dense network's values. Both are
O(parameters). At ``ratio = 0`` nothing is pruned and fusion is an exact copy.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from ..core.checks import parse_real
from .graph import ChannelGroup, PruneError, channel_groups
from .transformer import transformer_units, update_attention_sizes

FORMAT = 1


@dataclass
class IndexMap:
    """What pruning kept: ``kept[key][dim]`` = sorted dense indices kept along ``dim`` of the state
    tensor ``key``; ``shapes[key]``: the dense tensor's shape (fusion checks it). Tensors absent
    from ``kept`` were not pruned. JSON round-trip: :meth:`to_dict` / :meth:`from_dict`,
    :meth:`save` / :meth:`load`."""

    ratio: float
    kept: Dict[str, Dict[int, List[int]]] = field(default_factory=dict)
    shapes: Dict[str, List[int]] = field(default_factory=dict)

    def pruned_shape(self, key: str) -> Tuple[int, ...]:
        dims = self.kept.get(key, {})
        return tuple(len(dims[d]) if d in dims else n for d, n in enumerate(self.shapes[key]))

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "ratio": self.ratio, "shapes": self.shapes,
                "kept": {k: {str(d): v for d, v in dims.items()} for k, dims in self.kept.items()}}

    @classmethod
    def from_dict(cls, raw: Any) -> "IndexMap":
        try:
            if raw.get("format") != FORMAT:
                raise PruneError(f"index map format {raw.get('format')!r} is not {FORMAT}")
            shapes = {str(k): [int(n) for n in v] for k, v in raw["shapes"].items()}
            kept = {str(k): {int(d): [int(i) for i in v] for d, v in dims.items()} for k, dims in raw["kept"].items()}
            out = cls(float(raw["ratio"]), kept, shapes)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, PruneError):
                raise
            raise PruneError(f"not an index map ({type(exc).__name__}: {exc})") from None
        for key, dims in kept.items():
            for d, idx in dims.items():
                if key not in shapes or not 0 <= d < len(shapes[key]) or \
                        any(not 0 <= i < shapes[key][d] for i in idx) or sorted(set(idx)) != idx:
                    raise PruneError(f"index map entry {key}[{d}] is out of range or unsorted")
        return out

    def save(self, path: "str | os.PathLike[str]") -> None:
        """Write as JSON atomically (a crash leaves the old file or the new one, never half)."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: "str | os.PathLike[str]") -> "IndexMap":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def check_ratio(ratio: Any) -> float:
    """A pruning ratio in [0, 1): the fraction of channels removed from every prunable group."""
    value = parse_real(ratio, "ratio", minimum=0.0)
    if value >= 1:
        raise ValueError(f"ratio must be below 1 (the fraction of channels removed), got {ratio!r}")
    return value


def kept_count(channels: int, ratio: float) -> int:
    """Channels a group of ``channels`` keeps at ``ratio``: round((1 - ratio) * C), at least 1."""
    return max(1, min(channels, int(math.floor((1.0 - ratio) * channels + 0.5))))


def channel_scores(group: ChannelGroup, state: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Squared L2 norm of each channel over its producing rows (all members' when none produce it)."""
    keys = group.producers or [k for k, d in group.members if d == 0]
    total = torch.zeros(group.size, dtype=torch.float64)
    for key in keys:
        t = state[key].detach().to(torch.float64)
        total += t.reshape(t.shape[0], -1).pow(2).sum(1) if t.dim() > 1 else t.pow(2)
    return total


def top_channels(scores: torch.Tensor, keep: int) -> List[int]:
    """The ``keep`` largest scores' indices, ties to the lower index, returned in ascending order."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:keep])


def prune(model: nn.Module, ratio: float, example_input: Any) -> Tuple[nn.Module, IndexMap]:
    """Structured L2-norm channel pruning of ``model`` (left unchanged); see the module docstring.

    ``example_input``: one batch the model accepts (it is run once, in eval mode, for the shapes).
    Returns the pruned copy (same classes, smaller tensors, layer attributes updated) and its
    :class:`IndexMap`. ``ratio = 0`` returns an exact copy and a map that keeps everything.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    ratio = check_ratio(ratio)
    state = model.state_dict()
    imap = IndexMap(ratio, {}, {k: list(v.shape) for k, v in state.items()})
    units = transformer_units(model)
    if units:  # a BERT-style encoder: heads and feed-forward units (.transformer), no graph trace
        for family in units:
            kept = family.indices(top_channels(family.scores(state), kept_count(family.count, ratio)))
            for key, dim in family.members:
                imap.kept.setdefault(key, {})[dim] = kept
    else:
        for group in channel_groups(model, example_input):
            if group.fixed or group.size < 1:
                continue
            kept = top_channels(channel_scores(group, state), kept_count(group.size, ratio))
            for key, dim in group.members:
                imap.kept.setdefault(key, {})[dim] = kept
    pruned = copy.deepcopy(model)
    apply_index_map(pruned, imap)
    return pruned, imap


def _index(t: torch.Tensor, dims: Dict[int, List[int]]) -> Tuple[torch.Tensor, ...]:
    """Broadcasting index tensors (numpy's ix_) selecting ``dims``' kept indices, all of other dims."""
    n = t.dim()
    out = []
    for d in range(n):
        idx = torch.tensor(dims[d], dtype=torch.long) if d in dims else torch.arange(t.shape[d])
        shape = [1] * n
        shape[d] = -1
        out.append(idx.to(t.device).view(shape))
    return tuple(out)


def apply_index_map(model: nn.Module, imap: IndexMap) -> nn.Module:
    """Slice ``model``'s tensors to ``imap``'s kept indices in place and update the layers' sizes."""
    for key, dims in imap.kept.items():
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        old = getattr(owner, attr)
        if list(old.shape) != imap.shapes[key]:
            raise PruneError(f"{key} has shape {tuple(old.shape)}, the index map was made for {imap.shapes[key]}")
        new = old.detach()[_index(old, dims)].clone() if dims else old.detach().clone()
        if isinstance(old, nn.Parameter):
            setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            setattr(owner, attr, new)
    for module in model.modules():
        _resize(module)
    update_attention_sizes(model)
    return model


def _resize(module: nn.Module) -> None:
    """Make a layer's size attributes agree with its (sliced) tensors."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        depthwise = module.groups > 1
        module.out_channels = module.weight.shape[0]
        module.in_channels = module.weight.shape[1] * (module.out_channels if depthwise else 1)
        if depthwise:
            module.groups = module.out_channels
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.num_features = (module.running_mean if module.running_mean is not None else module.weight).shape[0]
    elif isinstance(module, nn.LayerNorm) and module.weight is not None:
        module.normalized_shape = (module.weight.shape[0],)


def fuse(dense_model: nn.Module, pruned_model: nn.Module, index_map: IndexMap) -> nn.Module:
    """Copy every tensor of ``pruned_model`` into the positions of ``dense_model`` it was kept from
    (``index_map``, from :func:`prune`); the dense network's other values stay. In place; returns
    ``dense_model``. Raises :class:`PruneError` when the two networks or the map do not match."""
    if not isinstance(index_map, IndexMap):
        raise TypeError(f"index_map must be an IndexMap (from prune), got {type(index_map).__name__}")
    dense, small = dense_model.state_dict(), pruned_model.state_dict()
    missing = sorted(set(dense) ^ set(small))
    if missing:
        raise PruneError(f"mismatched networks: {len(missing)} tensors are in only one of them, e.g. {missing[:3]}")
    for key, d in dense.items():
        s = small[key]
        if key not in index_map.shapes or list(d.shape) != index_map.shapes[key]:
            raise PruneError(f"mismatched networks: the dense {key} has shape {tuple(d.shape)}, the index map "
                             f"expects {index_map.shapes.get(key)}")
        if tuple(s.shape) != index_map.pruned_shape(key):
            raise PruneError(f"mismatched networks: the pruned {key} has shape {tuple(s.shape)}, the index map "
                             f"expects {index_map.pruned_shape(key)}")
    with torch.no_grad():
        for key, d in dense.items():
            s = small[key].to(device=d.device, dtype=d.dtype)
            dims = index_map.kept.get(key, {})
            if dims and d.dim():
                d[_index(d, dims)] = s
            else:
                d.copy_(s)
    return dense_model
