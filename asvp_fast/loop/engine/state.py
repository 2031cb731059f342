"""The run's state file: everything acquired so far, rewritten atomically after every step.

``state.json`` holds the labels bought (shared by all methods: an item is labelled once even when
several methods pick it), and per method the rounds so far: rows added, stage, accuracy and
timings. A round goes through three stages, each saved before the next step starts:

* ``"selected"``: the method's choice (rows, info such as the ASVP features version, timings) is
  on disk before the oracle is asked, so a resumed run asks for exactly these rows, whatever the
  selector would pick now (a retrained model or a refreshed cache is never recomputed);
* ``"labelled"``: the oracle answered, the labels are in ``labels``;
* ``"done"``: trained and evaluated.

The previous version is kept as ``state.prev.json`` so a damaged file can be recovered by hand.
The file is untrusted input: :meth:`RunState.load` checks every field's type and range and the
consistency of rounds and labels, and answers any damage with a :class:`StateError` naming the
file and the field.

Format 2 added the ``"selected"`` stage; format-1 files (stages ``"labelled"`` and ``"done"``
only) are read and saved as format 2.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set

import numpy as np

from ..storage.fields import MAX_INT, Fields
from ..storage.files import UnreadableJSON, atomic_write_text, read_json

STATE_FORMAT = 2
READ_FORMATS = (1, 2)
STAGES = ("selected", "labelled", "done")
_CONFIG_DEPTH = 32
_NAME = re.compile(r"[^\x00-\x1f]{1,200}")


class StateError(RuntimeError):
    """The state file is unreadable, damaged or belongs to a different configuration."""


@dataclass
class RoundRecord:
    round: int
    n_labels: int
    new: List[int]
    stage: str = "labelled"  # "selected" → "labelled" → "done"
    train_rows: Optional[List[int]] = None  # only for methods whose training set is not all labels so far
    accuracy: Optional[float] = None
    select_s: float = 0.0
    train_s: float = 0.0
    eval_s: float = 0.0
    extract_s: float = 0.0
    info: Dict[str, Any] = field(default_factory=dict)


_ROUND_FIELDS = tuple(RoundRecord.__dataclass_fields__)


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
        }, allow_nan=False)

    def save(self, path: Path) -> None:
        path = Path(path)
        if path.exists():
            shutil.copyfile(path, path.with_name("state.prev.json"))
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: "Path | str", *, num_classes: Optional[int] = None, n_pool: Optional[int] = None) -> "RunState":
        """The state in ``path``, every field checked; ``num_classes`` and ``n_pool``, when given,
        bound the labels and rows. Any damage is a :class:`StateError` naming the file and field."""
        path = Path(path)
        backup = path.with_name("state.prev.json")
        hint = f"; the previous step's state is in {backup}" if backup.exists() and backup != path else ""
        try:
            raw = read_json(path)
        except UnreadableJSON as exc:
            raise StateError(f"state file {path} is damaged or truncated: it {exc}{hint}") from exc
        return _parse(Fields(StateError, "state file", path, hint), raw, num_classes, n_pool)


def _parse(f: Fields, raw: Any, num_classes: Optional[int], n_pool: Optional[int]) -> RunState:
    f.obj(raw, "the document", ("format", "config", "labels", "methods"), ("stages", "memo"))
    fmt = f.int(raw["format"], "format")
    if fmt not in READ_FORMATS:
        f.fail("format", f"is {fmt}; this version reads formats {list(READ_FORMATS)} (a newer asvp-fast wrote it?)")
    config = f.plain(f.obj(raw["config"], "config", any_keys=True), "config", _CONFIG_DEPTH)
    row_hi = MAX_INT if n_pool is None else n_pool - 1
    label_hi = MAX_INT if num_classes is None else num_classes - 1
    labels = _labels(f, raw["labels"], row_hi, label_hi)
    stages = {f.str(k, "stages key"): f.num(v, f"stages.{k}", lo=0.0)
              for k, v in f.obj(raw.get("stages", {}), "stages", any_keys=True).items()}
    memo = {}
    for key, hit in f.obj(raw.get("memo", {}), "memo", any_keys=True).items():
        where = f"memo.{key}"
        f.obj(hit, where, ("accuracy", "train_s", "eval_s"))
        memo[key] = {"accuracy": f.num(hit["accuracy"], f"{where}.accuracy", 0.0, 1.0),
                     "train_s": f.num(hit["train_s"], f"{where}.train_s", lo=0.0),
                     "eval_s": f.num(hit["eval_s"], f"{where}.eval_s", lo=0.0)}
    state = RunState(config=config, labels=labels, memo=memo, stages=stages)  # saved as the current format
    stage_names = STAGES if fmt >= 2 else ("labelled", "done")
    for name, rounds in f.obj(raw["methods"], "methods", any_keys=True).items():
        f.str(name, "a method name", _NAME, "a method name")
        state.methods[name] = MethodState(_rounds(f, f"methods.{name}", rounds, labels, row_hi, stage_names))
    return state


def _labels(f: Fields, value: Any, row_hi: int, label_hi: int) -> Dict[int, int]:
    f.obj(value, "labels", ("rows", "values"))
    rows = f.int_list(value["rows"], "labels.rows", hi=row_hi)
    values = f.int_list(value["values"], "labels.values", hi=label_hi)
    if len(rows) != len(values):
        f.fail("labels", f"has {len(rows)} rows but {len(values)} values")
    out: Dict[int, int] = {}
    for i, (r, v) in enumerate(zip(rows, values)):
        if out.setdefault(r, v) != v:
            f.fail(f"labels.rows[{i}]", f"labels row {r} again, as {v} after {out[r]}")
    return out


def _rounds(f: Fields, where: str, value: Any, labels: Dict[int, int], row_hi: int, stage_names: tuple) -> List[RoundRecord]:
    out: List[RoundRecord] = []
    bought: Set[int] = set()
    rounds = f.list(value, where)
    for i, raw in enumerate(rounds):
        at = f"{where}[{i}]"
        f.obj(raw, at, ("round", "n_labels", "new"), _ROUND_FIELDS)
        if f.int(raw["round"], f"{at}.round") != i:
            f.fail(f"{at}.round", f"is {raw['round']}, expected {i} (rounds are stored in order)")
        stage = f.str(raw.get("stage", "labelled"), f"{at}.stage")
        if stage not in stage_names:
            f.fail(f"{at}.stage", f"is {stage[:40]!r}; expected one of {list(stage_names)}")
        if stage != "done" and i != len(rounds) - 1:
            f.fail(f"{at}.stage", f"is {stage!r}, but only the last round can be unfinished")
        new = f.int_list(raw["new"], f"{at}.new", hi=row_hi, unique=True)
        again = [x for x in new if x in bought]
        if again:
            f.fail(f"{at}.new", f"holds row {again[0]}, which an earlier round of this method already bought")
        if stage != "selected":
            missing = [x for x in new if x not in labels]
            if missing:
                f.fail(f"{at}.new", f"uses rows without labels ({missing[:3]})")
        train_rows = raw.get("train_rows")
        n_labels = f.int(raw["n_labels"], f"{at}.n_labels")
        if train_rows is None:
            expected = len(bought) + len(new)
        else:
            train_rows = f.int_list(train_rows, f"{at}.train_rows", hi=row_hi, unique=True)
            outside = set(new) - set(train_rows) or set(train_rows) - bought - set(new)
            if outside:
                f.fail(f"{at}.train_rows", f"does not hold the round's rows consistently (row {min(outside)})")
            expected = len(train_rows)
        if n_labels != expected:
            f.fail(f"{at}.n_labels", f"is {n_labels}, but the rows give {expected}")
        bought.update(new)
        timings = {k: f.num(raw.get(k, 0.0), f"{at}.{k}", lo=0.0) for k in ("select_s", "train_s", "eval_s", "extract_s")}
        out.append(RoundRecord(round=i, n_labels=n_labels, new=new, stage=stage, train_rows=train_rows,
                               accuracy=f.opt_num(raw.get("accuracy"), f"{at}.accuracy", 0.0, 1.0),
                               info=_info(f, f"{at}.info", raw.get("info", {})), **timings))
    return out


def _info(f: Fields, at: str, value: Any) -> Dict[str, Any]:
    """A round's info: any JSON object (methods record their decisions in it); the keys the
    engine and the built-in methods read back are type-checked."""
    info = f.plain(f.obj(value, at, any_keys=True), at, _CONFIG_DEPTH)
    for key in ("refresh", "memo", "forced"):
        if key in info:
            f.bool(info[key], f"{at}.{key}")
    if "features_version" in info:
        f.int(info["features_version"], f"{at}.features_version")
    if "ped_steps" in info:
        f.int(info["ped_steps"], f"{at}.ped_steps")
    if "logme_ped" in info:
        f.opt_num(info["logme_ped"], f"{at}.logme_ped")
    if "mode" in info:
        f.str(info["mode"], f"{at}.mode")
    return info


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
