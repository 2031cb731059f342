"""Config tables as pydantic schemas, generated from plain dataclasses.

Every table of a run config (``[proxy]``, ``[training]``, a case's ``[data]`` fields, a method's
options) is a dataclass. :func:`validate_table` checks a table against one: the first use builds a
pydantic model from the dataclass's field types, defaults and metadata (cached), validation runs in
pydantic, and the result is the dataclass itself. The dataclasses import nothing from here and stay
usable without a config; their field metadata (plain ``dataclasses.field(metadata=...)``) says
what pydantic cannot read from a type:

- ``ge``, ``gt``, ``le``, ``lt``: numeric bounds (every float must also be finite; every int fits
  in int64);
- ``choices``: the allowed values, a container or a callable returning one (a live registry);
  ``what`` names them in messages ("training mode");
- ``device``: True for a device string, checked by :func:`asvp_fast.core.checks.parse_device`;
- ``path``: "file" | "dir" | "exists": must exist (relative paths: from the config's folder);
  False: a string that is not a path; ``names``: values it also takes that are not paths;
- ``machine``: True for a machine-specific knob, left out of the resume digest.

Where metadata says nothing, names decide: ``seed``/``*_seed`` ≥ 0; ``*_size``, ``max_length``
≥ 1; ``*epochs``, ``num_workers`` ≥ 0; ``*lr`` > 0; ``device``/``*_device`` are device strings and
machine-specific like ``num_workers``; string fields named ``*_dir`` (a directory),
``*checkpoint`` (a file), ``*path``, ``*features``, ``*labels``, ``*model`` (a file or directory)
must exist.

Types are strict: an integer field takes only an integer (not ``"4000"``, ``4.0`` or ``true``), a
float field takes an integer or a float, a flag only ``true``/``false``, a string field only a
string. Every problem becomes one line naming its dotted field path (``schedule.steps[1].until``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, Strict, TypeAdapter
from pydantic import ValidationError, ValidationInfo, create_model
from pydantic_core import PydanticCustomError

from ...core.checks import parse_device

MAX_INT = 2**63 - 1
MAX_DEPTH = 32  # no config is nested deeper than a handful of levels
MAX_NODES = 200_000  # values in one config (YAML aliases can make a small file huge)
PATH_KINDS = ("file", "dir", "exists")


class ConfigError(ValueError):
    """A configuration field is missing, of the wrong type or out of range (the message names it)."""


class Problems(Exception):
    """Problems found while checking a config, one message per problem (gathered, then raised once)."""

    def __init__(self, messages: Sequence[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = list(messages)


def config_error(messages: Sequence[str], where: str = "") -> ConfigError:
    head = f"{where}: " if where else ""
    if len(messages) == 1:
        return ConfigError(head + messages[0])
    return ConfigError(f"{head}{len(messages)} problems in the config:\n" + "\n".join(f"  {m}" for m in messages))


# -- paths and values in messages ------------------------------------------------------------------
def dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlong, _REPR.maxlevel = 60, 60, 40, 3


def show(value: Any) -> str:
    """A value as a message shows it: short, TOML-like for flags and null, never failing."""
    if value is True or value is False:
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    try:
        return _REPR.repr(value)
    except Exception:  # a value whose repr fails must not hide the config error
        return f"a {type(value).__name__}"


_YAML_EXP = re.compile(r"^[-+]?[0-9]+(\.[0-9]*)?[eE][-+]?[0-9]+$")


def number_hint(value: Any, want: str) -> str:
    """Why a string was given where a number belongs, and what to write instead."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    try:
        number = float(text)
    except ValueError:
        return ""
    if want == "int" and math.isfinite(number) and number == int(number) and abs(number) <= MAX_INT:
        fix = str(int(number))
    else:
        fix = repr(number) if math.isfinite(number) else ""
    if _YAML_EXP.match(text) and "." not in text:
        return f" (YAML 1.1 reads {text} as a string; write {fix or 'a number'} instead)"
    return f" (a quoted string; write {fix or 'a number'} without quotes)"


# -- field rules -----------------------------------------------------------------------------------
def _conventional_bounds(name: str, kind: type) -> Dict[str, Any]:
    if kind is int:
        if name == "seed" or name.endswith("_seed"):
            return {"ge": 0}
        if name.endswith("_size") or name == "max_length":
            return {"ge": 1}
        if name.endswith("epochs") or name == "num_workers":
            return {"ge": 0}
    if kind is float and (name == "lr" or name.endswith("_lr")):
        return {"gt": 0}
    return {}


def is_device_field(name: str, meta: Mapping[str, Any]) -> bool:
    return bool(meta.get("device", name == "device" or name.endswith("_device")))


def is_machine_field(name: str, meta: Mapping[str, Any]) -> bool:
    """Fields that only say how this machine runs (devices, workers, inference batch sizes)."""
    return bool(meta.get("machine", is_device_field(name, meta) or name == "num_workers"))


def path_kind(name: str, meta: Mapping[str, Any]) -> Optional[str]:
    kind = meta.get("path")
    if kind is False:
        return None
    if kind is not None:
        if kind not in PATH_KINDS:
            raise ValueError(f"field {name!r}: metadata path must be one of {PATH_KINDS} or False, got {kind!r}")
        return str(kind)
    if name.endswith("_dir"):
        return "dir"
    if name.endswith("checkpoint"):
        return "file"
    if name.endswith(("path", "features", "labels", "model")):
        return "exists"
    return None


def _fail(kind: str, message: str) -> PydanticCustomError:
    # kind "cfg_is": "<path> <message>"; "cfg_note": "<path>: <message>"
    return PydanticCustomError(kind, "{msg}", {"msg": message})


def _float_input(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise _fail("cfg_is", f"must be a finite number, got {show(value)} (too large for a float)") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail("cfg_is", f"must be a finite number, got {value}")
    return value


def _check_device(value: str) -> str:
    try:
        parse_device(value)
    except (TypeError, ValueError):
        raise _fail("cfg_is", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {show(value)}") from None
    return value


def _choice_check(choices: Any, what: str) -> Any:
    def check(value: Any) -> Any:
        allowed = choices() if callable(choices) else choices
        try:
            ok = value in allowed
        except TypeError:  # an unhashable value
            ok = False
        if not ok:
            names = sorted(str(a) for a in allowed)
            close = difflib.get_close_matches(value, names, n=1) if isinstance(value, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail("cfg_note", f"unknown {what} {show(value)}{hint}; choose one of {names}")
        return value

    return check


def _path_check(kind: str, names: Any) -> Any:
    def check(value: str, info: ValidationInfo) -> str:
        if value in names:  # a name the field also takes (e.g. a built-in architecture), not a path
            return value
        if not value.strip():
            raise _fail("cfg_is", "must name a file or directory, got an empty string")
        base = (info.context or {}).get("base_dir", ".")
        where = Path(value).expanduser()
        where = where if where.is_absolute() else Path(base) / where
        try:
            ok = {"file": where.is_file, "dir": where.is_dir, "exists": where.exists}[kind]()
        except (OSError, ValueError):  # a name the file system cannot take (NUL byte, too long)
            ok = False
        if not ok:
            what = {"file": "is not a file", "dir": "is not a directory", "exists": "does not exist"}[kind]
            raise _fail("cfg_note", f"{where} {what}")
        return value

    return check


def _union(members: Sequence[Any]) -> Any:
    adapters = [TypeAdapter(m) for m in members]

    def check(value: Any, info: ValidationInfo) -> Any:
        for adapter in adapters:
            try:
                return adapter.validate_python(value, context=info.context)
            except ValidationError:
                continue
        raise _fail("cfg_is", f"has an unexpected value {show(value)}")

    return check


def _instance_of(cls: type) -> Any:
    def check(value: Any) -> Any:
        if not isinstance(value, cls):
            raise _fail("cfg_is", f"must be a {cls.__name__}, got {show(value)}")
        return value

    return check


def _ann(base: Any, *extra: Any) -> Any:
    """``Annotated[base, *extra]`` (spelled for Python 3.9 and 3.10 too)."""
    return typing.Annotated[(base,) + extra] if extra else base  # type: ignore[return-value]


_UNIONS = tuple(t for t in (typing.Union, getattr(types, "UnionType", None)) if t is not None)
_SEQUENCES = (list, tuple, collections.abc.Sequence)
_MAPPINGS = (dict, collections.abc.Mapping)


def _pyd_type(tp: Any, name: str, meta: Mapping[str, Any]) -> Any:
    """The pydantic type of one dataclass field (strict scalars, bounds, checks from metadata)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _pyd_type(args[0], name, meta)
    if tp is Any or tp is object:
        return Any
    if origin in _UNIONS:
        members = [a for a in args if a is not type(None)]
        inner = _pyd_type(members[0], name, meta) if len(members) == 1 else _ann(
            Any, PlainValidator(_union([_pyd_type(m, name, meta) for m in members])))
        return Optional[inner] if len(members) < len(args) else inner
    if origin is typing.Literal:
        return tp
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return Tuple[tuple(_pyd_type(a, name, meta) for a in args)]
    if origin in _SEQUENCES or tp in _SEQUENCES:
        item = _pyd_type(args[0], name, meta) if args else Any
        return List[item] if list in (origin, tp) else _ann(List[item], AfterValidator(tuple))  # type: ignore[valid-type]
    if origin in _MAPPINGS or tp in _MAPPINGS:
        value = _pyd_type(args[1], name, meta) if len(args) == 2 else Any
        return Dict[_ann(str, Strict()), value]  # type: ignore[misc]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _ann(table_model(tp), AfterValidator(lambda m, cls=tp: to_dataclass(cls, m)))
    checks: List[Any] = []
    if "choices" in meta:
        checks.append(AfterValidator(_choice_check(meta["choices"], str(meta.get("what", "value")))))
    if tp is bool:
        return _ann(bool, Strict(), *checks)
    if tp is int or tp is float:
        bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta} or _conventional_bounds(name, tp)
        if tp is int:
            bounds.setdefault("le", MAX_INT)
            if "ge" not in bounds and "gt" not in bounds:
                bounds["ge"] = -MAX_INT - 1
            return _ann(int, Strict(), Field(**bounds), *checks)
        return _ann(float, BeforeValidator(_float_input), Strict(), Field(allow_inf_nan=False, **bounds), *checks)
    if tp is str or tp is Path:
        if is_device_field(name, meta):
            checks.append(AfterValidator(_check_device))
        kind = path_kind(name, meta)
        if kind is not None:
            checks.append(AfterValidator(_path_check(kind, tuple(meta.get("names", ())))))
        if tp is Path:
            checks.append(AfterValidator(lambda v: Path(v)))
        return _ann(str, Strict(), *checks)
    if isinstance(tp, type):
        return _ann(Any, AfterValidator(_instance_of(tp)))
    return Any


def _hints(cls: type) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        return {}


def _type_of_default(f: "dataclasses.Field[Any]") -> Any:
    default = f.default
    if isinstance(default, (bool, int, float, str)):
        return type(default)
    return Any


# -- table models ----------------------------------------------------------------------------------
_MODELS: Dict[type, Tuple[type, Dict[str, str]]] = {}


def table_model(cls: type) -> type:
    """The pydantic model of a dataclass's fields (cached per class)."""
    return _model_and_names(cls)[0]


def _model_and_names(cls: type) -> Tuple[type, Dict[str, str]]:
    if cls in _MODELS:
        return _MODELS[cls]
    hints = _hints(cls)
    spec: Dict[str, Any] = {}
    names: Dict[str, str] = {}  # internal name -> field name (field names may clash with BaseModel's)
    for i, f in enumerate(dataclasses.fields(cls)):
        if not f.init:
            continue
        internal = f"f{i}"
        names[internal] = f.name
        tp = _pyd_type(hints.get(f.name, _type_of_default(f)), f.name, f.metadata)
        try:
            TypeAdapter(tp)
        except Exception:  # a type pydantic cannot check (a plug-in's own class): taken as it is
            tp = Any
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        spec[internal] = (tp, Field(... if required else None, alias=f.name))
    config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True, validate_default=False)
    model = create_model(f"{cls.__name__}Table", __config__=config, **spec)
    _MODELS[cls] = (model, names)
    return model, names


def to_dataclass(cls: type, validated: BaseModel) -> Any:
    names = _model_and_names(cls)[1]
    given = {names[k]: getattr(validated, k) for k in validated.model_fields_set}
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:  # the dataclass's own checks (__post_init__)
        raise _fail("cfg_note", str(exc)) from None


def known_fields(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def machine_fields(cls: type) -> List[str]:
    return [f.name for f in dataclasses.fields(cls) if is_machine_field(f.name, f.metadata)]


def validate_table(cls: type, raw: Any, loc: Tuple[Any, ...], *, base_dir: str = ".",
                   missing_hint: str = "") -> Any:
    """``raw`` checked against dataclass ``cls``'s fields; raises :class:`Problems` naming each field."""
    if not isinstance(raw, Mapping):
        raise Problems([f"[{dotted(loc)}] must be a table, got {show(raw)}"])
    model = table_model(cls)
    try:
        validated = model.model_validate(dict(raw), context={"base_dir": base_dir})
    except ValidationError as exc:
        raise Problems([describe(err, loc, cls, missing_hint) for err in exc.errors()]) from None
    try:
        return to_dataclass(cls, validated)
    except PydanticCustomError as exc:
        raise Problems([f"[{dotted(loc)}]: {exc.context['msg'] if exc.context else exc}"]) from None


def _fields_at(cls: type, loc: Sequence[Any]) -> List[str]:
    """The field names of the (nested) table at ``loc`` inside ``cls``'s table, for suggestions."""
    current: Any = cls
    for part in loc:
        if isinstance(part, int) or not (dataclasses.is_dataclass(current) and isinstance(current, type)):
            continue
        hint = _hints(current).get(part)
        current = _nested_dataclass(hint)
    return known_fields(current) if dataclasses.is_dataclass(current) and isinstance(current, type) else []


def _nested_dataclass(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    for arg in typing.get_args(tp):
        found = _nested_dataclass(arg)
        if found is not None:
            return found
    return None


def suggest(key: Any, known: Sequence[str]) -> Optional[str]:
    """The known name ``key`` most likely misspells: close in spelling (difflib), else the one
    sharing most ``_``-separated words with it (``lr_rate`` → ``lr``)."""
    if not isinstance(key, str) or not known:
        return None
    close = difflib.get_close_matches(key, list(known), n=1)
    if close:
        return close[0]
    words = set(key.lower().split("_"))
    scored = [(len(words & set(k.split("_"))) / len(words | set(k.split("_"))), k) for k in known]
    best = max(scored, key=lambda t: t[0])
    return best[1] if best[0] > 0 else None


def unknown_field(key: Any, table: str, known: Sequence[str]) -> str:
    place = f"[{table}]" if table else "the top level"
    close = suggest(key, known)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"unknown field {show(key)} in {place}{hint} (known fields: {', '.join(sorted(known))})"


_WANT = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string", "list_type": "a list", "tuple_type": "a list", "dict_type": "a table",
    "model_type": "a table", "model_attributes_type": "a table", "dataclass_type": "a table",
}
_BOUND = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", "≥"), "less_than": ("lt", "<"),
          "less_than_equal": ("le", "≤")}


def describe(err: Mapping[str, Any], prefix: Tuple[Any, ...], cls: type, missing_hint: str = "") -> str:
    """One pydantic error as a sentence that starts with (or names) the dotted field path."""
    loc = tuple(prefix) + tuple(err.get("loc", ()))
    path, kind, value, ctx = dotted(loc), err.get("type", ""), err.get("input"), err.get("ctx") or {}
    if kind == "extra_forbidden":
        return unknown_field(loc[-1], dotted(loc[:-1]), _fields_at(cls, err["loc"][:-1]))
    if kind == "missing":
        if isinstance(loc[-1], int):
            return f"{dotted(loc[:-1])} has too few items (no item [{loc[-1]}])"
        return f"{path} is required{missing_hint}"
    if kind in ("cfg_is", "cfg_note"):
        return f"{path}{' ' if kind == 'cfg_is' else ': '}{ctx.get('msg', err.get('msg'))}"
    if kind in _WANT:
        want = _WANT[kind]
        hint = number_hint(value, "int" if "int" in kind else "float") if kind.startswith(("int", "float")) else ""
        return f"{path} must be {want}, got {show(value)}{hint}"
    if kind == "finite_number":
        return f"{path} must be a finite number, got {show(value)}"
    if kind in _BOUND:
        key, sign = _BOUND[kind]
        return f"{path} must be {sign} {ctx.get(key)}, got {show(value)}"
    if kind == "literal_error":
        return f"{path} must be {ctx.get('expected')}, got {show(value)}"
    return f"{path}: {err.get('msg', 'invalid value')}, got {show(value)}"


# -- untrusted structure ---------------------------------------------------------------------------
def check_structure(raw: Any, where: str) -> None:
    """Refuse what no config holds before looking at fields: keys that are not strings, nesting
    deeper than :data:`MAX_DEPTH`, more than :data:`MAX_NODES` values (walked without recursion)."""
    stack: List[Tuple[Any, Tuple[Any, ...]]] = [(raw, ())]
    seen = 0
    while stack:
        value, loc = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise ConfigError(f"{where}: more than {MAX_NODES} values; this is not a run config")
        if len(loc) > MAX_DEPTH:
            raise ConfigError(f"{where}: {dotted(loc[:4])}... is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: {'[' + dotted(loc) + ']' if loc else 'the top level'} has a key "
                                      f"{show(key)} that is not a string")
                stack.append((item, loc + (key,)))
        elif isinstance(value, (list, tuple)):
            stack.extend((item, loc + (i,)) for i, item in enumerate(value))
