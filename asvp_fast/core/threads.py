"""Thread counts of the libraries we call (torch, faiss, BLAS), set for one call and restored.

Library code must never leave process-wide settings changed behind the caller's back:
``faiss.omp_set_num_threads`` and ``torch.set_num_threads`` are global, so a call with
``threads=1`` would otherwise make every later faiss search or torch op single-threaded.
:func:`limit_threads` sets the count on entry and puts the previous value back on exit, even
when the body raises.

Nothing here imports torch or faiss unless asked to limit it.
"""

from __future__ import annotations

import importlib.util
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

LIBRARIES = ("torch", "faiss", "blas")

# (get, set) pair of one library's thread count.
_Knob = Tuple[Callable[[], int], Callable[[int], None]]


def _torch_knob() -> Optional[_Knob]:
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    return torch.get_num_threads, torch.set_num_threads


def _faiss_knob() -> Optional[_Knob]:
    if importlib.util.find_spec("faiss") is None:
        return None
    try:
        import faiss
    except Exception:  # a broken install is treated as absent, as in core.backends
        return None
    return faiss.omp_get_max_threads, faiss.omp_set_num_threads


_KNOBS = {"torch": _torch_knob, "faiss": _faiss_knob}


@contextmanager
def _set_restored(knob: _Knob, threads: int) -> Iterator[None]:
    get, set_ = knob
    previous = int(get())
    set_(threads)
    try:
        yield
    finally:
        set_(previous)


@contextmanager
def _blas_limited(threads: int) -> Iterator[None]:
    # threadpoolctl (optional) is the one portable way to reach OpenBLAS/MKL thread pools.
    if importlib.util.find_spec("threadpoolctl") is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield


@contextmanager
def limit_threads(threads: int, libraries: Sequence[str] = ("torch", "faiss")) -> Iterator[None]:
    """Run the body with at most ``threads`` threads in each of ``libraries``; restore afterwards.

    ``threads`` is a value returned by :func:`asvp_fast.core.checks.parse_threads`: 0 (the
    caller passed None: all cores) changes nothing. ``libraries``: any of ``"torch"``,
    ``"faiss"`` and ``"blas"`` (numpy's BLAS, through threadpoolctl when it is installed);
    a library that is not installed is skipped.
    """
    unknown = [name for name in libraries if name not in LIBRARIES]
    if unknown:
        raise ValueError(f"unknown thread pool {unknown[0]!r}; expected some of {list(LIBRARIES)}")
    if threads <= 0:
        yield
        return
    with ExitStack() as stack:
        for name in libraries:
            if name == "blas":
                stack.enter_context(_blas_limited(threads))
                continue
            knob: Any = _KNOBS[name]()
            if knob is not None:
                stack.enter_context(_set_restored(knob, threads))
        yield
