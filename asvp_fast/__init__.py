"""asvp_fast: fast, trustworthy active learning for fine-tuning pre-trained models.

The public API is described in docs/api.md; everything not listed in ``__all__`` is private.
"""

from __future__ import annotations

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on how the package was imported
    raise ImportError(
        "asvp_fast's compiled module _C is missing. Install the package (pip install .) and make sure "
        "the source checkout is not shadowing it: run tests with `pytest`, not `python -m pytest`, "
        "from the repository root."
    ) from exc

from . import metrics
from .acquisition.approximate import kcenter_greedi, kmeans_parallel
from .acquisition.bald import bald
from .acquisition.batchbald import batchbald
from .acquisition.cluster_margin import cluster_margin
from .acquisition.diversity import badge, kcenter_greedy, kmeans_pp
from .acquisition.probcover import probcover
from .acquisition.typiclust import typiclust
from .acquisition.uncertainty import scores, select_uncertain
from .core.backends import backends
from .transfer.logme import logme
from .transfer.ped import ped

__version__ = "0.1.0"

# Names that need torch, imported on first use so that `import asvp_fast` stays light.
_LAZY = ("ActiveLearner", "LearnerStateError")


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from .loop import learner

        value = getattr(learner, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asvp_fast' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["__version__", "backends", "metrics", "badge", "bald", "batchbald", "cluster_margin", "kcenter_greedy", "kmeans_pp",
           "kcenter_greedi", "kmeans_parallel", "logme", "ped", "probcover", "scores", "select_uncertain", "typiclust"]
