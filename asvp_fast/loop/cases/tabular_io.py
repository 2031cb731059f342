"""Reading a text column and an optional label column from CSV, JSON Lines or Parquet files.

Every problem is a :class:`DataError` naming the file, the column and the row (1-based data rows;
for CSV and JSON Lines also the line of the file), so a bad cell in a 50,000-row file is found
at once. Parquet needs ``pyarrow`` (imported only for Parquet files).
"""

from __future__ import annotations

import csv
import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]
Label = Union[str, int, None]
FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
           ".parquet": "parquet", ".pq": "parquet"}
FORMAT_NAMES = ("csv", "tsv", "jsonl", "json", "parquet")
DEFAULT_LABEL_COLUMN = "label"


DATA_EXTRA = "asvp-fast[data]"


class DataError(ValueError):
    """A data file that cannot be used as given; the message names the file, column and row."""


def require_data(module: str, package: str) -> Any:
    """Import ``module`` or say which extra brings it (Parquet: pyarrow; hf-dataset: datasets)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"reading this data needs the package {package!r}, which is not installed: "
                          f"pip install '{DATA_EXTRA}'  (or pip install {package})") from exc


@dataclass
class TextTable:
    """The texts and labels of one file; ``labels[i]`` is None for an unlabelled row.

    ``labels`` hold strings (class names, stripped) or, where the file stores numbers (JSON
    numbers, Parquet integer columns), ints (class numbers). ``lines[i]`` is row i's line in the
    file (None for Parquet).
    """

    path: Path
    text_column: str
    label_column: Optional[str]
    texts: List[str]
    labels: Optional[List[Label]]
    lines: List[Optional[int]]

    def where(self, i: int, column: Optional[str] = None) -> str:
        line = self.lines[i] if self.lines else None
        col = column if column is not None else self.text_column
        return f"{self.path}, column {col!r}, row {i + 1}" + (f" (line {line})" if line is not None else "")


def file_format(path: Path, fmt: Optional[str] = None) -> str:
    if fmt is not None:
        if fmt not in FORMAT_NAMES:
            raise DataError(f"format must be 'csv', 'tsv', 'jsonl', 'json' or 'parquet', got {fmt!r}")
        return fmt
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; use one of "
                        f"{', '.join(sorted(FORMATS))} or set format = \"csv\" | \"jsonl\" | \"parquet\"") from None


def read_text_table(path: PathLike, text_column: str = "text", label_column: Optional[str] = None, *,
                    fmt: Optional[str] = None, role: str = "data file") -> TextTable:
    """Read ``text_column`` and the label column of a CSV/TSV, JSON Lines/JSON or Parquet file.

    ``label_column=None`` reads a column named ``"label"`` if the file has one (else the rows are
    unlabelled); a named label column must exist. Empty or null label cells are unlabelled rows.
    Texts must be strings (not null); an empty file, or one without data rows, is an error.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{role} not found: {file}")
    kind = file_format(file, fmt)
    try:
        if file.stat().st_size == 0:
            raise DataError(f"{file} is empty")
        if kind in ("csv", "tsv"):
            header, rows = _csv_rows(file, "\t" if kind == "tsv" else ",")
        elif kind in ("jsonl", "json"):
            header, rows = _json_rows(file, kind)
        else:
            return _parquet_table(file, text_column, label_column)
        return _table(file, header, rows, text_column, label_column, numbers=kind in ("jsonl", "json"))
    except DataError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read {file} as {kind}: {exc}") from exc


def _csv_rows(file: Path, delimiter: str) -> Tuple[List[str], List[Tuple[int, Dict[str, Any]]]]:
    with open(file, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if not header:
            raise DataError(f"{file} has no header row (the first row must name the columns)")
        rows = []
        for record in reader:
            if not record:
                continue  # a blank line
            if len(record) != len(header):
                raise DataError(f"{file}, line {reader.line_num}: {len(record)} fields where the header has "
                                f"{len(header)} (an unquoted delimiter in a text?)")
            rows.append((reader.line_num, dict(zip(header, record))))
    return header, rows


def _json_rows(file: Path, kind: str) -> Tuple[List[str], List[Tuple[int, Dict[str, Any]]]]:
    text = file.read_text(encoding="utf-8-sig")
    if kind == "json" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{file} is not valid JSON: {exc}") from exc
        numbered = [(None, record) for record in records]
    else:
        numbered = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    numbered.append((line_no, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{file}, line {line_no}: not valid JSON ({exc.msg})") from exc
    rows = []
    keys: Dict[str, None] = {}
    for i, (line_no, record) in enumerate(numbered):
        if not isinstance(record, dict):
            where = f"line {line_no}" if line_no is not None else f"item {i + 1}"
            raise DataError(f"{file}, {where}: expected a JSON object per row, got {type(record).__name__}")
        keys.update(dict.fromkeys(record))
        rows.append((line_no, record))
    return list(keys), rows


def _pick_label_column(file: Path, columns: List[str], label_column: Optional[str]) -> Optional[str]:
    if label_column is None:
        return DEFAULT_LABEL_COLUMN if DEFAULT_LABEL_COLUMN in columns else None
    if label_column not in columns:
        raise DataError(f"{file} has no column {label_column!r} (label_column); its columns: {columns}")
    return label_column


def _table(file: Path, header: List[str], rows: List[Tuple[Optional[int], Dict[str, Any]]], text_column: str,
           label_column: Optional[str], numbers: bool) -> TextTable:
    if not rows:
        raise DataError(f"{file} has no data rows")
    if text_column not in header:
        raise DataError(f"{file} has no column {text_column!r} (text_column); its columns: {header}")
    label_col = _pick_label_column(file, header, label_column)
    table = TextTable(file, text_column, label_col, [], [] if label_col else None, [line for line, _ in rows])
    for i, (_, record) in enumerate(rows):
        if text_column not in record:
            raise DataError(f"{table.where(i)}: the row has no {text_column!r} field")
        value = record[text_column]
        if not isinstance(value, str):
            raise DataError(f"{table.where(i)}: the text is {_describe(value)}, not a string")
        table.texts.append(value)
        if table.labels is not None:
            table.labels.append(_label(record.get(label_col), table, i, numbers))
    return table


def _label(value: Any, table: TextTable, i: int, numbers: bool) -> Label:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return value
    if numbers and isinstance(value, float) and value.is_integer():
        return int(value)
    raise DataError(f"{table.where(i, table.label_column)}: the label is {_describe(value)}; "
                    f"use a class name (string), a class number (integer) or leave it empty")


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown[:40] + ('...' if len(shown) > 40 else '')}"


def _parquet_table(file: Path, text_column: str, label_column: Optional[str]) -> TextTable:
    require_data("pyarrow", "pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
        columns = list(schema.names)
        if text_column not in columns:
            raise DataError(f"{file} has no column {text_column!r} (text_column); its columns: {columns}")
        label_col = _pick_label_column(file, columns, label_column)
        wanted = [text_column] + ([label_col] if label_col else [])
        data = pq.read_table(file, columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"cannot read {file} as Parquet: {exc}") from exc
    if data.num_rows == 0:
        raise DataError(f"{file} has no data rows")
    table = TextTable(file, text_column, label_col, [], None, [None] * data.num_rows)
    texts = data.column(text_column)
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        first = texts[0].as_py()
        raise DataError(f"{table.where(0)}: the text column holds {texts.type} values ({_describe(first)}), not strings")
    table.texts = texts.to_pylist()
    for i in _nulls(table.texts):
        raise DataError(f"{table.where(i)}: the text is missing (null)")
    if label_col:
        table.labels = _parquet_labels(data.column(label_col), table)
    return table


def _nulls(values: List[Any]) -> Iterator[int]:
    return (i for i, v in enumerate(values) if v is None)


def _parquet_labels(column: Any, table: TextTable) -> List[Label]:
    import pyarrow as pa

    kind = column.type
    values = column.to_pylist()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [None if v is None else (v.strip() or None) for v in values]
    if pa.types.is_integer(kind):
        return [None if v is None else int(v) for v in values]
    if pa.types.is_floating(kind):  # pandas writes an integer column with missing values as float
        out: List[Label] = []
        for i, v in enumerate(values):
            if v is None or math.isnan(v):
                out.append(None)
            elif float(v).is_integer():
                out.append(int(v))
            else:
                raise DataError(f"{table.where(i, table.label_column)}: the label is {v!r}, not a class number")
        return out
    raise DataError(f"{table.path}, column {table.label_column!r}: labels of type {kind} are not supported "
                    f"(use class names as strings or class numbers as integers)")
