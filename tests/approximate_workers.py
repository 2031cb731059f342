"""What the spawned ranks of tests/test_approximate_selection.py run (a module of its own, so that
child processes can import it by name; see tests/distributed_workers.py)."""


import numpy as np
import torch
import torch.distributed as dist

from gloo_ranks import init_gloo, leave_together, record_failures, write_rank

N_BLOBS, BLOB_ROWS = 20, 2000
LABELLED = np.arange(5, BLOB_ROWS, 97)  # global rows
EXCLUDED = np.arange(0, BLOB_ROWS, 3)
# shard bounds by world size: unequal shards, and an empty one with 4 ranks
BOUNDS = {2: [0, 700, BLOB_ROWS], 4: [0, 0, 500, 1300, BLOB_ROWS]}


def blobs(seed=0, n=BLOB_ROWS, centres=N_BLOBS, d=8):
    """Well-separated Gaussian blobs (unit variance, means uniform in [-50, 50]^d) and each row's blob."""
    rng = np.random.default_rng(seed)
    means = rng.uniform(-50, 50, (centres, d))
    which = np.arange(n) % centres
    return (means[which] + rng.standard_normal((n, d))).astype(np.float32), which


def few_points(n=BLOB_ROWS):
    """Three distinct points repeated: k-means|| finds fewer than k candidates and tops up."""
    return np.repeat(np.random.default_rng(3).standard_normal((3, 5)), n // 3 + 1, axis=0)[:n]


def _local(rows, lo, hi):
    rows = np.asarray(rows)
    return rows[(rows >= lo) & (rows < hi)] - lo


def scenarios():
    """name: (make the pool, call on rows lo..hi-1 with group g, or on the whole pool with g=None)."""
    from asvp_fast.acquisition.approximate import kcenter_greedi, kmeans_parallel

    x = lambda: blobs()[0]  # noqa: E731
    return {
        "greedi": (x, lambda p, g, lo, hi: kcenter_greedi(p[lo:hi], 20, seed=1, group=g)),
        "greedi_labelled": (x, lambda p, g, lo, hi: kcenter_greedi(
            p[lo:hi], 20, labeled=_local(LABELLED, lo, hi) if g else LABELLED, group=g)),
        "greedi_few_candidates": (x, lambda p, g, lo, hi: kcenter_greedi(p[lo:hi], 12, candidates_per_rank=8,
                                                                          seed=2, group=g)),
        "greedi_torch": (lambda: torch.from_numpy(blobs(1)[0]),
                         lambda p, g, lo, hi: kcenter_greedi(p[lo:hi], 10, seed=3, group=g)),
        "kmpar": (x, lambda p, g, lo, hi: kmeans_parallel(p[lo:hi], 20, seed=4, group=g)),
        "kmpar_exclude": (x, lambda p, g, lo, hi: kmeans_parallel(
            p[lo:hi], 20, seed=5, exclude=_local(EXCLUDED, lo, hi) if g else EXCLUDED, group=g)),
        "kmpar_top_up": (few_points, lambda p, g, lo, hi: kmeans_parallel(p[lo:hi], 8, seed=6, rounds=2, group=g)),
        "kmpar_torch_float64": (lambda: torch.from_numpy(blobs(2)[0].astype(np.float64)),
                                lambda p, g, lo, hi: kmeans_parallel(p[lo:hi], 15, seed=7, oversampling=7.5,
                                                                     group=g)),
    }


def failures():
    """Calls in which one rank's arguments are wrong (or all ranks' together): every rank must raise."""
    from asvp_fast.acquisition.approximate import kcenter_greedi, kmeans_parallel

    x = blobs()[0][:400]

    def greedi_nan_on_last(g, rank, world):
        shard = x[rank * 100:(rank + 1) * 100].copy()
        if rank == world - 1:
            shard[7, 2] = np.nan
        return kcenter_greedi(shard, 5, group=g)

    def greedi_k_differs(g, rank, world):
        return kcenter_greedi(x[rank * 100:(rank + 1) * 100], 5 + (rank == 1), group=g)

    def greedi_too_few_candidates(g, rank, world):
        return kcenter_greedi(x[rank * 100:(rank + 1) * 100], world + 1, candidates_per_rank=1, group=g)

    def kmpar_bad_rounds_on_one(g, rank, world):
        return kmeans_parallel(x[rank * 100:(rank + 1) * 100], 5, rounds=0 if rank == 1 else 5, group=g)

    def kmpar_bad_exclude_on_one(g, rank, world):
        return kmeans_parallel(x[rank * 100:(rank + 1) * 100], 5, exclude=[100] if rank == 1 else None, group=g)

    def kmpar_nan_on_last(g, rank, world):
        shard = x[rank * 100:(rank + 1) * 100].copy()
        if rank == world - 1:
            shard[3, 0] = np.inf
        return kmeans_parallel(shard, 5, group=g)

    return {"greedi_nan_on_last": greedi_nan_on_last, "greedi_k_differs": greedi_k_differs,
            "greedi_too_few_candidates": greedi_too_few_candidates, "kmpar_bad_rounds_on_one": kmpar_bad_rounds_on_one,
            "kmpar_bad_exclude_on_one": kmpar_bad_exclude_on_one, "kmpar_nan_on_last": kmpar_nan_on_last}


def worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    group = dist.group.WORLD
    results = {}
    try:
        for name, (make, run) in scenarios().items():
            pool, (lo, hi) = make(), BOUNDS[world][rank:rank + 2]
            got = run(pool, group, lo, hi)
            # the one-process picks, which k-means|| must reproduce (GreeDi's differ by design)
            ref = run(pool, None, 0, BOUNDS[world][-1]) if rank == 0 and name.startswith("kmpar") else None
            results[name] = (np.asarray(got), None if ref is None else np.asarray(ref), type(got).__module__)
        record_failures(failures(), group, rank, world, results)
    finally:
        write_rank(out_dir, rank, results)
    leave_together()
