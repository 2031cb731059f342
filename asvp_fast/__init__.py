"""asvp_fast: fast, trustworthy active learning for fine-tuning pre-trained models.

The public API is described in API.md; everything not listed in ``__all__`` is private.
"""

from __future__ import annotations

from ._backends import backends
from .uncertainty import scores, select_uncertain

__version__ = "0.1.0"

__all__ = ["__version__", "backends", "scores", "select_uncertain"]
