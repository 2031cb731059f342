"""Diversity selection: exact greedy k-center, k-means++ D² seeding and BADGE.

All three keep, for every row, the squared distance to its nearest centre so far (O(N) extra
memory, nothing of size N x k, N x L or N x C*d) and fold in one centre per pick with a fused
pass that skips rows the triangle inequality proves cannot change. The results are exactly
those of the plain algorithms; the skipping only saves work (``prune=False`` turns it off).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional, Tuple

import numpy as np

from .. import _C
from ..core.arrays import (
    Operand,
    Outputs,
    as_operand,
    check_float_matrix,
    cuda_index,
    exclusion_mask,
    resolve_device,
)
from ..core.checks import (
    parse_choice,
    parse_count,
    parse_flag,
    parse_optional_flag,
    parse_rows,
    parse_seed,
    parse_threads,
)
from ..core.progress import row_progress
from .nearest import nearest_labelled
from .sharded_diversity import diversity_sharded

Device = str  # "auto" | "cpu" | "cuda" | "cuda:N"

_KCENTER, _KMEANS_PP, _BADGE = 0, 1, 2


@dataclass
class DiversityResult:
    """A selection with what it cost (returned by :func:`diversity_select`).

    Attributes:
        indices: the picks in order: int64, numpy for numpy/memmap input, a torch tensor on the
            input's device for torch input.
        distances: float32 (k,), numpy or torch like ``indices``: each pick's squared distance
            to the nearest earlier centre (labelled rows included) at the moment it was picked;
            ``inf`` for a first pick made with no centre yet. For k-center these are the greedy
            radii, non-increasing.
        distances_possible: row-to-centre distances an unpruned run evaluates.
        distances_computed: those actually evaluated (plus the initial labelled pass).
        centre_distances: centre-to-centre distances evaluated for the pruning test.
    """

    indices: Any
    distances: Any
    distances_possible: int
    distances_computed: int
    centre_distances: int

    @property
    def skipped_fraction(self) -> float:
        """Fraction of the per-pick row-to-centre distances the pruning avoided."""
        if self.distances_possible == 0:
            return 0.0
        return 1.0 - min(self.distances_computed, self.distances_possible) / self.distances_possible


_CODES = {"kcenter": _KCENTER, "kmeans_pp": _KMEANS_PP, "badge": _BADGE}
_NAMES = {"kcenter": "k-center greedy", "kmeans_pp": "k-means++", "badge": "BADGE"}
_NEAREST_BACKENDS = ("auto", "faiss", "numpy", "torch")


def _finish(op: Operand, values: np.ndarray) -> Any:
    """The kernels write picks and distances to host arrays; torch input gets them back as
    tensors on its own device (outputs follow the input)."""
    if op.torch_device is None:
        return values
    import torch

    return torch.from_numpy(values).to(op.torch_device)


def _host_mask(exclude: Any, n: int, op: Operand) -> Tuple[Optional[np.ndarray], int]:
    # The diversity kernels read the mask on the host whatever the device of the features.
    host_op = Operand(handle=None, shape=op.shape, dtype_name=op.dtype_name, itemsize=op.itemsize, on_cuda=False)
    return exclusion_mask(exclude, n, host_op, of="features")


def _where(op: Operand) -> str:
    return str(op.torch_device) if op.on_cuda else "the host"


def _badge_scores(x: Any, op: Operand, n: int) -> Operand:
    """BADGE's probabilities (or logits), checked against the features."""
    if x is None:
        raise TypeError("BADGE needs x: the N x C probabilities (or logits with from_logits=True)")
    x_op = as_operand(x, "x")
    if check_float_matrix(x_op)[0] != n:
        raise ValueError(f"x has {x_op.shape[0]} rows but features has {n}; they must describe the same samples")
    if x_op.on_cuda != op.on_cuda or (op.on_cuda and x_op.torch_device != op.torch_device):
        raise ValueError(f"x and features must be on the same device (x is on {_where(x_op)}, "
                         f"features on {_where(op)})")
    return x_op


def _check_k(k: int, n: int, lab: np.ndarray, mask: Optional[np.ndarray]) -> None:
    """k must not exceed the rows that may be picked: neither labelled nor excluded (counted once)."""
    unavailable = np.zeros(n, dtype=bool)
    unavailable[lab] = True
    if mask is not None:
        unavailable |= mask.astype(bool)
    taken = int(np.count_nonzero(unavailable))
    available = n - taken
    if k <= available:
        return
    if available == 0 and n > 0:
        raise ValueError(f"no row may be picked: all {n} rows are labelled or excluded")
    parts = [f"{lab.size} labelled"] if lab.size else []
    if mask is not None and np.count_nonzero(mask):
        parts.append(f"{int(np.count_nonzero(mask))} excluded")
    detail = ", ".join([f"{n} rows"] + parts)
    raise ValueError(f"k={k} is larger than the {available} rows that may be picked ({detail})")


def diversity_select(
    method: Literal["kcenter", "kmeans_pp", "badge"],
    features: Any,
    k: int,
    *,
    x: Any = None,
    from_logits: bool = False,
    labeled: Any = None,
    exclude: Any = None,
    seed: int = 0,
    validate: bool = True,
    prune: bool = True,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    nearest_backend: str = "auto",
    group: Any = None,
) -> DiversityResult:
    """The engine behind :func:`kcenter_greedy`, :func:`kmeans_pp` and :func:`badge`, returning the
    picks together with their distances and the work done (for benchmarks and diagnostics).

    ``method`` chooses the algorithm; the other arguments are those of the three functions.
    ``prune=False`` evaluates every distance (same result, for checking the pruning).
    ``nearest_backend`` picks the library of k-center's initial nearest-labelled search
    ("auto", "faiss", "numpy" or "torch"; any of them takes any input: numpy rows are
    handed to torch tile by tile, torch CPU rows to faiss/numpy likewise).
    ``group``: a torch.distributed process group; ``features`` (and ``x``) are then this rank's
    shard, ``labeled``/``exclude`` local to it, and the picks global rows (docs/api.md,
    "Distributed"). The counters of the result are 0 there.
    """
    if group is not None:
        return _sharded(method, features, k, x=x, from_logits=from_logits, labeled=labeled, exclude=exclude, seed=seed,
                        validate=validate, group=group, threads=threads)
    code = _CODES[parse_choice(method, tuple(_CODES), "method")]
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    prune = parse_flag(prune, "prune")
    progress = parse_optional_flag(progress, "progress")
    parse_choice(nearest_backend, _NEAREST_BACKENDS, "nearest_backend")
    op = as_operand(features, "features")
    n, _ = check_float_matrix(op, "features", columns="d")
    k = parse_count(k)
    n_threads = parse_threads(threads)
    seed64 = parse_seed(seed)
    use_cuda = resolve_device(device, op, "features")
    x_op = _badge_scores(x, op, n) if code == _BADGE else None

    lab = np.empty(0, dtype=np.int64)
    if labeled is not None:
        if code != _KCENTER:
            raise ValueError("labeled is only used by k-center greedy; use exclude for the other methods")
        lab = parse_rows(labeled, n, "labeled", unique=True, of="features")
    mask, _ = _host_mask(exclude, n, op)
    _check_k(k, n, lab, mask)

    picks = np.empty(k, dtype=np.int64)
    distances = np.empty(k, dtype=np.float32)
    if k == 0:
        return DiversityResult(_finish(op, picks), _finish(op, distances), 0, 0, 0)
    nearest = nearest_labelled(features, lab, n_threads, nearest_backend, gpu=use_cuda) if lab.size else None
    x_nbytes = x_op.nbytes if x_op is not None else 0
    bar = row_progress(progress, (op.nbytes + x_nbytes) * k, k, _NAMES[method], unit="picks")
    outputs = Outputs(op)
    try:
        work: Dict[str, Any] = _C.diversity(
            code, op.handle, None if x_op is None else x_op.handle, from_logits, validate,
            lab if lab.size else None, nearest, mask, picks, distances, k, seed64, n_threads, prune, use_cuda,
            outputs.cuda_stream(), bar, workspace=outputs.workspace() if use_cuda else None,
            cuda_device=cuda_index(device))
    finally:
        if bar is not None:
            bar.close()
    return DiversityResult(_finish(op, picks), _finish(op, distances), int(work["distances_possible"]),
                           int(work["distances_computed"]), int(work["centre_distances"]))


def _host_float32(features: Any) -> np.ndarray:
    """A shard's rows as the kernel reads them: float32 (exact for bfloat16, rounded from float64)."""
    if type(features).__module__.startswith("torch"):
        return features.detach().float().cpu().numpy()
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range rows are named below
        return np.ascontiguousarray(features, dtype=np.float32)


def _stays_on_device(values: Any) -> bool:
    """Whether a shard is a CUDA tensor that the CUDA per-pick update reads in place (a build with
    CUDA); otherwise the sharded path works on host float32 rows."""
    return (type(values).__module__.startswith("torch") and bool(values.is_cuda)
            and bool(_C.build_info().get("cuda_compiled", False)))


def _finite_rows_on_device(values: Any, chunk_rows: int = 65536) -> np.ndarray:
    """(n,) bool on the host: each row finite once converted to float32 as the kernel reads it,
    checked on the tensor's device a chunk at a time (no host copy of the shard)."""
    out = np.empty(values.shape[0], dtype=bool)
    for start in range(0, values.shape[0], chunk_rows):
        block = values[start:start + chunk_rows].detach()
        out[start:start + block.shape[0]] = block.float().isfinite().all(dim=1).cpu().numpy()
    return out


def _sharded(method: str, features: Any, k: Any, *, x: Any, from_logits: Any, labeled: Any, exclude: Any,
             seed: Any, validate: Any, group: Any, threads: Any = None) -> DiversityResult:
    """:func:`diversity_select` over row shards (asvp_fast.acquisition.distributed)."""
    parse_choice(method, tuple(_CODES), "method")

    def prepare() -> Dict[str, Any]:
        if method == "badge" and parse_flag(from_logits, "from_logits"):
            raise NotImplementedError("BADGE over shards (group=) takes probabilities; from_logits=True is planned")
        op = as_operand(features, "features")
        n, _ = check_float_matrix(op, "features", columns="d")
        # float16/bfloat16 shards are converted to float32 whole (exact), as the kernel converts
        # each row as it reads it: the distances, hence the picks, are the same
        lab = np.empty(0, dtype=np.int64)
        if labeled is not None:
            if method != "kcenter":
                raise ValueError("labeled is only used by k-center greedy; use exclude for the other methods")
            lab = parse_rows(labeled, n, "labeled", unique=True, of="features")
        excluded = np.empty(0, dtype=np.int64) if exclude is None else parse_rows(exclude, n, "exclude",
                                                                                 of="features")
        prepared = {"k": parse_count(k), "seed": parse_seed(seed), "labeled": lab, "excluded": excluded,
                    "fma": _C.build_info()["isa"] != "base", "threads": parse_threads(threads)}
        read = np.ones(n, dtype=bool)
        read[excluded] = False
        # CUDA shards stay on their device (the CUDA per-pick update reads them there); the host
        # path gets float32 rows
        device_rows = _stays_on_device(features)
        rows = features if device_rows else _host_float32(features)
        bad = np.flatnonzero(read & ~(_finite_rows_on_device(features) if device_rows else np.isfinite(rows).all(axis=1)))
        if bad.size:
            raise ValueError(f"row {int(bad[0])} of this rank's features shard contains NaN or Inf "
                             "(or a value beyond the float32 range)")
        prepared["features"] = rows
        if method == "badge":
            _badge_scores(x, op, n)  # x checked against the features (shape, dtype)
            usable = n - int(np.unique(excluded).size)
            # the kernel's own checks of every row it would read (one pick, no distance pass)
            diversity_select("badge", features, min(1, usable), x=x, exclude=exclude if exclude is not None else None,
                             validate=validate, threads=1)
            prepared["probs"] = x.detach().float() if _stays_on_device(x) else _host_float32(x)
        return prepared

    picks, radii = diversity_sharded(group, method, prepare, features)
    return DiversityResult(picks, radii, 0, 0, 0)


def kcenter_greedy(
    features: Any,
    k: int,
    *,
    labeled: Any = None,
    seed: int = 0,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """Exact greedy k-center (Sener & Savarese 2018) in Euclidean distance.

    Every pick is a row whose distance to the nearest of (labelled rows and earlier picks) is
    largest; equal distances go to the lower row index. With no labelled rows the first pick is
    drawn uniformly at random with ``seed``. Labelled rows are never picked.

    Distances are accumulated in float32 (float16/bfloat16 rows are converted as they are read,
    never as a whole). The initial distances to the labelled rows come from a tiled GEMM-style
    nearest-neighbour search (faiss when installed, else numpy/BLAS; torch for CUDA tensors)
    followed by an exact direct recomputation; each pick is then one fused pass that skips the
    rows the triangle inequality proves cannot get closer.

    Args:
        features: N x d features: float16, bfloat16, float32 or float64; numpy array, numpy
            memmap (may be larger than RAM) or torch tensor (CPU or CUDA).
        k: how many rows to pick (0 gives an empty result); at most N minus the labelled rows.
        labeled: indices (or a bool mask) of rows already labelled: they act as centres.
        seed: chooses the first pick when there are no labelled rows.
        device: ``"auto"`` (where ``features`` lives), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
            a device that is not usable here raises RuntimeError naming it.
        threads: CPU threads of the kernel and of the nearest-labelled search (None: all
            cores; more than 1024 is clamped to 1024). Global thread settings of faiss are
            restored afterwards.
        progress: show a progress bar over picks (tqdm); None shows one for long runs when
            stderr is a terminal. Ctrl-C stops the run between picks.
        group: a torch.distributed process group, or None. With a group, ``features`` is this
            rank's shard (consecutive rows, ranks in order), ``labeled``/``exclude`` are local to
            it, and the picks are global rows, the same on every rank and equal to one process's
            on the whole pool (docs/api.md, "Distributed").

    Returns:
        int64 (k,) row indices in pick order: numpy for numpy input, a torch tensor on the
        input's device for torch input.

    Raises:
        ValueError: NaN/Inf in a row (named), k larger than the rows that may be picked,
            labelled indices out of range or repeated, wrong shape.
        TypeError: unsupported dtype, or an argument of the wrong type (named).
        RuntimeError: ``device`` names a device that is not usable here.
    """
    return diversity_select("kcenter", features, k, labeled=labeled, seed=seed, device=device, threads=threads,
                            progress=progress, group=group).indices


def kmeans_pp(
    features: Any,
    k: int,
    *,
    seed: int = 0,
    exclude: Any = None,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): D² sampling without replacement.

    The first pick is uniform among the rows that may be picked; each next pick is row i with
    probability proportional to its squared distance to the nearest pick so far (rows that
    coincide with a pick have probability 0; if every remaining row does, the pick is uniform
    among them). Draws are exact: the sampler walks cached per-block weight sums (blocks of
    1024 rows, updated only where distances changed), never rebuilding an O(N) table.

    Args:
        features, k, seed, device, threads, progress, group: as for :func:`kcenter_greedy`.
        exclude: rows that may not be picked: a bool mask (N,) or an index array. They do not
            act as centres and are not read.

    Returns:
        int64 (k,) row indices in pick order.
    """
    return diversity_select("kmeans_pp", features, k, exclude=exclude, seed=seed, device=device, threads=threads,
                            progress=progress, group=group).indices


def badge(
    x: Any,
    features: Any,
    k: int,
    *,
    from_logits: bool = False,
    exclude: Any = None,
    seed: int = 0,
    validate: bool = True,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """BADGE (Ash et al. 2020): k-means++ seeding over gradient embeddings, never materialised.

    The embedding of row i is g_i = (p_i - onehot(argmax p_i)) (x) h_i (C*d values); distances
    use ||g_i - g_j||^2 = |q_i|^2 |h_i|^2 + |q_j|^2 |h_j|^2 - 2 (q_i.q_j)(h_i.h_j) with
    q = p - onehot, so a pick costs O(N (C + d)) and memory stays O(N). The first pick is the
    row with the largest |g_i| (lowest row on ties), then D² sampling as in :func:`kmeans_pp`.

    Args:
        x: N x C probabilities, or logits with ``from_logits=True`` (softmax computed on the
            fly; the predicted class's entry of q is minus the sum of the other probabilities,
            which avoids cancellation for confident rows).
        features: N x d penultimate-layer embeddings h (same rows as ``x``).
        k, exclude, seed, device, threads, progress, group: as for :func:`kmeans_pp` (with a
            group, probabilities only: ``from_logits=True`` is not implemented there yet).
        validate: check that probability rows lie in [0, 1] and sum to 1.

    Returns:
        int64 (k,) row indices in pick order.
    """
    return diversity_select("badge", features, k, x=x, from_logits=from_logits, exclude=exclude, seed=seed,
                            validate=validate, device=device, threads=threads, progress=progress,
                            group=group).indices
