"""Transferability suite (``asvp-fast bench --suite transfer``): ``af.logme`` and ``af.ped``
against their plain references (transfer_refs.py), in one run, on the same data.

LogME's cost is the Gram matrix FᵀF (2·N·D² flops) plus one eigendecomposition; it is reported
as GFLOP/s of that product and as a fraction of a float64 GEMM probe measured in the same run.
The per-class reference repeats a matrix-vector product over all N rows for every class, so its
time grows with C; on cases with many classes it runs on the first classes only and its time is
extrapolated linearly (every class costs the same). PED is compared with the dense C x C x D
reference where that fits in memory.
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, TypeVar

import numpy as np

from asvp_fast import logme, ped
from transfer_refs import logme_per_class, ped_dense


@dataclass
class TransferCase:
    kind: str  # "logme" or "ped"
    n: int
    d: int
    c: int
    note: str = ""
    ref_classes: Optional[int] = None  # LogME: classes the reference runs on (None: all)
    ref: bool = True  # PED: run the dense reference (C x C x D must fit)


FULL_CASES = [
    TransferCase("logme", 50_000, 384, 26, "MiniLM-sized pool (WordNet)"),
    TransferCase("logme", 500, 1280, 10, "ASVP check at 500 labels, EfficientNet-Lite0 (N < D)"),
    TransferCase("logme", 100_000, 2048, 1000, "ImageNet-sized labelled set (ResNet-50)", ref_classes=50),
    TransferCase("ped", 20_000, 512, 100, "100 classes"),
    TransferCase("ped", 4_000, 2048, 1000, "ImageNet classes (dense reference: 16 GB, not run)", ref=False),
]
QUICK_CASES = [
    TransferCase("logme", 4_000, 64, 10, "quick"),
    TransferCase("logme", 60, 200, 5, "quick, N < D"),
    TransferCase("ped", 2_000, 32, 10, "quick"),
]


@dataclass
class TransferRow:
    name: str
    ours_s: float
    ref_s: Optional[float]
    ref_extrapolated: bool
    agreement: Optional[float]  # relative difference of the results
    ours_peak_mb: float
    ref_peak_mb: Optional[float]
    gflops: Optional[float]  # LogME: Gram matrix GFLOP/s
    probe_fraction: Optional[float]
    detail: str = ""


def make_data(case: TransferCase, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Features with a class signal that overlaps (PED has work to do), float32."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, case.c, case.n)
    y[: case.c] = np.arange(case.c)[: case.n]  # every class present
    centres = rng.standard_normal((case.c, case.d)).astype(np.float32) * 0.15
    x = rng.standard_normal((case.n, case.d), dtype=np.float32)
    x += centres[y]
    return x, y


def gemm_probe(d: int = 2048, repeat: int = 3) -> float:
    """float64 GEMM GFLOP/s of this machine (NumPy's BLAS, all threads): the yardstick for the Gram."""
    a = np.random.default_rng(1).standard_normal((d, d))
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * d**3 / best / 1e9


T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> Tuple[float, float, T]:
    """(seconds, peak traced MB, result): tracemalloc sees NumPy's allocations."""
    tracemalloc.start()
    t = time.perf_counter()
    try:
        out = fn()
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return seconds, peak / 1e6, out


def extrapolate_classes(one_s: float, done_s: float, done: int, classes: int) -> float:
    """The reference's time for all ``classes`` from its times for 1 and for ``done`` classes: a fixed
    part (Gram + eigh) plus the same cost per class. Timing noise can make the two measurements
    disagree (``done_s < one_s``); the per-class cost is then taken as ``done_s / done``."""
    per_class = (done_s - one_s) / (done - 1)
    if per_class <= 0:
        return done_s / done * classes
    return (one_s - per_class) + per_class * classes


def run_case(case: TransferCase, probe: float, log: Callable[[str], None]) -> TransferRow:
    x, y = make_data(case)
    name = f"{case.kind} N={case.n:,} D={case.d} C={case.c}" + (f" ({case.note})" if case.note else "")
    if case.kind == "logme":
        ours_s, ours_mb, ours = _timed(lambda: logme(x, y))
        gflops = 2 * case.n * min(case.n, case.d) * case.d / ours_s / 1e9
        ref_s, ref_mb, (ref_score, done) = _timed(lambda: logme_per_class(x, y, classes=case.ref_classes))
        extrapolated = done < case.c
        if extrapolated:  # Gram + eigh once, then the per-class loop scaled to all C classes
            one_s, _, _ = _timed(lambda: logme_per_class(x, y, classes=1))
            ref_s = extrapolate_classes(one_s, ref_s, done, case.c)
            agreement = None
        else:
            agreement = abs(ours - ref_score) / max(abs(ref_score), 1e-12)
        log(f"  ours {ours_s:.2f} s ({gflops:.0f} GFLOP/s), reference {ref_s:.2f} s" + (" (extrapolated)" if extrapolated else ""))
        return TransferRow(name, ours_s, ref_s, extrapolated, agreement, ours_mb, ref_mb, gflops, gflops / probe,
                           detail=f"LogME {ours:.4f}")
    ours_s, ours_mb, (moved, steps) = _timed(lambda: ped(x, y))
    if not case.ref:
        log(f"  ours {ours_s:.2f} s, {steps} steps; dense reference not run (needs {case.c**2 * case.d * 8 / 1e9:.0f} GB per tensor)")
        return TransferRow(name, ours_s, None, False, None, ours_mb, None, None, None, detail=f"{steps} steps")
    ref_s, ref_mb, (ref_moved, ref_steps) = _timed(lambda: ped_dense(x, y))
    agreement = float(np.abs(moved - ref_moved).max() / max(float(np.abs(ref_moved).max()), 1e-12))
    if ref_steps != steps:
        agreement = float("inf")
    log(f"  ours {ours_s:.2f} s, reference {ref_s:.2f} s, {steps} steps")
    return TransferRow(name, ours_s, ref_s, False, agreement, ours_mb, ref_mb, None, None, detail=f"{steps} steps")


def format_table(rows: List[TransferRow]) -> str:
    lines = ["| case | ours (s) | reference (s) | speed-up | max relative difference | peak memory ours / reference (MB) | Gram GFLOP/s (of GEMM probe) | result |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        ref = "—" if r.ref_s is None else f"{r.ref_s:.2f}" + (" est." if r.ref_extrapolated else "")
        speed = "—" if r.ref_s is None else f"{r.ref_s / r.ours_s:.1f}×"
        agree = "—" if r.agreement is None else f"{r.agreement:.1e}"
        mem = f"{r.ours_peak_mb:.0f} / " + ("—" if r.ref_peak_mb is None else f"{r.ref_peak_mb:.0f}")
        flops = "—" if r.gflops is None else f"{r.gflops:.0f} ({r.probe_fraction:.0%})"
        lines.append(f"| {r.name} | {r.ours_s:.2f} | {ref} | {speed} | {agree} | {mem} | {flops} | {r.detail} |")
    return "\n".join(lines)


def run_suite(*, quick: bool, log: Callable[[str], None] = print) -> Tuple[str, float]:
    """Runs the cases; returns (Markdown table, GEMM probe GFLOP/s)."""
    probe = gemm_probe(512 if quick else 2048)
    log(f"float64 GEMM probe: {probe:.0f} GFLOP/s")
    rows = []
    for case in QUICK_CASES if quick else FULL_CASES:
        log(f"running: {case.kind} N={case.n} D={case.d} C={case.c}")
        rows.append(run_case(case, probe, log))
    return format_table(rows), probe
