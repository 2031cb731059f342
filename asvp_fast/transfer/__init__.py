"""Transfer: transferability scores (LogME, PED) and AFT, adaptive feature transfer.

``AFTPrior`` and ``FeatureRegressionKD`` need torch and are imported on first use (``import
asvp_fast.transfer`` stays torch-free).
"""

from typing import Any

_AFT = ("AFTPrior", "FeatureRegressionKD")


def __getattr__(name: str) -> Any:
    if name in _AFT:
        from . import aft

        value = getattr(aft, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'asvp_fast.transfer' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_AFT))
