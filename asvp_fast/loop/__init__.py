"""The active-learning loop: feature cache → selector → strategy → oracle → training → metrics.

Needs PyTorch (``pip install "asvp-fast[demo]"`` brings it with the built-in models). The pieces:
:mod:`.cache` (versioned memory-mapped features), :mod:`.proxy` (the MLP proxy), :mod:`.strategies`
(random, margin, entropy, least confidence, coreset, BADGE, ActiveFT), :mod:`.training` (FT, LP-FT),
:mod:`.pipelines` (random, standard AL, SVPp, ActiveFT(pre), the ASVP slot), :mod:`.oracle`
(simulated and file-based), :mod:`.run` (resumable runs) and :mod:`.report` (table and plots).
"""

from .storage.cache import CacheError, FeatureCache
from .engine.config import ConfigError, RunConfig, load_config, parse_config
from .engine.oracle import FileOracle, LabelsPending, SimulatedOracle
from .methods.base import METHODS, Method, register_method
from .models.proxy import MLPProxy, ProxyConfig, train_proxy
from .engine.runner import run
from .engine.state import RunState, StateError
from .selection.strategies import STRATEGIES, SelectorView, select
from .models.training import Classifier, TrainConfig, train_classifier
from .cases.case import Backbone, Case

__all__ = [
    "Backbone", "CacheError", "Case", "Classifier", "ConfigError", "FeatureCache", "FileOracle", "LabelsPending",
    "METHODS", "MLPProxy", "Method", "ProxyConfig", "RunConfig", "RunState", "STRATEGIES", "SelectorView",
    "SimulatedOracle", "StateError", "TrainConfig", "load_config", "parse_config", "register_method", "run",
    "select", "train_classifier", "train_proxy",
]
