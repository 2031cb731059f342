"""The target model, its backbones and trainers. Importing the package registers the AFT and KD
trainers (``training.mode = "aft"`` / ``"kd"``) next to FT and LP-FT."""

from . import prior_trainers  # noqa: F401  (registers "aft" and "kd")
