"""What the spawned ranks of tests/test_distributed.py run. A module of its own (on pytest's
``pythonpath``), so that child processes can import it by name: a test module imported by pytest is
not importable in a fresh interpreter. The children inherit the parent's ``sys.path``, so they import
the same asvp_fast as the tests (the installed one in CI)."""

import os

import numpy as np
import torch
import torch.distributed as dist

from gloo_ranks import init_gloo, leave_together, record_failures, write_rank



def _pool(seed, n, d, kind):
    rng = np.random.default_rng(seed)
    if kind == "ties":  # few distinct points: equal distances, zero distances, all-zero D² weights
        return rng.integers(0, 3, (n, d)).astype(np.float32)
    return rng.standard_normal((n, d)).astype(np.float32)


def _probs(seed, n, c):
    rng = np.random.default_rng(seed)
    p = rng.integers(1, 4, (n, c)).astype(np.float64)  # many equal rows: ties in every kind
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _local(rows, lo, hi):
    rows = np.asarray(rows)
    return rows[(rows >= lo) & (rows < hi)] - lo


def _on_base_isa(run):
    def call(x, g, lo, hi):
        from asvp_fast import _C

        before = _C.build_info()["isa"]
        _C.set_isa("base")
        try:
            return run(x, g, lo, hi)
        finally:
            _C.set_isa(before)

    return call


# name: (bounds by world size, call on a shard, call on the whole pool)
def _scenarios():
    import asvp_fast as af

    s = {}

    def add(name, bounds, make, run):
        s[name] = (bounds, make, run)

    b_small = {2: [0, 700, 1500], 4: [0, 0, 333, 1100, 1500]}          # an empty shard
    b_tiny = {2: [0, 13, 1500], 4: [0, 5, 20, 41, 1500]}               # shards shorter than a segment
    b_big = {2: [0, 32770, 40000], 4: [0, 1000, 32767, 33800, 40000]}  # straddling blocks and a group
    feats = lambda: _pool(1, 1500, 19, "normal")  # noqa: E731
    add("kmeans_pp", b_small, feats, lambda x, g, lo, hi: af.kmeans_pp(x[lo:hi], 25, seed=7, group=g))
    add("kmeans_pp_tiny_shards", b_tiny, feats, lambda x, g, lo, hi: af.kmeans_pp(x[lo:hi], 25, seed=8, group=g))
    add("kmeans_pp_groups", b_big, lambda: _pool(2, 40000, 3, "normal"),
        lambda x, g, lo, hi: af.kmeans_pp(x[lo:hi], 6, seed=9, group=g))
    excl = np.arange(0, 1500, 3)
    add("kmeans_pp_exclude", b_small, feats,
        lambda x, g, lo, hi: af.kmeans_pp(x[lo:hi], 25, seed=1, exclude=_local(excl, lo, hi) if g else excl,
                                          group=g))
    add("kmeans_pp_ties", b_tiny, lambda: _pool(3, 1500, 2, "ties"),
        lambda x, g, lo, hi: af.kmeans_pp(x[lo:hi], 14, seed=2, group=g))  # 9 distinct points: uniform tail
    add("kcenter", b_small, feats, lambda x, g, lo, hi: af.kcenter_greedy(x[lo:hi], 25, seed=4, group=g))
    add("kcenter_ties", b_tiny, lambda: _pool(4, 1500, 2, "ties"),
        lambda x, g, lo, hi: af.kcenter_greedy(x[lo:hi], 12, seed=5, group=g))
    lab = np.arange(3, 1500, 41)
    add("kcenter_labelled", b_small, feats,
        lambda x, g, lo, hi: af.kcenter_greedy(x[lo:hi], 25, labeled=_local(lab, lo, hi) if g else lab, group=g))
    add("kcenter_k_over_shard", b_tiny, lambda: _pool(5, 1500, 33, "normal").astype(np.float64),
        lambda x, g, lo, hi: af.kcenter_greedy(x[lo:hi], 60, seed=6, group=g))
    pf = lambda: (_probs(8, 1500, 7), _pool(9, 1500, 21, "normal"))  # noqa: E731
    add("badge", b_small, pf, lambda xh, g, lo, hi: af.badge(xh[0][lo:hi], xh[1][lo:hi], 25, seed=3, group=g))
    add("badge_tiny_exclude", b_tiny, lambda: (_probs(10, 1500, 40), _pool(11, 1500, 70, "normal")),
        lambda xh, g, lo, hi: af.badge(xh[0][lo:hi], xh[1][lo:hi], 30, seed=4, group=g,
                                       exclude=_local(excl, lo, hi) if g else excl))
    add("badge_ties", b_tiny, lambda: (_probs(12, 1500, 3), _pool(13, 1500, 2, "ties")),
        lambda xh, g, lo, hi: af.badge(xh[0][lo:hi], xh[1][lo:hi], 20, seed=5, group=g))
    for name in ("kmeans_pp", "badge", "kcenter_labelled"):  # the kernel variant without FMA
        bounds, make, run = s[name]
        add(name + "_base_isa", bounds, make, _on_base_isa(run))
    probs = lambda: _probs(6, 1500, 5)  # noqa: E731
    for kind in ("margin", "entropy", "least_confidence"):
        add(f"uncertain_{kind}", b_tiny, probs,
            lambda x, g, lo, hi, kind=kind: af.select_uncertain(x[lo:hi], 90, kind, group=g))
    ex = np.concatenate([np.arange(0, 20), np.arange(400, 1500, 2)])  # every row of a shard excluded
    add("uncertain_exclude", b_tiny, probs,
        lambda x, g, lo, hi: af.select_uncertain(x[lo:hi], 300, "margin", exclude=_local(ex, lo, hi) if g else ex,
                                                 group=g))
    add("uncertain_torch", b_small, lambda: torch.from_numpy(_probs(7, 1500, 4)),
        lambda x, g, lo, hi: af.select_uncertain(x[lo:hi], 50, "entropy", group=g))
    mc = lambda: np.random.default_rng(14).dirichlet(np.full(6, 0.5), (5, 1500))  # noqa: E731
    add("bald", b_tiny, mc, lambda x, g, lo, hi: af.bald(x[:, lo:hi], 70, group=g))
    add("bald_exclude_empty_shard", b_small, mc,
        lambda x, g, lo, hi: af.bald(x[:, lo:hi], 200, exclude=_local(ex, lo, hi) if g else ex, group=g))
    add("bald_ties", b_tiny, lambda: np.repeat(np.random.default_rng(15).dirichlet(np.ones(3), (4, 50)), 30, axis=1),
        lambda x, g, lo, hi: af.bald(x[:, lo:hi], 120, group=g))  # 50 distinct rows, each 30 times
    add("bald_logits_torch", b_small, lambda: torch.from_numpy(np.random.default_rng(16).standard_normal((4, 1500, 9))),
        lambda x, g, lo, hi: af.bald(x[:, lo:hi], 40, from_logits=True, group=g))
    add("batchbald", b_tiny, mc, lambda x, g, lo, hi: af.batchbald(x[:, lo:hi], 6, group=g))  # exact, then sampled
    add("batchbald_candidates_exclude", b_small, mc,
        lambda x, g, lo, hi: af.batchbald(x[:, lo:hi], 5, candidates=40, seed=3, exact_configs=30, samples=200,
                                          exclude=_local(ex, lo, hi) if g else ex, group=g))
    add("batchbald_ties", b_tiny, lambda: np.repeat(np.random.default_rng(15).dirichlet(np.ones(3), (4, 50)), 30, axis=1),
        lambda x, g, lo, hi: af.batchbald(x[:, lo:hi], 4, group=g))
    return s


def _failures():
    """Calls in which one rank's arguments are wrong: every rank must raise."""
    import asvp_fast as af

    x = _pool(1, 200, 4, "normal")

    def nan_on_last(g, rank, world):
        shard = x[rank * 50:(rank + 1) * 50].copy()
        if rank == world - 1:
            shard[3, 1] = np.nan
        return af.kmeans_pp(shard, 5, group=g)

    def k_differs(g, rank, world):
        return af.kcenter_greedy(x[rank * 50:(rank + 1) * 50], 5 + (rank == 1), group=g)

    def bad_probs(g, rank, world):
        p = _probs(1, 40, 3)
        if rank == 1:
            p[7] = [0.9, 0.9, 0.9]
        return af.select_uncertain(p, 3, group=g)

    def too_many(g, rank, world):
        return af.kcenter_greedy(x[rank * 5:(rank + 1) * 5], 5 * world + 1, group=g)

    def badge(g, rank, world):
        return af.badge(_probs(1, 10, 3), x[:10], 2, from_logits=True, group=g)

    def badge_bad_row(g, rank, world):
        p = _probs(2, 30, 3)
        if rank == 0:
            p[4] = [0.5, 0.6, -0.1]
        return af.badge(p, x[:30], 3, group=g)

    return {"badge_bad_row": badge_bad_row, "nan": nan_on_last, "k_differs": k_differs, "bad_probs": bad_probs,
            "too_many": too_many,
            "badge": badge}


def _worker(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    group = dist.group.WORLD
    results = {}
    from asvp_fast import scores as af_scores
    try:
        for name, (bounds, make, run) in _scenarios().items():
            x, (lo, hi) = make(), bounds[world][rank:rank + 2]
            got = run(x, group, lo, hi)
            ref = run(x, None, 0, bounds[world][-1]) if rank == 0 else None
            results[name] = (np.asarray(got), None if ref is None else np.asarray(ref), type(got).__module__)
        p = _probs(6, 1500, 5)
        lo, hi = [0, 700, 1500][rank:rank + 2] if world == 2 else [0, 0, 333, 1100, 1500][rank:rank + 2]
        local = af_scores(p[lo:hi], "entropy", group=group)
        ref = af_scores(p, "entropy")
        results["scores_local"] = (np.asarray(local.view(np.int32)), np.asarray(ref[lo:hi].view(np.int32)), "")
        record_failures(_failures(), group, rank, world, results)
    finally:
        write_rank(out_dir, rank, results)
    leave_together()


def _dies_mid_run(rank, world, port, out_dir):
    init_gloo(rank, world, port)
    import asvp_fast as af
    from asvp_fast.acquisition import sharded_diversity

    if rank == 1:  # fails inside its third distance update, after the arguments were agreed
        calls, fold_in = [0], sharded_diversity.ShardState.fold_in

        def failing(self, centre):
            calls[0] += 1
            if calls[0] == 3:
                raise MemoryError("simulated failure")
            return fold_in(self, centre)

        sharded_diversity.ShardState.fold_in = failing
    x = _pool(1, 400, 8, "normal")
    try:
        af.kmeans_pp(x[rank * 200:(rank + 1) * 200], 10, group=dist.group.WORLD)
        outcome = None
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        outcome = (type(exc).__name__, str(exc))
    write_rank(out_dir, rank, outcome)
    if rank == 1:
        os._exit(0)  # leaves the group as a crashed process would
