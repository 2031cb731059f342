#!/usr/bin/env python3
"""The first thing to run on any machine with a GPU: does asvp_fast's CUDA path work, and how fast.

    python scripts/gpu_check.py                    # from the repository root, after building
    python scripts/gpu_check.py --report out/gpu   # writes out/gpu.json and out/gpu.md
                                                   # (default: build/gpu_check/report.{json,md})

It fails (exit status 1), never skips, when no CUDA device is usable, naming the reason (no
driver, a driver older than the CUDA runtime the module was built with, a build without CUDA, a
CPU build of torch). Otherwise it runs, within about 8 minutes on one H100/H200:

1. ``pytest -m cuda`` with ASVP_REQUIRE_CUDA=1 (a skipped CUDA test is a failure);
2. GPU against CPU at scale, exact CPU/GPU parity on data where all arithmetic is exact, layouts
   (strided, transposed, host staging), edge cases, stream ordering, callbacks, memory
   stability (``gpu_check_cases.py``);
3. timings with CUDA events next to the roofline estimate of bench/RESULTS.md;
4. compute-sanitizer memcheck and racecheck on small cases, where the tool is installed.

Every check is recorded in the report (JSON and Markdown) as it finishes, so a run cut short
still leaves one. Exit status: 0 all passed, 1 a check failed or no device, 2 out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 470.0  # the whole run, leaving margin under 8 minutes


class Report:
    """Checks in the order they ran, written to <path>.json and <path>.md after each one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = time.time()
        self.environment: Dict[str, Any] = {}
        self.checks: List[Dict[str, Any]] = []
        self.status = "running"

    def add(self, name: str, status: str, seconds: float, message: str = "", **details: Any) -> None:
        self.checks.append({"name": name, "status": status, "seconds": round(seconds, 2), "message": message,
                            "details": details})
        self.write()

    def failed(self) -> bool:
        return any(c["status"] == "failed" for c in self.checks)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"status": self.status, "elapsed_s": round(time.time() - self.started, 1),
                "environment": self.environment, "checks": self.checks}
        self.path.with_suffix(".json").write_text(json.dumps(data, indent=2, default=str))
        lines = [f"# asvp_fast GPU check: {self.status}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {data['elapsed_s']} s", "", "## Environment", ""]
        lines += [f"- {key}: {value}" for key, value in self.environment.items()]
        lines += ["", "## Checks", "", "| check | status | s | message |", "|---|---|---|---|"]
        for c in self.checks:
            message = str(c["message"]).replace("|", "/").replace("\n", " ")[:300]
            lines.append(f"| {c['name']} | {c['status']} | {c['seconds']} | {message} |")
        timings = [c for c in self.checks if c["name"].startswith("timing")]
        if timings:
            lines += ["", "## Timings (CUDA events) and the roofline estimate", ""]
            for c in timings:
                lines += [f"### {c['name']}", "", "```", json.dumps(c["details"], indent=1, default=str), "```", ""]
        self.path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def device_problem() -> Optional[str]:
    """Why the CUDA path cannot run here, or None."""
    try:
        import asvp_fast as af
    except Exception as exc:  # an unbuilt source tree, a broken install
        return f"no usable CUDA device: asvp_fast does not import ({type(exc).__name__}: {exc}); build it first"
    b = af.backends()
    if not b["cuda_compiled"]:
        return ("no usable CUDA device: this build of asvp_fast has no CUDA kernels "
                "(rebuild with ASVP_CUDA=ON and nvcc on the PATH)")
    if b["cuda_devices"] < 1:
        import asvp_fast._C as _C

        runtime, driver = b["cuda_runtime_version"], int(_C.build_info().get("cuda_driver_version", 0))
        hint = ""
        if driver and driver < runtime:
            hint = (f"; the driver supports CUDA {driver} but the module needs the runtime's {runtime}: "
                    "update the driver")
        return f"no usable CUDA device: {b['cuda_status']} (runtime {runtime}, driver {driver}){hint}"
    try:
        import torch
    except ImportError:
        return "no usable CUDA device for torch: torch is not installed (pip install torch with CUDA support)"
    if not torch.cuda.is_available():
        return (f"no usable CUDA device for torch: asvp_fast sees {b['cuda_devices']} CUDA device(s) but torch "
                f"does not (a CPU build of torch?)")
    return None


def environment() -> Dict[str, Any]:
    env: Dict[str, Any] = {"python": platform.python_version(), "host": platform.node(),
                           "argv": " ".join(sys.argv)}
    try:
        import asvp_fast as af

        env["backends"] = af.backends()
    except Exception as exc:
        env["backends"] = f"unavailable: {exc}"
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
        env["nvidia_smi"] = (out.stdout or out.stderr).strip()
    else:
        env["nvidia_smi"] = "not found"
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB"
    except ImportError:
        env["torch"] = "not installed"
    return env


def import_asvp_fast() -> None:
    """The installed package; else the source tree's (an in-place build)."""
    try:
        import asvp_fast  # noqa: F401
    except ImportError:
        sys.path.insert(0, str(ROOT))


def child_env(**extra: str) -> Dict[str, str]:
    """Environment for child Pythons: the source tree on the path only when that is where
    asvp_fast came from (never ahead of an installed package)."""
    env = dict(os.environ, **extra)
    try:
        import asvp_fast

        in_tree = Path(asvp_fast.__file__).resolve().parent.parent == ROOT
    except ImportError:
        in_tree = False
    if in_tree:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def run_pytest(report: Report, timeout: float) -> None:
    start = time.time()
    env = child_env(ASVP_REQUIRE_CUDA="1")
    # -P: the repository root (cwd) is not put ahead of an installed asvp_fast (Python >= 3.11)
    safe_path = ["-P"] if sys.version_info >= (3, 11) else []
    cmd = [sys.executable, *safe_path, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests"]
    try:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        report.add("pytest -m cuda", "failed", time.time() - start, f"timed out after {timeout:.0f} s")
        return
    tail = (out.stdout + out.stderr).strip().splitlines()[-25:]
    summary = tail[-1] if tail else ""
    report.add("pytest -m cuda", "passed" if out.returncode == 0 else "failed", time.time() - start, summary,
               output_tail=tail)


SANITIZER_CASE = """
import numpy as np, asvp_fast as af
rng = np.random.default_rng(0)
x = rng.standard_normal((3000, 19)).astype(np.float32)
h = x.astype(np.float16)
p = rng.dirichlet(np.ones(5), 3000).astype(np.float32)
lab = rng.choice(3000, 100, replace=False)
af.kcenter_greedy(h, 40, device="cuda")
af.kcenter_greedy(x, 40, labeled=lab, device="cuda")
af.kmeans_pp(x, 40, exclude=np.arange(0, 3000, 7), device="cuda")
af.kmeans_pp(np.zeros((2100, 3), np.float32), 5, device="cuda")
af.badge(p, h, 30, device="cuda")
af.select_uncertain(p, 100, "entropy", exclude=np.arange(50), device="cuda")
af.scores(rng.standard_normal((2000, 300)).astype(np.float16), "margin", from_logits=True, device="cuda")
try:
    af.kcenter_greedy(np.full((1, 4), np.nan, np.float32), 1, device="cuda")
except ValueError:
    pass
print("sanitizer case done")
"""


def run_sanitizer(report: Report, timeout: float) -> None:
    tool = shutil.which("compute-sanitizer") or next(
        (str(p) for p in (Path("/usr/local/cuda/bin/compute-sanitizer"),) if p.exists()), None)
    if tool is None:
        report.add("compute-sanitizer", "skipped", 0.0, "compute-sanitizer is not installed here")
        return
    env = child_env()
    for check in ("memcheck", "racecheck"):
        start = time.time()
        cmd = [tool, "--tool", check, "--error-exitcode", "99", sys.executable, "-c", SANITIZER_CASE]
        try:  # run outside the repository, so `-c` cannot put the source tree on the path
            out = subprocess.run(cmd, cwd=tempfile.gettempdir(), env=env, capture_output=True, text=True,
                                 timeout=timeout / 2)
        except subprocess.TimeoutExpired:
            report.add(f"compute-sanitizer {check}", "failed", time.time() - start, "timed out")
            continue
        text = (out.stdout + out.stderr).strip().splitlines()
        ok = out.returncode == 0 and any("sanitizer case done" in line for line in text)
        summary = next((line for line in reversed(text) if "ERROR SUMMARY" in line or "RACECHECK SUMMARY" in line),
                       text[-1] if text else "")
        report.add(f"compute-sanitizer {check}", "passed" if ok else "failed", time.time() - start, summary,
                   output_tail=text[-30:])


def run_checks(report: Report, checks: List[Callable[[], Dict[str, Any]]], deadline: float) -> bool:
    """Runs each case; False when the deadline stopped the run."""
    for check in checks:
        name = check.__name__.replace("check_", "").replace("_", " ")
        if time.time() > deadline:
            report.add(name, "not run", 0.0, "out of time")
            return False
        start = time.time()
        try:
            details = check() or {}
            report.add(name, "passed", time.time() - start, details.pop("message", ""), **details)
        except Exception as exc:  # one failing check must not hide the others
            report.add(name, "failed", time.time() - start, f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc().splitlines()[-12:])
    return True


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", default="build/gpu_check/report",
                        help="report path without suffix: writes PATH.json and PATH.md (default under build/)")
    parser.add_argument("--skip-pytest", action="store_true", help="leave out pytest -m cuda")
    parser.add_argument("--skip-sanitizer", action="store_true", help="leave out compute-sanitizer")
    parser.add_argument("--only", default="", help="run only the cases whose name contains this text")
    args = parser.parse_args(argv)
    import_asvp_fast()
    sys.path.insert(0, str(ROOT / "scripts"))
    report = Report(Path(args.report))
    report.environment = environment()
    problem = device_problem()
    if problem:
        report.status = "failed: no usable CUDA device"
        report.add("device", "failed", 0.0, problem)
        print(f"gpu_check FAILED: {problem}\nreport: {report.path.with_suffix('.md')}", file=sys.stderr)
        return 1
    report.add("device", "passed", 0.0, str(report.environment.get("device", "")))
    deadline = report.started + BUDGET_S
    if not args.skip_pytest:
        run_pytest(report, timeout=200.0)
    import gpu_check_cases

    cases = [c for c in gpu_check_cases.CASES if args.only in c.__name__]
    complete = run_checks(report, cases, deadline - 90.0)
    if not args.skip_sanitizer and time.time() < deadline - 30:
        run_sanitizer(report, timeout=min(160.0, deadline - time.time()))
    if report.failed():
        report.status = "failed"
    elif not complete:
        report.status = "incomplete: out of time"
    else:
        report.status = "passed"
    report.write()
    for c in report.checks:
        print(f"{c['status']:>8}  {c['seconds']:7.1f} s  {c['name']}: {str(c['message'])[:140]}")
    print(f"gpu_check {report.status.upper()}: report {report.path.with_suffix('.md')}")
    return 1 if report.failed() else (2 if not complete else 0)


if __name__ == "__main__":
    sys.exit(main())
