"""Tables (Markdown, printed) and PNG plots (bench/aft_<case>_*.png) from bench/aft_study.py's results.

    python bench/aft_report.py runs/aft-fashion/results.json runs/aft-wordnet/results.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

BENCH = Path(__file__).resolve().parent


def ms(values: Sequence[float], pct: bool = True) -> str:
    v = np.asarray(list(values), dtype=float) * (100 if pct else 1)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.1f} ± {sd:.1f}" if pct else f"{v.mean():.3f} ± {sd:.3f}"


def by(rows: List[Dict[str, Any]], *keys: str) -> Dict[Tuple[Any, ...], Dict[int, float]]:
    out: Dict[Tuple[Any, ...], Dict[int, float]] = defaultdict(dict)
    for r in rows:
        out[tuple(r[k] for k in keys)][r["seed"]] = r["test"]
    return out


def short(teachers: str) -> str:
    return teachers.replace("efficientnet-", "")


def paired(a: Dict[int, float], b: Dict[int, float]) -> str:
    seeds = sorted(set(a) & set(b))
    return ms([a[s] - b[s] for s in seeds])


def compare_table(res: Dict[str, Any]) -> str:
    g = by(res["compare"], "budget", "method", "teachers")
    budgets = sorted({k[0] for k in g})
    sets = [t for t in dict.fromkeys(r["teachers"] for r in res["compare"]) if t]
    head = "| labels | STL | " + " | ".join(f"{m} ({short(t)})" for t in sets for m in ("AFT", "KD", "LP")) + \
           " | " + " | ".join(f"AFT − STL ({short(t)})" for t in sets) + " | " + \
           " | ".join(f"AFT − KD ({short(t)})" for t in sets) + " |"
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for b in budgets:
        stl = g[(b, "stl", "")]
        cells = [str(b), ms(stl.values())]
        cells += [ms(g[(b, m, t)].values()) for t in sets for m in ("aft", "kd", "lp")]
        cells += [paired(g[(b, "aft", t)], stl) for t in sets]
        cells += [paired(g[(b, "aft", t)], g[(b, "kd", t)]) for t in sets]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def noise_table(res: Dict[str, Any]) -> str:
    rows = res["noise"]
    g = by(rows, "noise", "method")
    lines = ["| noise features | AFT | KD | AFT − KD (paired) | mean ρ real | mean ρ noise |", "|---:|---:|---:|---:|---:|---:|"]
    for k in sorted({r["noise"] for r in rows}):
        aft = [r for r in rows if r["noise"] == k and r["method"] == "aft"]
        real = ms([r["rho_real_mean"] for r in aft], pct=False)
        noise = ms([r["rho_noise_mean"] for r in aft], pct=False) if k else "—"
        lines.append(f"| {k} | {ms(g[(k, 'aft')].values())} | {ms(g[(k, 'kd')].values())} | "
                     f"{paired(g[(k, 'aft')], g[(k, 'kd')])} | {real} | {noise} |")
    return "\n".join(lines)


def weak_table(res: Dict[str, Any]) -> str:
    w = res["weak"]
    lines = ["| strong teacher | weak teacher | LP strong | LP weak | mean ρ strong | mean ρ weak | AFT (strong + weak) | AFT (strong only) | difference (paired) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    diff = [r["test"] - r["aft_strong_only"] for r in w]
    lines.append(f"| {res['teachers'][0]} | {res['weak_teacher']} | {ms([r['lp_strong'] for r in w])} | {ms([r['lp_weak'] for r in w])} | "
                 f"{ms([r['rho_strong'] for r in w], False)} | {ms([r['rho_weak'] for r in w], False)} | "
                 f"{ms([r['test'] for r in w])} | {ms([r['aft_strong_only'] for r in w])} | {ms(diff)} |")
    return "\n".join(lines)


def plots(res: Dict[str, Any]) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    case, made = res["case"], []
    if "compare" in res:
        g = by(res["compare"], "budget", "method", "teachers")
        budgets = sorted({k[0] for k in g})
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        series = [("stl", "")] + [(m, t) for t in dict.fromkeys(r["teachers"] for r in res["compare"]) if t
                                  for m in ("aft", "kd", "lp")]
        for m, t in series:
            vals = [np.array(list(g[(b, m, t)].values())) * 100 for b in budgets]
            mean, sd = np.array([v.mean() for v in vals]), np.array([v.std(ddof=1) if len(v) > 1 else 0 for v in vals])
            label = m.upper() + (f" ({short(t)})" if t else "")
            ax.plot(budgets, mean, marker="o", label=label, linestyle="--" if m == "lp" else "-")
            ax.fill_between(budgets, mean - sd, mean + sd, alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("labels")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{case}: AFT, STL, KD, linear probe ({len(res['seeds'])} seeds)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        made.append(BENCH / f"aft_{case}_compare.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    if "noise" in res:
        g = by(res["noise"], "noise", "method")
        ks = sorted({r["noise"] for r in res["noise"]})
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for m in ("aft", "kd"):
            vals = [np.array(list(g[(k, m)].values())) * 100 for k in ks]
            axes[0].errorbar(ks, [v.mean() for v in vals], yerr=[v.std(ddof=1) if len(v) > 1 else 0 for v in vals],
                             marker="o", capsize=3, label=m.upper())
        axes[0].set_xlabel("appended N(0, 1) noise features")
        axes[0].set_ylabel("test accuracy (%)")
        axes[0].set_title("noise test (500 labels)")
        axes[0].legend()
        rho = res.get("noise_rho")
        if rho:
            bins = np.linspace(0, 1, 41)
            axes[1].hist(rho["real"], bins=bins, alpha=0.6, density=True, label=f"real ({len(rho['real'])})")
            axes[1].hist(rho["noise"], bins=bins, alpha=0.6, density=True, label=f"noise ({len(rho['noise'])})")
            axes[1].set_xlabel("learned ρ = σ(s)")
            axes[1].set_ylabel("density")
            axes[1].set_title(f"ρ with {max(ks)} noise features (seed {res['seeds'][0]})")
            axes[1].legend()
        fig.tight_layout()
        made.append(BENCH / f"aft_{case}_noise.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    if "weak_rho" in res:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        bins = np.linspace(0, 1, 41)
        ax.hist(res["weak_rho"]["strong"], bins=bins, alpha=0.6, density=True, label=f"strong: {res['teachers'][0]}")
        ax.hist(res["weak_rho"]["weak"], bins=bins, alpha=0.6, density=True, label=f"weak: {res['weak_teacher']}")
        ax.set_xlabel("learned ρ = σ(s)")
        ax.set_ylabel("density")
        ax.set_title(f"{case}: ρ of a strong and a weak teacher (500 labels, seed {res['seeds'][0]})")
        ax.legend()
        fig.tight_layout()
        made.append(BENCH / f"aft_{case}_weak.png")
        fig.savefig(made[-1], dpi=110)
        plt.close(fig)
    return made


def main(paths: Sequence[str]) -> None:
    for p in paths:
        res = json.loads(Path(p).read_text())
        print(f"\n### {res['case']} ({res['sizes']}, {res['steps']} steps, seeds {res['seeds']}, "
              f"teacher extraction {res['extract_s']:.0f} s, wall {res['wall_s'] / 60:.1f} min)\n")
        print(f"β chosen on validation (budget 500, seed 0): {res['beta']} from {res['beta_search']}\n")
        if "compare" in res:
            print(compare_table(res) + "\n")
        if "noise" in res:
            print(noise_table(res) + "\n")
        if "weak" in res:
            print(weak_table(res) + "\n")
        for f in plots(res):
            print(f"plot: {f.relative_to(BENCH.parent)}")


if __name__ == "__main__":
    main(sys.argv[1:])
