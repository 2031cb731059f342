"""The kernels release the GIL: Python threads keep running while a selection is computed."""

from __future__ import annotations

import threading
import time

import numpy as np

import asvp_fast as af


def longest_stall_while(work) -> float:
    """Runs `work` in a thread and returns the longest gap this thread saw between two steps of
    a busy loop meanwhile: about the interpreter's switch interval when the GIL is released."""
    done = threading.Event()

    def run():
        work()
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    longest_gap, last = 0.0, time.perf_counter()
    while not done.is_set():
        now = time.perf_counter()
        longest_gap, last = max(longest_gap, now - last), now
    worker.join()
    return longest_gap


def test_gil_is_released_during_selection():
    x = np.random.default_rng(0).random((100_000, 500), dtype=np.float32)
    start = time.perf_counter()
    af.select_uncertain(x, 100, "entropy", validate=False, threads=1)
    one_call = time.perf_counter() - start

    def work():
        for _ in range(3):
            af.select_uncertain(x, 100, "entropy", validate=False, threads=1)

    longest_gap = longest_stall_while(work)
    # Holding the GIL would stall this loop for a whole call; released, it only waits for the
    # interpreter's switch interval (5 ms).
    assert longest_gap < max(one_call / 2, 0.02), (longest_gap, one_call)


def test_gil_is_released_during_diversity_selection():
    x = np.random.default_rng(1).standard_normal((50_000, 64)).astype(np.float32)
    start = time.perf_counter()
    af.kcenter_greedy(x, 100, threads=1)
    one_call = time.perf_counter() - start

    longest_gap = longest_stall_while(lambda: af.kcenter_greedy(x, 300, threads=1))
    # Released, the loop only waits for the switch interval and the kernel's brief progress
    # checks (at most every 0.1 s, each a few microseconds with the GIL).
    assert longest_gap < max(one_call / 2, 0.05), (longest_gap, one_call)
