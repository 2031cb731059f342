"""Ask/tell active learning on your own features (:class:`ActiveLearner`); see ``learner.py``.

* :mod:`.learner` – :class:`ActiveLearner`: ``query(n)``, ``teach(indices, labels)``, ``load``;
* :mod:`.pool` – the user's features (NumPy, memmap, torch) as the proxy reads them;
* :mod:`.state` – the state file, written atomically and checked field by field on load.
"""

from .learner import ActiveLearner
from .state import LearnerStateError

__all__ = ["ActiveLearner", "LearnerStateError"]
