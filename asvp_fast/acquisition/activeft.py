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
* The final assignment never sorts the pool per centroid (see
  :func:`.activeft_pool.unique_nearest_assignment`).

Over row shards (``group=``) the pool is gathered on rank 0: every row pulls on its nearest
centroid in every iteration and the final assignment searches all rows, so each rank checks and
L2-normalises its shard, sends the float32 rows and its labelled-row mask to rank 0, which runs
the single-process optimisation and assignment and broadcasts the picks
(:func:`.distributed.select_on_root`).

This module holds the public function, its argument checks and the optimisation of the
centroids; :mod:`.activeft_pool` holds the pool side (the normalised working copy of the rows
and the final assignment).

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
import sys
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..core.checks import (
    is_torch_tensor,
    parse_count,
    parse_int,
    parse_optional_flag,
    parse_positive_real,
    parse_threads,
)
from ..core.devices import torch_device
from ..core.threads import limit_threads

try:  # torch is optional for the package, required here
    import torch
    import torch.nn.functional as F
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("ActiveFT needs PyTorch: pip install torch") from exc

from .activeft_pool import feature_shape, labelled_rows, normalised_float32, rows_per_tile, unique_nearest_assignment
from .distributed import ShardInput, select_on_root

__all__ = ["activeft_select", "DEFAULT_TEMPERATURE", "DEFAULT_BALANCE", "MAX_ITERATIONS", "MAX_LR",
           "LossNotFiniteError"]

#: Temperature of the similarities (the paper's and the authors' default).
DEFAULT_TEMPERATURE = 0.07
#: Weight of the repulsion sum against the attraction term (the authors' default ``--balance``).
DEFAULT_BALANCE = 1.0
#: The largest learning rate accepted. Centroids live on the unit sphere, so a step of about 1
#: already jumps across it; far larger rates overflow Adam's float32 step (lr / (1 - beta1)).
MAX_LR = 1e6
#: The most Adam steps one call may ask for (the authors use 100-300): a typo such as
#: ``iterations=10**9`` is an error instead of a run that never ends.
MAX_ITERATIONS = 100_000

# With progress=None a bar is shown on a terminal when the optimisation does at least this many
# multiply-adds (rows x centroids x dim x iterations; roughly ten seconds on a few CPU cores).
_AUTO_PROGRESS_MACS = 5e11


class LossNotFiniteError(FloatingPointError, ValueError):
    """The ActiveFT loss stopped being finite (extreme temperature or learning rate).

    A :class:`FloatingPointError` for what happened, and a :class:`ValueError` because the
    arguments that caused it are the caller's to change.
    """


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
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
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
        Adam learning rate (constant, as in the authors' default); at most :data:`MAX_LR`.
    balance : float, default 1.0
        Weight of the centroid-centroid repulsion sum against the attraction term.
    batch_size : int, optional
        Rows sampled uniformly without replacement each iteration (the authors' ImageNet
        variant). ``None`` (default) or a value >= N uses the whole pool every iteration.
    seed : int, default 0
        Seeds the initial centroids (``k`` distinct unlabelled rows) and the batches, through an
        explicit ``numpy.random.Generator``; no global random state is read or changed.
    device : {"auto", "cpu", "cuda", "cuda:N"} or torch.device, default "auto"
        Where the optimisation runs. ``"auto"`` takes a CUDA tensor's device, else CUDA when
        available, else the CPU; a device that is not usable here raises ``RuntimeError``. On
        the CPU, results are bit-for-bit reproducible for a seed; on CUDA the gradient
        scatter-add uses float atomics, so the last bits (and, rarely, a pick) can differ
        between runs.
    threads : int, optional
        CPU threads of torch and faiss during the call (None: leave them as they are; more than
        1024 is clamped to 1024). Both are put back as they were before returning.
    progress : bool, optional
        Show a tqdm bar over the iterations. ``None`` shows one only for long runs on a
        terminal.
    group : torch.distributed.ProcessGroup, optional
        With a group, ``features`` is this rank's shard (ranks hold consecutive rows in rank
        order; shards may be empty), ``labeled`` is local to it, and the result is global row
        numbers, the same on every rank and equal to one process's picks on the whole pool. Each
        rank checks and normalises its shard; the normalised float32 rows are **gathered on rank
        0**, which optimises on its own ``device`` with its own ``threads`` and broadcasts the
        picks (rank 0 needs memory for N x d float32 and the optimisation; the other ranks wait,
        so the group's timeout must exceed the run): the optimisation couples every row with
        every centroid (select_uncertain, bald, batchbald, kcenter_greedy, kmeans_pp and badge
        shard without moving anything of size N). Options must be equal on every rank (else
        every rank raises); an error of rank 0's run (e.g. :class:`LossNotFiniteError`, raised
        elsewhere as a ValueError) is raised on every rank.

    Returns
    -------
    int64 array of shape (k,): numpy for numpy/memmap/list input, a torch tensor on the input's
        device for torch input. Distinct row indices, none of them labelled, in the order the
        final assignment gave them out: centroids whose nearest pool row is closer come first.

    Raises
    ------
    ValueError
        Wrong ndim; k < 0 or larger than the number of unlabelled rows; a row with NaN/Inf (the
        first one is named) or of zero norm (it has no direction to normalise); a ``labeled``
        index out of range, repeated, or a mask of the wrong length; a non-positive temperature,
        learning rate or balance; a learning rate above :data:`MAX_LR` or more than
        :data:`MAX_ITERATIONS` iterations; a bad batch size, device spelling or thread count.
    TypeError
        Non-numeric features; non-integer k / iterations / seed / batch size / threads; a
        non-boolean progress; a device that is not a string.
    RuntimeError
        ``device`` names a device that is not usable here (e.g. "cuda" without a GPU).
    MemoryError
        The float32 working copy would not fit in the memory available.
    LossNotFiniteError
        (a FloatingPointError and a ValueError) The loss stopped being finite (only with
        extreme settings, e.g. temperature 1e-40).

    Notes
    -----
    Cost per iteration: one (rows x k x d) similarity product without autograd, an O(rows d)
    scatter-add for the attraction gradient, and a ((L + k) x k x d) product for the repulsion
    (L labelled rows). With labelled rows, each pool row's nearest labelled row and each
    labelled row's repulsion among the labelled ones are computed once, O(N L d + L^2 d).
    The final assignment is described in :func:`.activeft_pool.unique_nearest_assignment`. For
    scale: with N = 50,000, d = 384 and k = 500 a full-pool iteration is a 9.6 GFLOP product, about 0.5 s
    on one CPU core (300 iterations: about 2.5 minutes); ``batch_size`` divides that cost.
    """
    if group is not None:
        settings = (temperature, iterations, lr, balance, batch_size, seed, device, threads, progress)
        return select_on_root(group, features, lambda: _shard_input(features, k, labeled, *settings))
    k = parse_count(k)
    n, _ = feature_shape(features)
    labelled = labelled_rows(labeled, n)
    selectable = n - labelled.size
    if k > selectable:
        detail = f"{n} rows, {labelled.size} labelled" if labelled.size else f"{n} rows"
        raise ValueError(f"k={k} is larger than the {selectable} rows that may be picked ({detail})")
    options = _Options.checked(temperature, iterations, lr, balance, batch_size, seed)
    progress = parse_optional_flag(progress, "progress")
    n_threads = parse_threads(threads)
    dev = torch_device(device, like=features)
    if k == 0:
        return _like_input(np.empty(0, dtype=np.int64), features)

    with limit_threads(n_threads, ("torch", "faiss")):
        x = normalised_float32(features)
        picks = _select_normalised(x, k, labelled, options, dev, progress)
    return _like_input(picks, features)


def _select_normalised(x: np.ndarray, k: int, labelled: np.ndarray, options: "_Options", dev: torch.device,
                       progress: Optional[bool]) -> np.ndarray:
    """ActiveFT on the normalised float32 pool ``x`` (both routes run exactly this): the picks
    in the order the final assignment gives them out."""
    excluded = np.zeros(x.shape[0], dtype=bool)
    excluded[labelled] = True
    centroids, _ = _optimise_centroids(x, k, labelled, options, dev, progress)
    assigned, order = unique_nearest_assignment(x, centroids, excluded)
    return assigned[order]  # type: ignore[no-any-return]


def _shard_input(features: Any, k: Any, labeled: Any, temperature: Any, iterations: Any, lr: Any, balance: Any,
                 batch_size: Any, seed: Any, device: Any, threads: Any, progress: Any) -> ShardInput:
    """This rank's checked arguments and normalised rows (normalisation is row by row, so the
    shards' copies are the whole pool's rows bit for bit); rank 0 selects on its own device and
    under its own thread limits."""
    count = parse_count(k)
    n, _ = feature_shape(features)
    labelled = labelled_rows(labeled, n)
    options = _Options.checked(temperature, iterations, lr, balance, batch_size, seed)
    shown = parse_optional_flag(progress, "progress")
    n_threads = parse_threads(threads)
    dev = torch_device(device, like=features)
    with limit_threads(n_threads, ("torch", "faiss")):
        x = normalised_float32(features)
    blocked = np.zeros(n, dtype=bool)
    blocked[labelled] = True

    def select(pool: np.ndarray, rows: np.ndarray, kk: int) -> np.ndarray:
        with limit_threads(n_threads, ("torch", "faiss")):
            return _select_normalised(pool, kk, rows, options, dev, shown)

    return ShardInput(x, blocked, {"k": count, "options": options}, select)


def _like_input(picks: np.ndarray, features: Any) -> Any:
    """Outputs follow the input: numpy for numpy/memmap/list input, a tensor on the input's device
    for torch input."""
    if is_torch_tensor(features):
        return torch.from_numpy(picks).to(features.device)
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
            temperature=parse_positive_real(temperature, "temperature"),
            iterations=parse_int(iterations, "iterations", minimum=0, maximum=MAX_ITERATIONS),
            lr=parse_positive_real(lr, "lr", maximum=MAX_LR),
            # balance = 0 would make every loss term log(1) = 0: nothing left to optimise.
            balance=parse_positive_real(balance, "balance"),
            batch_size=None if batch_size is None else parse_int(batch_size, "batch_size", minimum=1),
            seed=parse_int(seed, "seed", minimum=0),
        )



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


def _nearest(x: torch.Tensor, rows: Optional[torch.Tensor], centres: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Max similarity and argmax centre of each row (all rows, or those in ``rows``), tiled."""
    total = x.shape[0] if rows is None else rows.shape[0]
    best = torch.empty(total, dtype=x.dtype, device=x.device)
    arg = torch.empty(total, dtype=torch.long, device=x.device)
    step = rows_per_tile(centres.shape[0])
    for start in range(0, total, step):
        stop = min(total, start + step)
        block = x[start:stop] if rows is None else x[rows[start:stop]]
        best[start:stop], arg[start:stop] = (block @ centres.T).max(dim=1)
    return best, arg


def _logsumexp_rows(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp_j(a_i . b_j / tau) for every row i of ``a``, tiled over the rows of ``a``."""
    out = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    step = rows_per_tile(b.shape[0])
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
        step = rows_per_tile(x.shape[1])
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
        step = rows_per_tile(x.shape[1])
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
                raise LossNotFiniteError(
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
