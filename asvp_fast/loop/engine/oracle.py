"""Oracles: where labels come from.

* :class:`SimulatedOracle` reveals labels that are already known (benchmarks, the demo).
* :class:`FileOracle` serves real annotation: it writes the batch to label as a CSV file
  (``index,item,label`` with the label column empty) and reads the answers back from the same
  file once every row has a label, given as a class name or a class number. Until then a query
  raises :class:`LabelsPending`, and the run stops with a message saying which file to fill in;
  ``asvp-fast run CONFIG --resume`` continues from there.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from ..storage.files import atomic_write_text


class LabelsPending(Exception):
    """A batch was written for annotation and its labels are not in yet."""

    def __init__(self, path: Path, rows: int) -> None:
        super().__init__(
            f"{rows} items to label were written to {path}: fill in its 'label' column (a class name or number) "
            f"and continue with --resume"
        )
        self.path = path
        self.rows = rows


class OracleError(ValueError):
    """An answer file that cannot be read back."""


class SimulatedOracle:
    """Labels revealed on query from a known label array (pool order)."""

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def query(self, rows: np.ndarray, tag: str) -> np.ndarray:
        return self.labels[np.asarray(rows, dtype=np.int64)]


class FileOracle:
    """Labels from a person, through CSV files in ``directory`` (one file per query ``tag``)."""

    def __init__(self, directory: Path, class_names: Sequence[str], describe: Callable[[int], str]) -> None:
        self.directory = Path(directory)
        self.class_names = list(class_names)
        self.by_name: Dict[str, int] = {name.strip().lower(): i for i, name in enumerate(self.class_names)}
        self.describe = describe

    def path(self, tag: str) -> Path:
        return self.directory / f"{tag}.csv"

    def query(self, rows: np.ndarray, tag: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        path = self.path(tag)
        if not path.exists():
            self._write(path, rows)
            raise LabelsPending(path, rows.size)
        answers = self._read(path, rows)
        if answers is None:
            raise LabelsPending(path, rows.size)
        return answers

    def _write(self, path: Path, rows: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "item", "label"])
        for r in rows:
            w.writerow([int(r), self.describe(int(r)), ""])
        atomic_write_text(path, buf.getvalue())

    def _read(self, path: Path, rows: np.ndarray) -> "np.ndarray | None":
        """The labels in ``rows`` order, or None while some are still empty."""
        try:
            with open(path, newline="", encoding="utf-8") as f:
                records: List[Dict[str, str]] = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OracleError(f"cannot read the answer file {path}: {exc}") from exc
        if records and not {"index", "label"} <= set(records[0]):
            raise OracleError(f"{path} must have the columns 'index' and 'label'")
        found: Dict[int, str] = {}
        for line, rec in enumerate(records, start=2):
            try:
                index = int(rec["index"])
            except (TypeError, ValueError):
                raise OracleError(f"{path} line {line}: index {rec.get('index')!r} is not a number") from None
            found[index] = (rec.get("label") or "").strip()
        missing = [int(r) for r in rows if int(r) not in found]
        if missing:
            raise OracleError(f"{path} lacks rows {missing[:5]}{'...' if len(missing) > 5 else ''} of the batch")
        if any(found[int(r)] == "" for r in rows):
            return None
        return np.array([self._label(found[int(r)], path, int(r)) for r in rows], dtype=np.int64)

    def _label(self, text: str, path: Path, index: int) -> int:
        key = text.lower()
        if key in self.by_name:
            return self.by_name[key]
        if key.lstrip("-").isdigit() and 0 <= int(key) < len(self.class_names):
            return int(key)
        raise OracleError(
            f"{path}: row {index} has label {text!r}, which is neither a class name nor a number below "
            f"{len(self.class_names)} (classes: {', '.join(self.class_names[:10])}{'...' if len(self.class_names) > 10 else ''})"
        )
