"""The run's state file: everything acquired so far, rewritten atomically after every step.

``state.json`` holds the labels bought (shared by all methods: an item is labelled once even when
several methods pick it), and per method the rounds done: rows added, stage ("labelled" once the
oracle answered, "done" once trained and evaluated), accuracy and timings. The previous version
is kept as ``state.prev.json`` so a damaged file can be recovered by hand.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from ..storage.files import atomic_write_text

STATE_FORMAT = 1


class StateError(RuntimeError):
    """The state file is unreadable, damaged or belongs to a different configuration."""


@dataclass
class RoundRecord:
    round: int
    n_labels: int
    new: List[int]
    stage: str = "labelled"  # "labelled" → "done"
    train_rows: Optional[List[int]] = None  # only for methods whose training set is not all labels so far
    accuracy: Optional[float] = None
    select_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    extract_s: float = 0.0
    info: Dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodState:
    rounds: List[RoundRecord] = field(default_factory=list)

    def labelled(self, upto: Optional[int] = None) -> np.ndarray:
        """Rows acquired by this method in rounds < ``upto`` (all rounds when None), in order."""
        chosen = self.rounds if upto is None else self.rounds[:upto]
        if not chosen:
            return np.empty(0, dtype=np.int64)
        return np.concatenate([np.asarray(r.new, dtype=np.int64) for r in chosen])

    def train_rows(self, upto: int) -> np.ndarray:
        rec = self.rounds[upto - 1]
        return np.asarray(rec.train_rows, dtype=np.int64) if rec.train_rows is not None else self.labelled(upto)


@dataclass
class RunState:
    config: Dict[str, Any]
    methods: Dict[str, MethodState] = field(default_factory=dict)
    labels: Dict[int, int] = field(default_factory=dict)
    memo: Dict[str, Dict[str, float]] = field(default_factory=dict)
    stages: Dict[str, float] = field(default_factory=dict)  # wall seconds of shared stages (extraction)
    format: int = STATE_FORMAT

    def method(self, name: str) -> MethodState:
        return self.methods.setdefault(name, MethodState())

    def labels_of(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.labels[int(r)] for r in rows], dtype=np.int64)

    # -- persistence -------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({
            "format": self.format, "config": self.config, "stages": self.stages, "memo": self.memo,
            "labels": {"rows": list(self.labels.keys()), "values": list(self.labels.values())},
            "methods": {name: [asdict(r) for r in m.rounds] for name, m in self.methods.items()},
        })

    def save(self, path: Path) -> None:
        if path.exists():
            shutil.copyfile(path, path.with_name("state.prev.json"))
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path) -> "RunState":
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("format") != STATE_FORMAT:
                raise StateError(f"state file {path} has format {raw.get('format')!r}; this version reads {STATE_FORMAT}")
            rows, values = raw["labels"]["rows"], raw["labels"]["values"]
            if len(rows) != len(values):
                raise ValueError("labels.rows and labels.values differ in length")
            state = cls(config=raw["config"], labels={int(r): int(v) for r, v in zip(rows, values)},
                        memo=raw.get("memo", {}), stages=raw.get("stages", {}))
            for name, rounds in raw["methods"].items():
                state.methods[name] = MethodState([RoundRecord(**r) for r in rounds])
        except StateError:
            raise
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            backup = path.with_name("state.prev.json")
            hint = f"; the previous round's state is in {backup}" if backup.exists() else ""
            raise StateError(f"state file {path} is damaged or truncated ({type(exc).__name__}: {exc}){hint}") from exc
        state._check()
        return state

    def _check(self) -> None:
        for name, m in self.methods.items():
            for i, r in enumerate(m.rounds):
                if r.round != i or r.stage not in ("labelled", "done"):
                    raise StateError(f"state file: method {name!r} round {i} is inconsistent")
                missing = [x for x in r.new if int(x) not in self.labels]
                if missing:
                    raise StateError(f"state file: method {name!r} round {i} uses rows without labels ({missing[:3]})")


def config_differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """Dotted names of the fields that differ between two config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, name + ".")
        elif a != b:
            out.append(name)
    return out
