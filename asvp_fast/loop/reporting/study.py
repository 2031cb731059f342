"""Multi-seed studies: one configured run per seed, then the mean ± std across seeds.

``asvp-fast study CONFIG --seeds 0 1 2 -o DIR`` runs ``CONFIG`` once per seed in ``DIR/seed<S>``
(each an ordinary, resumable run: rerunning the command continues where it stopped) and writes

* ``DIR/summary.md`` – per method: average sample saving ratio (mean ± sample std over seeds),
  final accuracy, selection time per round, compute hours, overall cost, the labels and cost
  needed to reach random's accuracy at the last budget (the paper's table 1 cost, and its ratio
  to random's), and for ASVP variants where the LogME-PED trigger fired;
* ``DIR/summary.json`` – the same numbers and every seed's values;
* ``DIR/accuracy.png`` – accuracy against labels, mean with a ±1 std band; ``DIR/cost.png`` –
  total selection time and the cost of reaching random's final accuracy (the paper's figure 13);
* with ``svpp`` in the config, the LogME-PED trace along SVPp's labelled sets on the pre-trained
  features (PED steps, LogME-PED per sample and in total-evidence units, and the labels at which
  the ASVP rule with threshold 1 would fire in either unit), which is how the threshold's unit
  question is answered on real data.

The seed changes the initial random set, every training's seed and the selection seeds; the
data split (``data.seed``) stays the same, so the seeds measure the variance of the AL procedure
on one dataset, as the paper's repeated runs do.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ... import metrics
from ...transfer.logme import logme
from ...transfer.ped import ped
from ..engine.config import RunConfig
from ..engine.state import RunState
from ..methods import method_class
from ..storage.cache import FeatureCache
from ..storage.files import atomic_write_text
from .plots import new_figure
from .report import MethodSummary, compute_seconds, summarise


@dataclass
class MethodStudy:
    """One method across seeds (``per_seed`` keeps each seed's run summary)."""

    name: str
    seeds: List[int]
    average_ratio: List[float]  # one per seed (NaN where a seed has no random curve)
    final_accuracy: List[float]
    select_s_per_round: List[float]  # mean over rounds > 0, per seed
    select_s_total: List[float]  # all rounds' selection, per seed
    compute_hours: List[float]
    cost: List[float]
    labels: List[int]  # the budgets (the same for every seed)
    accuracy: List[List[float]]  # [seed][round]
    triggers: List[Optional[int]]  # labels at which the ASVP trigger fired, per seed (None: never / not ASVP)
    # the paper's table 1 / figure 13 cost: what it takes to reach random's accuracy at the last AL budget
    labels_to_target: List[float]  # NaN where the method never reaches it
    cost_to_target: List[float]
    cost_ratio: List[float]  # cost_to_target / random's cost to its own final accuracy

    @staticmethod
    def mean_std(values: Sequence[float]) -> "tuple[float, float]":
        """Mean and sample standard deviation (ddof=1; 0 for a single seed), NaNs ignored."""
        arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
        if arr.size == 0:
            return math.nan, math.nan
        return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def seed_dir(out_dir: Path, seed: int) -> Path:
    return Path(out_dir) / f"seed{seed}"


def traces(config: RunConfig, states: Dict[int, RunState], out_dir: "Path | str") -> Dict[int, List[TracePoint]]:
    """:func:`logme_ped_trace` of SVPp for every seed (empty without ``svpp`` in the config)."""
    if "svpp" not in config.method_names:
        return {}
    return {seed: logme_ped_trace(state, seed_dir(Path(out_dir), seed)) for seed, state in states.items()}


def collect(config: RunConfig, states: Dict[int, RunState]) -> List[MethodStudy]:
    """Per-method results across the seeds' final states."""
    per_seed = {seed: {s.name: s for s in summarise(state, dataclasses.replace(config, seed=seed))}
                for seed, state in states.items()}
    out = []
    for name in config.method_names:
        rows = [(seed, per_seed[seed].get(name)) for seed in sorted(per_seed)]
        runs = [(seed, s) for seed, s in rows if s is not None and s.accuracy]
        if not runs:
            continue
        budgets = len(config.schedule.budgets())
        out.append(MethodStudy(
            name=name,
            seeds=[seed for seed, _ in runs],
            average_ratio=[math.nan if s.average_ratio is None else s.average_ratio for _, s in runs],
            final_accuracy=[s.accuracy[min(budgets, len(s.accuracy)) - 1] for _, s in runs],
            select_s_per_round=[_mean_select(s) for _, s in runs],
            select_s_total=[float(sum(s.select_s[:budgets])) for _, s in runs],
            compute_hours=[s.compute_hours for _, s in runs],
            cost=[s.cost for _, s in runs],
            labels=runs[0][1].labels,
            accuracy=[s.accuracy for _, s in runs],
            triggers=[_trigger(states[seed], name) for seed, _ in runs],
            **_costs_to_target(config, states, per_seed, name, [seed for seed, _ in runs]),
        ))
    return out


def _costs_to_target(config: RunConfig, states: Dict[int, RunState], per_seed: Dict[int, Dict[str, MethodSummary]],
                     name: str, seeds: List[int]) -> Dict[str, List[float]]:
    """Labels and overall cost with which ``name`` first reaches random's accuracy at the last AL
    budget (the paper's table 1 cost), and that cost as a fraction of random's own."""
    budgets = len(config.schedule.budgets())
    out: Dict[str, List[float]] = {"labels_to_target": [], "cost_to_target": [], "cost_ratio": []}
    for seed in seeds:
        rand = per_seed[seed].get("random")
        mine = per_seed[seed][name]
        labels, cost, ratio = math.nan, math.nan, math.nan
        if rand is not None and len(rand.accuracy) >= budgets:
            target = rand.accuracy[budgets - 1]
            own = _cost_reaching(config, states[seed], mine, target)
            base = _cost_reaching(config, states[seed], rand, target)
            labels, cost = own
            ratio = cost / base[1] if base[1] > 0 else math.nan
        out["labels_to_target"].append(labels)
        out["cost_to_target"].append(cost)
        out["cost_ratio"].append(ratio)
    return out


def _cost_reaching(config: RunConfig, state: RunState, s: MethodSummary, target: float) -> "tuple[float, float]":
    """(labels, cost): the first crossing of ``target`` on the method's own piecewise-linear curve
    (labels interpolated), compute counted up to the round that reaches it."""
    budgets = len(config.schedule.budgets())
    labels, acc = np.array(s.labels[:budgets], float), np.array(s.accuracy[:budgets], float)
    reached = np.flatnonzero(acc >= target)
    if reached.size == 0:
        return math.nan, math.nan
    n = float(labels[0]) if reached[0] == 0 else float(metrics.equivalent_random_labels(target, labels, acc, outside="nan"))
    kind = method_class(next(m.method for m in config.methods if m.name == s.name)).compute
    hours = compute_seconds(kind, state.methods[s.name].rounds[: int(reached[0]) + 1], state) / 3600.0
    cost = float(metrics.overall_cost(n, config.costs.label_price, hours, config.costs.hourly_price, reviews=config.costs.reviews))
    return n, cost


def _mean_select(s: MethodSummary) -> float:
    later = s.select_s[1:]
    return float(np.mean(later)) if later else 0.0


def _trigger(state: RunState, name: str) -> Optional[int]:
    """Labels in hand when the ASVP trigger fired (the refresh uses them), or None."""
    m = state.methods.get(name)
    if m is None:
        return None
    for r in m.rounds:
        if (r.info or {}).get("refresh"):
            return int(r.n_labels - len(r.new))
    return None


# -- the trigger's threshold unit --------------------------------------------------------------------
@dataclass
class TracePoint:
    labels: int
    ped_steps: int
    logme_ped: Optional[float]  # per sample (LogME's usual unit: evidence / N); None when PED took one step


def logme_ped_trace(state: RunState, run_dir: "Path | str", method: str = "svpp") -> List[TracePoint]:
    """PED steps and LogME-PED of ``method``'s labelled set after every round, on the pre-trained
    features (cache version 0): the sequence the ASVP rule would see without a refresh."""
    feats = FeatureCache(Path(run_dir) / "cache").load("pool", 0, verify=False)
    rows: List[int] = []
    out = []
    for rec in state.methods[method].rounds:
        if rec.stage == "selected":  # a batch still waiting for its labels (a paused run) ends the trace
            break
        rows.extend(rec.new)
        idx = np.sort(np.asarray(rows, dtype=np.int64))
        y = state.labels_of(idx)
        steps, score = 0, None
        if np.unique(y).size >= 2:
            moved, steps = ped(np.asarray(feats[idx], dtype=np.float32), y)
            score = logme(moved, y) if steps > 1 else None
        out.append(TracePoint(int(idx.size), int(steps), score))
    return out


def fires_at(trace: Sequence[TracePoint], threshold: float = 1.0, *, unit: str = "per-sample") -> Optional[int]:
    """Labels at which the ASVP rule would first fire on ``trace``: PED needed more than one step
    and LogME-PED moved by less than ``threshold`` since the previous score, with the score per
    sample (``"per-sample"``) or as total log evidence, per sample × N (``"total"``)."""
    if unit not in ("per-sample", "total"):
        raise ValueError(f"unit must be 'per-sample' or 'total', got {unit!r}")
    previous = None
    for point in trace:
        if point.logme_ped is None:
            continue
        value = point.logme_ped * (point.labels if unit == "total" else 1)
        if previous is not None and point.ped_steps > 1 and abs(value - previous) < threshold:
            return point.labels
        previous = value
    return None


def trace_markdown(traces: Dict[int, List[TracePoint]], threshold: float = 1.0) -> str:
    """The first seed's trace in full, and where the rule fires for every seed in both units."""
    if not traces:
        return ""
    seed = min(traces)
    lines = [f"LogME-PED along SVPp's labelled sets on the pre-trained features (seed {seed}); Δ is the change "
             "since the previous score, per sample and in total-evidence units (× labels):", "",
             "| labels | PED steps | LogME-PED (per sample) | Δ per sample | total (× labels) | Δ total |",
             "|---:|---:|---:|---:|---:|---:|"]
    prev = None
    for p in traces[seed]:
        if p.logme_ped is None:
            lines.append(f"| {p.labels} | {p.ped_steps} | — | | | |")
            continue
        total = p.logme_ped * p.labels
        d1 = "" if prev is None else f"{p.logme_ped - prev[0]:+.3f}"
        d2 = "" if prev is None else f"{total - prev[1]:+.1f}"
        lines.append(f"| {p.labels} | {p.ped_steps} | {p.logme_ped:.4f} | {d1} | {total:.1f} | {d2} |")
        prev = (p.logme_ped, total)
    per = ", ".join(f"seed {s}: {fires_at(t, threshold) or 'never'}" for s, t in sorted(traces.items()))
    tot = ", ".join(f"seed {s}: {fires_at(t, threshold, unit='total') or 'never'}" for s, t in sorted(traces.items()))
    lines += ["", f"The rule with threshold {threshold:g} would fire after this many labels — per-sample units: {per}; "
              f"total-evidence units: {tot}.", ""]
    return "\n".join(lines)


# -- output ----------------------------------------------------------------------------------------
def _pm(mean: float, std: float, *, pct: bool = False, digits: int = 1) -> str:
    if math.isnan(mean):
        return "—"
    scale = 100.0 if pct else 1.0
    sign = "+" if pct and mean >= 0 else ""
    return f"{sign}{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" + ("%" if pct else "")


PAIRED_BASELINE = "svpp"  # the ablation's "neither alignment" cell


def _paired(st: MethodStudy, base: MethodStudy) -> "tuple[float, float]":
    """Mean ± std over common seeds of st's average saving ratio minus base's."""
    mine = dict(zip(st.seeds, st.average_ratio))
    return MethodStudy.mean_std([mine[s] - b for s, b in zip(base.seeds, base.average_ratio) if s in mine])


def _reach(values: Sequence[float], *, digits: int, pct: bool = False) -> str:
    """mean ± std over the seeds that reached the target, and how many did when not all."""
    got = [v for v in values if not math.isnan(v)]
    if not got:
        return "not reached"
    mean, std = MethodStudy.mean_std(got)
    scale = 100.0 if pct else 1.0
    text = f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}" + ("%" if pct else "")
    return text if len(got) == len(values) else f"{text} ({len(got)} of {len(values)} seeds)"


def markdown(studies: List[MethodStudy], config: RunConfig, *, command: str = "") -> str:
    seeds = sorted({s for st in studies for s in st.seeds})
    lines = []
    if command:
        lines += [f"Command: `{command}`", ""]
    base = next((st for st in studies if st.name == PAIRED_BASELINE), None)
    lines += [f"Seeds {', '.join(map(str, seeds))}; budgets {', '.join(map(str, config.schedule.budgets()))}; "
              f"strategy `{config.selection.strategy}`. Mean ± sample std over seeds"
              + (f"; 'vs {PAIRED_BASELINE}' is the per-seed difference of average saving ratios (paired: each seed "
                 "shares its initial set and random curve), which removes the seed-to-seed variance of the random "
                 "baseline." if base is not None else "."), "",
              "| method | average sample saving ratio" + (f" | vs {PAIRED_BASELINE} (paired)" if base is not None else "") + " | final accuracy | selection time per round (s) | compute (h) | overall cost (USD) | labels to reach random's final accuracy | cost to reach it (USD) | cost vs random | trigger fired at (labels, per seed) |",
              "|---|---:|" + ("---:|" if base is not None else "") + "---:|---:|---:|---:|---:|---:|---:|---|"]
    for st in studies:
        trig = "" if st.name.split(":")[0] != "asvp" else ", ".join("—" if t is None else str(t) for t in st.triggers)
        ratio = "—" if st.name == "random" else _pm(*MethodStudy.mean_std(st.average_ratio), pct=True)
        paired = ""
        if base is not None:
            paired = " — |" if st.name in ("random", PAIRED_BASELINE) else f" {_pm(*_paired(st, base), pct=True)} |"
        lines.append(f"| {st.name} | {ratio} |{paired} {_pm(*MethodStudy.mean_std(st.final_accuracy), pct=True).lstrip('+')} | "
                     f"{_pm(*MethodStudy.mean_std(st.select_s_per_round), digits=2)} | "
                     f"{_pm(*MethodStudy.mean_std(st.compute_hours), digits=4)} | {_pm(*MethodStudy.mean_std(st.cost), digits=2)} | "
                     f"{_reach(st.labels_to_target, digits=0)} | {_reach(st.cost_to_target, digits=2)} | "
                     f"{_reach(st.cost_ratio, digits=1, pct=True)} | {trig} |")
    lines += ["", "Accuracy per budget (mean over seeds):", "",
              "| labels | " + " | ".join(st.name for st in studies) + " |",
              "|---:|" + "---:|" * len(studies)]
    all_labels = sorted({n for st in studies for n in st.labels})
    for n in all_labels:
        cells = []
        for st in studies:
            if n in st.labels:
                i = st.labels.index(n)
                vals = [acc[i] for acc in st.accuracy if i < len(acc)]
                cells.append(f"{100 * float(np.mean(vals)):.1f}%")
            else:
                cells.append("")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_json(studies: List[MethodStudy]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for st in studies:
        d = dataclasses.asdict(st)
        for key in ("average_ratio", "final_accuracy", "select_s_per_round", "select_s_total", "compute_hours", "cost",
                    "labels_to_target", "cost_to_target", "cost_ratio"):
            mean, std = MethodStudy.mean_std(getattr(st, key))
            d[key + "_mean"], d[key + "_std"] = mean, std
        out[st.name] = d
    return json.loads(json.dumps(out, default=float).replace("NaN", "null"))


def plot(studies: List[MethodStudy], path: Path, title: str = "") -> Optional[Path]:
    try:
        fig = new_figure((6.4, 4.4))
    except ImportError:  # pragma: no cover - the plot is optional
        return None
    ax = fig.subplots()
    for st in studies:
        n = min(len(a) for a in st.accuracy)
        acc = 100 * np.array([a[:n] for a in st.accuracy])
        x = np.array(st.labels[:n])
        mean = acc.mean(axis=0)
        line, = ax.plot(x, mean, marker="o", ms=3, label=st.name, ls="--" if st.name == "random" else "-")
        if acc.shape[0] > 1:
            std = acc.std(axis=0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    ax.set_xlabel("labels")
    ax.set_ylabel("test accuracy (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if studies:  # an empty study has no lines to name
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_costs(studies: List[MethodStudy], path: Path, title: str = "") -> Optional[Path]:
    """The paper's figure 13: total selection time and the overall cost of reaching random's
    accuracy at the last budget, per method (mean ± std over seeds)."""
    shown = [st for st in studies if st.name != "random"]
    if not shown:
        return None
    try:
        fig = new_figure((9.6, 4.0))
    except ImportError:  # pragma: no cover
        return None
    ax_t, ax_c = fig.subplots(1, 2)
    names = [st.name for st in shown]
    ypos = np.arange(len(shown))
    t = [MethodStudy.mean_std(st.select_s_total) for st in shown]
    ax_t.barh(ypos, [max(m, 1e-3) for m, _ in t], xerr=[e for _, e in t], color="tab:blue", alpha=0.7)
    ax_t.set_xscale("log")
    ax_t.set_xlabel("total selection time (s, log scale)")
    c = [MethodStudy.mean_std([v for v in st.cost_to_target if not math.isnan(v)]) for st in shown]
    ax_c.barh(ypos, [0 if math.isnan(m) else m for m, _ in c], xerr=[0 if math.isnan(e) else e for _, e in c],
              color="tab:orange", alpha=0.7)
    for y, (m, _) in zip(ypos, c):
        if math.isnan(m):
            ax_c.text(0.2, y, "not reached", va="center", fontsize=8, color="0.4")
    rand = next((st for st in studies if st.name == "random"), None)
    if rand is not None:
        base = MethodStudy.mean_std(rand.cost_to_target)[0]
        if not math.isnan(base):
            ax_c.axvline(base, color="k", ls="--", lw=1, label="random")
            ax_c.legend(fontsize=8)
    ax_c.set_xlabel("overall cost to reach random's final accuracy (USD)")
    for ax in (ax_t, ax_c):
        ax.set_yticks(ypos)
        ax.set_yticklabels(names, fontsize=8)
        ax.grid(alpha=0.3, axis="x")
    ax_c.set_yticklabels([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def write_summary(studies: List[MethodStudy], config: RunConfig, out_dir: "Path | str", *, command: str = "",
                  title: str = "", traces: Optional[Dict[int, List[TracePoint]]] = None) -> Dict[str, Any]:
    out = Path(out_dir)
    text = markdown(studies, config, command=command)
    if traces:
        text += "\n" + trace_markdown(traces, config.asvp.threshold)
    atomic_write_text(out / "summary.md", text)
    atomic_write_text(out / "summary.json", json.dumps(to_json(studies), indent=1))
    png = plot(studies, out / "accuracy.png", title=title)
    costs = plot_costs(studies, out / "cost.png", title=title)
    return {"markdown": text, "plot": png, "cost_plot": costs}
