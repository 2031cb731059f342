"""Oracles: where labels come from.

* :class:`SimulatedOracle` reveals labels that are already known (benchmarks, the demo).
* :class:`FileOracle` serves real annotation: it writes the batch to label as a CSV file
  (``index,item,label`` with the label column empty) and reads the answers back from the same
  file once every row has a label, given as a class name or a class number. Until then a query
  raises :class:`LabelsPending`, and the run stops with a message saying which file to fill in;
  ``asvp-fast run CONFIG --resume`` continues from there. The answers are untrusted input: an
  unreadable file, a row that is not in the batch, a row given twice with different labels or an
  unknown label is an :class:`OracleError` naming the file, line, row and value.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Callable, Dict, Sequence, Tuple

import numpy as np

from ..storage.files import atomic_write_text

_NUMBER = re.compile(r"[0-9]{1,18}")  # ASCII digits only (int() also takes '²'-like digits, '1_0', ' 1')


class LabelsPending(Exception):
    """A batch was written for annotation and its labels are not in yet."""

    def __init__(self, path: Path, rows: int) -> None:
        super().__init__(
            f"{rows} items to label were written to {path}: fill in its 'label' column (a class name or number) "
            f"and continue with --resume"
        )
        self.path = path
        self.rows = rows

    def __reduce__(self) -> "tuple[type, tuple[Path, int]]":  # picklable: a distributed run sends it to every rank
        return LabelsPending, (self.path, self.rows)


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
        """The labels in ``rows`` order, or None while some are still empty. The file is untrusted
        input: anything unusable is an :class:`OracleError` naming the file, line, row and value."""
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets save a BOM
                reader = csv.reader(f)
                header = next(reader, None)
                lines = [(reader.line_num, rec) for rec in reader]
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise OracleError(f"cannot read the answer file {path}: {exc}") from exc
        columns = [c.strip().lower() for c in header or []]
        if "index" not in columns or "label" not in columns:
            raise OracleError(f"{path} must start with a header line naming the columns 'index' and 'label', "
                              f"got {(header or [])[:5]}")
        at_index, at_label = columns.index("index"), columns.index("label")
        wanted = {int(r) for r in rows}
        found: Dict[int, Tuple[int, str]] = {}
        for line, rec in lines:
            if not any(cell.strip() for cell in rec):
                continue  # blank lines
            cell = rec[at_index].strip() if at_index < len(rec) else ""
            if not _NUMBER.fullmatch(cell):
                raise OracleError(f"{path} line {line}: index {cell[:40]!r} is not a row number")
            index = int(cell)
            if index not in wanted:
                raise OracleError(f"{path} line {line}: row {index} is not part of this batch (was the file replaced?)")
            label = rec[at_label].strip() if at_label < len(rec) else ""
            if index in found and found[index][1] != label:
                raise OracleError(f"{path} line {line}: row {index} appears again, with label {label[:40]!r} "
                                  f"after {found[index][1][:40]!r} on line {found[index][0]}")
            found[index] = (line, label)
        missing = [int(r) for r in rows if int(r) not in found]
        if missing:
            raise OracleError(f"{path} lacks rows {missing[:5]}{'...' if len(missing) > 5 else ''} of the batch")
        if any(found[int(r)][1] == "" for r in rows):
            return None
        return np.array([self._label(found[int(r)][1], path, int(r), found[int(r)][0]) for r in rows], dtype=np.int64)

    def _label(self, text: str, path: Path, index: int, line: int) -> int:
        key = text.lower()
        if key in self.by_name:
            return self.by_name[key]
        if _NUMBER.fullmatch(key) and int(key) < len(self.class_names):
            return int(key)
        raise OracleError(
            f"{path} line {line}: row {index} has label {text[:60]!r}, which is neither a class name nor a number below "
            f"{len(self.class_names)} (classes: {', '.join(self.class_names[:10])}{'...' if len(self.class_names) > 10 else ''})"
        )
