"""Label Studio hand-off: batches out as Label Studio tasks, answers back from its exports.

:class:`LabelStudioOracle` has the contract of :class:`~.oracle.FileOracle` (``query(rows, tag)``
returns the labels or raises :class:`~.oracle.LabelsPending`), with Label Studio's files instead
of a CSV. Label Studio itself is never needed: everything goes through files.

Out, in ``directory`` (formats as documented at labelstud.io/guide/tasks, /guide/predictions):

* ``<tag>.tasks.json`` — a JSON list of tasks ``{"id": n, "data": {"text": ..., "row": <pool row>},
  "predictions": [...]}`` for the project's Import dialog. A prediction (when the selector's hints
  were given) is ``{"model_version", "score", "result": [{"from_name": "label", "to_name":
  "text", "type": "choices", "value": {"choices": [<top class>]}}]}``, ``score`` being the
  selector's uncertainty (sort the Data Manager by prediction score, descending, to see the most
  uncertain items first).
* ``label_config.xml`` — the labelling interface to paste into the project's settings:
  ``<View><Text name="text" value="$text"/><Choices name="label" toName="text">...``.

In: the project exported as ``JSON`` (tasks with ``annotations`` → ``result`` → ``value.choices``)
or ``JSON-MIN`` (one flat record per annotation: the data fields, ``id``, ``"label": "Cat"``,
``annotation_id``, ``annotator``, ``created_at``, ...), saved as ``<tag>.export.json``. Each task
is mapped back to its pool row through ``data.row`` (or, failing that, the task id written at
export when its data still match), the latest annotation that was not cancelled is taken, and any
answer that cannot be used is an :class:`~.oracle.OracleError` naming the file, the task and the
value. Tasks of other batches written by this oracle (a whole-project export) are skipped.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit
from xml.sax.saxutils import quoteattr

import numpy as np

from ..storage.files import atomic_write_text
from .oracle import LabelsPending, OracleError

SDK_PACKAGE = "label-studio-sdk"
CONFIG_NAME = "label_config.xml"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
# Keys JSON-MIN adds next to the data fields and the control tags' answers.
_MIN_KEYS = frozenset({"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement"})
_OBJECT_TAGS = {"text": "Text", "image": "Image"}
_MISSING = object()


class LabelStudioPending(LabelsPending):
    """A batch was written as Label Studio tasks and its export is not in yet."""

    def __init__(self, tasks: Path, config: Path, export: Path, rows: int) -> None:
        super().__init__(tasks, rows)
        self.args = (
            f"{rows} items to label were written as Label Studio tasks to {tasks} (labelling interface: {config}): "
            f"import them into a Label Studio project, label them, export the project as JSON or JSON-MIN to "
            f"{export}, and continue with --resume",
        )
        self.config_path = config
        self.export_path = export


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _moment(value: Any) -> Optional[float]:
    """An ISO 8601 time stamp as seconds since the epoch (naive = UTC); None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    try:
        return when.timestamp()
    except (OverflowError, OSError, ValueError):  # pragma: no cover - dates outside the platform's range
        return None


_Key = Tuple[int, float, int, int]


def _recency(updated: Any, created: Any, annotation_id: Any, position: int) -> _Key:
    """Sort key of an annotation: updated_at (else created_at), then its id, then file order."""
    when = _moment(updated)
    if when is None:
        when = _moment(created)
    number = annotation_id if isinstance(annotation_id, int) and not isinstance(annotation_id, bool) else -1
    return (0 if when is None else 1, when or 0.0, number, position)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class LabelStudioOracle:
    """Labels from people working in Label Studio, through files in ``directory`` (one batch per ``tag``).

    ``class_names`` become the ``Choice`` values; ``describe(i)`` is what ``data[data_key]`` holds
    for pool row i (the text, or an image path), unless ``value`` gives another function (e.g. one
    that turns a path into a URL Label Studio can load). ``kind`` is ``"text"`` or ``"image"``
    (the object tag); ``data_key`` (default: ``kind``) is the data field and the object tag's
    name, ``from_name`` the ``Choices`` tag's name (the key of the answers in JSON-MIN).
    ``hints`` maps a pool row to ``(class index, uncertainty score)``: the selector's top class and
    score, exported as a prediction (rows without a hint get none); see :meth:`set_hints`.
    """

    def __init__(self, directory: "Path | str", class_names: Sequence[str], describe: Callable[[int], str], *,
                 kind: str = "text", data_key: Optional[str] = None, from_name: str = "label",
                 value: Optional[Callable[[int], Any]] = None,
                 hints: Optional[Mapping[int, Tuple[int, float]]] = None,
                 model_version: str = "asvp_fast") -> None:
        if kind not in _OBJECT_TAGS:
            raise ValueError(f"kind must be one of {sorted(_OBJECT_TAGS)}, not {kind!r}")
        data_key = kind if data_key is None else data_key
        for what, name in (("data_key", data_key), ("from_name", from_name)):
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"{what} must be a name of letters, digits, '_' and '-' (starting with a letter), not {name!r}")
        if data_key == from_name or data_key == "row" or from_name == "row" or from_name in _MIN_KEYS or data_key in _MIN_KEYS:
            raise ValueError(f"data_key {data_key!r} and from_name {from_name!r} must differ from each other, "
                             f"from 'row' and from the keys Label Studio adds in JSON-MIN ({', '.join(sorted(_MIN_KEYS))})")
        names = [str(n) for n in class_names]
        if not names:
            raise ValueError("class_names is empty")
        if len(set(names)) != len(names):
            raise ValueError("class_names has duplicates; Label Studio's choices must differ")
        self.directory = Path(directory)
        self.class_names = names
        self.by_exact: Dict[str, int] = {n: i for i, n in enumerate(names)}
        self.by_name: Dict[str, int] = {}
        for i, n in enumerate(names):
            self.by_name.setdefault(n.strip().lower(), i)
        self.describe = describe
        self.value = value if value is not None else describe
        self.kind = kind
        self.data_key = data_key
        self.from_name = from_name
        self.model_version = str(model_version)
        self.hints: Dict[int, Tuple[int, float]] = {}
        if hints is not None:
            self.set_hints(hints)

    # -- file names ---------------------------------------------------------------------------
    def tasks_path(self, tag: str) -> Path:
        return self.directory / f"{tag}.tasks.json"

    def export_path(self, tag: str) -> Path:
        return self.directory / f"{tag}.export.json"

    def config_path(self) -> Path:
        return self.directory / CONFIG_NAME

    path = tasks_path  # the file the user acts on first, as FileOracle.path

    # -- the selector's view ------------------------------------------------------------------
    def set_hints(self, hints: Optional[Mapping[int, Tuple[int, float]]]) -> None:
        """Replace the hints: pool row → (top class index, uncertainty score); None clears them."""
        checked: Dict[int, Tuple[int, float]] = {}
        for row, hint in (hints or {}).items():
            try:
                cls, score = hint
                r, c, s = int(row), int(cls), float(score)
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"hint for row {row!r} must be (class index, score), not {_show(hint)}") from None
            if not 0 <= c < len(self.class_names):
                raise ValueError(f"hint for row {r}: class {c} is not below {len(self.class_names)}")
            if not math.isfinite(s):
                raise ValueError(f"hint for row {r}: score {s} is not finite")
            checked[r] = (c, s)
        self.hints = checked

    def label_config(self) -> str:
        """The labelling interface (Label Studio XML) matching the exported tasks."""
        tag = _OBJECT_TAGS[self.kind]
        choices = "\n".join(f"    <Choice value={quoteattr(n)}/>" for n in self.class_names)
        return (f"<View>\n  <{tag} name={quoteattr(self.data_key)} value={quoteattr('$' + self.data_key)}/>\n"
                f"  <Choices name={quoteattr(self.from_name)} toName={quoteattr(self.data_key)} choice=\"single\" "
                f"showInLine=\"true\">\n{choices}\n  </Choices>\n</View>\n")

    def tasks(self, rows: Sequence[int]) -> List[Dict[str, Any]]:
        """The Label Studio tasks for ``rows`` (ids 1, 2, ... in batch order)."""
        out: List[Dict[str, Any]] = []
        for n, row in enumerate(rows, start=1):
            r = int(row)
            task: Dict[str, Any] = {"id": n, "data": {self.data_key: str(self.value(r)), "row": r}}
            if r in self.hints:
                cls, score = self.hints[r]
                task["predictions"] = [{
                    "model_version": self.model_version,
                    "score": score,
                    "result": [{"id": f"asvp-{r}", "from_name": self.from_name, "to_name": self.data_key,
                                "type": "choices", "value": {"choices": [self.class_names[cls]]}}],
                }]
            out.append(task)
        return out

    # -- the oracle contract ------------------------------------------------------------------
    def query(self, rows: np.ndarray, tag: str) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        tasks, export = self.tasks_path(tag), self.export_path(tag)
        if tasks.exists():
            self._check_batch(tasks, rows)
        elif not export.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.config_path(), self.label_config())
            atomic_write_text(tasks, json.dumps(self.tasks(rows.tolist()), indent=1, ensure_ascii=False, allow_nan=False))
        if not export.exists():
            raise LabelStudioPending(tasks, self.config_path(), export, rows.size)
        return self.read_export(export, rows, tag)

    # -- reading answers ----------------------------------------------------------------------
    def read_export(self, path: Path, rows: np.ndarray, tag: str) -> np.ndarray:
        """The labels of ``rows`` (in that order) from a Label Studio export (JSON or JSON-MIN)."""
        rows = np.asarray(rows, dtype=np.int64)
        items = self._load(path, "export")
        if isinstance(items, dict):  # one task per file (cloud storage targets)
            items = [items]
        if not isinstance(items, list):
            raise OracleError(f"{path}: a Label Studio export is a JSON list of tasks, not {type(items).__name__}")
        asked = {int(r): i for i, r in enumerate(rows.tolist())}
        known = self._exported(self.tasks_path(tag))
        # (task, row) → (recency, where, status, choice or bad value) of its latest annotation so far;
        # a JSON task holds all its annotations, JSON-MIN has one record per annotation
        best: Dict[Tuple[Any, int], Tuple[_Key, str, str, Any]] = {}
        others: Optional[Set[int]] = None
        for position, item in enumerate(items):
            if not isinstance(item, dict):
                raise OracleError(f"{path}: item {position} is not a task object but {_show(item)}")
            full = isinstance(item.get("data"), dict)
            fields = item["data"] if full else item
            task_id = item.get("id")
            if task_id is not None and not (_is_int(task_id) or isinstance(task_id, str)):
                raise OracleError(f"{path}: item {position} has the task id {_show(task_id)}, which is not a number")
            where = f"task {task_id if _is_int(task_id) else _show(task_id, 40)}" if task_id is not None else f"item {position}"
            row = self._row(path, where, fields, task_id, known)
            where = f"{where} (row {row})"
            if row not in asked:
                if others is None:
                    others = self._other_batches(tag)
                if row in others:
                    continue  # a task of another batch (a whole-project export)
                raise OracleError(f"{path}: {where}: row {row} was not asked for in this batch ({tag})")
            key, (status, value) = self._from_full(path, where, item, position) if full else self._from_min(item, position)
            group = (("task", position) if full else ("id", task_id if task_id is not None else position), row)
            if group not in best or key > best[group][0]:
                best[group] = (key, where, status, value)
        found: Dict[int, Tuple[int, str, Any]] = {}
        for (_, row), (_, where, status, value) in best.items():
            if status != "ok":
                raise OracleError(f"{path}: {where}: {status}: {_show(value)}")
            label = self._label(path, where, value)
            if row in found and found[row][0] != label:
                raise OracleError(f"{path}: row {row} has conflicting answers: {found[row][1]} says "
                                  f"{_show(found[row][2])}, {where} says {_show(value)}")
            found[row] = (label, where, value)
        missing = [r for r in asked if r not in found]
        if missing:
            ids = {row: tid for tid, (row, _) in known.items()}
            named = ", ".join(f"row {r}" + (f" (task {ids[r]})" if r in ids else "") for r in missing[:5])
            raise OracleError(f"{path}: {len(missing)} of the {len(asked)} items of the batch have no annotation: {named}"
                              f"{' ...' if len(missing) > 5 else ''}; label them in Label Studio and export again")
        return np.array([found[int(r)][0] for r in rows.tolist()], dtype=np.int64)

    def _from_full(self, path: Path, where: str, task: Dict[str, Any], position: int) -> Tuple[_Key, Tuple[str, Any]]:
        """(recency, (status, value)) of a JSON task's latest annotation that was not cancelled."""
        annotations = task.get("annotations", task.get("completions", _MISSING))
        if annotations is _MISSING or annotations is None or annotations == []:
            return (0, 0.0, -1, position), ("no annotation", task.get("annotations", None))
        if not isinstance(annotations, list):
            raise OracleError(f"{path}: {where}: 'annotations' is not a list but {_show(annotations)}")
        kept: List[Tuple[_Key, Dict[str, Any]]] = []
        for i, ann in enumerate(annotations):
            if not isinstance(ann, dict):
                raise OracleError(f"{path}: {where}: annotation {i} is not an object but {_show(ann)}")
            if ann.get("was_cancelled") is True or ann.get("skipped") is True:
                continue
            kept.append((_recency(ann.get("updated_at"), ann.get("created_at"), ann.get("id"), i), ann))
        if not kept:
            return (0, 0.0, -1, position), ("every annotation was cancelled (skipped)", len(annotations))
        key, latest = max(kept, key=lambda k: k[0])
        where_ann = f"annotation {_show(latest.get('id', '?'), 40)}"
        result = latest.get("result")
        if not isinstance(result, list):
            return key, (f"{where_ann} has no result list", result)
        picks = [r for r in result if isinstance(r, dict) and r.get("from_name") == self.from_name]
        if not picks:
            named = sorted({_show(r.get("from_name"), 40) for r in result if isinstance(r, dict)})
            problem = f"{where_ann} has no answer in {self.from_name!r}" + (f" (it answers {', '.join(named)})" if named else "")
            return key, (problem, result)
        if len(picks) > 1:
            return key, (f"{where_ann} has several answers in {self.from_name!r}", [p.get("value") for p in picks])
        value = picks[0].get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        return key, self._one_choice(where_ann, choices, value)

    def _from_min(self, rec: Dict[str, Any], position: int) -> Tuple[_Key, Tuple[str, Any]]:
        """(recency, (status, value)) of one JSON-MIN record (one annotation)."""
        key = _recency(rec.get("updated_at"), rec.get("created_at"), rec.get("annotation_id"), position)
        value = rec.get(self.from_name, _MISSING)
        if value is _MISSING or value is None:
            other = sorted(_show(k, 40) for k in rec if k not in _MIN_KEYS and k not in (self.data_key, "row"))
            problem = f"no annotation in {self.from_name!r}" + (f" (other keys: {', '.join(other)})" if other else "")
            return key, (problem, rec.get("annotation_id"))
        if isinstance(value, list):  # several results for the same control tag
            if len(value) != 1:
                return key, (f"several answers in {self.from_name!r}", value)
            value = value[0]
        if isinstance(value, str):
            return key, ("ok", value)
        choices = value.get("choices") if isinstance(value, dict) else None
        return key, self._one_choice("the answer", choices, value)

    @staticmethod
    def _one_choice(what: str, choices: Any, value: Any) -> Tuple[str, Any]:
        if not isinstance(choices, list) or not choices:
            return (f"{what} has no choices", value)
        if len(choices) > 1:
            return (f"{what} has several choices", choices)
        if not isinstance(choices[0], str):
            return (f"{what} has a choice that is not a class name", choices[0])
        return ("ok", choices[0])

    def _label(self, path: Path, where: str, choice: str) -> int:
        if choice in self.by_exact:
            return self.by_exact[choice]
        key = choice.strip().lower()
        if key in self.by_name:
            return self.by_name[key]
        shown = ", ".join(self.class_names[:10]) + ("..." if len(self.class_names) > 10 else "")
        raise OracleError(f"{path}: {where}: unknown class {_show(choice)} (classes: {shown})")

    def _row(self, path: Path, where: str, fields: Dict[str, Any], task_id: Any,
             known: Dict[Any, Tuple[int, Any]]) -> int:
        """The pool row of a task: ``row`` in its data, else its exported id if its data still match."""
        row = fields.get("row", _MISSING)
        if row is not _MISSING:
            if not _is_int(row) or row < 0:
                raise OracleError(f"{path}: {where}: 'row' is {_show(row)}, not a pool row number")
            return int(row)
        if task_id in known:
            row, shown = known[task_id]
            if fields.get(self.data_key, _MISSING) == shown:
                return row
            raise OracleError(f"{path}: {where}: no 'row' in its data, and its {self.data_key!r} "
                              f"{_show(fields.get(self.data_key))} is not that of exported task {task_id}")
        raise OracleError(f"{path}: {where}: no 'row' in its data and no exported task has this id; "
                          f"import the tasks written by asvp_fast (they carry 'row')")

    def _load(self, path: Path, what: str) -> Any:
        try:
            with open(path, "r", encoding="utf-8") as f:
                return json.load(f, parse_constant=self._no_constant)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise OracleError(f"cannot read the Label Studio {what} {path}: {_show(str(exc), 200)}") from None

    @staticmethod
    def _no_constant(name: str) -> None:
        raise ValueError(f"{name} is not a JSON number")

    def _exported(self, path: Path) -> Dict[Any, Tuple[int, Any]]:
        """Task id → (row, data value) of a tasks file written by :meth:`query` ({} if none)."""
        if not path.exists():
            return {}
        items = self._load(path, "tasks file")
        out: Dict[Any, Tuple[int, Any]] = {}
        if not isinstance(items, list):
            raise OracleError(f"{path}: a tasks file is a JSON list of tasks, not {type(items).__name__}")
        for position, task in enumerate(items):
            data = task.get("data") if isinstance(task, dict) else None
            row = data.get("row") if isinstance(data, dict) else None
            tid = task.get("id") if isinstance(task, dict) else None
            if not _is_int(row) or not (_is_int(tid) or isinstance(tid, str)):
                raise OracleError(f"{path}: task {position} is damaged ({_show(task)}); delete the file to write the batch again")
            out[tid] = (int(row), data.get(self.data_key))  # type: ignore[union-attr]
        return out

    def _check_batch(self, path: Path, rows: np.ndarray) -> None:
        written = sorted(row for row, _ in self._exported(path).values())
        if written != sorted(rows.tolist()):
            raise OracleError(f"{path} holds another batch than the one asked for now ({len(written)} rows "
                              f"written, {rows.size} asked); delete it (and its export) to write this batch again")

    def _other_batches(self, tag: str) -> Set[int]:
        """The rows of every other batch this oracle wrote in its directory."""
        rows: Set[int] = set()
        for path in sorted(self.directory.glob("*.tasks.json")):
            if path.name == self.tasks_path(tag).name:
                continue
            try:
                rows.update(row for row, _ in self._exported(path).values())
            except OracleError:
                continue  # a damaged file of another batch vouches for nothing
        return rows


def push(project_url: str, api_key: str, tasks_file: "Path | str") -> int:
    """Import a tasks file written by :class:`LabelStudioOracle` into the Label Studio project at
    ``project_url`` (e.g. ``http://localhost:8080/projects/3``); returns the number of tasks.

    Needs the optional package ``label-studio-sdk`` (never a dependency of asvp_fast); without it,
    import the file in the project's Import dialog instead.
    """
    parts = urlsplit(str(project_url))
    found = re.search(r"/projects/(\d+)", parts.path)
    if parts.scheme not in ("http", "https") or not parts.netloc or found is None:
        raise ValueError(f"project_url must look like http://host:8080/projects/<id>, not {project_url!r}")
    base = f"{parts.scheme}://{parts.netloc}{parts.path[: found.start()]}"
    path = Path(tasks_file)
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise OracleError(f"cannot read the tasks file {path}: {exc}") from None
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks):
        raise OracleError(f"{path} is not a list of Label Studio tasks")
    try:
        from label_studio_sdk.client import LabelStudio  # optional; never a dependency
    except ImportError:
        raise ImportError(f"pushing tasks to Label Studio needs the optional package '{SDK_PACKAGE}' "
                          f"(pip install {SDK_PACKAGE}); without it, import {path} in the project's "
                          f"Import dialog") from None
    client = LabelStudio(base_url=base, api_key=api_key)
    client.projects.import_tasks(id=int(found.group(1)), request=tasks)
    return len(tasks)
