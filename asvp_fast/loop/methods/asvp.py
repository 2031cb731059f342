"""ASVP: aligned selection via proxy (the ASVP paper, section 5).

Like SVPp, an MLP proxy on cached features selects every round. Before each selection the
method asks whether the cached features still serve:

1. PED moves the labelled rows' features as fine-tuning would; if it converges in one step, the
   features need no update (LogME is skipped);
2. otherwise LogME of the PED-moved features is compared with the previous round's; a change
   smaller than ``asvp.threshold`` means the fixed features have stopped improving with more
   labels, so the backbone is fine-tuned on the labels so far and the pool's features are
   re-extracted into a new cache version, which later rounds select on.

The target model is trained with LP-FT while no refresh has happened and with FT after one. Every
decision is stored in the round's ``info``, so a resumed run continues with the same features.

Variants, for the paper's ablation (its table 3: feature alignment × training alignment):

* ``asvp`` – both: the refresh, and LP-FT → FT at the trigger;
* ``asvp:ft`` – feature alignment only: the refresh, the target model always trained with FT;
* ``asvp:no-refresh`` – training alignment only: the trigger switches LP-FT → FT, but selection
  stays on the pre-trained features (nothing is fine-tuned or re-extracted for it).

SVPp (``svpp``, FT throughout) is the cell with neither.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

import numpy as np

from ...transfer.logme import logme
from ...transfer.ped import ped
from ..storage.cache import FeatureCache, resolve_device
from ..engine.config import split_method
from .base import SVPpMethod, derive_seed, register_method
from ..models.proxy import train_proxy
from ..selection.strategies import select

if TYPE_CHECKING:  # pragma: no cover
    from ..engine.runner import RunContext


# The method-spec suffix of the training-alignment-only variant (see the module docstring).
NO_REFRESH = "no-refresh"


def should_refresh(ped_steps: int, score: Optional[float], previous: Optional[float], threshold: float) -> bool:
    """The paper's rule: refresh when PED needed more than one step and LogME-PED moved by less
    than ``threshold`` since the previous check (no previous score: no refresh yet)."""
    if ped_steps <= 1 or score is None or previous is None:
        return False
    return abs(score - previous) < threshold


class ASVPMethod(SVPpMethod):
    """SVPp plus the LogME-PED-triggered feature refresh and the LP-FT → FT switch."""

    def __init__(self, spec: str, ctx: "RunContext") -> None:
        suffix = split_method(spec)[1]
        super().__init__(spec.replace(":" + NO_REFRESH, ""), ctx)
        self.name, self.slug = spec, spec.replace(":", "-")
        self.refresh_features = suffix != NO_REFRESH
        self.mode_fixed = None if suffix == NO_REFRESH else suffix  # "asvp:ft" pins the training mode

    # -- what earlier rounds decided (kept in the state file) ----------------------------------
    def _history(self) -> Tuple[int, Optional[float], int]:
        """(features version in use, LogME-PED of the last check since that version, triggers so far).

        ``refresh`` in a round's info records that the trigger fired; ``features_version`` the
        features selected on from then on (unchanged for ``asvp:no-refresh``)."""
        version, previous, refreshes = 0, None, 0
        for rec in self.ctx.state.method(self.name).rounds:
            info = rec.info or {}
            if info.get("refresh"):
                version, previous = int(info.get("features_version", version)), None
                refreshes += 1
            elif info.get("logme_ped") is not None:
                previous = float(info["logme_ped"])
        return version, previous, refreshes

    @property
    def mode(self) -> str:  # type: ignore[override]
        if getattr(self, "mode_fixed", None):
            return self.mode_fixed  # type: ignore[return-value]
        return "ft" if self._history()[2] > 0 else "lp-ft"

    @mode.setter
    def mode(self, value: str) -> None:
        pass  # decided by the refresh history (see the property)

    def features(self, version: int) -> np.ndarray:
        if version == 0:
            return self.ctx.pool_features
        return FeatureCache(self.ctx.run_dir / "cache").load("pool", version, verify=False)

    # -- one round -------------------------------------------------------------------------------
    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        cfg = ctx.config.asvp
        version, previous, refreshes = self._history()
        feats = self.features(version)
        labels = ctx.state.labels_of(labelled)
        start = time.perf_counter()
        order = np.argsort(labelled)  # sorted reads from the memmap
        steps, score = 0, None
        if refreshes < cfg.max_refreshes and np.unique(labels).size >= 2:  # PED and LogME compare classes
            moved, steps = ped(np.asarray(feats[labelled[order]], dtype=np.float32), labels[order])
            # LogME's Gram matrix is O(N·D²): on the proxy's GPU when there is one
            device = str(resolve_device(ctx.config.proxy.device))
            score = logme(moved, labels[order], device=device if device.startswith("cuda") else None) if steps > 1 else None
        forced = cfg.force_refresh_round is not None and round_ == cfg.force_refresh_round
        allowed = refreshes < cfg.max_refreshes
        refresh = forced or (allowed and should_refresh(steps, score, previous, cfg.threshold))
        info: Dict[str, Any] = {"ped_steps": int(steps), "logme_ped": score, "refresh": bool(refresh),
                                "check_s": round(time.perf_counter() - start, 3)}
        if refresh and not self.refresh_features:
            info.update(features_version=version, forced=bool(forced), refresh_s=0.0)
        elif refresh:
            start = time.perf_counter()
            model = ctx.train(labelled, "ft")
            version = max(FeatureCache(ctx.run_dir / "cache").versions("pool") + [version]) + 1
            feats = ctx.extract(FeatureCache(ctx.run_dir / "cache"), model.backbone, version=version,
                                backbone_id=f"{model.backbone.backbone_id}+ft@{len(labelled)}")
            info.update(features_version=version, forced=bool(forced), refresh_s=round(time.perf_counter() - start, 3))
        start = time.perf_counter()
        proxy = train_proxy(feats, labelled, labels, ctx.case.num_classes, ctx.config.proxy,
                            seed=derive_seed(ctx.config.seed, "proxy", self.name, round_), progress=ctx.progress)
        view = self.proxy_view(proxy, feats)
        rows = select(ctx.config.selection.strategy, view, labelled, k, seed=self.strategy_seed(round_),
                      space=ctx.config.selection.space)
        info["proxy_s"] = round(time.perf_counter() - start, 3)
        return rows, info


register_method("asvp", ASVPMethod)
