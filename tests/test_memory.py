"""Memory maps are streamed: resident memory stays bounded whatever the file size."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

psutil = pytest.importorskip("psutil")


def test_memmap_scan_keeps_resident_memory_bounded(tmp_path):
    # A 768 MB float32 file; the scan must not keep it resident (the limit is 256 MB over the
    # baseline, with 64 MB chunks). Run in a fresh process so the peak is this scan's alone.
    path = tmp_path / "pool.f32"
    rows, cols = 192_000, 1000
    script = textwrap.dedent(f"""
        import numpy as np, resource, asvp_fast as af
        rows, cols = {rows}, {cols}
        rng = np.random.default_rng(0)
        with open({str(path)!r}, "wb") as f:
            for start in range(0, rows, 8000):
                block = rng.random((8000, cols), dtype=np.float32)
                block /= block.sum(axis=1, keepdims=True)
                f.write(block.tobytes())
        x = np.memmap({str(path)!r}, dtype=np.float32, mode="r", shape=(rows, cols))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        idx = af.select_uncertain(x, 1000, "entropy")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert len(idx) == 1000
        print((after - before) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path)
    growth_mb = int(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 256, f"resident memory grew by {growth_mb} MB while scanning a 768 MB memmap"
