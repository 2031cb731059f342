"""Data cases by name: what ``[data] case = "..."`` in a config may say, and how each is built.

A case type is a dataclass of its ``[data]`` fields (everything but ``case``) and a builder
``build(fields, base_dir) -> Case`` (``base_dir``: where relative paths in the config are resolved,
the config file's folder). The config checks a ``[data]`` table against the named type's fields
before any work, exactly as it checks a method's options; :func:`register_case` adds a case type
from Python, after which configs can name it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from .case import Case

CaseBuilder = Callable[[Any, Path], Case]


@dataclass(frozen=True)
class CaseType:
    """A registered case: its ``[data]`` fields (a dataclass) and its builder."""

    name: str
    fields: type
    build: CaseBuilder


CASES: Dict[str, CaseType] = {}


def register_case(name: str, fields: type, build: CaseBuilder) -> None:
    """Make ``[data] case = name`` build a case with ``build(fields(**table), base_dir)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a case name must be a non-empty string, got {name!r}")
    if not dataclasses.is_dataclass(fields):
        raise TypeError(f"the fields of case {name!r} must be a dataclass, got {fields!r}")
    if not callable(build):
        raise TypeError(f"the builder of case {name!r} must be callable")
    CASES[name] = CaseType(name, fields, build)


def case_type(name: str) -> CaseType:
    try:
        return CASES[name]
    except KeyError:
        raise ValueError(f"unknown case {name!r}; registered: {sorted(CASES)}") from None


def resolve(base_dir: Path, value: Optional[str]) -> Optional[Path]:
    """A path from a config: ``~`` expanded, relative paths taken from ``base_dir``."""
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p
