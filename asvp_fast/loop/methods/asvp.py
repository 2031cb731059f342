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

Variants, for the paper's ablation (its table 3: feature alignment × training alignment), are
explicit config fields of the method::

    methods = ["svpp",                                                     # neither
               "asvp",                                                     # both
               {method = "asvp", name = "asvp:ft", training = "ft"},      # feature alignment only
               {method = "asvp", name = "asvp:no-refresh", refresh = false}]  # training alignment only

* ``training = "ft"`` pins the target model's trainer (no LP-FT → FT switch);
* ``refresh = false``: the trigger switches LP-FT → FT, but selection stays on the pre-trained
  features (nothing is fine-tuned or re-extracted for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ...core.devices import torch_device
from ...transfer.logme import logme
from ...transfer.ped import ped
from ..storage.cache import FeatureCache
from ..selection.strategies import STRATEGIES
from .svpp import SVPpMethod


def should_refresh(ped_steps: int, score: Optional[float], previous: Optional[float], threshold: float) -> bool:
    """The paper's rule: refresh when PED needed more than one step and LogME-PED moved by less
    than ``threshold`` since the previous check (no previous score: no refresh yet)."""
    if ped_steps <= 1 or score is None or previous is None:
        return False
    return abs(score - previous) < threshold


@dataclass(frozen=True)
class ASVPOptions:
    """``refresh``: re-extract the pool's features from a fine-tuned backbone when the trigger fires
    (feature alignment); False keeps selecting on the pre-trained features. ``strategy``: as for
    SVPp (None: the config's ``selection.strategy``)."""

    refresh: bool = True
    strategy: Optional[str] = field(default=None, metadata={"choices": lambda: STRATEGIES, "what": "strategy"})


class ASVPMethod(SVPpMethod):
    """SVPp plus the LogME-PED-triggered feature refresh and the LP-FT → FT switch."""

    Options = ASVPOptions
    default_training = None

    # -- what earlier rounds decided (kept in the state file) ----------------------------------
    def history(self) -> Tuple[int, Optional[float], int]:
        """(features version in use, LogME-PED of the last check since that version, triggers so far).

        ``refresh`` in a round's info records that the trigger fired; ``features_version`` the
        features selected on from then on (unchanged without feature refresh)."""
        version, previous, refreshes = 0, None, 0
        for rec in self.ctx.state.method(self.name).rounds:
            info = rec.info or {}
            if info.get("refresh"):
                version, previous = int(info.get("features_version", version)), None
                refreshes += 1
            elif info.get("logme_ped") is not None:
                previous = float(info["logme_ped"])
        return version, previous, refreshes

    def training_mode(self) -> str:
        """A pinned ``training`` wins; otherwise LP-FT until the trigger first fires, FT after."""
        if self.spec.training:
            return self.spec.training
        return "ft" if self.history()[2] > 0 else "lp-ft"

    def features(self, version: int) -> np.ndarray:
        if version == 0:
            return self.ctx.pool_features
        return self.ctx.load_features(FeatureCache(self.ctx.run_dir / "cache"), version)

    # -- one round -------------------------------------------------------------------------------
    def select(self, round_: int, labelled: np.ndarray, k: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        ctx = self.ctx
        cfg = ctx.config.asvp
        version, previous, refreshes = self.history()
        feats = self.features(version)
        start = time.perf_counter()
        steps, score = self.check(feats, labelled, refreshes)
        forced = cfg.force_refresh_round is not None and round_ == cfg.force_refresh_round
        allowed = refreshes < cfg.max_refreshes
        refresh = forced or (allowed and should_refresh(steps, score, previous, cfg.threshold))
        info: Dict[str, Any] = {"ped_steps": int(steps), "logme_ped": score, "refresh": bool(refresh),
                                "check_s": round(time.perf_counter() - start, 3)}
        if refresh and not self.options.refresh:
            info.update(features_version=version, forced=bool(forced), refresh_s=0.0)
        elif refresh:
            start = time.perf_counter()
            version, feats = self.refresh_features(labelled, version)
            info.update(features_version=version, forced=bool(forced), refresh_s=round(time.perf_counter() - start, 3))
        start = time.perf_counter()
        rows, proxy_info = self.select_with_proxy(feats, round_, labelled, k)
        if "hints" in proxy_info:
            info["hints"] = proxy_info["hints"]
        info["proxy_s"] = round(time.perf_counter() - start, 3)
        return rows, info

    def check(self, feats: np.ndarray, labelled: np.ndarray, refreshes: int) -> Tuple[int, Optional[float]]:
        """(PED steps, LogME-PED) of the labelled rows' features; (0, None) when no check is due."""
        ctx = self.ctx
        labels = ctx.state.labels_of(labelled)
        if refreshes >= ctx.config.asvp.max_refreshes or np.unique(labels).size < 2:  # PED and LogME compare classes
            return 0, None
        order = np.argsort(labelled)  # sorted reads from the memmap
        moved, steps = ped(np.asarray(feats[labelled[order]], dtype=np.float32), labels[order])
        if steps <= 1:
            return int(steps), None
        # LogME's Gram matrix is O(N·D²): on the proxy's GPU when there is one
        dev = torch_device(ctx.config.proxy.device)
        options = {"device": str(dev)} if dev.type == "cuda" else {}
        return int(steps), logme(moved, labels[order], **options)

    def next_version(self, version: int) -> int:
        """The cache version a refresh writes: one past every version the saved rounds of any
        method use. It depends on the state only, so a refresh recomputed after a crash (before
        its round was saved) writes the same version again, never a second one."""
        used = [version]
        for m in self.ctx.state.methods.values():
            used += [int(r.info["features_version"]) for r in m.rounds if "features_version" in (r.info or {})]
        return max(used) + 1

    def refresh_features(self, labelled: np.ndarray, version: int) -> Tuple[int, np.ndarray]:
        """Fine-tune on the labels so far and extract the pool into a new cache version."""
        ctx = self.ctx
        model = ctx.train(labelled, "ft")
        # replace_stale: a version left by a crashed attempt is reused if its weights are
        # bit-identical to this fine-tune's (weights_digest), else replaced, never orphaned.
        cache = FeatureCache(ctx.run_dir / "cache", replace_stale=True)
        version = self.next_version(version)
        feats = ctx.extract(cache, model.backbone, version=version,
                            backbone_id=f"{model.backbone.backbone_id}+ft@{len(labelled)}")
        return version, feats
