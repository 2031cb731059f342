"""The active-learning loop: feature cache → selector → strategy → oracle → training → metrics.

Needs PyTorch (``pip install "asvp-fast[demo]"`` brings it with the built-in models). One folder per
layer, dependencies pointing down (enforced by import-linter, see ``.importlinter``):

* :mod:`.api` – :func:`run` (one run and its report) and :func:`run_seeds`; :mod:`.learner` – the
  ask/tell :class:`ActiveLearner` for your own training loop or labelling tool;
* :mod:`.reporting` – results table, plots, multi-seed study;
* :mod:`.engine` – config, the runner (rounds, oracle, training, evaluation), run state, oracles;
* :mod:`.methods` – one file per method (random, SVPp, standard AL, ActiveFT(pre), ASVP) and the
  registry (:func:`register_method`);
* :mod:`.selection` – selectors (MLP proxy, target model) and query strategies
  (:func:`register_strategy`);
* :mod:`.cases` – data cases (built-in, image folders, synthetic);
* :mod:`.storage` – the versioned feature cache and crash-safe files;
* :mod:`.models` – backbones, the MLP proxy, the classifier and its trainers (:func:`register_trainer`).
"""

from .api import run, run_seeds
from .cases.case import Case
from .engine.config import ConfigError, RunConfig, load_config, parse_config
from .engine.labelstudio import LabelStudioOracle, LabelStudioPending
from .engine.oracle import FileOracle, LabelsPending, SimulatedOracle
from .engine.state import RunState, StateError
from .learner import ActiveLearner, LearnerStateError
from .methods import METHODS, Method, MethodContext, MethodSpec, register_method
from .models.backbones.base import Backbone
from .models.classifier import Classifier
from .models.proxy import MLPProxy, ProxyConfig, train_proxy
from .models.trainers import TRAINERS, TrainConfig, Trainer, TrainJob, register_trainer, train_classifier
from .selection.selectors import ProxySelector, Selector, TargetModelSelector
from .selection.strategies import STRATEGIES, register_strategy, select
from .selection.view import SelectorView
from .storage.cache import CacheError, FeatureCache

__all__ = [
    "ActiveLearner", "Backbone", "CacheError", "Case", "Classifier", "ConfigError", "FeatureCache", "FileOracle", "LabelsPending",
    "LabelStudioOracle", "LabelStudioPending", "LearnerStateError",
    "METHODS", "MLPProxy", "Method", "MethodContext", "MethodSpec", "ProxyConfig", "ProxySelector", "RunConfig",
    "RunState", "STRATEGIES", "Selector", "SelectorView", "SimulatedOracle", "StateError", "TRAINERS",
    "TargetModelSelector", "TrainConfig", "TrainJob", "Trainer", "load_config", "parse_config", "register_method",
    "register_strategy", "register_trainer", "run", "run_seeds", "select", "train_classifier", "train_proxy",
]
