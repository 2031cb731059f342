"""Diversity benchmark: k-center greedy and BADGE against reference implementations, in one run.

For each case, in the same process and on the same data (a Gaussian mixture of 100 clusters,
see diversity_refs.make_clustered), it measures:
  * asvp_fast (pruned, the default) for all k picks: seconds, peak extra anonymous memory, the
    fraction of row-to-centre distances the triangle-inequality pruning skipped;
  * asvp_fast with pruning off for a few picks: seconds per full pass and the fraction of the
    machine's measured read bandwidth that pass reaches;
  * references in the styles public libraries use (diversity_refs): vectorised NumPy / torch
    incremental k-center, the sklearn ``pairwise_distances`` + running minimum of
    google/active-learning and LabelBench, LabelBench-style factorised BADGE in NumPy with a
    ``scipy.stats.rv_discrete`` rebuilt per pick, and the materialised gradient embedding.
    Slow references are timed over their first picks and extrapolated linearly to k (each of
    their picks costs the same full pass); the table says so.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, List, Literal, Optional, Tuple

import numpy as np

import diversity_refs as refs
from asvp_fast.acquisition.diversity import diversity_select
from measure import PeakAnonymousMemory

# Within-cluster spread of the benchmark's mixture (centres ~ N(0, I)). At 0.5 the clusters are
# separated; 0.7 ("touching") is the hard case in high dimension, where distances concentrate
# and the triangle inequality can rule out little. Both are reported.
DEFAULT_SPREAD = 0.5


@dataclass
class DiversityCase:
    name: str
    method: Literal["kcenter", "badge"]
    n: int
    d: int
    k: int
    dtype: str
    c: int = 0
    spread: float = DEFAULT_SPREAD
    memmap: bool = False
    # (reference, picks to time: 0 = all k, -1 = report its memory need only)
    references: Tuple[Tuple[str, int], ...] = ()
    unpruned_picks: int = 21


FULL_CASES = [
    DiversityCase("k-center 200k x 512 float32, k=1000", "kcenter", 200_000, 512, 1000, "float32",
                  references=(("numpy-incremental", 0), ("torch-incremental", 0), ("sklearn-style", 40))),
    DiversityCase("k-center 200k x 512 float32, k=1000, touching clusters", "kcenter", 200_000, 512, 1000,
                  "float32", spread=0.7, references=(("numpy-incremental", 200),)),
    DiversityCase("k-center 1M x 256 float16, k=1000", "kcenter", 1_000_000, 256, 1000, "float16",
                  references=(("numpy-incremental", 100), ("torch-incremental", 100), ("sklearn-style", 5))),
    DiversityCase("BADGE 50k, C=100, d=512 float32, k=500", "badge", 50_000, 512, 500, "float32", c=100,
                  references=(("labelbench-style", 100), ("materialised", -1))),
]
SCALE_CASES = [
    DiversityCase("k-center 1.28M x 2048 float16 memmap, k=10000", "kcenter", 1_280_000, 2048, 10_000, "float16",
                  memmap=True, unpruned_picks=6),
    DiversityCase("BADGE 1.28M, C=1000, d=2048 float16 memmaps, k=10000", "badge", 1_280_000, 2048, 10_000,
                  "float16", c=1000, memmap=True, unpruned_picks=6),
]
QUICK_CASES = [
    DiversityCase("k-center 20k x 128 float32, k=200", "kcenter", 20_000, 128, 200, "float32",
                  references=(("numpy-incremental", 0), ("torch-incremental", 0), ("sklearn-style", 20))),
    DiversityCase("k-center 50k x 64 float16, k=200", "kcenter", 50_000, 64, 200, "float16",
                  references=(("numpy-incremental", 0),)),
    DiversityCase("BADGE 5k, C=10, d=64 float32, k=100", "badge", 5_000, 64, 100, "float32", c=10,
                  references=(("labelbench-style", 0), ("materialised", 0))),
]


@dataclass
class DiversityRow:
    case: str
    method: str
    picks_timed: int
    seconds: float  # for all k picks (extrapolated when picks_timed < k)
    speedup: Optional[float]  # reference seconds / ours
    peak_extra_mb: Optional[float]
    skipped: Optional[float]  # fraction of distances the pruning skipped
    bandwidth_fraction: Optional[float]  # unpruned pass: bytes read / time / machine bandwidth
    same_picks: str


def timed(fn: Callable[[], Any]) -> Tuple[float, float, Any]:
    with PeakAnonymousMemory() as mem:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return seconds, mem.peak_extra / 2**20, result


def make_case_data(case: DiversityCase, workdir: str) -> Tuple[Any, Any]:
    """(features, probabilities or None) for a case, in memory or as read-only memmaps."""
    dtype = np.dtype(case.dtype)
    if case.method == "badge":
        if case.memmap:
            return tuple(reversed(refs.make_badge_memmaps(workdir, case.n, case.c, case.d, dtype=dtype,
                                                          spread=case.spread)))  # type: ignore[return-value]
        p, h = refs.make_badge_inputs(case.n, case.c, case.d, dtype=dtype, spread=case.spread)
        return h, p
    if case.memmap:
        return refs.make_clustered_memmap(os.path.join(workdir, "features.bin"), case.n, case.d, dtype=dtype,
                                          spread=case.spread), None
    return refs.make_clustered(case.n, case.d, dtype=dtype, spread=case.spread), None


def reference_runner(name: str, features: Any, probs: Any, first: int) -> Callable[[int], np.ndarray]:
    if name == "numpy-incremental":
        return lambda k: refs.kcenter_numpy_incremental(features, k, first)
    if name == "torch-incremental":
        return lambda k: refs.kcenter_torch_incremental(features, k, first)
    if name == "sklearn-style":
        return lambda k: refs.kcenter_sklearn_style(features, k, first)
    if name == "labelbench-style":
        return lambda k: refs.badge_labelbench_style(probs, features, k)
    if name == "materialised":
        return lambda k: refs.badge_materialised(probs, features, k)
    raise ValueError(name)


def reference_available(name: str) -> bool:
    """torch, scipy and scikit-learn are optional: their references are skipped when missing."""
    module = {"torch-incremental": "torch", "sklearn-style": "sklearn", "materialised": "sklearn",
              "labelbench-style": "scipy"}.get(name)
    if module is None:
        return True
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return False
    importlib.import_module(module)  # imported here, so the import is not timed (nor extrapolated)
    if module == "sklearn":
        importlib.import_module("sklearn.metrics")
        importlib.import_module("sklearn.cluster")
    if module == "scipy":
        importlib.import_module("scipy.stats")
    return True


def _same_picks(ours: np.ndarray, theirs: np.ndarray, method: str) -> str:
    if method == "badge":
        return "-"  # random draws from different generators: not comparable pick by pick
    m = len(theirs)
    return f"{np.mean(ours[:m] == theirs):.1%} of {m}"


def run_case(case: DiversityCase, threads: int, bandwidth: float, log: Callable[[str], None] = print,
             workdir: Optional[str] = None) -> List[DiversityRow]:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        features, probs = make_case_data(case, tmp)
        return _run_case(case, features, probs, threads, bandwidth, log)


def _run_case(case: DiversityCase, features: Any, probs: Any, threads: int, bandwidth: float,
              log: Callable[[str], None]) -> List[DiversityRow]:
    def ours(k: int, prune: bool = True) -> Any:
        return diversity_select(case.method, features, k, x=probs, prune=prune, threads=threads or None)

    # Warm-up on a slice only (thread pool, code paths): a full-size warm-up would leave its O(N)
    # buffers in the allocator's free lists and hide them from the memory measurement.
    head = min(case.n, 2048)
    diversity_select(case.method, features[:head], min(case.k, 5), x=None if probs is None else probs[:head])
    seconds, extra, result = timed(lambda: ours(case.k))
    picks = np.asarray(result.indices)
    rows = [DiversityRow(case.name, "asvp_fast", case.k, seconds, None, extra, result.skipped_fraction, None, "-")]
    log(f"  asvp_fast         {seconds:9.2f} s  peak extra {extra:8.1f} MB  pruning skipped {result.skipped_fraction:.1%}")

    pass_bytes = features.nbytes + (probs.nbytes if probs is not None else 0)
    # k picks make k - 1 update passes; the difference of two runs removes the fixed costs
    # (BADGE's per-row preparation, the first pick) from the per-pass time.
    base_s, _, _ = timed(lambda: ours(2, prune=False))
    unpruned_s, _, _ = timed(lambda: ours(case.unpruned_picks, prune=False))
    per_pass = max(unpruned_s - base_s, 1e-9) / max(1, case.unpruned_picks - 2)
    fraction = pass_bytes / per_pass / bandwidth
    rows.append(DiversityRow(case.name, "asvp_fast, pruning off", case.unpruned_picks, per_pass * case.k, None, None,
                             0.0, fraction, "-"))
    log(f"  pruning off       {per_pass * 1e3:9.1f} ms per pass  {fraction:.0%} of bandwidth")

    for name, picks_timed in case.references:
        if not reference_available(name):
            log(f"  {name:<17} skipped: its library is not installed")
            continue
        if picks_timed < 0:
            need = refs.materialised_bytes(case.n, case.c, case.d) / 2**20
            rows.append(DiversityRow(case.name, name, 0, float("nan"), None, need, None, None,
                                     "not run: needs the embedding in memory"))
            log(f"  {name:<17} not run: the embedding alone needs {need:,.0f} MB")
            continue
        m = picks_timed or case.k
        run = reference_runner(name, features, probs, int(picks[0]))
        ref_s, ref_extra, ref_picks = timed(functools.partial(run, m))
        total = ref_s * case.k / m
        rows.append(DiversityRow(case.name, name, m, total, total / seconds, ref_extra, None, None,
                                 _same_picks(picks, np.asarray(ref_picks), case.method)))
        est = "" if m == case.k else f" (est. from {m} picks)"
        log(f"  {name:<17} {total:9.2f} s{est}  peak extra {ref_extra:8.1f} MB")
    return rows


def format_table(rows: List[DiversityRow], k_of: Callable[[str], int]) -> str:
    lines = ["| case | method | seconds for k picks | asvp_fast speed-up | peak extra MB | pruning skipped | "
             "unpruned pass, of bandwidth | same picks |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if np.isnan(r.seconds):
            seconds = "-"
        else:
            seconds = f"{r.seconds:.2f}" + ("" if r.picks_timed == k_of(r.case) else f" (est. from {r.picks_timed})")
        lines.append(
            f"| {r.case} | {r.method} | {seconds} | {'-' if r.speedup is None else f'{r.speedup:.1f}x'} | "
            f"{'-' if r.peak_extra_mb is None else f'{r.peak_extra_mb:,.0f}'} | "
            f"{'-' if r.skipped is None or r.method != 'asvp_fast' else f'{r.skipped:.1%}'} | "
            f"{'-' if r.bandwidth_fraction is None else f'{r.bandwidth_fraction:.0%}'} | {r.same_picks} |")
    return "\n".join(lines)


def target_summary(rows: List[DiversityRow]) -> str:
    """The diversity issue's targets, checked against this run (full sizes only)."""
    def find(case_prefix: str, method: str) -> Optional[DiversityRow]:
        return next((r for r in rows if r.case.startswith(case_prefix) and r.method == method), None)

    kc = "k-center 200k x 512 float32, k=1000"
    checks = []
    passes = [r for r in rows if r.bandwidth_fraction is not None]
    full_size = any(r.case == kc for r in rows) or any(r.case.startswith(("k-center 1.28M", "BADGE 1.28M")) for r in rows)
    if not passes or not full_size:
        return ""
    worst = min(passes, key=lambda r: r.bandwidth_fraction or 0.0)
    checks.append(("every unpruned pass: fraction of measured read bandwidth (worst case)",
                   f"{worst.bandwidth_fraction:.0%} ({worst.case})", ">= 60%", (worst.bandwidth_fraction or 0) >= 0.6))
    incremental = [r for r in (find(kc, "numpy-incremental"), find(kc, "torch-incremental")) if r is not None]
    if incremental:
        best = min(incremental, key=lambda r: r.speedup or 0.0)
        checks.append((f"{kc}: speed-up over the vectorised incremental version ({best.method})",
                       f"{best.speedup:.1f}x", ">= 3x", (best.speedup or 0) >= 3))
    sk = find(kc, "sklearn-style")
    if sk is not None:
        checks.append((f"{kc}: speed-up over the sklearn-style version", f"{sk.speedup:.0f}x", ">= 30x",
                       (sk.speedup or 0) >= 30))
    bd = "BADGE 50k, C=100, d=512 float32, k=500"
    ours_bd, lb, mat = find(bd, "asvp_fast"), find(bd, "labelbench-style"), find(bd, "materialised")
    if ours_bd is not None and lb is not None:
        checks.append((f"{bd}: speed-up over the factorised NumPy reference", f"{lb.speedup:.1f}x", ">= 5x",
                       (lb.speedup or 0) >= 5))
    if ours_bd is not None and mat is not None and mat.peak_extra_mb:
        ratio = mat.peak_extra_mb / max(ours_bd.peak_extra_mb or 0.0, 1.0)
        checks.append((f"{bd}: memory of the materialised embedding / ours (ours counted as >= 1 MB)",
                       f"{ratio:,.0f}x", ">= 100x", ratio >= 100))
    for r in rows:
        if r.case.startswith(("k-center 1.28M", "BADGE 1.28M")) and r.method == "asvp_fast":
            per_row = (r.peak_extra_mb or 0.0) * 2**20 / 1_280_000
            checks.append((f"{r.case}: completes; extra memory", f"{r.seconds / 60:.1f} min, "
                           f"{r.peak_extra_mb:,.0f} MB = {per_row:.0f} bytes per row", "O(N)", per_row < 200))
    lines = ["| target | measured | wanted | met |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {value} | {wanted} | {'yes' if ok else 'no'} |" for name, value, wanted, ok in checks]
    return "\n".join(lines)


def run_suite(*, quick: bool, scale: bool, threads: int, bandwidth: float,
              log: Callable[[str], None] = print) -> Tuple[str, str]:
    """Runs the cases (``scale``: only the 1.28M-sample runs); returns (results table, targets
    table) as Markdown."""
    cases = SCALE_CASES if scale else QUICK_CASES if quick else FULL_CASES
    if not quick and not reference_available("sklearn-style"):
        raise SystemExit("the diversity benchmark needs scikit-learn and scipy: pip install '.[bench]'")
    k_of = {c.name: c.k for c in cases}
    rows: List[DiversityRow] = []
    for case in cases:
        log(f"running: {case.name}")
        rows.extend(run_case(case, threads, bandwidth, log))
    return format_table(rows, lambda name: k_of[name]), target_summary(rows)
