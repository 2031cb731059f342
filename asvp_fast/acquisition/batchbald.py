"""BatchBALD (Kirsch, van Amersfoort & Gal, NeurIPS 2019): a batch whose labels are jointly most
informative about the model parameters, built greedily.

With S the rows picked so far and T MC-dropout samples p_t, the next pick maximises::

    a(S + j) = H[y_S, y_j] - sum_{i in S+j} mean_t H[p_t,i]

The joint entropy is that of the mixture (1/T) sum_t prod_{i in S+j} p_t,i. We keep, per MC sample
t, the probability W[t, m] of M configurations m of y_S:

* **exact** while the configurations number at most ``exact_configs`` (C^|S|): all of them, and
  H = -sum_{m,c} Q log Q with Q[m, j, c] = mean_t W[t, m] p_t,j,c;
* **sampled** beyond (the paper's estimator): M = ``samples`` configurations drawn from the joint
  (by ancestral sampling, extended by one label per pick), and
  H ~ -(1/M) sum_m sum_c Q[m, j, c] / P[m] log Q[m, j, c], with P[m] = mean_t W[t, m].

For every step, all candidates are scored at once: one (M x T) @ (T x rows*C) matrix product per
block of candidate rows, no Python loop over candidates. Each column of W is rescaled after every
pick (its log-scale is tracked), so long batches do not underflow.

Cost: O(k T M N C) multiply-adds and O(T N C) memory for the float64 candidate probabilities (the
pool, or its ``candidates`` rows of largest BALD). The documented budget is :data:`MAX_WORK`
multiply-adds (about ten minutes on one core); a call past it is a ValueError saying what to
reduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..core.checks import is_torch_tensor, parse_count, parse_flag, parse_int, parse_seed
from .bald import CHUNK_BYTES, bald, mc_blocks, mc_shape, select_top
from .distributed import Shards, as_result
from .strategy_inputs import as_array, common, like_input

__all__ = ["batchbald", "batchbald_select", "BatchBALDResult", "MAX_WORK", "DEFAULT_EXACT_CONFIGS",
           "DEFAULT_SAMPLES"]

#: Largest number of multiply-adds (k x T x M x candidates x C) a call may need.
MAX_WORK = 10**13
#: Exact joint entropies while |configurations| = C^|S| stays at most this.
DEFAULT_EXACT_CONFIGS = 1000
#: Sampled configurations of the estimator beyond the exact range.
DEFAULT_SAMPLES = 1000


@dataclass
class BatchBALDResult:
    """``indices`` (k,) in pick order; ``mutual_information`` (k,) float32: the estimated joint mutual
    information of the first i + 1 picks; ``exact`` (k,) bool: whether that value was exact."""

    indices: Any
    mutual_information: Any
    exact: np.ndarray


def batchbald(
    x: Any,
    k: int,
    *,
    from_logits: bool = False,
    exclude: Any = None,
    seed: int = 0,
    candidates: Optional[int] = None,
    exact_configs: int = DEFAULT_EXACT_CONFIGS,
    samples: int = DEFAULT_SAMPLES,
    validate: bool = True,
    device: Any = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """The BatchBALD batch of ``k`` rows, in pick order (int64, following the input's library).

    Args:
        x: (T, N, C) MC-dropout samples (T >= 2), probabilities or logits (``from_logits``), as for
            :func:`asvp_fast.bald`.
        k: batch size; at most the rows that may be picked.
        exclude: rows that may not be picked.
        seed: draws the sampled configurations (only used past the exact range).
        candidates: score only the rows of largest BALD (None: every row not excluded); the usual
            way to stay within the budget on a large pool.
        exact_configs: the exact joint entropy is used while C^|S| <= this.
        samples: configurations of the sampled estimator.
        validate, device, threads, progress: as for :func:`asvp_fast.bald` (NumPy on the CPU).
        group: a torch.distributed process group, or None. With a group, ``x`` is this rank's
            (T, N_rank, C) shard of consecutive rows, ``exclude`` is local to it, and the result
            is global rows, the same on every rank as one process's: each rank scores its own
            candidates per pick; the best (gain, row) of every rank is exchanged and the owner of
            the winner broadcasts its T x C probabilities (``candidates`` are the global top rows
            by BALD, found with BALD's sharded top-k).

    Raises:
        ValueError: as for BALD, plus work beyond :data:`MAX_WORK` (the message names the sizes).
    """
    return batchbald_select(x, k, from_logits=from_logits, exclude=exclude, seed=seed, candidates=candidates,
                            exact_configs=exact_configs, samples=samples, validate=validate, device=device,
                            threads=threads, progress=progress, group=group).indices


def batchbald_select(x: Any, k: int, *, from_logits: bool = False, exclude: Any = None, seed: int = 0,
                     candidates: Optional[int] = None, exact_configs: int = DEFAULT_EXACT_CONFIGS,
                     samples: int = DEFAULT_SAMPLES, validate: bool = True, device: Any = "auto",
                     threads: Optional[int] = None, progress: Optional[bool] = None,
                     group: Any = None) -> BatchBALDResult:
    """:func:`batchbald` with diagnostics (:class:`BatchBALDResult`)."""
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    seed = parse_seed(seed)
    exact_configs = parse_int(exact_configs, "exact_configs", minimum=1, maximum=10**7)
    samples = parse_int(samples, "samples", minimum=1, maximum=10**7)
    x = as_array(x, "x")
    if group is not None:
        return _sharded(x, k, group, from_logits=from_logits, exclude=exclude, seed=seed, candidates=candidates,
                        exact_configs=exact_configs, samples=samples, validate=validate, device=device,
                        threads=threads, progress=progress)
    t, n, c = mc_shape(x)
    call = common(x, n, k, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
    free = n - call.rows.size
    pool = free if candidates is None else min(free, parse_int(candidates, "candidates", minimum=1))
    if call.k > pool:
        raise ValueError(f"k={call.k} is larger than the {pool} candidate rows (candidates={candidates})")
    _check_budget(call.k, t, c, pool, exact_configs, samples)
    if call.k == 0:
        empty = np.empty(0, dtype=np.int64)
        return BatchBALDResult(like_input(empty, x), like_input(np.empty(0, np.float32), x), np.empty(0, bool))
    with call.limits():
        if candidates is None:
            rows = np.setdiff1d(np.arange(n, dtype=np.int64), call.rows)
        else:
            rows = np.sort(select_top(x, pool, call.rows, from_logits=from_logits, validate=validate,
                                      threads=call.threads))
        probs = _candidate_probabilities(x, rows, from_logits=from_logits, validate=validate, excluded=call.rows)
        picks, values, exact = greedy(probs, call.k, exact_configs=exact_configs, samples=samples,
                                      rng=np.random.default_rng(seed))
    return BatchBALDResult(like_input(rows[picks], x), like_input(values.astype(np.float32), x), exact)


def _check_budget(k: int, t: int, c: int, pool: int, exact_configs: int, samples: int) -> None:
    """The documented budget (:data:`MAX_WORK` multiply-adds, 8 GiB of candidate probabilities)."""
    configs = max(min(exact_configs, c ** min(k, 64)), samples if c ** min(k, 64) > exact_configs else 1)
    work = k * t * configs * pool * c
    if work > MAX_WORK:
        raise ValueError(f"batchbald would need about {work:.2g} multiply-adds (k={k} x T={t} x {configs} "
                         f"configurations x {pool} candidates x C={c}), over the budget of {MAX_WORK:.0e}; "
                         "reduce k, samples or T, or pass candidates= (rows of largest BALD)")
    memory = t * pool * c * 8
    if memory > 8 * 2**30:
        raise MemoryError(f"batchbald keeps the candidates' probabilities in float64 ({memory / 2**30:.1f} GiB for "
                          f"T={t} x {pool} rows x C={c}); pass a smaller candidates=")


def _sharded(x: Any, k: Any, group: Any, *, from_logits: bool, exclude: Any, seed: int, candidates: Any,
             exact_configs: int, samples: int, validate: bool, device: Any, threads: Any, progress: Any
             ) -> BatchBALDResult:
    """BatchBALD over row shards (see :func:`batchbald`'s ``group``)."""
    shards = Shards(group)

    def prepare() -> Tuple[Any, dict]:
        t, n, c = mc_shape(x)
        call = common(x, n, 0, exclude, "exclude", device=device, threads=threads, progress=progress, of="x")
        wanted = None if candidates is None else parse_int(candidates, "candidates", minimum=1)
        return call, {"rows": n, "free": n - call.rows.size, "k": parse_count(k), "t": t, "c": c, "seed": seed,
                      "candidates": wanted, "exact_configs": exact_configs, "samples": samples}

    call, summaries = shards.agree(prepare, ("k", "t", "c", "seed", "candidates", "exact_configs", "samples"))
    first = summaries[0]
    kk, t, c, free = first["k"], first["t"], first["c"], sum(s["free"] for s in summaries)
    pool = free if candidates is None else min(free, first["candidates"])
    if kk > pool:
        raise ValueError(f"k={kk} is larger than the {pool} candidate rows (candidates={candidates}, "
                         f"{shards.total} rows over {shards.world} shards)")
    _check_budget(kk, t, c, pool, exact_configs, samples)
    n, offset = shards.sizes[shards.rank], shards.offset
    if kk == 0:
        empty = np.empty(0, dtype=np.int64)
        return BatchBALDResult(as_result(empty, x), as_result(np.empty(0, np.float32), x), np.empty(0, bool))
    if candidates is None:
        local = np.setdiff1d(np.arange(n, dtype=np.int64), call.rows)
    else:
        top = bald(x, pool, from_logits=from_logits, exclude=exclude, validate=validate, device=device,
                   threads=threads, group=group)
        top = top.cpu().numpy() if is_torch_tensor(top) else top
        local = np.sort(top[(top >= offset) & (top < offset + n)] - offset)
    with call.limits():
        probs = _candidate_probabilities(x, local, from_logits=from_logits, validate=validate, excluded=call.rows)
        picks, values, exact = greedy(probs, kk, exact_configs=exact_configs, samples=samples,
                                      rng=np.random.default_rng(seed), choose=_sharded_choice(shards, local + offset))
    return BatchBALDResult(as_result(picks, x), as_result(values.astype(np.float32), x), exact)


def _sharded_choice(shards: Shards, rows: np.ndarray) -> Chooser:
    """The pick over every rank's candidates (``rows``: this rank's, as global rows): the largest
    gain, ties to the lower global row, as one process's first maximum; the owner of the winner
    broadcasts its probabilities and mean conditional entropy."""

    def choose(gain: np.ndarray, probs: np.ndarray, conditional: np.ndarray
               ) -> Tuple[int, float, np.ndarray, float, Optional[int]]:
        j = int(np.argmax(gain)) if gain.size else -1
        mine = [gain[j], float(rows[j])] if gain.size else [-np.inf, np.inf]
        best = shards.gather(np.asarray(mine, dtype=np.float64))
        winner = int(np.lexsort((best[:, 1], -best[:, 0]))[0])
        row = int(best[winner, 1])
        t, _, c = probs.shape
        payload = np.concatenate([probs[:, j, :].ravel(), [conditional[j]]]) if winner == shards.rank else None
        values = shards.broadcast_values(payload, winner, t * c + 1)
        return row, float(best[winner, 0]), values[:-1].reshape(t, c), float(values[-1]), \
            (j if winner == shards.rank else None)

    return choose


def _candidate_probabilities(x: Any, rows: np.ndarray, *, from_logits: bool, validate: bool,
                             excluded: np.ndarray) -> np.ndarray:
    """float64 (T, len(rows), C) probabilities of the candidate rows (read block by block)."""
    t, n, c = mc_shape(x)
    wanted = np.zeros(n, dtype=bool)
    wanted[rows] = True
    out = np.empty((t, rows.size, c), dtype=np.float64)
    position = np.cumsum(wanted) - 1
    for start, p, _ in mc_blocks(x, from_logits=from_logits, validate=validate, skip=~wanted):
        block_rows = np.arange(start, start + p.shape[1])
        keep = wanted[block_rows]
        out[:, position[block_rows[keep]], :] = p[:, keep, :]
    return out


def _xlogx(q: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(q > 0, q * np.log(q), 0.0)  # type: ignore[no-any-return]


def joint_entropies(w: np.ndarray, log_scale: Optional[np.ndarray], probs: np.ndarray) -> np.ndarray:
    """H[y_S, y_j] for every candidate j of ``probs`` (T, N, C), float64 (N,).

    ``w`` (T, M): per-sample probabilities of M configurations of y_S. ``log_scale`` None: all
    configurations (exact); else sampled configurations, each column of ``w`` scaled by
    exp(-log_scale)."""
    t, n, c = probs.shape
    m = w.shape[1]
    out = np.empty(n, dtype=np.float64)
    step = max(1, CHUNK_BYTES // (8 * m * c))
    flat = probs.reshape(t, n * c)
    marginal = w.mean(axis=0) if log_scale is not None else None
    for start in range(0, n, step):
        stop = min(n, start + step)
        q = (w.T @ flat[:, start * c:stop * c]).reshape(m, stop - start, c) / t
        if marginal is None:
            out[start:stop] = -_xlogx(q).sum(axis=(0, 2))
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(marginal[:, None, None] > 0, q / marginal[:, None, None], 0.0)
                logq = np.where(q > 0, np.log(np.where(q > 0, q, 1.0)) + log_scale[:, None, None], 0.0)
            out[start:stop] = -(ratio * logq).sum(axis=(0, 2)) / m
    return out


def _extend(w: np.ndarray, log_scale: Optional[np.ndarray], p: np.ndarray, exact_configs: int, samples: int,
            rng: np.random.Generator) -> "tuple[np.ndarray, Optional[np.ndarray]]":
    """The configurations of y_S extended by the label of a new pick with probabilities ``p`` (T, C)."""
    t, m = w.shape
    c = p.shape[1]
    if log_scale is None and m * c <= exact_configs:  # still exact: every (configuration, label) pair
        return (w[:, :, None] * p[:, None, :]).reshape(t, m * c), None
    if log_scale is None:  # exact -> sampled: draw from the exact joint of S + pick
        joint = (w.T @ p).reshape(-1) / t
        total = joint.sum()
        weights = joint / total if np.isfinite(total) and total > 0 and np.isfinite(joint).all() else None
        drawn = rng.choice(joint.size, size=samples, p=weights)
        w = w[:, drawn // c] * p[:, drawn % c]
        log_scale = np.zeros(samples)
    else:  # sampled: extend every configuration by a label drawn from its conditional
        conditional = w.T @ p  # (M, C)
        cdf = np.cumsum(conditional, axis=1)
        u = rng.random(m) * cdf[:, -1]
        labels = np.minimum((cdf < u[:, None]).sum(axis=1), c - 1)
        w = w * p[:, labels]
    scale = w.max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return w / scale, log_scale + np.log(scale)


Chooser = Callable[[np.ndarray, np.ndarray, np.ndarray], Tuple[int, float, np.ndarray, float, Optional[int]]]


def local_choice(gain: np.ndarray, probs: np.ndarray, conditional: np.ndarray
                 ) -> Tuple[int, float, np.ndarray, float, Optional[int]]:
    """The single-process step: the first maximum (ties to the lower candidate)."""
    j = int(np.argmax(gain))
    return j, float(gain[j]), probs[:, j, :], float(conditional[j]), j


def greedy(probs: np.ndarray, k: int, *, exact_configs: int = DEFAULT_EXACT_CONFIGS, samples: int = DEFAULT_SAMPLES,
           rng: Optional[np.random.Generator] = None, choose: Chooser = local_choice
           ) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """Greedy BatchBALD over ``probs`` (T, N, C): (the picks, joint MI after each pick, whether each
    value was exact). ``choose(gain, probs, conditional)`` makes each pick: it returns (the pick's
    number, its gain, its (T, C) probabilities, its mean conditional entropy, its position in
    ``probs`` or None); by default the positions in ``probs`` (the sharded form returns global
    rows, and None for picks another rank holds)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    t, n, _ = probs.shape
    with np.errstate(over="ignore", invalid="ignore"):
        conditional = -_xlogx(probs).sum(axis=2).mean(axis=0)  # mean_t H[p_t,j], (N,)
    w = np.ones((t, 1))
    log_scale: Optional[np.ndarray] = None
    picked = np.zeros(n, dtype=bool)
    picks = np.empty(k, dtype=np.int64)
    values = np.empty(k, dtype=np.float64)
    exact = np.empty(k, dtype=bool)
    spent = 0.0
    for i in range(k):
        with np.errstate(over="ignore", invalid="ignore"):  # only unvalidated garbage overflows
            gain = joint_entropies(w, log_scale, probs) - conditional - spent
        gain = np.nan_to_num(gain, nan=-1e300, posinf=1e300, neginf=-1e300)
        gain[picked] = -np.inf
        picks[i], values[i], p_pick, conditional_pick, position = choose(gain, probs, conditional)
        exact[i] = log_scale is None
        if position is not None:
            picked[position] = True
        spent += conditional_pick
        if i + 1 < k:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                w, log_scale = _extend(w, log_scale, p_pick, exact_configs, samples, rng)
    return picks, values, exact
