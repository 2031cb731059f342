"""Class names, label encoding and the seeded test split shared by the generic cases."""

from __future__ import annotations

import hashlib
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .tabular_io import DataError

Label = Union[str, int, None]
UNLABELLED = -1


def class_names_from(values: Sequence[Label], given: Optional[Sequence[str]], where: str) -> List[str]:
    """``given`` (checked), or the classes found in ``values``.

    Found classes: string labels give their sorted unique names (numerically sorted when every
    name is an integer literal, so "2" comes before "10"); integer labels are class numbers, and
    give the names "0" .. str(max).
    """
    if given is not None:
        names = [str(n) for n in given]
        if not names or any(not n for n in names) or len(set(names)) != len(names):
            raise DataError(f"class_names must be a non-empty list of distinct, non-empty names, got {list(given)}")
        return names
    present = [v for v in values if v is not None]
    if not present:
        raise DataError(f"{where} has no labels to take the classes from: give class_names (or num_classes)")
    if any(isinstance(v, int) for v in present):
        if not all(isinstance(v, int) for v in present):
            raise DataError(f"{where} mixes class numbers and class names in its labels")
        return [str(i) for i in range(max(int(v) for v in present) + 1)]
    unique = sorted(set(str(v) for v in present))
    if all(_is_int_literal(n) for n in unique):
        unique.sort(key=int)
    return unique


def _is_int_literal(text: str) -> bool:
    return text.lstrip("-").isdigit()


def encode_labels(values: Sequence[Label], class_names: Sequence[str], locate: Callable[[int], str]) -> np.ndarray:
    """Class ids (int64, ``UNLABELLED`` = -1 for None): string labels are class names, integer
    labels class numbers; anything else is a :class:`DataError` naming ``locate(row)``."""
    index = {name: i for i, name in enumerate(class_names)}
    out = np.full(len(values), UNLABELLED, dtype=np.int64)
    for i, value in enumerate(values):
        if value is None:
            continue
        if isinstance(value, int):
            if not 0 <= value < len(class_names):
                raise DataError(f"{locate(i)}: class number {value} is outside 0..{len(class_names) - 1} "
                                f"(classes: {_short(class_names)})")
            out[i] = value
        elif value in index:
            out[i] = index[value]
        else:
            raise DataError(f"{locate(i)}: label {value!r} is not one of the class names ({_short(class_names)})")
    return out


def _short(names: Sequence[str], limit: int = 10) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def held_out_count(test_size: float, labelled: int, what: str) -> int:
    """``test_size`` as a row count: a fraction in (0, 1) of the ``labelled`` rows, or a count >= 1."""
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float)) or not test_size > 0:
        raise ValueError(f"test_size must be a fraction in (0, 1) or a row count >= 1, got {test_size!r}")
    if test_size < 1:
        count = int(round(test_size * labelled))
    elif float(test_size).is_integer():
        count = int(test_size)
    else:
        raise ValueError(f"test_size above 1 is a row count and must be whole, got {test_size!r}")
    if labelled == 0:
        raise DataError(f"no labelled rows in {what} to hold out as a test set: label some rows, or give a "
                        f"separate test file")
    if not 1 <= count <= labelled:
        raise DataError(f"test_size = {test_size!r} asks for {count} test rows, but {what} has {labelled} labelled "
                        f"rows; choose 1..{labelled}")
    return count


def split_labelled(labels: np.ndarray, test_size: float, seed: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Seeded ``(pool_rows, test_rows)``: the test rows are drawn from the labelled rows; the pool
    is every other row (labelled or not). Both sorted; the pool must not be empty."""
    labelled = np.flatnonzero(labels != UNLABELLED)
    count = held_out_count(test_size, labelled.size, what)
    test = np.sort(np.random.default_rng(seed).permutation(labelled)[:count])
    pool = np.setdiff1d(np.arange(labels.size, dtype=np.int64), test)
    if pool.size == 0:
        raise DataError(f"test_size = {test_size!r} leaves no rows of {what} in the pool")
    return pool.astype(np.int64), test.astype(np.int64)


def pool_labels_or_none(labels: np.ndarray) -> Optional[np.ndarray]:
    """The pool's labels when every row has one (the simulated oracle can run), else None."""
    return None if bool((labels == UNLABELLED).any()) else labels.astype(np.int64)


def rows_digest(*arrays: np.ndarray) -> str:
    """12 hex digits naming row selections (they go into dataset ids)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()[:12]
