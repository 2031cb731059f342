"""What the spawned ranks of tests/test_distributed_gather_strategies.py run: the strategies whose
pool is gathered on rank 0 (TypiClust, ProbCover, Cluster-Margin's clustering, ActiveFT). A module
of its own on pytest's ``pythonpath``, so that child processes can import it by name."""

import os

import numpy as np
import torch
import torch.distributed as dist

from gloo_ranks import init_gloo, leave_together, record_failures, write_rank

TIMEOUT_S = 60


def _pool(seed, n, d, kind="normal"):
    rng = np.random.default_rng(seed)
    if kind == "ties":  # 40 distinct rows, each repeated: zero distances and equal scores everywhere
        return np.repeat(rng.standard_normal((40, d)), n // 40, axis=0).astype(np.float32)
    centres = rng.standard_normal((6, d)) * 4  # a few blobs, so clusters and balls mean something
    return (centres[rng.integers(0, 6, n)] + rng.standard_normal((n, d))).astype(np.float32)


def _probs(seed, n, c):
    rng = np.random.default_rng(seed)
    p = rng.integers(1, 4, (n, c)).astype(np.float64)  # many equal rows: tied margins
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _local(rows, lo, hi):
    rows = np.asarray(rows)
    return rows[(rows >= lo) & (rows < hi)] - lo


def _mask(rows, n):
    out = np.zeros(n, dtype=bool)
    out[rows] = True
    return out


def _rows_arg(rows, lo, hi, g, n, as_mask):
    """The labelled rows of a call: global for one process, this shard's with a group."""
    if g is None:
        return _mask(rows, n) if as_mask else rows
    local = _local(rows, lo, hi)
    return _mask(local, hi - lo) if as_mask else local


UNEQUAL = {2: [0, 170, 400], 4: [0, 0, 95, 330, 400]}  # unequal shards, one empty
TINY = {2: [0, 6, 400], 4: [0, 3, 7, 12, 400]}  # shards smaller than k
EMPTY = {2: [0, 0, 400], 4: [0, 400, 400, 400, 400]}  # rank 0 (which selects) or most ranks hold nothing


def _typiclust(s, af):
    feats = lambda: _pool(1, 400, 12)  # noqa: E731
    lab = np.arange(5, 400, 37)
    s["typiclust"] = (UNEQUAL, feats, lambda x, g, lo, hi: af.typiclust(x[lo:hi], 12, seed=3, group=g))
    s["typiclust_labelled_mask"] = (UNEQUAL, feats, lambda x, g, lo, hi: af.typiclust(
        x[lo:hi], 10, seed=4, labeled=_rows_arg(lab, lo, hi, g, 400, True), group=g))
    s["typiclust_k_over_shard"] = (TINY, feats, lambda x, g, lo, hi: af.typiclust(
        x[lo:hi], 25, seed=5, max_clusters=9, labeled=_rows_arg(lab, lo, hi, g, 400, False), group=g))
    s["typiclust_ties"] = (TINY, lambda: _pool(2, 400, 8, "ties"),
                           lambda x, g, lo, hi: af.typiclust(x[lo:hi], 15, seed=6, group=g))
    s["typiclust_torch"] = (EMPTY, lambda: torch.from_numpy(_pool(3, 400, 10)).double(),
                            lambda x, g, lo, hi: af.typiclust(x[lo:hi], 8, seed=7, group=g))


def _probcover(s, af):
    feats = lambda: _pool(4, 400, 10)  # noqa: E731
    lab = np.arange(0, 400, 29)
    s["probcover"] = (UNEQUAL, feats, lambda x, g, lo, hi: af.probcover(x[lo:hi], 15, delta=2.5, group=g))
    s["probcover_purity"] = (TINY, feats, lambda x, g, lo, hi: af.probcover(
        x[lo:hi], 20, seed=2, pseudo_classes=6, group=g))
    s["probcover_labelled"] = (UNEQUAL, feats, lambda x, g, lo, hi: af.probcover(
        x[lo:hi], 12, delta=2.0, labeled=_rows_arg(lab, lo, hi, g, 400, False), group=g))
    # 40 distinct rows: everything is covered after a few picks, the rest are seeded random draws
    s["probcover_ties_random_tail"] = (TINY, lambda: _pool(5, 400, 8, "ties"), lambda x, g, lo, hi: af.probcover(
        x[lo:hi], 60, delta=0.5, seed=9, labeled=_rows_arg(lab, lo, hi, g, 400, True), group=g))
    s["probcover_torch"] = (EMPTY, lambda: torch.from_numpy(feats()),
                            lambda x, g, lo, hi: af.probcover(x[lo:hi], 10, delta=3.0, group=g))


def _cluster_margin(s, af):
    from asvp_fast.acquisition.cluster_margin import hac_clusters

    both = lambda: (_probs(6, 400, 4), _pool(7, 400, 9))  # noqa: E731
    ex = np.concatenate([np.arange(0, 15), np.arange(200, 400, 3)])  # every row of a tiny shard excluded

    def precomputed(xh, g, lo, hi, **kw):
        labels = hac_clusters(xh[1][lo:hi], 14, seed=2, group=g) if g else hac_clusters(xh[1], 14, seed=2)
        return af.cluster_margin(xh[0][lo:hi], None, 9, clustering=labels, seed=5, group=g, **kw)

    s["cluster_margin"] = (UNEQUAL, both, lambda xh, g, lo, hi: af.cluster_margin(
        xh[0][lo:hi], xh[1][lo:hi], 10, seed=1, group=g))
    s["cluster_margin_clustering"] = (UNEQUAL, both, precomputed)
    s["cluster_margin_clustering_exclude"] = (TINY, both, lambda xh, g, lo, hi: precomputed(
        xh, g, lo, hi, exclude=_rows_arg(ex, lo, hi, g, 400, True), candidates=60))
    s["cluster_margin_k_over_shard_exclude"] = (TINY, both, lambda xh, g, lo, hi: af.cluster_margin(
        xh[0][lo:hi], xh[1][lo:hi], 30, clusters=8, seed=3, exclude=_rows_arg(ex, lo, hi, g, 400, False), group=g))
    s["cluster_margin_ties"] = (TINY, lambda: (_probs(8, 400, 3), _pool(9, 400, 8, "ties")),
                                lambda xh, g, lo, hi: af.cluster_margin(xh[0][lo:hi], xh[1][lo:hi], 20, seed=4,
                                                                        group=g))
    s["cluster_margin_logits_torch"] = (EMPTY, lambda: (torch.from_numpy(_pool(10, 400, 5)), _pool(11, 400, 8)),
                                        lambda xh, g, lo, hi: af.cluster_margin(
                                            xh[0][lo:hi], xh[1][lo:hi], 12, from_logits=True, seed=6, group=g))


def _activeft(s):
    from asvp_fast.acquisition.activeft import activeft_select

    feats = lambda: _pool(12, 400, 16)  # noqa: E731
    lab = np.arange(7, 400, 31)
    s["activeft"] = (UNEQUAL, feats, lambda x, g, lo, hi: activeft_select(
        x[lo:hi], 10, iterations=40, seed=1, group=g))
    s["activeft_labelled"] = (UNEQUAL, feats, lambda x, g, lo, hi: activeft_select(
        x[lo:hi], 8, iterations=40, seed=2, labeled=_rows_arg(lab, lo, hi, g, 400, False), group=g))
    s["activeft_k_over_shard_batches"] = (TINY, feats, lambda x, g, lo, hi: activeft_select(
        x[lo:hi], 20, iterations=30, batch_size=100, seed=3, labeled=_rows_arg(lab, lo, hi, g, 400, True), group=g))
    s["activeft_ties"] = (TINY, lambda: _pool(13, 400, 8, "ties"), lambda x, g, lo, hi: activeft_select(
        x[lo:hi], 12, iterations=30, seed=4, group=g))
    s["activeft_torch"] = (EMPTY, lambda: torch.from_numpy(feats()).half(), lambda x, g, lo, hi: activeft_select(
        x[lo:hi], 6, iterations=30, seed=5, group=g))


# name: (bounds by world size, make the whole pool, call on a shard (g set) or on the whole pool)
def scenarios():
    import asvp_fast as af

    s = {}
    _typiclust(s, af)
    _probcover(s, af)
    _cluster_margin(s, af)
    _activeft(s)
    return s


def _hac_slices(rank, world):
    """(this rank's slice from the sharded call, the single-process slice), for two pools: the
    exact linkage and the approximate one (micro-clusters, past EXACT_HAC_MAX rows)."""
    from asvp_fast.acquisition import cluster_margin as cm

    out = []
    for n, bounds, clusters in ((400, UNEQUAL, 12), (cm.EXACT_HAC_MAX + 300, None, None)):
        x = _pool(14, n, 8)
        edges = bounds[world] if bounds else [0, 2500, n] if world == 2 else [0, 100, 100, 3000, n]
        lo, hi = edges[rank:rank + 2]
        got = cm.hac_clusters(x[lo:hi], clusters, seed=3, group=dist.group.WORLD)
        out.append((np.asarray(got), cm.hac_clusters(x, clusters, seed=3)[lo:hi]))
    return out


def failures():
    """Calls in which one rank's arguments are wrong (or rank 0's run fails): every rank must raise."""
    import asvp_fast as af
    from asvp_fast.acquisition.activeft import activeft_select
    from asvp_fast.acquisition.cluster_margin import hac_clusters

    x = _pool(15, 200, 8)

    def shard(rank):
        return x[rank * 40:(rank + 1) * 40].copy()

    def k_differs(g, rank, world):
        return af.typiclust(shard(rank), 4 + (rank == 1), group=g)

    def nan_on_last(g, rank, world):
        part = shard(rank)
        if rank == world - 1:
            part[5, 2] = np.nan
        return af.probcover(part, 3, delta=1.0, group=g)

    def too_many(g, rank, world):
        return af.typiclust(x[rank * 3:(rank + 1) * 3], 3 * world + 1, group=g)

    def bad_labelled(g, rank, world):
        return activeft_select(shard(rank), 3, iterations=5, labeled=[40] if rank == 1 else [0], group=g)

    def options_differ(g, rank, world):
        return activeft_select(shard(rank), 3, iterations=5, temperature=0.07 if rank else 0.1, group=g)

    def bad_clustering(g, rank, world):
        labels = np.zeros(40 - (rank == 0), dtype=np.int64)
        return af.cluster_margin(_probs(1, 40, 3), None, 3, clustering=labels, group=g)

    def clusters_differ(g, rank, world):
        return hac_clusters(shard(rank), 5 + rank, group=g)

    def root_run_fails(g, rank, world):  # every rank's arguments are fine; the graph is too big on rank 0
        return af.probcover(shard(rank), 3, delta=100.0, max_edges=50, group=g)

    return {"k_differs": k_differs, "nan": nan_on_last, "too_many": too_many, "bad_labelled": bad_labelled,
            "options_differ": options_differ, "bad_clustering": bad_clustering, "clusters_differ": clusters_differ,
            "root_run_fails": root_run_fails}


def _init(rank, world, port):
    init_gloo(rank, world, port, seconds=TIMEOUT_S)
    torch.set_num_threads(1)  # ranks share a few cores


def worker(rank, world, port, out_dir):
    _init(rank, world, port)
    from asvp_fast.acquisition import distributed

    distributed.GATHER_CHUNK_BYTES = 256  # many gather rounds, the last one short, as for a large pool
    group = dist.group.WORLD
    results = {}
    try:
        for name, (bounds, make, run) in scenarios().items():
            x, (lo, hi) = make(), bounds[world][rank:rank + 2]
            got = run(x, group, lo, hi)
            ref = run(x, None, 0, bounds[world][-1]) if rank == 0 else None
            results[name] = (np.asarray(got), None if ref is None else np.asarray(ref), type(got).__module__)
        results["hac_slices"] = _hac_slices(rank, world)
        record_failures(failures(), group, rank, world, results)
    finally:
        write_rank(out_dir, rank, results)
    leave_together()


def dies_mid_run(rank, world, port, out_dir, who):
    """Rank ``who`` fails after the arguments were agreed: rank 1 inside the gather, or rank 0
    (the root) while it runs the selection; it then leaves as a crashed process would."""
    _init(rank, world, port)
    import asvp_fast as af
    from asvp_fast.acquisition import distributed, typiclust

    if rank == who == 1:
        def failing_gather(self, local, out):
            raise MemoryError("simulated failure")

        distributed.Shards._gather_rows = failing_gather
    if rank == who == 0:
        def dying_kmeans(*args, **kwargs):
            os._exit(3)

        typiclust.kmeans_labels = dying_kmeans
    x = _pool(16, 200, 8)
    try:
        af.typiclust(x[rank * 100:(rank + 1) * 100], 5, group=dist.group.WORLD)
        outcome = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        outcome = (type(exc).__name__, str(exc))
    write_rank(out_dir, rank, outcome)
    os._exit(0)
