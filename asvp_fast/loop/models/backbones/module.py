"""Any ``torch.nn.Module`` as a loop backbone (:func:`module_backbone`)."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import torch
from torch.utils.data import default_collate

from .base import Backbone
from .fingerprint import weights_fingerprint

# Attributes under which common model families state their output width (ours, timm, HF).
_WIDTH_ATTRIBUTES = ("feature_dim", "num_features", "out_features", "embed_dim", "hidden_size")


class ModuleBackbone(Backbone):
    """A user's module whose ``forward(batch)`` returns ``(B, feature_dim)`` features.

    Made by :func:`module_backbone`; ``module`` is kept as the ``module`` attribute, so its
    parameter names gain a ``module.`` prefix (``training.frozen`` prefixes are written
    ``"module.layer1"``). ``collate`` is the collate function meant for it (stored for the case).
    """

    def __init__(self, module: torch.nn.Module, feature_dim: int, backbone_id: str,
                 collate: Callable[[List[Any]], Any]) -> None:
        super().__init__()
        self.module = module
        self.feature_dim = int(feature_dim)
        self.backbone_id = backbone_id
        self.collate = collate

    def to_device(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, (list, tuple)):
            return type(batch)(self.to_device(item, device) for item in batch)
        if isinstance(batch, dict):
            return {key: self.to_device(value, device) for key, value in batch.items()}
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        return batch

    def forward(self, batch: Any) -> torch.Tensor:
        out = self.module(batch)
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != self.feature_dim:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{type(self.module).__name__} must return (B, {self.feature_dim}) features, got {shape}")
        return out.float()


def _width_of(module: torch.nn.Module) -> Optional[int]:
    for owner in (module, getattr(module, "config", None)):
        for name in _WIDTH_ATTRIBUTES:
            value = getattr(owner, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def module_backbone(module: torch.nn.Module, feature_dim: Optional[int] = None, *,
                    collate: Optional[Callable[[List[Any]], Any]] = None, backbone_id: Optional[str] = None,
                    example: Any = None) -> ModuleBackbone:
    """Wrap any ``torch.nn.Module`` as a :class:`Backbone` for the loop.

    Parameters
    ----------
    module
        ``module(batch)`` must return ``(B, feature_dim)`` features (drop any classifier: the loop
        adds its own head). It is put in eval mode.
    feature_dim
        The feature width. Default: ``example``'s output width when ``example`` is given, else the
        module's ``feature_dim``, ``num_features`` (timm), ``out_features``, ``embed_dim`` or
        ``config.hidden_size`` (Hugging Face).
    collate
        Turns a list of dataset items into ``module``'s input (default: ``torch.utils.data.default_collate``,
        which stacks tensors); stored as the backbone's ``collate`` attribute for the case.
    backbone_id
        Names the weights in the feature cache. Default: the module's class name and a sha256 of
        its state dict, so two different weights never share a cache.
    example
        A batch (what ``collate`` returns) to infer ``feature_dim`` from, in one no-grad pass.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    collate_fn = collate if collate is not None else default_collate
    if feature_dim is None and example is not None:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = module(example)
        module.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"{type(module).__name__} must return (B, D) features, got {shape} for the example")
        feature_dim = int(out.shape[1])
    if feature_dim is None:
        feature_dim = _width_of(module)
    if feature_dim is None:
        raise TypeError(f"cannot tell the feature width of {type(module).__name__}: pass feature_dim= or example=")
    if isinstance(feature_dim, bool) or not isinstance(feature_dim, int) or feature_dim < 1:
        raise ValueError(f"feature_dim must be a positive integer, got {feature_dim!r}")
    name = backbone_id if backbone_id is not None else f"module:{type(module).__name__}:{weights_fingerprint(module)}"
    backbone = ModuleBackbone(module, feature_dim, name, collate_fn)
    backbone.eval()
    return backbone
