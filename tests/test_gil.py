"""The kernels release the GIL: Python threads keep running while a selection is computed.

No clock is read. The kernels call their progress hook between chunks (or picks); a recorder
stands in for the progress bar and notes, at every call, how far a Python thread that bumps a
counter has got. The switch interval is made huge for the test, so the interpreter never
forces a hand-over of the GIL: the counter can only move between two hook calls if the kernel
let go of the GIL while it worked. Once it has moved (or after many calls) the recorder stops
the kernel by raising, so the test stays short however long the input would take.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import asvp_fast as af
import asvp_fast.core.progress as progress_module

MAX_CALLS = 200  # hook calls before giving up (each is a chunk or >= 0.1 s of picks)


class Enough(Exception):
    """Raised by the recorder to end the kernel early."""


class Recorder:
    """Replaces the tqdm bar the kernels' progress hook reports to."""

    counter = [0]
    seen: list = []

    def __init__(self, total: int, description: str, unit: str = "rows") -> None:
        self.total = total

    def __call__(self, done: int, total: int) -> None:
        seen = Recorder.seen
        seen.append((done, Recorder.counter[0]))  # no call here may release the GIL
        if (len(seen) >= 3 and seen[-1][1] > seen[0][1]) or len(seen) >= MAX_CALLS:
            raise Enough

    def close(self) -> None:
        pass


def counter_progress_between_hook_calls(monkeypatch, kernel) -> list:
    """Runs `kernel(progress=True)` while another thread counts; returns the (done, count) pairs
    the progress hook saw."""
    monkeypatch.setattr(progress_module, "RowProgress", Recorder)
    Recorder.counter = [0]
    Recorder.seen = []
    stop = threading.Event()

    def count() -> None:
        while not stop.is_set():
            Recorder.counter[0] += 1
            time.sleep(1e-4)  # let go of the GIL, so the kernel's hook never waits for it

    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e4)  # no forced hand-over: a thread waiting for the GIL waits for a release
    counter = threading.Thread(target=count)
    try:
        counter.start()
        with pytest.raises(Enough):
            kernel(progress=True)
    finally:
        stop.set()
        counter.join()
        sys.setswitchinterval(previous)
    return Recorder.seen


def test_gil_is_released_during_selection(monkeypatch):
    # 2 million identical rows (stride 0, no memory): a scan of thousands of 64 MB chunks.
    row = np.full(1000, 1e-3)
    x = np.lib.stride_tricks.as_strided(row, shape=(2_000_000, 1000), strides=(0, 8))
    seen = counter_progress_between_hook_calls(
        monkeypatch, lambda progress: af.select_uncertain(x, 100, "entropy", threads=1, progress=progress))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] < 2_000_000, "the scan must still be running"
    assert seen[-1][1] > seen[0][1], f"no Python thread ran during {len(seen)} chunks of the scan: the GIL is held"


def test_gil_is_released_during_diversity_selection(monkeypatch):
    # 2 million identical rows: after the first pick every row is at distance 0, each pick one pass.
    row = np.ones(64)
    x = np.lib.stride_tricks.as_strided(row, shape=(2_000_000, 64), strides=(0, 8))
    seen = counter_progress_between_hook_calls(
        monkeypatch, lambda progress: af.kcenter_greedy(x, 1_000_000, threads=1, progress=progress))
    done = [d for d, _ in seen]
    assert done == sorted(done) and done[-1] < 1_000_000, "the selection must still be running"
    assert seen[-1][1] > seen[0][1], f"no Python thread ran during {len(seen)} progress reports: the GIL is held"
