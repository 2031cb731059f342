"""Uncertainty suite: ``af.select_uncertain`` against the references the existing libraries use.

For each case it measures, in the same process and on the same data:
  * asvp_fast.select_uncertain (one fused pass: statistic + validation + streaming top-k),
  * "numpy-sort": the style of most active-learning libraries — full per-row sort, the
    statistic, then a full argsort of the pool,
  * "torch-topk": torch.topk per row (or softmax + entropy for logits), then torch.topk over
    the pool,
and reports seconds, GB/s of input read, the fraction of the machine's measured read bandwidth,
our speed-up over each reference and the peak extra resident memory of each method.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Set, Tuple

import numpy as np

import asvp_fast as af
from measure import PeakMemory


@dataclass
class Case:
    name: str
    n: int
    c: int
    dtype: str  # "float32" or "float16"
    from_logits: bool
    kind: str  # "margin", "entropy" or "least_confidence"
    k: int


FULL_CASES = [
    Case("margin top-1000, 1M x 1000 float32 probabilities", 1_000_000, 1000, "float32", False, "margin", 1000),
    Case("entropy top-1000, 1M x 1000 float16 logits", 1_000_000, 1000, "float16", True, "entropy", 1000),
    Case("margin top-1000, 1M x 1000 float16 logits", 1_000_000, 1000, "float16", True, "margin", 1000),
    Case("margin top-1000, 100k x 100 float32 probabilities", 100_000, 100, "float32", False, "margin", 1000),
]
QUICK_CASES = [
    Case("margin top-1000, 100k x 1000 float32 probabilities", 100_000, 1000, "float32", False, "margin", 1000),
    Case("entropy top-1000, 100k x 1000 float16 logits", 100_000, 1000, "float16", True, "entropy", 1000),
    Case("margin top-1000, 100k x 100 float32 probabilities", 100_000, 100, "float32", False, "margin", 1000),
]


def measure(fn: Callable[[], object], repeat: int) -> tuple:
    """Best wall time over `repeat` runs (after one warm-up) and the peak extra memory of a run."""
    fn()
    with PeakMemory() as mem:
        result = fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best, mem.peak_extra, result


def make_data(case: Case, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.empty((case.n, case.c), dtype=case.dtype)
    for start in range(0, case.n, 50_000):  # in blocks: no float64 copy of the whole pool
        block = rng.random((min(50_000, case.n - start), case.c), dtype=np.float32)
        if case.from_logits:
            block = (block - 0.5) * 12.0
        else:
            block **= 4  # peaky rows, like a trained model's outputs
            block /= block.sum(axis=1, keepdims=True)
        x[start:start + len(block)] = block
    return x


# --- reference implementations, in the style the existing libraries use ----------------------

def numpy_sort_reference(x: np.ndarray, case: Case) -> np.ndarray:
    if case.from_logits:
        z = x.astype(np.float32)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
    else:
        p = x
    if case.kind == "margin":
        s = np.sort(p, axis=1)
        return np.argsort(s[:, -1] - s[:, -2], kind="stable")[: case.k]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0).sum(axis=1)
    return np.argsort(-entropy, kind="stable")[: case.k]


def torch_topk_reference(x: np.ndarray, case: Case) -> np.ndarray:
    import torch

    t = torch.from_numpy(x)
    if case.from_logits:
        p = torch.softmax(t.float(), dim=1)
    else:
        p = t
    if case.kind == "margin":
        top2 = torch.topk(p, 2, dim=1).values
        return torch.topk(top2[:, 1] - top2[:, 0], case.k).indices.numpy()
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(dim=1)
    return torch.topk(entropy, case.k).indices.numpy()


@dataclass
class Row:
    case: str
    method: str
    seconds: float
    gbps: float
    bandwidth_fraction: float
    our_speedup: Optional[float]
    peak_extra_mb: float
    agrees: str


def run_case(case: Case, threads: int, bandwidth: float, repeat: int, with_torch: bool) -> List[Row]:
    x = make_data(case)
    nbytes = x.nbytes
    methods: List[Tuple[str, Callable[[], object]]] = [
        ("asvp_fast", lambda: af.select_uncertain(x, case.k, case.kind, from_logits=case.from_logits,
                                                  threads=threads or None)),
        ("numpy-sort", lambda: numpy_sort_reference(x, case)),
    ]
    if with_torch:
        methods.append(("torch-topk", lambda: torch_topk_reference(x, case)))
    rows: List[Row] = []
    ours_time: Optional[float] = None
    ours_set: Set[int] = set()
    for name, fn in methods:
        seconds, extra, picked = measure(fn, repeat if name == "asvp_fast" else 1)
        picked = np.asarray(picked)
        if ours_time is None:
            ours_time, ours_set = seconds, set(picked.tolist())
            agrees = "-"
        else:
            overlap = len(ours_set & set(picked.tolist())) / case.k
            agrees = f"{overlap:.1%}"
        rows.append(Row(case.name, name, seconds, nbytes / seconds / 1e9, nbytes / seconds / bandwidth,
                        None if name == "asvp_fast" else seconds / ours_time, extra / 2**20, agrees))
    return rows  # x (and the closures holding it) are freed on return


def format_table(rows: List[Row]) -> str:
    lines = ["| case | method | seconds | GB/s | of bandwidth | asvp_fast speed-up | peak extra MB | same picks |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedup = "-" if r.our_speedup is None else f"{r.our_speedup:.1f}x"
        lines.append(f"| {r.case} | {r.method} | {r.seconds:.3f} | {r.gbps:.1f} | {r.bandwidth_fraction:.0%} | "
                     f"{speedup} | {r.peak_extra_mb:.0f} | {r.agrees} |")
    return "\n".join(lines)


def target_summary(rows: List[Row]) -> str:
    """The foundation issue's targets, checked against this run (full sizes only)."""
    def find(case_prefix: str, method: str) -> Optional[Row]:
        return next((r for r in rows if r.case.startswith(case_prefix) and r.method == method), None)

    margin = find("margin top-1000, 1M x 1000 float32 probabilities", "asvp_fast")
    entropy = find("entropy top-1000, 1M x 1000 float16 logits", "asvp_fast")
    torch_margin = find("margin top-1000, 1M x 1000 float32 probabilities", "torch-topk")
    if margin is None or entropy is None:
        return ""
    ours = [r for r in rows if r.method == "asvp_fast"]
    checks = [
        ("margin, 1M x 1000 float32: fraction of measured read bandwidth", f"{margin.bandwidth_fraction:.0%}",
         ">= 60%", margin.bandwidth_fraction >= 0.6),
        ("entropy from float16 logits / margin time", f"{entropy.seconds / margin.seconds:.2f}x", "<= 2x",
         entropy.seconds <= 2 * margin.seconds),
        ("largest peak extra memory of asvp_fast", f"{max(r.peak_extra_mb for r in ours):.0f} MB", "<= 100 MB",
         max(r.peak_extra_mb for r in ours) <= 100),
    ]
    if torch_margin is not None:
        checks.insert(1, ("margin, 1M x 1000 float32: speed-up over torch.topk", f"{torch_margin.our_speedup:.1f}x",
                          ">= 3x", (torch_margin.our_speedup or 0) >= 3))
    lines = ["| target | measured | wanted | met |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {value} | {wanted} | {'yes' if ok else 'no'} |" for name, value, wanted, ok in checks]
    return "\n".join(lines)


def run_suite(*, quick: bool, threads: int, bandwidth: float, repeat: int, with_torch: bool,
              log: Callable[[str], None] = print) -> Tuple[str, str]:
    """Runs the cases; returns (results table, targets table) as Markdown."""
    rows: List[Row] = []
    for case in QUICK_CASES if quick else FULL_CASES:
        log(f"running: {case.name}")
        case_rows = run_case(case, threads, bandwidth, repeat, with_torch)
        for r in case_rows:
            log(f"  {r.method:<11} {r.seconds:8.3f} s  {r.gbps:6.1f} GB/s  {r.bandwidth_fraction:5.0%} of bandwidth  "
                f"peak extra {r.peak_extra_mb:6.0f} MB")
        rows.extend(case_rows)
    return format_table(rows), target_summary(rows)
