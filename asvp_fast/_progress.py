"""Progress bars for long scans (tqdm), shown by default only for big inputs on a terminal."""

from __future__ import annotations

import sys
from typing import Optional

# Inputs at least this large show a bar when `progress=None` (about a second of scanning or more).
AUTO_PROGRESS_BYTES = 8 << 30


class RowProgress:
    """Callable the kernels call between chunks with (rows done, rows in total)."""

    def __init__(self, total: int, description: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="rows", unit_scale=True, desc=description, leave=False)

    def __call__(self, done: int, total: int) -> None:
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


def row_progress(progress: Optional[bool], nbytes: int, total: int, description: str) -> Optional[RowProgress]:
    """A progress bar when asked for (True), or when None and the input is big and stderr is a terminal."""
    if progress is None:
        progress = nbytes >= AUTO_PROGRESS_BYTES and sys.stderr.isatty()
    if not progress:
        return None
    return RowProgress(total, description)
