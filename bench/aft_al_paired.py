"""Paired check of the active-learning study: retrain the target model of every round of a finished
`svpp` run on exactly the rows SVPp labelled, with `training.mode = "aft"` (same seed, same
training settings), so that AFT and FT are compared on identical label sets (in the study,
`svpp:aft` draws its own selections: proxy seeds include the method name).

    python bench/aft_al_paired.py bench/aft_fashion_al.toml runs/aft-fashion-al --beta 10 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from asvp_fast.loop import load_config
from asvp_fast.loop.engine.runner import Runner


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("study_dir")
    ap.add_argument("--beta", type=float, nargs="+", default=[10.0])
    ap.add_argument("--method", default="svpp")
    args = ap.parse_args()
    out = {}
    for seed_dir in sorted(Path(args.study_dir).glob("seed*")):
        seed = int(seed_dir.name[4:])
        cfg = load_config(args.config)
        cfg = dataclasses.replace(cfg, seed=seed)
        runner = Runner(cfg, seed_dir, resume=True, progress=False, echo=lambda *a, **k: None)
        ctx = runner.prepare()
        state = ctx.state
        mstate = state.method(args.method)
        for beta in args.beta:
            ctx.config = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, beta=beta))
            for r, rec in enumerate(mstate.rounds):
                rows = mstate.train_rows(r + 1)
                acc = ctx.evaluate(ctx.train(rows, "aft"))
                out.setdefault(f"beta{beta:g}", []).append({"seed": seed, "labels": int(len(rows)), "ft": rec.accuracy,
                                                            "aft": acc})
                print(f"seed {seed} beta {beta:g} labels {len(rows)}: FT {rec.accuracy:.4f} AFT {acc:.4f}", flush=True)
    Path(args.study_dir, "paired_aft.json").write_text(json.dumps(out))
    for key, rows in out.items():
        for n in sorted({r["labels"] for r in rows}):
            d = np.array([r["aft"] - r["ft"] for r in rows if r["labels"] == n]) * 100
            print(f"{key} labels {n}: AFT - FT = {d.mean():+.1f} ± {d.std(ddof=1):.1f} points (paired, {len(d)} seeds)")


if __name__ == "__main__":
    main()
