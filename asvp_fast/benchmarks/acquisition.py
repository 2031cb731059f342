"""Acquisition benchmark: our fused kernels against reference implementations, in one run.

For each case it measures, in the same process and on the same data:
  * the machine's read bandwidth (all threads summing a large float32 array),
  * asvp_fast.select_uncertain (one fused pass: statistic + validation + streaming top-k),
  * "numpy-sort": the style of most active-learning libraries — full per-row sort, the
    statistic, then a full argsort of the pool,
  * "torch-topk": torch.topk per row (or softmax + entropy for logits), then torch.topk over
    the pool,
and reports seconds, GB/s of input read, the fraction of the measured bandwidth, our speed-up
over each reference and the peak extra resident memory of each method.

Run: ``asvp-fast bench`` (or ``python bench/acquisition.py``); ``--quick`` for small sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Set

import numpy as np

import asvp_fast as af
from asvp_fast import _C
from asvp_fast.acquisition.uncertainty import Kind


@dataclass
class Case:
    name: str
    n: int
    c: int
    dtype: str  # "float32" or "float16"
    from_logits: bool
    kind: Kind
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


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError as exc:
            raise SystemExit("the benchmark needs psutil to measure memory: pip install 'asvp-fast[bench]'") from exc

        self._process = psutil.Process()
        self.peak_extra = 0

    def current(self) -> int:
        return int(self._process.memory_info().rss)

    def __enter__(self) -> "PeakMemory":
        self._base = self.current()
        self._peak = self._base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self.current())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self.current())
        self.peak_extra = self._peak - self._base


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


def read_bandwidth(threads: int, nbytes: int = 2 << 30, repeat: int = 5) -> float:
    a = np.ones(nbytes // 4, dtype=np.float32)
    _C.read_sum(a, threads)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        _C.read_sum(a, threads)
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best


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
    methods = [("asvp_fast", lambda: af.select_uncertain(x, case.k, case.kind, from_logits=case.from_logits,
                                                          threads=threads or None))]
    methods.append(("numpy-sort", lambda: numpy_sort_reference(x, case)))
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
    del x
    return rows


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


def machine_summary(threads: int, bandwidth: float) -> str:
    b = af.backends()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} logical cores, {threads or b['openmp_threads']} threads used, "
            f"CPU kernel variant {b['cpu_isa']}; measured read bandwidth {bandwidth / 1e9:.1f} GB/s")


NOTES_HEADING = "\n## Notes"


def _kept_notes(path: str) -> str:
    """Hand-written notes at the end of an existing results file (from '## Notes' on) survive a rerun."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    at = text.find(NOTES_HEADING)
    return text[at:] if at >= 0 else ""


UNCERTAINTY_HEADING = "## Uncertainty selection"
DIVERSITY_HEADING = "## Diversity selection"
SCALE_HEADING = "## Diversity at scale"
TRANSFER_HEADING = "## Transferability: LogME and PED"
_SUITE_ORDER = (UNCERTAINTY_HEADING, DIVERSITY_HEADING, SCALE_HEADING, TRANSFER_HEADING)


def _sections(path: str) -> dict:
    """The level-2 sections of an existing results file, by heading (the text before the first
    one is dropped: it is rewritten every time)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    found: dict = {}
    parts = text.split("\n## ")
    for part in parts[1:]:
        heading = "## " + part.split("\n", 1)[0]
        found[heading] = "\n## " + part
    return found


def write_results(path: str, machine: str, updated: dict) -> None:
    """Writes the results file: the suites run now replace their sections, the others (and the
    hand-written '## Notes') are kept from the existing file."""
    sections = _sections(path)
    sections.update(updated)
    with open(path, "w") as f:
        f.write("# Acquisition benchmark results\n\n")
        f.write(f"Machine of the latest run: {machine}.\n")
        for heading in _SUITE_ORDER:
            if heading in sections:
                f.write(sections[heading].rstrip("\n") + "\n")
        for heading, text in sections.items():
            if heading not in _SUITE_ORDER + (NOTES_HEADING.strip(),):
                f.write(text.rstrip("\n") + "\n")
        if NOTES_HEADING.strip() in sections:
            f.write(sections[NOTES_HEADING.strip()].rstrip("\n") + "\n")


def run_uncertainty_suite(args: argparse.Namespace, bandwidth: float, with_torch: bool) -> tuple:
    cases = QUICK_CASES if args.quick else FULL_CASES
    rows: List[Row] = []
    for case in cases:
        print(f"running: {case.name}", flush=True)
        case_rows = run_case(case, args.threads, bandwidth, args.repeat, with_torch)
        for r in case_rows:
            print(f"  {r.method:<11} {r.seconds:8.3f} s  {r.gbps:6.1f} GB/s  {r.bandwidth_fraction:5.0%} of bandwidth  "
                  f"peak extra {r.peak_extra_mb:6.0f} MB", flush=True)
        rows.extend(case_rows)
    return format_table(rows), target_summary(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="asvp-fast bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("all", "uncertainty", "diversity", "scale", "transfer"), default="all",
                        help="which kernels to benchmark: all = uncertainty + diversity + transfer (LogME, PED); scale = the "
                             "1.28M-sample float16 memmap runs of k-center and BADGE (k=10,000; about an "
                             "hour on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds, for a smoke test)")
    parser.add_argument("--threads", type=int, default=0, help="threads for every method (0: all cores)")
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions of our uncertainty kernel (best is kept)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch reference of the uncertainty suite")
    parser.add_argument("--output", help="also write the results as Markdown to this file (other suites' sections are kept)")
    args = parser.parse_args(argv)

    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch

            if args.threads:
                torch.set_num_threads(args.threads)
        except ImportError:
            print("torch is not installed: skipping the torch reference")
            with_torch = False
    bandwidth = read_bandwidth(args.threads, nbytes=(256 << 20) if args.quick else (2 << 30))
    summary = machine_summary(args.threads, bandwidth)
    print(summary)
    command = ("asvp-fast bench" + (f" --suite {args.suite}" if args.suite != "all" else "")
               + (" --quick" if args.quick else "")
               + (f" --threads {args.threads}" if args.threads else "")
               + (f" --output {args.output}" if args.output else ""))
    updated = {}
    if args.suite in ("all", "uncertainty"):
        table, targets = run_uncertainty_suite(args, bandwidth, with_torch)
        print("\n" + table + ("\n\n" + targets if targets else ""))
        updated[UNCERTAINTY_HEADING] = (
            f"\n{UNCERTAINTY_HEADING}\n\nCommand: `{command}`\n\nMachine: {summary}.\n\n"
            "Timings are the best of several runs for asvp_fast and a single run for the references; "
            "'peak extra MB' is the resident memory above the level before the call (input excluded); "
            "'same picks' is the overlap of each reference's top-k with ours.\n\n" + table + "\n"
            + (f"\n### Targets of the foundation issue, this run\n\n{targets}\n" if targets else ""))
    for suite, heading in (("diversity", DIVERSITY_HEADING), ("scale", SCALE_HEADING)):
        if args.suite not in ("all", suite) or (suite == "scale" and args.suite != "scale"):
            continue
        from . import diversity

        table, targets = diversity.run_suite(quick=args.quick, scale=suite == "scale", threads=args.threads,
                                             bandwidth=bandwidth, log=lambda line: print(line, flush=True))
        print("\n" + table + ("\n\n" + targets if targets else ""))
        updated[heading] = (
            f"\n{heading}\n\nCommand: `{command}`\n\nMachine: {summary}.\n\n"
            f"Data: Gaussian mixtures of 100 clusters (diversity_refs.make_clustered; spread "
            f"{diversity.DEFAULT_SPREAD} unless the case says 'touching clusters': 0.7). Single runs. "
            "'seconds for k picks' of slow references is extrapolated linearly from the picks shown (each of "
            "their picks is the same full pass); 'peak extra MB' is anonymous resident memory above the level "
            "before the call (input and page cache excluded; memory the allocator already held is not counted "
            "again; for 'materialised' the size of the embedding it needs); 'pruning skipped' is the fraction of "
            "row-to-centre distances the triangle inequality avoided; 'unpruned pass' is one pass over the whole "
            "input with pruning off, as a fraction of the measured read bandwidth; 'same picks' compares a "
            "k-center reference's picks with ours, in order, given the same first pick.\n\n" + table + "\n"
            + (f"\n### Targets of the diversity issue, this run\n\n{targets}\n" if targets else ""))
    if args.suite in ("all", "transfer"):
        from . import transfer

        table, probe = transfer.run_suite(quick=args.quick, log=lambda line: print(line, flush=True))
        print("\n" + table)
        updated[TRANSFER_HEADING] = (
            f"\n{TRANSFER_HEADING}\n\nCommand: `{command}`\n\nMachine: {summary}; float64 GEMM probe "
            f"{probe:.0f} GFLOP/s.\n\n{transfer.__doc__.split(chr(10), 2)[2].strip()}\n\n"
            "Single runs; peak memory is what tracemalloc saw NumPy allocate (the input excluded).\n\n" + table + "\n")
    if args.output:
        write_results(args.output, summary, updated)
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
