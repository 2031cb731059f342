"""Progress bars for long scans (tqdm), shown by default only for big inputs on a terminal."""

from __future__ import annotations

import sys
from typing import Optional

# Inputs at least this large show a bar when `progress=None` (about a second of scanning or more).
AUTO_PROGRESS_BYTES = 8 << 30


class RowProgress:
    """Callable the kernels call between chunks with (rows done, rows in total)."""

    def __init__(self, total: int, description: str, unit: str = "rows") -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit=unit, unit_scale=True, desc=description, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def row_progress(progress: Optional[bool], nbytes: int, total: int, description: str,
                 unit: str = "rows") -> Optional[RowProgress]:
    """A progress bar when asked for (True), or when None and the work is big and stderr is a terminal.

    ``nbytes`` is the amount of data the work reads (for pick-by-pick methods: the input size
    times the number of passes), compared with :data:`AUTO_PROGRESS_BYTES`.
    """
    if progress is None:
        progress = nbytes >= AUTO_PROGRESS_BYTES and sys.stderr.isatty()
    if not progress:
        return None
    return RowProgress(total, description, unit)


def task_bar(total: int, description: str, progress: Optional[bool], unit: str = "it") -> "Optional[object]":
    """A tqdm bar for the loop's long stages (extraction, training, selection).

    ``progress=None`` shows it when stderr is a terminal; the bar is removed when done.
    """
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, unit_scale=True, desc=description, leave=False)
