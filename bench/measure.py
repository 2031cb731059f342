"""What every suite of the benchmark measures with: peak extra memory, the machine's read
bandwidth, and a one-line description of the machine."""

from __future__ import annotations

import os
import platform
import threading
import time

import numpy as np

import asvp_fast as af
from asvp_fast import _C


class PeakMemory:
    """Peak resident memory above the level at entry, sampled every millisecond."""

    def __init__(self) -> None:
        try:
            import psutil
        except ImportError as exc:
            raise SystemExit("the benchmark needs psutil to measure memory: pip install '.[bench]'") from exc

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


class PeakAnonymousMemory(PeakMemory):
    """Peak anonymous resident memory (RssAnon) above the level at entry.

    Anonymous memory excludes the page cache of memory-mapped input files, which the kernel
    reads but does not allocate."""

    def current(self) -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return super().current()  # non-Linux: resident set (includes mapped file pages)


def read_bandwidth(threads: int, nbytes: int = 2 << 30, repeat: int = 5) -> float:
    """Bytes per second all threads read when summing a large float32 array (best of `repeat`)."""
    a = np.ones(nbytes // 4, dtype=np.float32)
    _C.read_sum(a, threads)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        _C.read_sum(a, threads)
        best = min(best, time.perf_counter() - start)
    return a.nbytes / best


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
