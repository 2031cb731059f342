"""What a data case must provide to the active-learning loop.

A *case* bundles a pool to select from, a held-out test set, the backbone that turns a collated
batch into features, and the ids that name them in the feature cache. Labels are kept apart from
the inputs: the loop only sees pool labels through an oracle, so the same case serves simulated
runs (labels known) and real annotation (labels unknown, ``pool_labels is None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import numpy as np

from torch.utils.data import Dataset

from ..models.backbones.base import Backbone


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
