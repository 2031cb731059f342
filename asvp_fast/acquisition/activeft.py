"""ActiveFT: one-shot selection by optimising B centroids in feature space (Xie et al., CVPR 2023).

"Active Finetuning: Exploiting Annotation Budget in the Pretraining-Finetuning Paradigm" picks a
budget of B samples whose distribution matches the pool's while staying diverse. It optimises a
parametric model of B centroids on the unit sphere of (L2-normalised) features:

* every pool sample is attracted to its nearest centroid (similarity / temperature ``tau``);
* the centroids repel each other through a log-sum-exp of centroid-centroid similarities;

and maps each optimised centroid to a distinct nearest pool sample at the end.

Two uses (the ASVP paper's names):

* **ActiveFT(pre)** -- ``activeft_select(pretrained_features, budget)``: single shot.
* **ActiveFT(al)** -- ``activeft_select(model_features, batch, labeled=already_labelled)``: one
  round of active learning. The labelled samples are extra centroids that stay fixed: they cover
  pool samples and repel the new centroids, but only the ``k`` new centroids move, and no
  labelled sample can be picked.

Loss (per pool sample ``x_i``, nearest centroid ``c_i``, centroids ``theta`` normalised)::

    l_i = -log( e^{x_i.theta_c/tau} / (e^{x_i.theta_c/tau} + balance * sum_j e^{theta_j.theta_c/tau}) )
        = softplus( log(balance) + logsumexp_j(theta_j.theta_c / tau) - x_i.theta_c / tau )

with ``c = c_i``, the sum over all centroids (``j = c`` included) and the other centroids
``theta_j`` held constant inside the repulsion term (a stop-gradient), as in the authors' public
implementation; the loss is the mean over the pool, or over a random batch per iteration.

Differences from the authors' code, none of which changes what is optimised:

* The coverage term's gradient only reaches each sample's nearest centroid, so the N x B
  similarity matrix is computed without autograd and the gradient is accumulated with an
  O(N d) scatter-add instead of back-propagating through an N x B matmul (one N x B x d
  product per iteration instead of two, and no N x B tensors kept for autograd).
* The final assignment never sorts the pool per centroid (see :func:`_unique_nearest_assignment`).

Behaviour worth knowing (it is the method's, not this implementation's): centroids start on
random pool rows and each is pulled only by the rows it is nearest to, so the optimisation finds
a local optimum. On 10 well-separated blobs, k = 10 typically ends with 8-9 blobs covered (a
centroid parked between two blobs, or two splitting one); k = 20 covers all 10 in our tests,
where 20 random picks usually miss one. In ActiveFT(al), rows whose nearest centroid is a
labelled one pull no free centroid, and a free centroid that starts next to labelled rows tends
to stay there; labelled rows therefore steer the new picks away from covered regions only
partly.
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..core.checks import parse_rows
from ..core.devices import torch_device

try:  # torch is optional for the package, required here
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("ActiveFT needs PyTorch: pip install torch") from exc

__all__ = ["activeft_select", "DEFAULT_TEMPERATURE", "DEFAULT_BALANCE"]

#: Temperature of the similarities (the paper's and the authors' default).
DEFAULT_TEMPERATURE = 0.07
#: Weight of the repulsion sum against the attraction term (the authors' default ``--balance``).
DEFAULT_BALANCE = 1.0

# Source rows are converted and normalised in blocks of about this many float64 bytes, so a
# float16 memmap never needs a second full-size temporary.
_NORMALISE_CHUNK_BYTES = 64 << 20
# Similarity tiles and gathered feature blocks hold at most this many elements (16 MB float32).
_TILE_ELEMENTS = 1 << 22
# Candidates per centroid in the first nearest-sample search of the final assignment.
_INITIAL_CANDIDATES = 16
# With progress=None a bar is shown on a terminal when the optimisation does at least this many
# multiply-adds (rows x centroids x dim x iterations; roughly ten seconds on a few CPU cores).
_AUTO_PROGRESS_MACS = 5e11

DeviceLike = Union[str, "torch.device"]


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def activeft_select(
    features: Any,
    k: int,
    *,
    labeled: Any = None,
    temperature: float = DEFAULT_TEMPERATURE,
    iterations: int = 300,
    lr: float = 1e-3,
    balance: float = DEFAULT_BALANCE,
    batch_size: Optional[int] = None,
    seed: int = 0,
    device: DeviceLike = "auto",
    progress: Optional[bool] = None,
) -> np.ndarray:
    """Select ``k`` pool rows with ActiveFT.

    Parameters
    ----------
    features : array_like or torch.Tensor, shape (N, d)
        Pool features: a numpy array (``numpy.memmap`` included) of float16, bfloat16
        (``ml_dtypes``), float32, float64 or integers, or a torch tensor on any device. Rows are
        L2-normalised (cosine similarity). The function builds a normalised float32 working copy
        (N x d x 4 bytes), converted block by block so that no other full-size temporary is
        made; that copy must fit in memory (a ``MemoryError`` says so up front when it does not).
        The input itself is never modified.
    k : int
        Number of rows to select (the number of free centroids). ``k == 0`` returns an empty
        array.
    labeled : array_like of int or bool, optional
        Already-labelled rows (ActiveFT(al)): an index array or a boolean mask of length N.
        They act as fixed centroids -- they cover pool rows and repel the new centroids -- are
        never optimised and are never picked.
    temperature : float, default 0.07
        Temperature ``tau`` dividing all similarities.
    iterations : int, default 300
        Adam steps (300 is the authors' setting for CIFAR; they use 100 with ``batch_size``
        100,000 on ImageNet). ``0`` keeps the random initial centroids.
    lr : float, default 1e-3
        Adam learning rate (constant, as in the authors' default).
    balance : float, default 1.0
        Weight of the centroid-centroid repulsion sum against the attraction term.
    batch_size : int, optional
        Rows sampled uniformly without replacement each iteration (the authors' ImageNet
        variant). ``None`` (default) or a value >= N uses the whole pool every iteration.
    seed : int, default 0
        Seeds the initial centroids (``k`` distinct unlabelled rows) and the batches, through an
        explicit ``numpy.random.Generator``; no global random state is read or changed.
    device : {"auto", "cpu", "cuda"} or torch.device, default "auto"
        Where the optimisation runs. ``"auto"`` takes a CUDA tensor's device, else CUDA when
        available, else the CPU. On the CPU, results are bit-for-bit reproducible for a seed;
        on CUDA the gradient scatter-add uses float atomics, so the last bits (and, rarely, a
        pick) can differ between runs.
    progress : bool, optional
        Show a tqdm bar over the iterations. ``None`` shows one only for long runs on a
        terminal.

    Returns
    -------
    numpy.ndarray of int64, shape (k,)
        Distinct row indices, none of them labelled, in the order the final assignment gave
        them out: centroids whose nearest pool row is closer come first.

    Raises
    ------
    ValueError
        Wrong ndim; k < 0 or larger than the number of unlabelled rows; a row with NaN/Inf (the
        first one is named) or of zero norm (it has no direction to normalise); a ``labeled``
        index out of range, repeated, or a mask of the wrong length; a non-positive temperature,
        learning rate or balance; a bad batch size or device.
    TypeError
        Non-numeric features, non-integer k / iterations / seed / batch size.
    MemoryError
        The float32 working copy would not fit in the memory available.
    FloatingPointError
        The loss stopped being finite (only with extreme settings, e.g. temperature 1e-40).

    Notes
    -----
    Cost per iteration: one (rows x k x d) similarity product without autograd, an O(rows d)
    scatter-add for the attraction gradient, and a ((L + k) x k x d) product for the repulsion
    (L labelled rows). With labelled rows, each pool row's nearest labelled row and each
    labelled row's repulsion among the labelled ones are computed once, O(N L d + L^2 d).
    The final assignment is described in :func:`_unique_nearest_assignment`. For scale: with
    N = 50,000, d = 384 and k = 500 a full-pool iteration is a 9.6 GFLOP product, about 0.5 s
    on one CPU core (300 iterations: about 2.5 minutes); ``batch_size`` divides that cost.
    """
    k = _check_count(k)
    n, d = _feature_shape(features)
    labelled = _labelled_rows(labeled, n)
    selectable = n - labelled.size
    if k > selectable:
        detail = f"{n} rows, {labelled.size} labelled" if labelled.size else f"{n} rows"
        raise ValueError(f"k={k} is larger than the {selectable} rows that may be picked ({detail})")
    options = _Options.checked(temperature, iterations, lr, balance, batch_size, seed)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    dev = _resolve_device(device, features)

    x = _normalised_float32(features)
    excluded = np.zeros(n, dtype=bool)
    excluded[labelled] = True
    centroids, _ = _optimise_centroids(x, k, labelled, options, dev, progress)
    assigned, order = _unique_nearest_assignment(x, centroids, excluded)
    picks: np.ndarray = assigned[order]
    return picks


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    temperature: float
    iterations: int
    lr: float
    balance: float
    batch_size: Optional[int]
    seed: int

    @classmethod
    def checked(cls, temperature: float, iterations: int, lr: float, balance: float,
                batch_size: Optional[int], seed: int) -> "_Options":
        return cls(
            temperature=_positive_float(temperature, "temperature"),
            iterations=_integer(iterations, "iterations", minimum=0),
            lr=_positive_float(lr, "lr"),
            # balance = 0 would make every loss term log(1) = 0: nothing left to optimise.
            balance=_positive_float(balance, "balance"),
            batch_size=None if batch_size is None else _integer(batch_size, "batch_size", minimum=1),
            seed=_integer(seed, "seed", minimum=0),
        )


def _integer(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return number


def _check_count(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return int(k)


def _is_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def _feature_shape(features: Any) -> Tuple[int, int]:
    """(N, d) of a 2-D numeric array or tensor; rejects other ndims and non-numeric dtypes."""
    if _is_tensor(features):
        if features.dtype == torch.bool or features.is_complex():
            raise TypeError(f"features must be real numbers, got a tensor of {features.dtype}")
        shape = tuple(features.shape)
    else:
        arr = features if isinstance(features, np.ndarray) else np.asarray(features)
        if not _numeric_dtype(arr.dtype):
            raise TypeError(f"features must be real numbers, got dtype {arr.dtype}")
        shape = arr.shape
    if len(shape) != 2:
        raise ValueError(f"features must be 2-D (N, d), got {len(shape)}-D with shape {shape}")
    if shape[1] == 0 and shape[0] > 0:
        raise ValueError("features have 0 columns: rows without components cannot be normalised")
    return int(shape[0]), int(shape[1])


def _numeric_dtype(dtype: np.dtype) -> bool:
    # bfloat16 from ml_dtypes has kind 'V'; accept it by name.
    return dtype.kind in "fiu" or dtype.name == "bfloat16"


def _labelled_rows(labeled: Any, n: int) -> np.ndarray:
    """Sorted int64 indices of the labelled rows, from an index array or a bool mask."""
    if labeled is None:
        return np.empty(0, dtype=np.int64)
    # the same checks (and messages) as the diversity kernels' `labeled`
    return np.sort(parse_rows(labeled, n, "labeled", unique=True))


def _resolve_device(device: DeviceLike, features: Any) -> torch.device:
    return torch_device(device, like=features)


# --------------------------------------------------------------------------------------------
# Working copy: validated, normalised float32
# --------------------------------------------------------------------------------------------


def _available_memory() -> Optional[int]:
    """Bytes the kernel reports as available (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _row_block(features: Any, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) as float64 (exact for every supported input dtype)."""
    if _is_tensor(features):
        block: np.ndarray = features[start:stop].detach().to(device="cpu", dtype=torch.float64).numpy()
        return block
    return np.asarray(features[start:stop], dtype=np.float64)


def _normalised_float32(features: Any) -> np.ndarray:
    """L2-normalised float32 copy of the rows, built block by block.

    Each block is widened to float64 first: the check for NaN/Inf, the norm and the division
    then behave the same for every input dtype, so a float16 memmap and the float32 array of
    the same values give bit-identical copies (and picks).
    """
    if not _is_tensor(features) and not isinstance(features, np.ndarray):
        features = np.asarray(features)
    n, d = int(features.shape[0]), int(features.shape[1])
    needed = n * d * 4
    available = _available_memory()
    if available is not None and needed > available:
        raise MemoryError(
            f"ActiveFT needs a float32 working copy of the features ({needed / 2**30:.2f} GiB for "
            f"{n} x {d}) but only {available / 2**30:.2f} GiB of memory is available; reduce the "
            "pool or the feature dimension"
        )
    out = np.empty((n, d), dtype=np.float32)
    step = max(1, _NORMALISE_CHUNK_BYTES // max(1, d * 8))
    for start in range(0, n, step):
        stop = min(n, start + step)
        block = _row_block(features, start, stop)
        _check_finite(block, start)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        _check_nonzero(norms, start)
        out[start:stop] = block / norms[:, None]
    return out


def _check_finite(block: np.ndarray, offset: int) -> None:
    bad_rows = ~np.isfinite(block).all(axis=1)
    if bad_rows.any():
        row = offset + int(np.argmax(bad_rows))
        raise ValueError(f"features row {row} contains NaN or Inf")


def _check_nonzero(norms: np.ndarray, offset: int) -> None:
    # A zero row has no direction, so it cannot take part in cosine similarities; rejecting it
    # is clearer than inventing one. An infinite norm needs float64 entries beyond ~1e154.
    bad = ~(norms > 0) | ~np.isfinite(norms)
    if bad.any():
        local = int(np.argmax(bad))
        if norms[local] == 0:
            raise ValueError(f"features row {offset + local} has zero norm and cannot be L2-normalised; "
                             "drop it from the pool")
        raise ValueError(f"features row {offset + local} is too large to normalise (its squared norm "
                         "overflows float64)")


# --------------------------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------------------------


@dataclass
class _FixedCentroids:
    """Labelled rows as fixed centroids, with everything about them that never changes."""

    vectors: torch.Tensor  # (L, d) normalised
    self_lse: torch.Tensor  # (L,) logsumexp_j(f_j . f_c / tau) over the labelled j
    row_sim: torch.Tensor  # (N,) similarity of every pool row to its nearest labelled row
    row_idx: torch.Tensor  # (N,) that labelled row's position in `vectors`


def _rows_per_tile(columns: int) -> int:
    return max(1, _TILE_ELEMENTS // max(1, columns))


def _nearest(x: torch.Tensor, rows: Optional[torch.Tensor], centres: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max similarity and argmax centre of each row (all rows, or those in ``rows``), tiled."""
    total = x.shape[0] if rows is None else rows.shape[0]
    best = torch.empty(total, dtype=x.dtype, device=x.device)
    arg = torch.empty(total, dtype=torch.long, device=x.device)
    step = _rows_per_tile(centres.shape[0])
    for start in range(0, total, step):
        stop = min(total, start + step)
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        best[start:stop], arg[start:stop] = (block @ centres.T).max(dim=1)
    return best, arg


def _logsumexp_rows(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp_j(a_i . b_j / tau) for every row i of ``a``, tiled over the rows of ``a``."""
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    step = _rows_per_tile(b.shape[0])
    for start in range(0, a.shape[0], step):
        stop = min(a.shape[0], start + step)
        out[start:stop] = torch.logsumexp(a[start:stop] @ b.T / temperature, dim=1)
    return out


def _fixed_centroids(x: torch.Tensor, labelled: np.ndarray, temperature: float) -> Optional[_FixedCentroids]:
    if labelled.size == 0:
        return None
    vectors = x[torch.from_numpy(labelled).to(x.device)]
    row_sim, row_idx = _nearest(x, None, vectors)
    return _FixedCentroids(vectors, _logsumexp_rows(vectors, vectors, temperature), row_sim, row_idx)


class _RowCentroidDot(torch.autograd.Function):
    """s_r = x[row_ids[r]] . c[centroid_ids[r]] with an O(rows * d) backward (scatter-add).

    Autograd through ``(x @ c.T).gather(...)`` would back-propagate through the full
    rows x k product; only each row's own centroid receives gradient, so a scatter-add suffices.
    """

    @staticmethod
    def forward(ctx: Any, centroids: torch.Tensor, x: torch.Tensor, row_ids: torch.Tensor,
                centroid_ids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(row_ids.shape[0], dtype=centroids.dtype, device=centroids.device)
        step = _rows_per_tile(x.shape[1])
        for start in range(0, row_ids.shape[0], step):
            stop = min(row_ids.shape[0], start + step)
            out[start:stop] = (x[row_ids[start:stop]] * centroids[centroid_ids[start:stop]]).sum(dim=1)
        ctx.save_for_backward(x, row_ids, centroid_ids)
        ctx.n_centroids = centroids.shape[0]
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        x, row_ids, centroid_ids = ctx.saved_tensors
        grad = torch.zeros((ctx.n_centroids, x.shape[1]), dtype=grad_out.dtype, device=grad_out.device)
        step = _rows_per_tile(x.shape[1])
        for start in range(0, row_ids.shape[0], step):
            stop = min(row_ids.shape[0], start + step)
            rows = x[row_ids[start:stop]].to(grad_out.dtype)
            grad.index_add_(0, centroid_ids[start:stop], rows * grad_out[start:stop, None])
        return grad, None, None, None


def _activeft_loss(params: torch.Tensor, x: torch.Tensor, rows: Optional[torch.Tensor],
                   fixed: Optional[_FixedCentroids], temperature: float, log_balance: float) -> torch.Tensor:
    """Mean ActiveFT loss over ``rows`` (all rows when None); differentiable w.r.t. ``params``."""
    centroids = F.normalize(params, dim=1)
    frozen = centroids.detach()
    with torch.no_grad():
        free_sim, free_idx = _nearest(x, rows, frozen)
    row_ids = torch.arange(x.shape[0], device=x.device) if rows is None else rows
    n_rows = row_ids.shape[0]

    # Repulsion of each free centroid c: logsumexp over every centroid j (fixed ones first) of
    # theta_j . theta_c / tau, with theta_j held constant (the stop-gradient of the reference).
    others = frozen if fixed is None else torch.cat([fixed.vectors, frozen])
    logits = others @ centroids.T / temperature  # (L + k, k)
    repulsion = torch.logsumexp(logits, dim=0)  # (k,)

    if fixed is None:
        sim = _RowCentroidDot.apply(centroids, x, row_ids, free_idx)
        return F.softplus(log_balance + repulsion[free_idx] - sim / temperature).sum() / n_rows

    # Rows nearer to a labelled row than to every free centroid (ties go to the labelled one):
    # their term has no gradient (the labelled centroid cannot move and the free centroids only
    # enter its repulsion as constants), but it belongs to the loss value.
    fixed_sim = fixed.row_sim[row_ids]
    fixed_idx = fixed.row_idx[row_ids]
    covered = fixed_sim >= free_sim
    free_rows = ~covered
    sim = _RowCentroidDot.apply(centroids, x, row_ids[free_rows], free_idx[free_rows])
    total = F.softplus(log_balance + repulsion[free_idx[free_rows]] - sim / temperature).sum()
    with torch.no_grad():
        labelled_count = fixed.vectors.shape[0]
        fixed_repulsion = torch.logaddexp(fixed.self_lse, torch.logsumexp(logits[:labelled_count].detach(), dim=1))
        z = log_balance + fixed_repulsion[fixed_idx[covered]] - fixed_sim[covered] / temperature
        constant = F.softplus(z).sum()
    return (total + constant) / n_rows


def _show_progress(progress: Optional[bool], work: float) -> bool:
    if progress is None:
        return work >= _AUTO_PROGRESS_MACS and sys.stderr.isatty()
    return bool(progress)


def _optimise_centroids(x_np: np.ndarray, k: int, labelled: np.ndarray, options: _Options,
                        device: torch.device, progress: Optional[bool] = None) -> Tuple[np.ndarray, List[float]]:
    """Optimise ``k`` free centroids; return them normalised (float32, (k, d)) and the loss history.

    ``x_np`` holds normalised float32 rows. ``history[i]`` is the loss before step ``i``
    (on the batch of that step), so ``history[0]`` is the loss of the initial centroids.
    """
    n = x_np.shape[0]
    rng = np.random.default_rng(options.seed)
    x = torch.from_numpy(x_np).to(device)

    start_rows = _initial_rows(rng, n, k, labelled)
    params = torch.nn.Parameter(x[torch.from_numpy(start_rows).to(device)].clone())

    fixed = _fixed_centroids(x, labelled, options.temperature)
    optimiser = torch.optim.Adam([params], lr=options.lr)
    log_balance = math.log(options.balance)
    batch = options.batch_size if options.batch_size is not None and options.batch_size < n else None
    rows_per_step = n if batch is None else batch
    show = _show_progress(progress, float(rows_per_step) * k * x_np.shape[1] * options.iterations)

    history: List[float] = []
    bar = _progress_bar(options.iterations) if show else None
    try:
        for _ in range(options.iterations):
            rows = None
            if batch is not None:
                # Sorted for memory locality when the rows are gathered.
                rows = torch.from_numpy(np.sort(rng.choice(n, size=batch, replace=False))).to(device)
            loss = _activeft_loss(params, x, rows, fixed, options.temperature, log_balance)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            history.append(float(loss.item()))
            if not math.isfinite(history[-1]):
                # Only reachable with extreme settings (e.g. a temperature so small that the
                # similarities overflow); stop before NaN centroids reach the assignment.
                raise FloatingPointError(
                    f"ActiveFT loss became {history[-1]} at iteration {len(history) - 1}; use a larger "
                    f"temperature (got {options.temperature}) or a smaller learning rate (got {options.lr})"
                )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    centroids = F.normalize(params.detach(), dim=1).to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(centroids), history


def _initial_rows(rng: np.random.Generator, n: int, k: int, labelled: np.ndarray) -> np.ndarray:
    """k distinct unlabelled rows, uniformly at random: the authors' "random" initialisation, so
    every centroid starts on the data (the first draw from ``rng``)."""
    selectable = np.ones(n, dtype=bool)
    selectable[labelled] = False
    rows: np.ndarray = rng.choice(np.flatnonzero(selectable), size=k, replace=False)
    return rows


def _progress_bar(total: int) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ActiveFT", unit="it", leave=False)


# --------------------------------------------------------------------------------------------
# Final assignment: each centroid to a distinct nearest row
# --------------------------------------------------------------------------------------------


def _top_candidates(queries: np.ndarray, x: np.ndarray, m: int, backend: str) -> Tuple[np.ndarray, np.ndarray]:
    """The ``m`` largest inner products of every query with the rows of ``x``.

    Each row of the result is ordered by decreasing similarity, equal similarities by
    increasing row index. Exact search: every row outside a query's list has a similarity no
    larger than the list's last one.
    """
    if backend == "faiss":
        import faiss

        sims, ids = faiss.knn(np.ascontiguousarray(queries), x, m, metric=faiss.METRIC_INNER_PRODUCT)
    else:
        sims, ids = _torch_top_candidates(queries, x, m)
    order = np.lexsort((ids, -sims), axis=1)
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _torch_top_candidates(queries: np.ndarray, x: np.ndarray, m: int) -> Tuple[np.ndarray, np.ndarray]:
    """Fallback without faiss: tiled matmul over the rows, merging a running top-m."""
    q = torch.from_numpy(np.ascontiguousarray(queries))
    xt = torch.from_numpy(x)
    best_s = torch.full((q.shape[0], 0), -math.inf)
    best_i = torch.zeros((q.shape[0], 0), dtype=torch.long)
    step = max(m, _rows_per_tile(q.shape[0]))
    for start in range(0, xt.shape[0], step):
        stop = min(xt.shape[0], start + step)
        sims = q @ xt[start:stop].T
        ids = torch.arange(start, stop).expand(q.shape[0], -1)
        cat_s = torch.cat([best_s, sims], dim=1)
        cat_i = torch.cat([best_i, ids], dim=1)
        keep = min(m, cat_s.shape[1])
        best_s, pos = cat_s.topk(keep, dim=1)
        best_i = cat_i.gather(1, pos)
    return best_s.numpy(), best_i.numpy()


def _default_backend() -> str:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return "torch"
    return "faiss"


class _Candidates:
    """Per-centroid candidate lists, grown on demand."""

    def __init__(self, sims: np.ndarray, ids: np.ndarray, n_rows: int) -> None:
        self.sims: List[np.ndarray] = list(sims)
        self.ids: List[np.ndarray] = list(ids)
        self.size = np.full(sims.shape[0], sims.shape[1], dtype=np.int64)
        self.n_rows = n_rows

    def replace(self, centroids: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> None:
        for row, c in enumerate(centroids):
            self.sims[c], self.ids[c] = sims[row], ids[row]
            self.size[c] = sims.shape[1]

    def choose(self, c: int, taken: np.ndarray) -> int:
        """Centroid c's best untaken row (highest similarity, then lowest index), or -1 if its
        list cannot prove which row that is."""
        ids = self.ids[c]
        free = ~taken[ids]
        if not free.any():
            return -1
        j = int(np.argmax(free))
        complete = self.size[c] >= self.n_rows
        # At the list's last similarity value, a row outside the list may tie with a lower index.
        if not complete and self.sims[c][j] <= self.sims[c][-1]:
            return -1
        return int(ids[j])


def _unique_nearest_assignment(x: np.ndarray, centroids: np.ndarray, excluded: Optional[np.ndarray] = None, *,
                               initial_candidates: int = _INITIAL_CANDIDATES,
                               backend: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Give every centroid a distinct nearest row by inner product, greedily.

    The rule (what a brute-force scan computes): centroids are taken in decreasing order of
    their largest similarity to any row (ties: lower centroid index first); each takes, among the
    rows not yet taken and not ``excluded``, the one of highest similarity (ties: lower row
    index).

    The fast path finds the top ``m`` rows of every centroid in one exact search (faiss, or a
    tiled torch matmul), runs the greedy pass over those lists, and when a centroid's list is
    exhausted -- every candidate taken, or the first free one ties with the list's last value,
    so a row outside the list might come first -- searches again with a doubled ``m``, only for
    that centroid and for the later ones that a look-ahead pass finds would be stuck too, then
    resumes at that centroid. The result is exactly the brute-force rule's.

    Complexity: the first search costs O(k N d) multiply-adds (one BLAS product) plus
    O(k N log m) for the top-m selection and O(k m) memory; the greedy pass is O(k m). A search
    round for the u stuck centroids costs O(u N d); with few collisions there are none or a few
    small ones. Worst case (e.g. all rows identical) m doubles up to N: O(log N) rounds. The
    reference implementation instead sorts the whole pool for every centroid, O(k N log N)
    time and O(k N) memory per slice.

    Parameters
    ----------
    x : (N, d) float32, C-contiguous
    centroids : (k, d) float32, k <= number of rows not excluded
    excluded : (N,) bool, optional
        Rows that may not be assigned.
    initial_candidates : int
        ``m`` of the first search.
    backend : {"faiss", "torch"}, optional
        Default: faiss when importable.

    Returns
    -------
    assigned : (k,) int64
        ``assigned[c]`` is the row of centroid ``c``.
    order : (k,) int64
        The centroids in the order they were served.
    """
    backend = backend or _default_backend()
    x = np.ascontiguousarray(x, dtype=np.float32)
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    n, k = x.shape[0], centroids.shape[0]
    taken = np.zeros(n, dtype=bool) if excluded is None else np.array(excluded, dtype=bool, copy=True)
    if k > n - int(taken.sum()):
        raise ValueError(f"cannot assign {k} centroids to {n - int(taken.sum())} available rows")
    if not (np.isfinite(centroids).all() and np.isfinite(x).all()):
        # NaN similarities compare false both ways and would break the exhaustion test.
        raise ValueError("rows and centroids must be finite")
    assigned = np.full(k, -1, dtype=np.int64)
    if k == 0:
        return assigned, np.empty(0, dtype=np.int64)

    m = min(n, max(1, initial_candidates))
    sims, ids = _top_candidates(centroids, x, m, backend)
    order = np.lexsort((np.arange(k), -sims[:, 0]))
    candidates = _Candidates(sims, ids, n)

    pos = 0
    while True:
        pos = _greedy_pass(order, pos, candidates, taken, assigned)
        if pos == k:
            return assigned, order.astype(np.int64)
        stuck = _stuck_after(order, pos, candidates, taken)
        m = min(n, 2 * int(candidates.size[stuck].max()))
        new_sims, new_ids = _top_candidates(centroids[stuck], x, m, backend)
        candidates.replace(stuck, new_sims, new_ids)


def _greedy_pass(order: np.ndarray, pos: int, candidates: _Candidates, taken: np.ndarray,
                 assigned: np.ndarray) -> int:
    """Serve centroids from ``order[pos]`` on; return the position of the first stuck one."""
    while pos < order.shape[0]:
        c = int(order[pos])
        row = candidates.choose(c, taken)
        if row < 0:
            break
        taken[row] = True
        assigned[c] = row
        pos += 1
    return pos


def _stuck_after(order: np.ndarray, pos: int, candidates: _Candidates, taken: np.ndarray) -> np.ndarray:
    """The stuck centroid ``order[pos]`` plus the later ones that would get stuck too.

    Look-ahead: continue the pass as if the stuck centroid took nothing, marking rows taken
    tentatively (undone before returning), so one search round serves many stuck centroids.
    """
    stuck = [int(order[pos])]
    marked = []
    for c in order[pos + 1:]:
        row = candidates.choose(int(c), taken)
        if row < 0:
            stuck.append(int(c))
        else:
            taken[row] = True
            marked.append(row)
    taken[marked] = False
    return np.asarray(stuck, dtype=np.int64)
