"""scripts/gpu_check.py, as far as a machine without a GPU allows: it must fail, never skip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import asvp_fast as af

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_fails_clearly_without_a_usable_device(tmp_path):
    if af.backends()["cuda_devices"] > 0:
        pytest.skip("a CUDA device is usable here: run scripts/gpu_check.py itself")
    report = tmp_path / "gpu"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--report", str(report)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "gpu_check FAILED: no usable CUDA device" in out.stderr
    data = json.loads(report.with_suffix(".json").read_text())
    assert data["status"] == "failed: no usable CUDA device"
    assert [(c["name"], c["status"]) for c in data["checks"]] == [("device", "failed")]
    assert "no usable CUDA device" in data["checks"][0]["message"]
    assert report.with_suffix(".md").read_text().startswith("# asvp_fast GPU check: failed")


def test_gpu_check_cases_are_all_listed():
    source = (ROOT / "scripts" / "gpu_check_cases.py").read_text()
    defined = [line.split("(")[0][4:] for line in source.splitlines() if line.startswith("def check_")]
    listed = source[source.index("CASES: List"):]
    assert defined and all(f"    {name}," in listed for name in defined)
