"""Tables and plots of a PruneFuse study (bench/prunefuse_fashion.toml) for bench/RESULTS.md.

    python bench/prunefuse_report.py runs/prunefuse-fashion [--extra runs/prunefuse-fashion-v2]
        [--out bench/prunefuse_fashion] > tables.md

Reads ``<run>/seed*/state.json``; prints markdown (accuracy per budget, mean ± sample std over
seeds; paired differences per seed; selector size, multiply-accumulates and seconds; wall time)
and writes ``<out>_accuracy.png`` and ``<out>_cost.png``.

Compute of the pipeline (seconds, what a user pays for selection plus the final model):
random: the last training; standard: every round's training (each selects the next round) and
selection; svp: every selection (proxy training + scoring) and the last training; PruneFuse V1:
every selection, counting the training of the selector that made it wherever it ran, and the last
round's fused training (with the final selector's training); V2 also every round's fused training
(the next selector is pruned from it).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List

import numpy as np


def load(run: Path) -> Dict[int, Dict[str, Any]]:
    out = {}
    for path in sorted(run.glob("seed*/state.json")):
        state = json.loads(path.read_text())
        if all(m and m[-1]["stage"] == "done" for m in state["methods"].values()) and \
                len(state["methods"]) == len(state["config"]["methods"]):
            out[int(path.parent.name[4:])] = state  # finished seeds only
    if not out:
        raise SystemExit(f"no seed*/state.json under {run}")
    return out


def ms(values: List[float], pct: bool = True, digits: int = 1) -> str:
    v = np.array([x for x in values if x is not None and not math.isnan(x)], float)
    if v.size == 0:
        return "—"
    scale = 100.0 if pct else 1.0
    sd = v.std(ddof=1) * scale if v.size > 1 else 0.0
    return f"{v.mean() * scale:.{digits}f} ± {sd:.{digits}f}"


def method_kind(config: Dict[str, Any], name: str) -> Dict[str, Any]:
    for m in config["methods"]:
        if m["name"] == name:
            return m
    raise KeyError(name)


def pipeline_seconds(config: Dict[str, Any], name: str, rounds: List[Dict[str, Any]]) -> float:
    spec = method_kind(config, name)
    base, opts = spec["method"], spec.get("options", {})
    last = rounds[-1]["train_s"]
    sel = sum(r["select_s"] for r in rounds[1:])
    if base == "random":
        return last
    if base in ("standard", "standard-continued"):
        return sel + sum(r["train_s"] for r in rounds)
    if base == "prunefuse":
        sel += sum(r["info"].get("selector_trained_s", 0.0) - r["info"].get("selector_train_s", 0.0) for r in rounds[1:])
        if opts.get("version", 1) == 2:
            return sel + sum(r["train_s"] for r in rounds)
        return sel + last
    return sel + last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--extra", type=Path, action="append", default=[],
                    help="another study of the same setting and seeds whose methods join the tables")
    ap.add_argument("--out", default="bench/prunefuse_fashion")
    ap.add_argument("--title", default="From scratch: ResNet-8 on Fashion-MNIST (mean ± std over seeds)")
    ap.add_argument("--ref", default="pf:p0.5", help="the method the paired differences start from")
    args = ap.parse_args()
    states = load(args.run)
    for extra in args.extra:
        more = load(extra)
        for seed, state in states.items():
            if seed in more:
                state["methods"].update(more[seed]["methods"])
                state["config"]["methods"] += more[seed]["config"]["methods"]
    seeds = sorted(states)
    config = states[seeds[0]]["config"]
    names = [m["name"] for m in config["methods"]]
    budgets = [r["n_labels"] for r in states[seeds[0]]["methods"][names[0]]]
    acc = {n: np.array([[r["accuracy"] for r in states[s]["methods"][n]] for s in seeds], float) for n in names}
    budgets = budgets[: min(a.shape[1] for a in acc.values())]
    acc = {n: a[:, : len(budgets)] for n, a in acc.items()}

    lines = [f"Seeds {seeds}; accuracy (%) on the {config['data'].get('test_size')} test images, mean ± sample std over seeds.", ""]
    lines += ["| method | " + " | ".join(f"{b} labels" for b in budgets) + " | mean over budgets |",
              "|---|" + "---:|" * (len(budgets) + 1)]
    for n in names:
        cells = [ms(list(acc[n][:, i])) for i in range(len(budgets))] + [ms(list(acc[n].mean(1)))]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")

    ref = args.ref if args.ref in names else names[-1]
    lines += ["", f"Paired differences, {ref} minus each method (accuracy points; mean ± std over seeds of the "
              "per-seed difference; 'wins' = seeds where the difference is > 0).", ""]
    lines += ["| minus | " + " | ".join(f"{b}" for b in budgets) + " | mean over budgets | wins (mean) |",
              "|---|" + "---:|" * (len(budgets) + 2)]
    for n in names:
        if n == ref:
            continue
        d = acc[ref] - acc[n]
        wins = int((d.mean(1) > 0).sum())
        lines.append(f"| {n} | " + " | ".join(ms(list(d[:, i])) for i in range(len(budgets))) +
                     f" | {ms(list(d.mean(1)))} | {wins}/{len(seeds)} |")

    lines += ["", "Selector and cost per method (seconds on 2 shared CPU cores, mean over seeds; per round = "
              "rounds 1+). MACs: multiply-accumulates per 28x28 image.", ""]
    lines += ["| method | selector params | selector MACs | selector training s / round | pool scoring s / round | "
              "selection s / round | target training s / round | pipeline compute s | total wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cost_rows = []
    for n in names:
        per = [states[s]["methods"][n] for s in seeds]
        info = [r["info"] for rounds in per for r in rounds[1:]]
        params = info[0].get("selector_params") if info else None
        macs = info[0].get("selector_flops") if info else None
        dense_params = next((i.get("dense_params") for i in info if "dense_params" in i), None)
        base = method_kind(config, n)["method"]
        if base in ("standard", "standard-continued"):
            params = params or dense_params
        sel_train = [i.get("selector_trained_s", i.get("selector_train_s")) for i in info]
        sel_infer = [i.get("selector_infer_s") for i in info]
        select_s = [r["select_s"] for rounds in per for r in rounds[1:]]
        target = [r["info"].get("target_train_s", r["train_s"]) for rounds in per for r in rounds]
        pipe = [pipeline_seconds(config, n, rounds) for rounds in per]
        wall = [sum(r["select_s"] + r["train_s"] + r["eval_s"] for r in rounds) for rounds in per]

        def mean(v: List[Any]) -> str:
            v = [x for x in v if x is not None]
            return f"{np.mean(v):.1f}" if v else "—"

        lines.append(f"| {n} | {params if params is not None else ('(dense)' if base.startswith('standard') else '—')} | "
                     f"{macs if macs is not None else '—'} | {mean(sel_train)} | {mean(sel_infer)} | {mean(select_s)} | "
                     f"{mean(target)} | {ms(pipe, pct=False)} | {ms(wall, pct=False)} |")
        cost_rows.append((n, float(np.mean(pipe)), float(np.mean(wall))))
    dense = next((r["info"] for s in seeds for r in states[s]["methods"].get(ref, [])[1:] if "dense_params" in r["info"]), None)
    if dense:
        data = config["data"]
        net = f"ResNet-{data['depth']}, width {data['width']}" if "depth" in data else f"the {data['case']} case's backbone"
        lines += ["", f"Dense target ({net}): {dense['dense_params']} parameters, {dense['dense_flops']} MACs per image."]
    print("\n".join(lines))
    plot(args.out, names, budgets, acc, cost_rows, args.title)


def plot(out: str, names: List[str], budgets: List[int], acc: Dict[str, np.ndarray], cost_rows: List[Any],
         title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for n in names:
        m, sd = acc[n].mean(0) * 100, (acc[n].std(0, ddof=1) * 100 if acc[n].shape[0] > 1 else np.zeros(len(budgets)))
        style = "-" if n.startswith("pf") else "--"
        ax.plot(budgets, m, style, marker="o", label=n)
        ax.fill_between(budgets, m - sd, m + sd, alpha=0.12)
    ax.set_xlabel("labelled samples")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(f"{out}_accuracy.png", dpi=110)

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    x = np.arange(len(cost_rows))
    ax.bar(x - 0.2, [c[1] for c in cost_rows], 0.4, label="pipeline compute (selection + final model)")
    ax.bar(x + 0.2, [c[2] for c in cost_rows], 0.4, label="total wall (incl. every round's evaluation model)")
    ax.set_xticks(x)
    ax.set_xticklabels([c[0] for c in cost_rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("seconds (2 CPU cores)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{out}_cost.png", dpi=110)


if __name__ == "__main__":
    main()
