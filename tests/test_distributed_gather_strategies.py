"""TypiClust, ProbCover, Cluster-Margin (and its clustering) and ActiveFT over row shards with
torch.distributed (gloo on the CPU): the pool is gathered on rank 0, and every rank returns exactly
the single-process indices, whatever the shard boundaries; a failing rank makes every rank raise.

One group of local processes per world size runs every scenario once (spawning is the expensive
part); the tests then read that group's answers.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from distributed_gather_workers import dies_mid_run, worker  # noqa: E402
from gloo_ranks import assert_every_rank_raised, read_rank, spawn, start_and_wait  # noqa: E402

SCENARIOS = [
    "typiclust", "typiclust_labelled_mask", "typiclust_k_over_shard", "typiclust_ties", "typiclust_torch",
    "probcover", "probcover_purity", "probcover_labelled", "probcover_ties_random_tail", "probcover_torch",
    "cluster_margin", "cluster_margin_clustering", "cluster_margin_clustering_exclude",
    "cluster_margin_k_over_shard_exclude", "cluster_margin_ties", "cluster_margin_logits_torch",
    "activeft", "activeft_labelled", "activeft_k_over_shard_batches", "activeft_ties", "activeft_torch",
]


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"{w}ranks")
def answers(request, tmp_path_factory):
    world = request.param
    return world, spawn(worker, world, tmp_path_factory.mktemp(f"gather{world}"))


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_rank_gets_the_single_process_picks(answers, name):
    world, per_rank = answers
    ref = per_rank[0][name][1]
    assert ref.size > 0
    for rank in range(world):
        got, _, module = per_rank[rank][name]
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, ref, err_msg=f"{name}, rank {rank} of {world}")
        assert module.startswith("torch") == name.endswith("torch")


def test_hac_clusters_gives_each_rank_its_slice_of_the_single_process_clustering(answers):
    world, per_rank = answers
    for rank in range(world):
        for got, ref in per_rank[rank]["hac_slices"]:  # exact linkage, then the micro-cluster one
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, ref, err_msg=f"rank {rank} of {world}")


@pytest.mark.parametrize("name, kind, words", [
    ("k_differs", "ValueError", "k must be the same on every rank"),
    ("nan", "ValueError", "NaN"),
    ("too_many", "ValueError", "larger than the"),
    ("bad_labelled", "ValueError", "rank 1 of"),
    ("options_differ", "ValueError", "options must be the same on every rank"),
    ("bad_clustering", "ValueError", "clustering must be integer labels"),
    ("clusters_differ", "ValueError", "clusters must be the same on every rank"),
    ("root_run_fails", "ValueError", "max_edges"),
])
def test_a_failing_rank_makes_every_rank_raise(answers, name, kind, words):
    world, per_rank = answers
    assert_every_rank_raised(per_rank, name, kind, words)
    if name == "nan":
        assert f"rank {world - 1} of {world}" in per_rank[0]["fail_nan"][1]
    if name in ("bad_clustering", "root_run_fails"):
        assert f"rank 0 of {world}" in per_rank[world - 1]["fail_" + name][1]


@pytest.mark.parametrize("who", [1, 0], ids=["peer_fails_in_gather", "root_dies_while_selecting"])
def test_a_rank_failing_mid_run_makes_the_others_raise(tmp_path, who):
    start_and_wait(dies_mid_run, 2, tmp_path, who, seconds=120)
    survivor = 1 - who
    kind, message = read_rank(tmp_path, survivor)
    assert kind == "RuntimeError" and f"collective failed on rank {survivor} of 2" in message
    if who == 1:
        assert read_rank(tmp_path, 1) == ("MemoryError", "simulated failure")


def test_a_group_that_is_not_a_process_group_is_a_type_error():
    import asvp_fast as af
    from asvp_fast.acquisition.activeft import activeft_select
    from asvp_fast.acquisition.cluster_margin import hac_clusters

    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    for call in (lambda: af.typiclust(x, 3, group="a group"), lambda: af.probcover(x, 3, delta=1.0, group="a group"),
                 lambda: af.cluster_margin(np.full((50, 3), 1 / 3), x, 3, group="a group"),
                 lambda: activeft_select(x, 3, group="a group"), lambda: hac_clusters(x, group="a group")):
        with pytest.raises(TypeError, match="ProcessGroup"):
            call()
