"""The active-learning loop: feature cache → selector → strategy → oracle → training → metrics.

Needs PyTorch (``pip install "asvp-fast[demo]"`` brings it with the built-in models). The pieces:
:mod:`.cache` (versioned memory-mapped features), :mod:`.proxy` (the MLP proxy), :mod:`.strategies`
(random, margin, entropy, least confidence, coreset, BADGE, ActiveFT), :mod:`.training` (FT, LP-FT),
:mod:`.pipelines` (random, standard AL, SVPp, ActiveFT(pre), the ASVP slot), :mod:`.oracle`
(simulated and file-based), :mod:`.run` (resumable runs) and :mod:`.report` (table and plots).
"""

from .cache import CacheError, FeatureCache
from .config import ConfigError, RunConfig, load_config, parse_config
from .oracle import FileOracle, LabelsPending, SimulatedOracle
from .pipelines import METHODS, Method, register_method
from .proxy import MLPProxy, ProxyConfig, train_proxy
from .run import run
from .state import RunState, StateError
from .strategies import STRATEGIES, SelectorView, select
from .training import Classifier, TrainConfig, train_classifier
from .types import Backbone, Case

__all__ = [
    "Backbone", "CacheError", "Case", "Classifier", "ConfigError", "FeatureCache", "FileOracle", "LabelsPending",
    "METHODS", "MLPProxy", "Method", "ProxyConfig", "RunConfig", "RunState", "STRATEGIES", "SelectorView",
    "SimulatedOracle", "StateError", "TrainConfig", "load_config", "parse_config", "register_method", "run",
    "select", "train_classifier", "train_proxy",
]
