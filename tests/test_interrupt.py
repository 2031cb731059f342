"""Ctrl-C stops a long scan (the kernels check for signals between chunks) before it ends.

No clock decides: the child process reports its progress through the kernels' progress hook
(a recorder in place of the tqdm bar), says when the work is under way, and after SIGINT prints
how far the kernel had got. The work is minutes long; an interrupt that is not honoured lets it
run to the end (or into the hang guard), which fails the test.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

HANG_GUARD_S = 120  # only against a hang: a working interrupt ends the child in well under a second

CHILD = """
import sys, numpy as np, asvp_fast as af
import asvp_fast.core.progress as progress_module

class Recorder:
    # Stands in for the progress bar: counts hook calls and announces the first one.
    calls, done = 0, 0
    def __init__(self, total, description, unit="rows"):
        self.total = total
    def __call__(self, done, total):
        Recorder.calls += 1
        Recorder.done = done
        if Recorder.calls == 1:
            print("started", total, flush=True)
    def close(self):
        pass

progress_module.RowProgress = Recorder
{setup}
try:
    {call}
except KeyboardInterrupt:
    print("interrupted", Recorder.calls, Recorder.done, flush=True)
    sys.exit(3)
print("finished", Recorder.calls, Recorder.done, flush=True)
"""


def interrupt_child(setup: str, call: str, tmp_path) -> tuple:
    """Starts the child, sends SIGINT once its kernel has reported progress, and returns
    (total work, hook calls, work done) as the child saw them when KeyboardInterrupt arrived."""
    script = textwrap.dedent(CHILD).format(setup=textwrap.dedent(setup).strip(), call=call)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline().split()
        assert first[:1] == ["started"], first
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=HANG_GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    last = out.split()
    assert proc.returncode == 3 and last[0] == "interrupted", out
    return int(first[1]), int(last[1]), int(last[2])


def test_sigint_interrupts_a_long_scan(tmp_path):
    # 20 million identical float64 rows (stride 0, so no memory): thousands of chunks, minutes of work.
    total, calls, done = interrupt_child("""
        row = np.full(1000, 1e-3)
        x = np.lib.stride_tricks.as_strided(row, shape=(20_000_000, 1000), strides=(0, 8))
    """, 'af.select_uncertain(x, 10, "entropy", threads=1, progress=True)', tmp_path)
    assert total == 20_000_000
    assert 1 <= calls and done < total, (calls, done)  # stopped between chunks, before the end


def test_sigint_interrupts_a_long_diversity_run(tmp_path):
    # 2 million identical rows (stride 0): after the first pass every row is at distance 0 and
    # each of the million picks is one cheap pass, minutes in all.
    total, calls, done = interrupt_child("""
        row = np.ones(64)
        x = np.lib.stride_tricks.as_strided(row, shape=(2_000_000, 64), strides=(0, 8))
    """, "af.kcenter_greedy(x, 1_000_000, threads=1, progress=True)", tmp_path)
    assert total == 1_000_000
    assert 1 <= calls and done < total, (calls, done)  # stopped between picks, before the last one
