"""Ask/tell active learning on your own features: :class:`ActiveLearner`.

For people who keep their own training loop or labelling tool (the ``query``/``teach`` style of
modAL and scikit-activeml): each :meth:`~ActiveLearner.query` trains the MLP proxy of SVPp/ASVP
on the features of the rows labelled so far and picks the next rows with a registered query
strategy; :meth:`~ActiveLearner.teach` records the answers. Everything lives in a state
directory rewritten atomically after each change, so a crash at any point loses nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ...core.checks import is_torch_tensor, parse_choice, parse_flag, parse_int, parse_optional_flag, parse_positive_real, parse_rows, parse_seed
from ...core.devices import check_device_spelling, torch_device
from ..methods.base import derive_seed
from ..models.proxy import ProxyConfig
from ..selection.selectors import ProxySelector
from ..selection.strategies import STRATEGIES, select
from ..selection.view import SelectorView
from ..storage.files import remove_if_exists
from .pool import FeaturePool, open_source
from .state import (MAX_INFERRED_CLASSES, PROXY_FIELDS, PROXY_OPTIONAL, LearnerState, LearnerStateError, Settings, read_state,
                    settings_mismatch, state_body, state_path, write_state)

# Strategies that need only the proxy's class scores (no hidden embedding is computed for them).
SCORE_STRATEGIES = ("random", "margin", "entropy", "least_confidence")
RUNTIME_OPTIONS = ("device", "inference_batch_size", "progress", "check_finite")
OPTIONS = PROXY_FIELDS + tuple(PROXY_OPTIONAL) + ("space",) + RUNTIME_OPTIONS
HIDDEN_FILE = "proxy-hidden.f16"  # the proxy's hidden embedding, spilled here while a large pool is scored


class ActiveLearner:
    """Ask/tell active learning on precomputed features (see ``docs/api.md``, "Ask/tell").

    ``features`` (N, d) float: a NumPy array, a ``numpy.memmap`` (may be larger than RAM: only the
    labelled rows are loaded, the pool is scored chunk by chunk) or a torch tensor (CPU or CUDA).
    Indices come back as int64 NumPy arrays for NumPy input, as int64 tensors on the input's device
    for torch input.

    ``strategy``: any registered query strategy (``margin``, ``entropy``, ``least_confidence``,
    ``coreset`` (k-center greedy), ``badge``, ``activeft``, ``bald``/``batchbald`` (with
    ``dropout > 0``), ``typiclust``, ``probcover``, ``cluster_margin``, ``random``, or one added with
    ``register_strategy``). While fewer than 2 rows are labelled, or all labels so far are one
    class, a query picks at random (the proxy cannot be trained yet).

    ``state_dir``: the learner's directory (created if needed). If it already holds a learner with
    the same settings and the same features, that learner resumes; other settings are a
    ``ValueError`` (use :meth:`load`, or another directory). One learner per directory at a time:
    a learner whose directory was changed by another refuses to write (``LearnerStateError``).

    ``num_classes``: when given, labels must lie in [0, num_classes); when None, labels are any
    class numbers below 65536 and the proxy has ``max(label) + 1`` outputs.

    Options: the proxy's settings (``epochs``, ``lr``, ``momentum``, ``weight_decay``,
    ``batch_size``, ``hidden``, and ``dropout``/``mc_samples`` for the MC dropout of ``bald`` and
    ``batchbald``; defaults of :class:`ProxyConfig`), ``space`` (``"embedding"``: the
    proxy's hidden layer, or ``"features"``: the features given; for diversity strategies), and,
    not saved in the state (machine settings): ``device`` (``"auto"``: the tensor's device for
    torch input, else a GPU when torch sees one), ``inference_batch_size`` (rows scored at a time),
    ``progress`` (a bar while the proxy trains; None: when stderr is a terminal), ``check_finite``
    (scan every row for NaN/inf once, default True).

    The same seed, features and answers give the same queries (on the same device).
    """

    def __init__(self, features: Any, *, strategy: str = "margin", state_dir: "str | Path",
                 num_classes: Optional[int] = None, seed: int = 0, **options: Any) -> None:
        settings, runtime = _parse_settings(strategy, seed, num_classes, options)
        pool = FeaturePool(features, check_finite=runtime["check_finite"])
        directory = _parse_dir(state_dir)
        if state_path(directory).exists():
            state = read_state(directory)
            differ = settings_mismatch(state.settings, settings)
            if differ:
                raise ValueError(f"{directory} holds a learner with other settings ({'; '.join(differ)}); "
                                 "use ActiveLearner.load(state_dir, ...) to resume it, or another state_dir")
            why = pool.matches(state.features)
            if why:
                raise ValueError(f"{directory} holds a learner for other features: {why}")
        else:
            directory.mkdir(parents=True, exist_ok=True)
            state = LearnerState(settings, pool.info())
            write_state(directory, state)
        self._setup(pool, directory, state, runtime)

    @classmethod
    def load(cls, state_dir: "str | Path", features: Any = None, *, device: Any = "auto",
             inference_batch_size: Optional[int] = None, progress: Optional[bool] = None,
             check_finite: bool = True) -> "ActiveLearner":
        """Resume the learner saved in ``state_dir`` with its saved settings.

        ``features``: needed when the learner was made from an in-memory array or tensor; a
        learner made from a ``numpy.memmap`` (or ``np.load(..., mmap_mode="r")``) reopens its file.
        Either way the features must match the saved shape and fingerprint (a hash of the shape and
        64 evenly spaced rows), else ``ValueError`` (``LearnerStateError`` when a remembered file
        is gone or changed).
        """
        directory = _parse_dir(state_dir)
        runtime = _parse_runtime({"device": device, "inference_batch_size": inference_batch_size, "progress": progress,
                                  "check_finite": check_finite})
        state = read_state(directory)
        parse_choice(state.settings.strategy, list(STRATEGIES), "strategy saved in the state (register it first)")
        remembered = features is None
        if remembered:
            src = state.features.source
            if src is None:
                raise TypeError(f"the learner in {directory} was made from in-memory features: pass them, "
                                "ActiveLearner.load(state_dir, features)")
            try:
                features = open_source(src, state.features.rows, state.features.dim)
            except LearnerStateError as exc:
                raise LearnerStateError(f"{state_path(directory)}: {exc}") from None
        pool = FeaturePool(features, check_finite=runtime["check_finite"])
        why = pool.matches(state.features)
        if why:
            if remembered:
                raise LearnerStateError(f"{state_path(directory)}: field 'features.source': the file changed: {why}")
            raise ValueError(why)
        learner = cls.__new__(cls)
        learner._setup(pool, directory, state, runtime)
        return learner

    def _setup(self, pool: FeaturePool, directory: Path, state: LearnerState, runtime: Dict[str, Any]) -> None:
        self._pool = pool
        self._dir = directory
        self._state = state
        self._progress = runtime["progress"]
        device = runtime["device"]
        if device == "auto" and pool.is_torch:
            device = str(pool.device)
        torch_device(device)  # an unusable device is a RuntimeError now, not at the first query
        self._proxy = ProxyConfig(**state.settings.proxy_dict(), device=device,
                                  inference_batch_size=runtime["inference_batch_size"])
        self.last_info: Dict[str, Any] = {}

    # -- ask ------------------------------------------------------------------------------------
    def query(self, n: int) -> Any:
        """The next ``n`` rows to label: int64, none labelled or pending, in the strategy's pick order.

        The batch is saved as pending before it is returned. While rows are pending, ``query``
        returns them again (all still pending, in pick order) whatever ``n`` is: a restarted
        script gets the batch its annotators are answering. Teach them (or :meth:`discard` them)
        to get a new batch.
        """
        n = parse_int(n, "n", minimum=1)
        st = self._state
        if st.pending:
            return self._pool.output(np.asarray(st.pending, dtype=np.int64))
        free = self._pool.n - len(st.rows)
        if n > free:
            raise ValueError(f"cannot query {n} rows: only {free} of {self._pool.n} rows are not labelled yet")
        picks, info = self._choose(n, st.batches)
        self._commit(dataclasses.replace(st, batches=st.batches + 1, pending=tuple(int(r) for r in picks)))
        self.last_info = info
        return self._pool.output(picks)

    def _choose(self, n: int, batch: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        s = self._state.settings
        labelled = np.asarray(self._state.rows, dtype=np.int64)
        labels = np.asarray(self._state.labels, dtype=np.int64)
        strategy_seed = derive_seed(s.seed, "learner", "strategy", batch)
        if s.strategy == "random" or labelled.size < 2 or np.unique(labels).size < 2:
            rows = select("random", SelectorView(self._pool.n), labelled, n, seed=strategy_seed)
            return rows, {"batch": batch, "strategy": "random", "fallback": s.strategy != "random"}
        num_classes = s.num_classes if s.num_classes is not None else int(labels.max()) + 1
        spill = self._dir / HIDDEN_FILE
        selector = ProxySelector(self._pool.rows, num_classes, self._proxy,
                                 hidden=s.strategy not in SCORE_STRATEGIES and s.space == "embedding",
                                 spill_path=spill, progress=self._progress)
        try:
            view, info = selector.view(labelled, labels, seed=derive_seed(s.seed, "learner", "proxy", batch))
            if not np.isfinite(view.need_logits(s.strategy)).all():
                raise ValueError("the proxy's outputs are not finite: scale the features (or lower lr)")
            if s.space == "features":
                view = dataclasses.replace(view, features=self._pool.space_array())
            rows = select(s.strategy, view, labelled, n, seed=strategy_seed, space=s.space)
        finally:
            view = None  # drop a spilled memmap before its file goes
            remove_if_exists(spill)
            remove_if_exists(spill.with_suffix(".mc.f32"))  # MC-dropout logits spilled beside it (bald, batchbald)
        return rows, {"batch": batch, "strategy": s.strategy, **info}

    # -- tell -----------------------------------------------------------------------------------
    def teach(self, indices: Any, labels: Any) -> None:
        """Record the answers ``labels[i]`` for rows ``indices[i]`` (one atomic write).

        ``indices``: row numbers (NumPy, list, torch on any device; a bool mask of length N too),
        usually from :meth:`query`, but any row may be taught (for example the labels you start
        with). A partial answer leaves the rest of the batch pending. Teaching a row the label it
        already has is a no-op (a restarted script may send the same answers again); a different
        label for a labelled row, two labels for one row, a row out of range, or a label outside
        [0, num_classes) is a ``ValueError`` and records nothing.
        """
        rows = parse_rows(_scalar_as_list(indices), self._pool.n, "indices", of="features")
        values = _parse_labels(labels, rows.size, self._state.settings.num_classes)
        known = self._state.label_of
        new: Dict[int, int] = {}
        for r, y in zip(rows.tolist(), values.tolist()):
            if new.get(r, y) != y:
                raise ValueError(f"indices gives row {r} two labels ({new[r]} and {y})")
            old = known.get(r)
            if old is not None and old != y:
                raise ValueError(f"row {r} is already labelled {old}; teach gave {y} (answers are final)")
            if old is None:
                new[r] = y
        if not new:
            return
        st = self._state
        self._commit(dataclasses.replace(st, rows=st.rows + tuple(new), labels=st.labels + tuple(new.values()),
                                         pending=tuple(r for r in st.pending if r not in new)))

    def discard(self, indices: Any = None) -> None:
        """Return pending rows to the pool unanswered (all of them when ``indices`` is None): rows
        the annotators cannot label. Later queries may pick them again. Non-pending rows are a
        ``ValueError``."""
        st = self._state
        if indices is None:
            drop = set(st.pending)
        else:
            drop = set(parse_rows(_scalar_as_list(indices), self._pool.n, "indices", of="features").tolist())
            stray = sorted(drop - set(st.pending))
            if stray:
                raise ValueError(f"row {stray[0]} is not pending")
        if drop:
            self._commit(dataclasses.replace(st, pending=tuple(r for r in st.pending if r not in drop)))

    def _commit(self, new: LearnerState) -> None:
        on_disk = read_state(self._dir)
        if state_body(on_disk) != state_body(self._state):
            self._state = on_disk
            raise LearnerStateError(f"{state_path(self._dir)} was changed by another learner since this one read it; "
                                    "nothing was written (this learner now holds the new state: repeat the call)")
        try:
            write_state(self._dir, new)
        except BaseException:
            # the write failed before or after the rename: take what is on disk as the truth
            try:
                self._state = read_state(self._dir)
            except LearnerStateError:  # pragma: no cover - the directory went away
                pass
            raise
        self._state = new

    # -- what it knows --------------------------------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return self._dir

    @property
    def strategy(self) -> str:
        return self._state.settings.strategy

    @property
    def num_classes(self) -> Optional[int]:
        return self._state.settings.num_classes

    @property
    def pending(self) -> Any:
        """The rows asked and not answered yet, in pick order (like :meth:`query`'s output)."""
        return self._pool.output(np.asarray(self._state.pending, dtype=np.int64))

    @property
    def labelled(self) -> Tuple[Any, Any]:
        """``(indices, labels)`` taught so far, in the order taught (int64, like :meth:`query`'s output)."""
        st = self._state
        return (self._pool.output(np.asarray(st.rows, dtype=np.int64)),
                self._pool.output(np.asarray(st.labels, dtype=np.int64)))

    def __len__(self) -> int:
        return self._pool.n

    def __repr__(self) -> str:
        st = self._state
        return (f"ActiveLearner(rows={self._pool.n}, strategy={st.settings.strategy!r}, labelled={len(st.rows)}, "
                f"pending={len(st.pending)}, state_dir={str(self._dir)!r})")


# -- argument parsing ---------------------------------------------------------------------------

def _parse_dir(state_dir: Any) -> Path:
    if isinstance(state_dir, bool) or not isinstance(state_dir, (str, Path)) or not str(state_dir):
        raise TypeError(f"state_dir must be a non-empty path (str or pathlib.Path), got {type(state_dir).__name__}")
    return Path(state_dir)


def _parse_settings(strategy: Any, seed: Any, num_classes: Any, options: Dict[str, Any]) -> Tuple[Settings, Dict[str, Any]]:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], OPTIONS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f"; options are {', '.join(OPTIONS)}"
        raise TypeError(f"ActiveLearner got an unknown option {unknown[0]!r}{hint}")
    strategy = parse_choice(strategy, list(STRATEGIES), "strategy")
    seed = parse_seed(seed)
    if num_classes is not None:
        num_classes = parse_int(num_classes, "num_classes", minimum=2, maximum=MAX_INFERRED_CLASSES)
    space = parse_choice(options.get("space", "embedding"), ["embedding", "features"], "space")
    defaults = ProxyConfig()
    p = {name: options.get(name, getattr(defaults, name)) for name in PROXY_FIELDS}
    proxy = (
        ("epochs", parse_int(p["epochs"], "epochs", minimum=1, maximum=1 << 20)),
        ("lr", parse_positive_real(p["lr"], "lr", maximum=1e6)),
        ("momentum", _parse_real(p["momentum"], "momentum", upper_open=True, upper=1.0)),
        ("weight_decay", _parse_real(p["weight_decay"], "weight_decay", upper=1e6)),
        ("batch_size", parse_int(p["batch_size"], "batch_size", minimum=2, maximum=1 << 31)),
        ("hidden", None if p["hidden"] is None else parse_int(p["hidden"], "hidden", minimum=1, maximum=1 << 16)),
    )
    dropout = _parse_real(options.get("dropout", 0.0), "dropout", upper_open=True, upper=1.0)
    samples = parse_int(options.get("mc_samples", 20), "mc_samples", minimum=2, maximum=1 << 16)
    proxy += tuple((name, value) for name, value in (("dropout", dropout), ("mc_samples", samples))
                   if value != PROXY_OPTIONAL[name])
    runtime = _parse_runtime({k: options[k] for k in RUNTIME_OPTIONS if k in options})
    return Settings(strategy, seed, num_classes, space, proxy), runtime


def _parse_runtime(options: Dict[str, Any]) -> Dict[str, Any]:
    chunk = options.get("inference_batch_size")
    return {"device": check_device_spelling(options.get("device", "auto")),
            "inference_batch_size": ProxyConfig().inference_batch_size if chunk is None else
            parse_int(chunk, "inference_batch_size", minimum=1, maximum=1 << 31),
            "progress": parse_optional_flag(options.get("progress"), "progress"),
            "check_finite": parse_flag(options.get("check_finite", True), "check_finite")}


def _parse_real(value: Any, name: str, *, upper: float, upper_open: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not (math.isfinite(number) and 0.0 <= number and (number < upper if upper_open else number <= upper)):
        raise ValueError(f"{name} must be in [0, {upper:g}{')' if upper_open else ']'}, got {value}")
    return number


def _scalar_as_list(value: Any) -> Any:
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        return [int(value)]
    return value


def _parse_labels(labels: Any, count: int, num_classes: Optional[int]) -> np.ndarray:
    if is_torch_tensor(labels):
        labels = labels.detach().cpu().numpy()
    labels = _scalar_as_list(labels)
    if isinstance(labels, (str, bytes, dict, set)) or labels is None:
        raise TypeError(f"labels must be an integer array, got {type(labels).__name__}")
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"labels must be an integer array ({exc})") from None
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"labels must be integers, got dtype {arr.dtype}")
    if arr.size != count:
        raise ValueError(f"got {arr.size} labels for {count} indices")
    hi = num_classes if num_classes is not None else MAX_INFERRED_CLASSES
    if arr.size:
        bad = arr[(arr < 0) | (arr >= hi)]
        if bad.size:
            what = f"num_classes={num_classes}" if num_classes is not None else "no num_classes given"
            raise ValueError(f"label {int(bad[0])} is outside [0, {hi}) ({what})")
    return arr.astype(np.int64)
