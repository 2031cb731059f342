"""The asvp_fast benchmark: our kernels against reference implementations, in one run.

Suites (``--suite``): uncertainty (``af.select_uncertain`` against NumPy-sort and torch.topk
styles, see uncertainty.py), diversity (k-center greedy and BADGE against the references in
diversity_refs.py, see diversity.py), scale (the 1.28M-sample memmap runs of k-center and
BADGE), transfer (``af.logme`` and ``af.ped`` against transfer_refs.py, see transfer.py),
strategies (BALD, BatchBALD, TypiClust, ProbCover, Cluster-Margin against library-style
references, see strategies.py).
Each suite reports its results as a Markdown table; ``--output`` writes them into a results
file, keeping the other suites' sections and the hand-written notes.

The benchmark lives in the source repository, not in the installed package. From the
repository root run ``asvp-fast bench`` or ``python bench/run.py`` (the same entry point);
``--quick`` for small sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

# Run as a script (`python bench/run.py`) this folder is on sys.path already; loaded by
# `asvp-fast bench` it may not be: the suites beside this file are imported by name.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from measure import machine_summary, read_bandwidth  # noqa: E402

# `asvp-fast bench` runs this file only when it carries this marker (see asvp_fast/cli.py).
BENCH_OF = "asvp_fast"

NOTES_HEADING = "\n## Notes"
UNCERTAINTY_HEADING = "## Uncertainty selection"
DIVERSITY_HEADING = "## Diversity selection"
SCALE_HEADING = "## Diversity at scale"
TRANSFER_HEADING = "## Transferability: LogME and PED"
STRATEGIES_HEADING = "## More strategies: BALD, BatchBALD, TypiClust, ProbCover, Cluster-Margin"
_SUITE_ORDER = (UNCERTAINTY_HEADING, DIVERSITY_HEADING, SCALE_HEADING, TRANSFER_HEADING, STRATEGIES_HEADING)


def _kept_notes(path: str) -> str:
    """Hand-written notes at the end of an existing results file (from '## Notes' on) survive a rerun."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    at = text.find(NOTES_HEADING)
    return text[at:] if at >= 0 else ""


def _sections(path: str) -> Dict[str, str]:
    """The level-2 sections of an existing results file, by heading (the text before the first
    one is dropped: it is rewritten every time)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    found: Dict[str, str] = {}
    parts = text.split("\n## ")
    for part in parts[1:]:
        heading = "## " + part.split("\n", 1)[0]
        found[heading] = "\n## " + part
    return found


def write_results(path: str, machine: str, updated: Dict[str, str]) -> None:
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


def _log(line: str) -> None:
    print(line, flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="asvp-fast bench", description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=("all", "uncertainty", "diversity", "scale", "transfer", "strategies"),
                        default="all",
                        help="which kernels to benchmark: all = uncertainty + diversity + transfer (LogME, PED) + "
                             "strategies (BALD, BatchBALD, TypiClust, ProbCover, Cluster-Margin); scale = the "
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
    updated: Dict[str, str] = {}
    if args.suite in ("all", "uncertainty"):
        import uncertainty

        table, targets = uncertainty.run_suite(quick=args.quick, threads=args.threads, bandwidth=bandwidth,
                                               repeat=args.repeat, with_torch=with_torch, log=_log)
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
        import diversity

        table, targets = diversity.run_suite(quick=args.quick, scale=suite == "scale", threads=args.threads,
                                             bandwidth=bandwidth, log=_log)
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
        import transfer

        table, probe = transfer.run_suite(quick=args.quick, log=_log)
        print("\n" + table)
        updated[TRANSFER_HEADING] = (
            f"\n{TRANSFER_HEADING}\n\nCommand: `{command}`\n\nMachine: {summary}; float64 GEMM probe "
            f"{probe:.0f} GFLOP/s.\n\n{transfer.__doc__.split(chr(10), 2)[2].strip()}\n\n"
            "Single runs; peak memory is what tracemalloc saw NumPy allocate (the input excluded).\n\n" + table + "\n")
    if args.suite in ("all", "strategies"):
        import strategies

        table = strategies.run_suite(quick=args.quick, threads=args.threads, log=_log)
        print("\n" + table)
        updated[STRATEGIES_HEADING] = (
            f"\n{STRATEGIES_HEADING}\n\nCommand: `{command}`\n\nMachine: {summary}.\n\n"
            f"{strategies.__doc__.split(chr(10), 2)[2].strip()}\n\n" + table + "\n")
    if args.output:
        write_results(args.output, summary, updated)
        print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
