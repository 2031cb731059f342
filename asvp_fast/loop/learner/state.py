"""The ask/tell learner's state file: ``state.json`` in the state directory.

One JSON document, rewritten whole with :func:`~asvp_fast.loop.storage.files.atomic_write_text`
after every change (a reader sees the old file or the new one, never a mix), so a crash at any
point loses nothing that a call had returned. The file is untrusted input: :func:`read_state`
checks its format, checksum, every field's type and range, and the consistency of the rows, and
answers any damage with :class:`LearnerStateError` naming the file and the field.

Format 1::

    {"format": "asvp_fast.ActiveLearner", "version": 1,
     "settings": {"strategy": "margin", "seed": 0, "num_classes": 3 | null, "space": "embedding",
                  "proxy": {"epochs": 50, "lr": 0.01, ...}},
     "features": {"rows": N, "dim": d, "fingerprint": "<32 hex>",
                  "source": null | {"path": "/abs/pool.npy", "offset": 128, "dtype": "<f2", "order": "C"}},
     "batches": 3,                       # batches chosen so far (each batch's seeds derive from its number)
     "pending": [17, 4, ...],            # asked, not answered yet, in pick order
     "rows": [...], "labels": [...],     # answers, in the order they were taught
     "checksum": "<32 hex>"}             # blake2b-128 of the canonical JSON of everything else
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..storage.files import atomic_write_text

STATE_FILE = "state.json"
FORMAT_NAME = "asvp_fast.ActiveLearner"
FORMAT_VERSION = 1
# The proxy settings that change results (the device and the inference chunk size do not belong here: a
# state moves between machines).
PROXY_FIELDS = ("epochs", "lr", "momentum", "weight_decay", "batch_size", "hidden")
# MC dropout of the proxy (BALD, BatchBALD): saved only when not at these defaults, so states written
# before these options existed read back unchanged.
PROXY_OPTIONAL = {"dropout": 0.0, "mc_samples": 20}
# Without num_classes, labels are class numbers below this (the proxy has max(label) + 1 outputs).
MAX_INFERRED_CLASSES = 1 << 16
_HEX32 = re.compile(r"^[0-9a-f]{32}$")
_FLOAT_DTYPE = re.compile(r"^[<>|=]f[248]$")


class LearnerStateError(ValueError):
    """The learner's state directory is missing, unreadable, damaged, or does not fit the features given."""


@dataclass(frozen=True)
class FeatureSource:
    """Where memory-mapped features live, so that :meth:`ActiveLearner.load` can reopen them."""

    path: str
    offset: int
    dtype: str
    order: str


@dataclass(frozen=True)
class FeatureInfo:
    rows: int
    dim: int
    fingerprint: str
    source: Optional[FeatureSource] = None


@dataclass(frozen=True)
class Settings:
    strategy: str
    seed: int
    num_classes: Optional[int]
    space: str
    proxy: Tuple[Tuple[str, Any], ...]  # (field, value) in PROXY_FIELDS order, then PROXY_OPTIONAL ones not at default

    def proxy_dict(self) -> Dict[str, Any]:
        return dict(self.proxy)


@dataclass(frozen=True)
class LearnerState:
    settings: Settings
    features: FeatureInfo
    batches: int = 0
    pending: Tuple[int, ...] = ()
    rows: Tuple[int, ...] = ()
    labels: Tuple[int, ...] = ()
    label_of: Dict[int, int] = field(init=False, compare=False, repr=False)  # row -> label, built from rows/labels

    def __post_init__(self) -> None:
        object.__setattr__(self, "label_of", dict(zip(self.rows, self.labels)))


def state_path(state_dir: Path) -> Path:
    return Path(state_dir) / STATE_FILE


def checksum(body: Dict[str, Any]) -> str:
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def state_body(state: LearnerState) -> Dict[str, Any]:
    s, f = state.settings, state.features
    source = None if f.source is None else {"path": f.source.path, "offset": f.source.offset,
                                            "dtype": f.source.dtype, "order": f.source.order}
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "settings": {"strategy": s.strategy, "seed": s.seed, "num_classes": s.num_classes, "space": s.space,
                     "proxy": s.proxy_dict()},
        "features": {"rows": f.rows, "dim": f.dim, "fingerprint": f.fingerprint, "source": source},
        "batches": state.batches, "pending": list(state.pending), "rows": list(state.rows),
        "labels": list(state.labels),
    }


def write_state(state_dir: Path, state: LearnerState) -> None:
    """Replace the state file atomically (the previous file stays whole until the rename)."""
    body = state_body(state)
    body["checksum"] = checksum(body)
    atomic_write_text(state_path(state_dir), json.dumps(body, sort_keys=True, separators=(",", ":")) + "\n")


# -- reading: everything below treats the file as untrusted ------------------------------------

class _Damage(Exception):
    """A field is wrong: carries its dotted path and why (turned into LearnerStateError)."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(where, why)
        self.where, self.why = where, why


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_state(state_dir: Path) -> LearnerState:
    """The state in ``state_dir``, checked field by field (:class:`LearnerStateError` on any damage)."""
    path = state_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise LearnerStateError(f"{path}: not found (no learner state in {path.parent})") from None
    except OSError as exc:
        raise LearnerStateError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise LearnerStateError(f"{path}: not a valid JSON state file ({type(exc).__name__}: {exc})") from None
    try:
        return _parse(doc)
    except _Damage as exc:
        raise LearnerStateError(f"{path}: field {exc.where!r}: {exc.why}") from None
    except RecursionError:  # pragma: no cover - json.loads refuses such nesting first
        raise LearnerStateError(f"{path}: nested too deeply") from None


def _obj(value: Any, where: str, keys: Tuple[str, ...]) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise _Damage(where or "<top>", f"expected an object, got {type(value).__name__}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _Damage(f"{where}.{missing[0]}" if where else missing[0], "missing")
    extra = sorted(set(value) - set(keys))
    if extra:
        raise _Damage(f"{where}.{extra[0]}" if where else extra[0], "unknown field")
    return value


def _int(value: Any, where: str, lo: int = 0, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Damage(where, f"expected an integer, got {type(value).__name__} {_short(value)}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _Damage(where, f"{value} is outside {bound}")
    return value


def _real(value: Any, where: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Damage(where, f"expected a number, got {type(value).__name__} {_short(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    ok = math.isfinite(number) and (number > lo if lo_open else number >= lo) and (number < hi if hi_open else number <= hi)
    if not ok:
        raise _Damage(where, f"{_short(value)} is out of range")
    return number


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise _Damage(where, f"expected a string, got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int_list(value: Any, where: str, n: int) -> Tuple[int, ...]:
    if not isinstance(value, list):
        raise _Damage(where, f"expected a list of row numbers, got {type(value).__name__}")
    for i, v in enumerate(value):
        _int(v, f"{where}[{i}]", 0, n - 1)
    return tuple(value)


def _parse(doc: Any) -> LearnerState:
    top = _obj(doc, "", ("format", "version", "settings", "features", "batches", "pending", "rows", "labels", "checksum"))
    if top["format"] != FORMAT_NAME:
        raise _Damage("format", f"expected {FORMAT_NAME!r}, got {_short(top['format'])}")
    if isinstance(top["version"], bool) or top["version"] != FORMAT_VERSION:
        raise _Damage("version", f"this asvp_fast reads version {FORMAT_VERSION}, got {_short(top['version'])}")
    body = {k: v for k, v in top.items() if k != "checksum"}
    try:
        expected = checksum(body)
    except ValueError:  # a number beyond float range (1e400) parses as inf, which JSON cannot hold
        raise _Damage("checksum", "the content holds a number out of range") from None
    if not isinstance(top["checksum"], str) or expected != top["checksum"]:
        raise _Damage("checksum", "does not match the content (the file was changed or damaged)")
    settings = _parse_settings(top["settings"])
    feats = _parse_features(top["features"])
    n = feats.rows
    batches = _int(top["batches"], "batches", 0, 1 << 62)
    pending = _int_list(top["pending"], "pending", n)
    rows = _int_list(top["rows"], "rows", n)
    hi = None if settings.num_classes is None else settings.num_classes - 1
    if not isinstance(top["labels"], list):
        raise _Damage("labels", f"expected a list of labels, got {type(top['labels']).__name__}")
    labels = tuple(_int(v, f"labels[{i}]", 0, hi if hi is not None else MAX_INFERRED_CLASSES - 1)
                   for i, v in enumerate(top["labels"]))
    if len(labels) != len(rows):
        raise _Damage("labels", f"{len(labels)} labels for {len(rows)} rows")
    _unique(pending, "pending")
    _unique(rows, "rows")
    both = set(pending) & set(rows)
    if both:
        raise _Damage("pending", f"row {min(both)} is both pending and labelled")
    if pending and batches == 0:
        raise _Damage("batches", "0 with rows pending")
    return LearnerState(settings, feats, batches, pending, rows, labels)


def _unique(values: Tuple[int, ...], where: str) -> None:
    seen = set()
    for i, v in enumerate(values):
        if v in seen:
            raise _Damage(f"{where}[{i}]", f"row {v} appears twice")
        seen.add(v)


def _parse_settings(value: Any) -> Settings:
    s = _obj(value, "settings", ("strategy", "seed", "num_classes", "space", "proxy"))
    strategy = _str(s["strategy"], "settings.strategy")
    seed = _int(s["seed"], "settings.seed", 0, (1 << 64) - 1)
    num_classes = None if s["num_classes"] is None else _int(s["num_classes"], "settings.num_classes", 2, MAX_INFERRED_CLASSES)
    space = _str(s["space"], "settings.space")
    if space not in ("embedding", "features"):
        raise _Damage("settings.space", f"expected 'embedding' or 'features', got {_short(space)}")
    raw = s["proxy"]
    optional = {k: raw[k] for k in PROXY_OPTIONAL if isinstance(raw, dict) and k in raw}
    p = _obj({k: v for k, v in raw.items() if k not in optional} if isinstance(raw, dict) else raw,
             "settings.proxy", PROXY_FIELDS)
    proxy = (
        ("epochs", _int(p["epochs"], "settings.proxy.epochs", 1, 1 << 20)),
        ("lr", _real(p["lr"], "settings.proxy.lr", 0.0, 1e6, lo_open=True)),
        ("momentum", _real(p["momentum"], "settings.proxy.momentum", 0.0, 1.0, hi_open=True)),
        ("weight_decay", _real(p["weight_decay"], "settings.proxy.weight_decay", 0.0, 1e6)),
        ("batch_size", _int(p["batch_size"], "settings.proxy.batch_size", 2, 1 << 31)),
        ("hidden", None if p["hidden"] is None else _int(p["hidden"], "settings.proxy.hidden", 1, 1 << 16)),
    )
    if "dropout" in optional:
        proxy += (("dropout", _real(optional["dropout"], "settings.proxy.dropout", 0.0, 1.0, hi_open=True)),)
    if "mc_samples" in optional:
        proxy += (("mc_samples", _int(optional["mc_samples"], "settings.proxy.mc_samples", 2, 1 << 16)),)
    return Settings(strategy, seed, num_classes, space, proxy)


def _parse_features(value: Any) -> FeatureInfo:
    f = _obj(value, "features", ("rows", "dim", "fingerprint", "source"))
    rows = _int(f["rows"], "features.rows", 1, 1 << 48)
    dim = _int(f["dim"], "features.dim", 1, 1 << 24)
    fingerprint = _str(f["fingerprint"], "features.fingerprint")
    if not _HEX32.match(fingerprint):
        raise _Damage("features.fingerprint", "expected 32 lowercase hex digits")
    source = None
    if f["source"] is not None:
        src = _obj(f["source"], "features.source", ("path", "offset", "dtype", "order"))
        path = _str(src["path"], "features.source.path")
        if not path or "\x00" in path:
            raise _Damage("features.source.path", "empty or contains NUL")
        offset = _int(src["offset"], "features.source.offset", 0, 1 << 62)
        dtype = _str(src["dtype"], "features.source.dtype")
        if not _FLOAT_DTYPE.match(dtype):
            raise _Damage("features.source.dtype", f"expected a float dtype such as '<f4', got {_short(dtype)}")
        order = _str(src["order"], "features.source.order")
        if order not in ("C", "F"):
            raise _Damage("features.source.order", f"expected 'C' or 'F', got {_short(order)}")
        source = FeatureSource(path, offset, dtype, order)
    return FeatureInfo(rows, dim, fingerprint, source)


def settings_mismatch(saved: Settings, given: Settings) -> List[str]:
    """The settings that differ, as ``name: saved -> given`` lines (empty when they agree)."""
    out = []
    for name in ("strategy", "seed", "num_classes", "space"):
        a, b = getattr(saved, name), getattr(given, name)
        if a != b:
            out.append(f"{name}: {a!r} in the state, {b!r} given")
    sp, gp = saved.proxy_dict(), given.proxy_dict()
    for name in PROXY_FIELDS + tuple(PROXY_OPTIONAL):
        if sp.get(name, PROXY_OPTIONAL.get(name)) != gp.get(name, PROXY_OPTIONAL.get(name)):
            out.append(f"{name}: {sp.get(name, PROXY_OPTIONAL.get(name))!r} in the state, "
                       f"{gp.get(name, PROXY_OPTIONAL.get(name))!r} given")
    return out
