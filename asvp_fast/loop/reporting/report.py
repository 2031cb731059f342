"""Results of a run: a Markdown table, a summary with average sample saving ratios and costs,
and the two plots of the ASVP paper (accuracy vs labels; equivalent random labels vs labels).

Compute cost per method (the C_tr of the paper's overall cost) counts what the method needs in
practice, not what the simulation spends on evaluating every round:

* standard AL: every round's training plus its selection passes (it selects with those models);
* proxy and one-shot methods: the pre-trained feature extraction, every selection (proxy
  training, scoring), and one final training;
* random: one final training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ... import metrics
from ..storage.files import atomic_write_text
from ..engine.config import RunConfig
from ..engine.state import RunState
from ..methods import method_class
from .plots import line_figure


@dataclass
class MethodSummary:
    name: str
    labels: List[int]
    accuracy: List[float]
    select_s: List[float]
    equivalent: Optional[List[float]]
    ratio: Optional[List[float]]
    average_ratio: Optional[float]
    labels_bought: int
    compute_hours: float
    cost: float


def summarise(state: RunState, config: RunConfig) -> List[MethodSummary]:
    random_curve = _random_curve(state)
    out = []
    for spec in config.methods:
        name = spec.name
        m = state.methods.get(name)
        if m is None:
            continue
        rounds = [r for r in m.rounds if r.stage == "done" and r.accuracy is not None]
        labels = [r.n_labels for r in rounds]
        acc = [float(r.accuracy) for r in rounds]  # type: ignore[arg-type]
        eq = ratio = None
        avg = None
        if random_curve is not None and rounds:
            eq = [float(x) for x in np.atleast_1d(metrics.equivalent_random_labels(np.array(acc), *random_curve))]
            ratio = [float(x) for x in np.atleast_1d(metrics.sample_saving_ratio(np.array(labels, float), np.array(acc), *random_curve))]
            avg = float(metrics.average_sample_saving_ratio(np.array(labels, float), np.array(acc), *random_curve))
        # costs at the AL budget: the random baseline's extra rounds only serve the comparison; a
        # batch still waiting for its labels (a paused run) is not bought yet
        costed = [r for r in m.rounds[: len(config.schedule.budgets())] if r.stage != "selected"]
        if costed and costed[-1].train_rows is not None:
            # one-shot methods (ActiveFT(pre)) select each budget afresh: a user buys only the last one
            bought = len(costed[-1].train_rows)
        else:
            bought = len({x for r in costed for x in r.new})
        hours = compute_seconds(method_class(spec.method).compute, costed, state) / 3600.0
        cost = float(metrics.overall_cost(bought, config.costs.label_price, hours, config.costs.hourly_price,
                                          reviews=config.costs.reviews))
        out.append(MethodSummary(name, labels, acc, [r.select_s for r in rounds], eq, ratio, avg, bought, hours, cost))
    return out


def _random_curve(state: RunState) -> Optional[tuple]:
    m = state.methods.get("random")
    if m is None:
        return None
    pts = [(r.n_labels, r.accuracy) for r in m.rounds if r.stage == "done" and r.accuracy is not None]
    if len(pts) < 2:
        return None
    return np.array([p[0] for p in pts], float), np.array([p[1] for p in pts], float)


def compute_seconds(kind: str, rounds: List[Any], state: RunState) -> float:
    """Compute seconds of ``rounds`` by a method's cost model (:attr:`Method.compute`): ``"every-round"``
    counts every training and selection, ``"final"`` the last training only, ``"selection"`` the
    pre-trained extraction, every selection and the last training."""
    done = [r for r in rounds if r.stage == "done"]
    if not done:
        return 0.0
    select = sum(r.select_s for r in rounds)
    if kind == "every-round":
        return select + sum(r.train_s for r in done)
    final = done[-1].train_s
    if kind == "final":
        return final
    return state.stages.get("extract_pool_s", 0.0) + select + final


def markdown(summaries: List[MethodSummary], config: RunConfig, state: RunState) -> str:
    lines = [f"# Active-learning run: {config.data.case or 'your data'}, strategy {config.selection.strategy}", ""]
    lines += ["Accuracy on the held-out set per round (equivalent random labels, sample saving ratio).", ""]
    names = [s.name for s in summaries]
    random_acc = next((s.accuracy for s in summaries if s.name == "random"), [])
    lines.append("| labels | " + " | ".join(names) + " |")
    lines.append("|---:|" + "---:|" * len(names))
    n_rounds = max((len(s.labels) for s in summaries), default=0)
    for i in range(n_rounds):
        cells = []
        label_count = next((s.labels[i] for s in summaries if i < len(s.labels)), 0)
        for s in summaries:
            if i >= len(s.labels):
                cells.append("")
                continue
            cell = f"{100 * s.accuracy[i]:.1f}%"
            if s.equivalent is not None and s.ratio is not None and s.name != "random":
                bound = _bound(s.accuracy[i], random_acc)
                cell += f" ({bound}{_num(s.equivalent[i])}, {bound}{_pct(s.ratio[i])})"
            cells.append(cell)
        lines.append(f"| {label_count} | " + " | ".join(cells) + " |")
    lines += ["", "| method | average sample saving ratio | labels bought | selection time per round (s) | "
              "compute (h) | overall cost (USD) |", "|---|---:|---:|---|---:|---:|"]
    for s in summaries:
        avg = "—" if s.average_ratio is None or s.name == "random" else _pct(s.average_ratio)
        per_round = " / ".join(f"{x:.1f}" for x in s.select_s[1:]) or "—"  # round 0 is the shared random set
        lines.append(f"| {s.name} | {avg} | {s.labels_bought} | {per_round} | {s.compute_hours:.4f} | {s.cost:.2f} |")
    c = config.costs
    lines += ["", f"Overall cost = labels × {c.label_price} USD × {c.reviews} reviews + compute hours × {c.hourly_price} USD/h "
              "(defaults: see `asvp_fast.metrics`). Equivalent random labels come from the random curve; outside its "
              "range they are clipped to its ends (see `asvp_fast.metrics.equivalent_random_labels`); ≥ marks "
              "accuracies above the whole random curve, whose savings are lower bounds."]
    if "extract_pool_s" in state.stages:
        lines.append(f"Pre-trained feature extraction: {state.stages['extract_pool_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def _bound(acc: float, random_acc: List[float]) -> str:
    """"≥" where the accuracy is above the whole random curve: N₂ (and the saving) is then a lower bound."""
    return "≥" if random_acc and acc > max(random_acc) else ""


def _num(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.0f}"


def _pct(x: float) -> str:
    return "—" if x is None or math.isnan(x) else f"{100 * x:+.1f}%"


def plot(summaries: List[MethodSummary], run_dir: Path) -> List[Path]:
    """accuracy.png and equivalent_labels.png (the paper's figures 11 and 12); [] without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    paths = [line_figure(run_dir / "accuracy.png", "test accuracy (%)",
                         [(s.name, s.labels, [100 * a for a in s.accuracy]) for s in summaries])]
    with_eq = [s for s in summaries if s.equivalent is not None]
    if with_eq:
        top = max(max(s.labels) for s in with_eq)
        paths.append(line_figure(run_dir / "equivalent_labels.png", "equivalent random labels",
                                 [(s.name, s.labels, s.equivalent or []) for s in with_eq], diagonal=top))
    return paths


def write_report(state: RunState, config: RunConfig, run_dir: Path, *, echo: Any = print) -> Dict[str, Any]:
    summaries = summarise(state, config)
    text = markdown(summaries, config, state)
    atomic_write_text(run_dir / "results.md", text)
    plots = plot(summaries, run_dir)
    echo(text)
    echo("plots: " + ", ".join(str(p) for p in plots) if plots else "plots: matplotlib is not installed")
    return {"summaries": summaries, "markdown": text, "plots": plots}
