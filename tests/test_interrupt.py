"""Ctrl-C stops a long scan promptly (the kernels check for signals between chunks)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time


def assert_sigint_stops(script: str, ready: str, tmp_path) -> None:
    """Runs `script` (which prints `ready`, then works for minutes), sends SIGINT after a second
    and expects exit code 3 ("interrupted") within 10 seconds."""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == ready
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3, out
    assert "interrupted" in out
    assert time.monotonic() - sent < 10


def test_sigint_interrupts_a_long_scan(tmp_path):
    # 20 million identical float64 rows (stride 0, so no memory): an entropy scan of ~minutes.
    script = textwrap.dedent("""
        import sys, numpy as np, asvp_fast as af
        row = np.full(1000, 1e-3)
        x = np.lib.stride_tricks.as_strided(row, shape=(20_000_000, 1000), strides=(0, 8))
        print("scanning", flush=True)
        try:
            af.select_uncertain(x, 10, "entropy", threads=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    assert_sigint_stops(script, "scanning", tmp_path)


def test_sigint_interrupts_a_long_diversity_run(tmp_path):
    # 2 million identical rows (stride 0): after the first pass every row is at distance 0 and
    # each of the million picks is one cheap pass, minutes in all.
    script = textwrap.dedent("""
        import sys, numpy as np, asvp_fast as af
        row = np.ones(64)
        x = np.lib.stride_tricks.as_strided(row, shape=(2_000_000, 64), strides=(0, 8))
        print("selecting", flush=True)
        try:
            af.kcenter_greedy(x, 1_000_000, threads=1)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(3)
        print("finished", flush=True)
    """)
    assert_sigint_stops(script, "selecting", tmp_path)
