"""Contracts shared by the active-learning loop: what a data case and a backbone must provide.

A *case* bundles a pool to select from, a held-out test set, the backbone that turns a collated
batch into features, and the ids that name them in the feature cache. Labels are kept apart from
the inputs: the loop only sees pool labels through an oracle, so the same case serves simulated
runs (labels known) and real annotation (labels unknown, ``pool_labels is None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence

import numpy as np

try:  # torch is optional for the package, required by the loop
    import torch
    from torch.utils.data import Dataset
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("the active-learning loop needs PyTorch: pip install torch") from exc


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


@dataclass
class Case:
    """A pool, a test set and a backbone factory, ready for the loop.

    ``pool[i]`` / ``test[i]`` return one input (no label); ``collate(list_of_inputs)`` makes a batch
    for the backbone. ``lengths`` (optional, pool order) lets extraction batch similar-length text
    together. ``describe(i)`` returns a short human-readable description of pool item i (a
    text, a file path), written into the CSV of the file-based oracle.
    """

    name: str
    dataset_id: str
    pool: "Dataset[Any]"
    test: "Dataset[Any]"
    test_labels: np.ndarray
    num_classes: int
    class_names: List[str]
    make_backbone: Callable[[], Backbone]
    collate: Callable[[List[Any]], Any]
    pool_labels: Optional[np.ndarray] = None
    pool_lengths: Optional[np.ndarray] = None
    test_lengths: Optional[np.ndarray] = None
    describe: Callable[[int], str] = field(default=lambda i: str(i))
    licence: str = ""
