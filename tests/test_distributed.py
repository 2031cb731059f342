"""Selection over row shards with torch.distributed (gloo on the CPU): every rank returns exactly
the single-process indices, whatever the shard boundaries; a failing rank makes every rank raise.

One group of local processes per world size runs every scenario once (spawning is the
expensive part); the tests then read that group's answers.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from distributed_workers import _dies_mid_run, _probs, _worker  # noqa: E402
from gloo_ranks import assert_every_rank_raised, read_rank, spawn, start_and_wait  # noqa: E402

@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}ranks")
def answers(request, tmp_path_factory):
    world = request.param
    return world, spawn(_worker, world, tmp_path_factory.mktemp(f"world{world}"))


@pytest.mark.parametrize("name", [
    "kmeans_pp", "kmeans_pp_tiny_shards", "kmeans_pp_groups", "kmeans_pp_exclude", "kmeans_pp_ties", "kcenter",
    "kcenter_ties", "kcenter_labelled", "kcenter_k_over_shard", "uncertain_margin", "uncertain_entropy",
    "uncertain_least_confidence", "uncertain_exclude", "uncertain_torch", "scores_local", "badge",
    "badge_tiny_exclude", "badge_ties", "kmeans_pp_base_isa", "badge_base_isa", "kcenter_labelled_base_isa",
    "bald", "bald_exclude_empty_shard", "bald_ties", "bald_logits_torch", "batchbald",
    "batchbald_candidates_exclude", "batchbald_ties"])
def test_every_rank_gets_the_single_process_picks(answers, name):
    world, per_rank = answers
    if name == "scores_local":  # elementwise: each rank gets its own shard's scores
        for rank in range(world):
            got, ref, _ = per_rank[rank][name]
            np.testing.assert_array_equal(got, ref)
        return
    ref = per_rank[0][name][1]
    assert ref.size > 0
    for rank in range(world):
        got, _, module = per_rank[rank][name]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ref, err_msg=f"{name}, rank {rank} of {world}")
        assert module.startswith("torch") == name.endswith("torch")


@pytest.mark.parametrize("name, kind, words", [
    ("nan", "ValueError", "NaN"),
    ("k_differs", "ValueError", "k must be the same on every rank"),
    ("bad_probs", "ValueError", "rank 1 of"),
    ("too_many", "ValueError", "larger than the"),
    ("badge", "NotImplementedError", "planned"),
    ("badge_bad_row", "ValueError", "rank 0 of"),
])
def test_a_failing_rank_makes_every_rank_raise(answers, name, kind, words):
    world, per_rank = answers
    assert_every_rank_raised(per_rank, name, kind, words)
    if name == "nan":
        assert f"rank {world - 1} of {world}" in per_rank[0]["fail_nan"][1]


def test_scores_take_a_group_and_stay_local():
    import asvp_fast as af

    p = _probs(3, 20, 4)
    with pytest.raises(TypeError, match="ProcessGroup"):
        af.scores(p, "margin", group="world")  # not initialised here either way: a type error first


def _fma_exact(a, b, c):
    """float32(a * b + c) rounded once, through exact rationals."""
    from fractions import Fraction

    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    lo = np.float32(float(exact))  # nearest double, then check both float32 neighbours
    best = None
    for cand in (np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))):
        err = abs(Fraction(float(cand)) - exact)
        even = (int(np.array(cand).view(np.uint32)) & 1) == 0
        if best is None or err < best[0] or (err == best[0] and even):
            best = (err, cand)
    return best[1]


def test_fused_multiply_add_rounds_once():
    from asvp_fast.acquisition.sharded_math import fma32

    f = np.float32
    # a * b + c lies just below a float32 midpoint, within float64 rounding of it: rounding twice
    # (to float64, then to float32 with ties to even) would go up; rounding once goes down
    a, b, c = f(2.0 ** -24 * (1 + 2.0 ** -23)), f(1 - 2.0 ** -23), f(1 + 2.0 ** -23)
    assert fma32(np.array([a]), np.array([b]), np.array([c]))[0] == c
    rng = np.random.default_rng(0)
    a = rng.standard_normal(3000).astype(np.float32)
    b = (rng.standard_normal(3000) * 10.0 ** rng.integers(-8, 3, 3000)).astype(np.float32)
    c = rng.standard_normal(3000).astype(np.float32)
    got = fma32(a, b, c)
    want = np.array([_fma_exact(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_host_distances_are_the_kernels_bit_for_bit(isa):
    from asvp_fast import _C
    from asvp_fast.acquisition.diversity import diversity_select
    from asvp_fast.acquisition.sharded_math import sq_distances

    before = _C.build_info()
    if isa not in before["supported_isas"]:
        pytest.skip(f"this processor cannot run the {isa} kernels")
    rng = np.random.default_rng(2)
    _C.set_isa(isa)
    try:
        for d in list(range(1, 40)) + [47, 64, 65, 100]:
            x = (rng.standard_normal((2, d)) * rng.uniform(0.01, 100)).astype(np.float32)
            kernel = diversity_select("kcenter", x, 1, labeled=[0], threads=1).distances[0]
            host = sq_distances(x[1:], x[0], fma=isa != "base")[0]
            assert host.view(np.uint32) == np.float32(kernel).view(np.uint32), d
    finally:
        _C.set_isa(before["isa"])


def test_a_rank_failing_mid_run_makes_the_others_raise(tmp_path):
    start_and_wait(_dies_mid_run, 2, tmp_path)
    kind, message = read_rank(tmp_path, 0)
    assert kind == "RuntimeError" and "collective failed on rank 0 of 2" in message
    assert read_rank(tmp_path, 1) == ("MemoryError", "simulated failure")
