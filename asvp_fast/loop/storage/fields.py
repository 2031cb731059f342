"""Checked access to the fields of a decoded JSON document (files are untrusted input).

A :class:`Fields` reader answers every problem (missing or unknown key, wrong type, value out of
range) with the loader's own error class and a message that names the file and the field::

    f = Fields(StateError, "state file", path)
    rows = f.int_list(raw["labels"]["rows"], "labels.rows", hi=n_pool)
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, Iterable, List, NoReturn, Optional, Type

# JSON integers beyond this do not fit an int64 index or count with room to spare.
MAX_INT = (1 << 62) - 1


class Fields:
    """Typed reads from one document; ``error(message)`` is raised for any problem (``hint`` is
    appended to every message, e.g. "; delete it to rebuild")."""

    def __init__(self, error: Type[Exception], what: str, path: "Path | str", hint: str = "") -> None:
        self.error = error
        self.what = what
        self.path = path
        self.hint = hint

    def fail(self, field: str, problem: str) -> NoReturn:
        raise self.error(f"{self.what} {self.path}: {field} {problem}{self.hint}")

    def obj(self, value: Any, field: str, required: Iterable[str] = (), optional: Iterable[str] = (),
            *, any_keys: bool = False) -> Dict[str, Any]:
        """A JSON object with all ``required`` keys and, unless ``any_keys``, no key outside
        ``required`` and ``optional``."""
        if not isinstance(value, dict):
            self.fail(field, f"must be a JSON object, not {_kind(value)}")
        required = tuple(required)
        missing = [k for k in required if k not in value]
        if missing:
            self.fail(field, f"lacks the key {missing[0]!r}")
        if not any_keys:
            known = set(required) | set(optional)
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                self.fail(field, f"has the unknown key {unknown[0]!r}")
        return value

    def int(self, value: Any, field: str, lo: int = 0, hi: int = MAX_INT) -> int:
        """An integer in ``[lo, hi]`` (booleans and floats such as 4.0 are refused)."""
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(field, f"must be an integer, not {_kind(value)}")
        if not lo <= value <= hi:
            self.fail(field, f"is {_short(value)}, outside [{lo}, {hi}]")
        return value

    def num(self, value: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> float:
        """A finite number in ``[lo, hi]``."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(field, f"must be a number, not {_kind(value)}")
        if isinstance(value, int) and abs(value) > MAX_INT:
            self.fail(field, f"is {_short(value)}, far out of range")
        out = float(value)
        if not math.isfinite(out):
            self.fail(field, f"is {out}, expected a finite number")
        if not lo <= out <= hi:
            self.fail(field, f"is {out}, outside [{lo}, {hi}]")
        return out

    def opt_num(self, value: Any, field: str, lo: float = -math.inf, hi: float = math.inf) -> Optional[float]:
        return None if value is None else self.num(value, field, lo, hi)

    def bool(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            self.fail(field, f"must be true or false, not {_kind(value)}")
        return value

    def str(self, value: Any, field: str, pattern: Optional["re.Pattern[str]"] = None, what: str = "") -> str:
        if not isinstance(value, str):
            self.fail(field, f"must be a string, not {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(field, f"is {value[:60]!r}; expected {what or pattern.pattern}")
        return value

    def list(self, value: Any, field: str) -> List[Any]:
        if not isinstance(value, list):
            self.fail(field, f"must be a JSON list, not {_kind(value)}")
        return value

    def int_list(self, value: Any, field: str, lo: int = 0, hi: int = MAX_INT, *, unique: bool = False) -> List[int]:
        """A list of integers in ``[lo, hi]`` (without repeats when ``unique``)."""
        out = [self.int(v, f"{field}[{i}]", lo, hi) for i, v in enumerate(self.list(value, field))]
        if unique and len(set(out)) != len(out):
            seen = set()
            for v in out:
                if v in seen:
                    self.fail(field, f"repeats the row {v}")
                seen.add(v)
        return out

    def plain(self, value: Any, field: str, limit: int) -> Any:
        """``value`` if it is plain JSON: no list or object nested deeper than ``limit`` and no
        NaN or infinite number anywhere (checked without recursion)."""
        stack = [(value, 1)]
        while stack:
            item, level = stack.pop()
            if isinstance(item, (list, dict)):
                if level > limit:
                    self.fail(field, f"is nested deeper than {limit} levels")
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict) else item))
            elif isinstance(item, float) and not math.isfinite(item):
                self.fail(field, f"holds the number {item}; expected finite numbers")
        return value


def _kind(value: Any) -> str:
    names = {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _short(value: int) -> str:
    return str(value) if abs(value) < 10**30 else f"an integer of {value.bit_length()} bits"
