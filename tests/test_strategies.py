"""BALD, BatchBALD, TypiClust, ProbCover and Cluster-Margin (issue 17) against plain references on
small pools: BALD and BatchBALD joint entropies by enumeration, ProbCover's coverage greedy on a
dense distance matrix, TypiClust's typicality; determinism per seed; the errors; and each as a loop
strategy in a tiny synthetic run and through the ask/tell learner."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import asvp_fast as af
from asvp_fast.acquisition import bald as bald_module
from asvp_fast.acquisition import batchbald as batchbald_module
from asvp_fast.acquisition.cluster_margin import hac_clusters, round_robin
from asvp_fast.acquisition.probcover import purity_delta
from asvp_fast.acquisition.typiclust import kmeans_labels, typicality

torch = pytest.importorskip("torch")


def _probs(t, n, c, seed=0, alpha=0.5):
    return np.random.default_rng(seed).dirichlet(np.ones(c) * alpha, (t, n))


def _entropy(p):
    p = np.asarray(p, dtype=np.float64)
    return float(-sum(v * np.log(v) for v in p.ravel() if v > 0))


def _bald_reference(p):
    t, n, _ = p.shape
    return np.array([_entropy(p[:, i].mean(axis=0)) - np.mean([_entropy(p[s, i]) for s in range(t)])
                     for i in range(n)])


def _joint_mi_reference(p, rows):
    """Joint mutual information of ``rows`` by enumerating every label configuration."""
    t, _, c = p.shape
    h = 0.0
    for config in itertools.product(range(c), repeat=len(rows)):
        prob = np.mean([np.prod([p[s, i, y] for i, y in zip(rows, config)]) for s in range(t)])
        h -= prob * np.log(prob) if prob > 0 else 0.0
    return h - sum(np.mean([_entropy(p[s, i]) for s in range(t)]) for i in rows)


def _blobs(n_per=30, centres=4, d=3, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, d)) * 10
    x = np.concatenate([m + spread * rng.standard_normal((n_per, d)) for m in means])
    return x.astype(np.float32), np.repeat(np.arange(centres), n_per)


# --- BALD -------------------------------------------------------------------------------------------

def test_bald_matches_the_definition_and_ranks_largest_first():
    p = _probs(6, 40, 3, seed=1)
    want = _bald_reference(p)
    np.testing.assert_allclose(bald_module.bald_scores(p), want, rtol=1e-10, atol=1e-12)
    picks = af.bald(p, 7)
    assert picks.tolist() == np.lexsort((np.arange(40), -want))[:7].tolist()


def test_bald_from_logits_equals_bald_of_the_softmax_even_for_huge_logits():
    z = np.random.default_rng(2).standard_normal((5, 30, 4)) * 3
    z[:, 0] += 1e6  # finite but far beyond exp's range: a stable log-softmax is needed
    p = np.exp(z - z.max(axis=2, keepdims=True))
    p /= p.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(bald_module.bald_scores(z, from_logits=True), _bald_reference(p), atol=1e-10)
    assert af.bald(z, 5, from_logits=True).tolist() == af.bald(p, 5).tolist()


def test_bald_ties_go_to_the_lower_row_and_excluded_rows_are_never_picked():
    p = _probs(4, 10, 3, seed=3)
    p[:, [2, 5, 7]] = p[:, [1]]  # four identical rows
    top = af.bald(p, 10)
    tied = [int(r) for r in top if r in (1, 2, 5, 7)]
    assert tied == [1, 2, 5, 7]
    assert 1 not in af.bald(p, 5, exclude=[1]).tolist()


def test_bald_numpy_rendering_streams_one_block_at_a_time(monkeypatch, tmp_path):
    # The NumPy rendering (BatchBALD's reader and the reference) never holds more than one block.
    p = _probs(3, 500, 4, seed=4).astype(np.float32)
    path = tmp_path / "mc.f32"
    p.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=p.shape)
    want = bald_module.bald_scores(p)
    monkeypatch.setattr(bald_module, "CHUNK_BYTES", 3 * 4 * 8 * 64)  # 64 rows of float64 per block
    seen = []
    real = bald_module.read_float64

    def spy(x, index):
        block = real(x, index)
        seen.append(block.shape)
        return block

    monkeypatch.setattr(bald_module, "read_float64", spy)
    np.testing.assert_array_equal(bald_module.bald_scores(mm), want)
    assert len(seen) == 8 and max(shape[1] for shape in seen) == 64


def test_bald_errors():
    p = _probs(1, 10, 3)
    with pytest.raises(ValueError, match="at least 2"):
        af.bald(p, 2)
    with pytest.raises(ValueError, match="larger than the 8 rows"):
        af.bald(_probs(3, 10, 3), 9, exclude=[0, 1])
    bad = _probs(3, 10, 3)
    bad[1, 6, 0] = np.nan
    with pytest.raises(ValueError, match="row 6"):
        af.bald(bad, 2)
    bad = _probs(3, 10, 3)
    bad[2, 4] *= 2
    with pytest.raises(ValueError, match="row 4 is not a probability"):
        af.bald(bad, 2)
    with pytest.raises(ValueError, match="3-dimensional"):
        af.bald(_probs(3, 10, 3)[0], 2)


# --- BatchBALD ----------------------------------------------------------------------------------------

def test_batchbald_exact_joint_mutual_information_by_enumeration():
    p = _probs(5, 9, 3, seed=5)
    result = batchbald_module.batchbald_select(p, 4, exact_configs=100)
    picks = result.indices.tolist()
    assert result.exact.all()
    for i in range(4):
        assert result.mutual_information[i] == pytest.approx(_joint_mi_reference(p, picks[:i + 1]), rel=1e-5)
    # the greedy itself, by brute force over the candidates
    chosen = []
    for _ in range(4):
        chosen.append(max((j for j in range(9) if j not in chosen), key=lambda j: (_joint_mi_reference(p, chosen + [j]), -j)))
    assert picks == chosen
    assert picks[0] == int(af.bald(p, 1)[0])  # the first pick is BALD's


def test_batchbald_sampled_estimator_is_close_and_deterministic_per_seed():
    p = _probs(6, 10, 3, seed=6)
    exact = batchbald_module.batchbald_select(p, 4, exact_configs=10**6)
    sampled = batchbald_module.batchbald_select(p, 4, exact_configs=3, samples=20000, seed=1)
    assert not sampled.exact[2:].any()
    np.testing.assert_allclose(sampled.mutual_information, exact.mutual_information, atol=0.03)
    again = batchbald_module.batchbald_select(p, 4, exact_configs=3, samples=20000, seed=1)
    assert again.indices.tolist() == sampled.indices.tolist()
    np.testing.assert_array_equal(again.mutual_information, sampled.mutual_information)


def test_batchbald_avoids_redundant_copies_where_bald_does_not():
    p = _probs(8, 12, 3, seed=7)
    top = int(af.bald(p, 1)[0])
    copies = np.concatenate([p, np.repeat(p[:, top:top + 1], 3, axis=1)], axis=1)  # rows 12-14 copy `top`
    assert set(af.bald(copies, 4).tolist()) >= {12, 13, 14}
    assert len({top, 12, 13, 14} & set(af.batchbald(copies, 4).tolist())) == 1


def test_batchbald_candidates_exclude_and_budget(monkeypatch):
    p = _probs(4, 30, 3, seed=8)
    picks = af.batchbald(p, 3, candidates=5, exclude=[0])
    assert set(picks.tolist()) <= set(af.bald(p, 5, exclude=[0]).tolist())
    with pytest.raises(ValueError, match="candidate rows"):
        af.batchbald(p, 6, candidates=5)
    monkeypatch.setattr(batchbald_module, "MAX_WORK", 1000)
    with pytest.raises(ValueError, match="over the budget"):
        af.batchbald(p, 3)


# --- TypiClust ----------------------------------------------------------------------------------------

def test_typicality_matches_a_dense_reference():
    x = np.random.default_rng(9).standard_normal((50, 4)).astype(np.float32)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    want = 1 / (np.sort(d, axis=1)[:, :7].mean(axis=1) + 1e-5)
    np.testing.assert_allclose(typicality(x, 7), want, rtol=1e-4)


def _typiclust_reference(x, labels, labelled, k, neighbours=20, min_size=5):
    sizes = np.bincount(labels)
    taken = set(int(i) for i in labelled)
    picks = []
    for _ in range(k):
        def count(c):
            return sum(1 for i in taken if labels[i] == c)
        usable = [c for c in range(sizes.size) if any(labels[i] == c and i not in taken for i in range(len(x)))]
        large = [c for c in usable if sizes[c] > min_size] or usable
        cluster = min(large, key=lambda c: (count(c), -sizes[c], c))
        rows = np.flatnonzero(labels == cluster)
        sub = x[rows].astype(np.float64)
        d = np.sqrt(((sub[:, None] - sub[None]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        kk = min(neighbours, len(rows) - 1)
        typ = 1 / (np.sort(d, axis=1)[:, :kk].mean(axis=1) + 1e-5)
        best = max((i for i in range(len(rows)) if rows[i] not in taken), key=lambda i: (typ[i], -rows[i]))
        picks.append(int(rows[best]))
        taken.add(int(rows[best]))
    return picks


def test_typiclust_matches_the_plain_procedure_and_covers_every_blob():
    x, blob = _blobs()
    labelled = np.array([0, 1])
    picks = af.typiclust(x, 6, labeled=labelled, seed=3)
    labels = kmeans_labels(x, 8, 3)
    assert picks.tolist() == _typiclust_reference(x, labels, labelled, 6)
    assert set(blob[af.typiclust(x, 8, seed=0)]) == {0, 1, 2, 3}
    assert af.typiclust(x, 5, seed=11).tolist() == af.typiclust(x, 5, seed=11).tolist()


# --- ProbCover ----------------------------------------------------------------------------------------

def _probcover_reference(x, delta, labelled, k):
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    ball = d < delta
    covered = ball[labelled].any(axis=0) if len(labelled) else np.zeros(len(x), bool)
    blocked = np.zeros(len(x), bool)
    blocked[labelled] = True
    picks = []
    for _ in range(k):
        degree = np.where(blocked, -1, (ball & ~covered).sum(axis=1))
        best = int(np.argmax(degree))
        if degree[best] <= 0:
            break
        picks.append(best)
        blocked[best] = True
        covered |= ball[best]
    return picks


def test_probcover_matches_a_dense_greedy():
    x = np.random.default_rng(10).standard_normal((120, 3)).astype(np.float32)
    for labelled in ([], [5, 17, 60]):
        want = _probcover_reference(x, 0.9, np.array(labelled, dtype=np.int64), 8)
        assert af.probcover(x, 8, delta=0.9, labeled=labelled or None).tolist() == want


def test_probcover_once_everything_is_covered_picks_at_random_per_seed():
    x, _ = _blobs(n_per=10, centres=3)
    picks = af.probcover(x, 6, delta=3.0, seed=1)
    assert len(set(picks.tolist())) == 6
    assert picks[:3].tolist() == _probcover_reference(x, 3.0, np.empty(0, np.int64), 6)
    assert af.probcover(x, 6, delta=3.0, seed=1).tolist() == picks.tolist()


def test_probcover_purity_rule_matches_a_dense_reference():
    x, _ = _blobs(n_per=25, centres=4, spread=1.0)
    labels = kmeans_labels(x, 4, 0)
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    r = np.array([d[i, labels != labels[i]].min() for i in range(len(x))])
    want = max(delta for delta in r if (r >= delta).mean() >= 0.95)
    assert purity_delta(x, 4, 0.95, 0) == pytest.approx(want, rel=1e-4)
    assert af.probcover(x, 4, pseudo_classes=4).tolist() == af.probcover(x, 4, delta=purity_delta(x, 4, 0.95, 0)).tolist()


def test_probcover_errors():
    x = np.random.default_rng(11).standard_normal((40, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="delta must be a finite number > 0"):
        af.probcover(x, 3, delta=0)
    with pytest.raises(ValueError, match="max_edges"):
        af.probcover(x, 3, delta=100.0, max_edges=100)
    with pytest.raises(ValueError, match="larger than the 38 rows"):
        af.probcover(x, 39, delta=1.0, labeled=[0, 1])
    with pytest.raises(ValueError, match="labeled contains index 3 more than once"):
        af.probcover(x, 3, delta=1.0, labeled=[3, 3])


# --- Cluster-Margin -----------------------------------------------------------------------------------

def test_hac_clusters_is_scipy_average_linkage():
    from scipy.cluster.hierarchy import fcluster, linkage

    x, _ = _blobs(n_per=15, centres=3)
    want = fcluster(linkage(x.astype(np.float64), "average"), t=3, criterion="maxclust") - 1
    np.testing.assert_array_equal(hac_clusters(x, 3), want)


def test_round_robin_visits_clusters_from_the_smallest():
    rows = np.arange(10)
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, 2])
    picks = round_robin(rows, labels, 6, np.random.default_rng(0))
    assert [labels[p] for p in picks] == [1, 2, 0, 1, 2, 0]


def test_cluster_margin_picks_margin_candidates_spread_over_clusters():
    x, blob = _blobs(n_per=20, centres=4)
    p = np.random.default_rng(12).dirichlet(np.ones(3), len(x)).astype(np.float32)
    picks = af.cluster_margin(p, x, 4, clusters=4, candidates=40, exclude=[0, 1], seed=2)
    candidates = af.select_uncertain(p, 40, "margin", exclude=[0, 1])
    assert set(picks.tolist()) <= set(candidates.tolist())
    assert len(set(blob[picks])) == len(set(blob[candidates]) & set(range(4)))
    clustering = hac_clusters(x, 4)
    again = af.cluster_margin(p, None, 4, clustering=clustering, candidates=40, exclude=[0, 1], seed=2)
    assert again.tolist() == picks.tolist()


def test_cluster_margin_beyond_exact_hac_uses_micro_clusters(monkeypatch):
    from asvp_fast.acquisition import cluster_margin as module

    monkeypatch.setattr(module, "EXACT_HAC_MAX", 50)
    monkeypatch.setattr(module, "MICRO_CLUSTERS", 20)
    x, blob = _blobs(n_per=30, centres=3)
    labels = hac_clusters(x, 3)
    assert len(set(zip(labels.tolist(), blob.tolist()))) == 3  # the three blobs, recovered


# --- in the loop and the ask/tell learner -------------------------------------------------------------

@pytest.mark.parametrize("strategy", ["bald", "batchbald", "typiclust", "probcover", "cluster_margin"])
def test_each_strategy_runs_in_a_tiny_loop(tmp_path, strategy):
    from asvp_fast.loop import parse_config, run

    raw = {"seed": 0, "methods": ["svpp"], "data": {"case": "synthetic", "pool_size": 120, "test_size": 40},
           "schedule": {"initial": 10, "steps": [{"until": 30, "step": 10}]},
           "proxy": {"epochs": 3, "dropout": 0.3, "mc_samples": 4}, "training": {"epochs": 1, "batch_size": 16},
           "selection": {"strategy": strategy}}
    state = run(parse_config(raw), tmp_path / strategy, echo=lambda *a, **k: None, report=False)
    rounds = state.methods["svpp"].rounds
    chosen = [row for r in rounds for row in r.new]
    assert len(chosen) == len(set(chosen)) == 30


def test_bald_without_dropout_says_what_to_set(tmp_path):
    learner = af.ActiveLearner(np.random.default_rng(0).standard_normal((60, 4)).astype(np.float32),
                               strategy="bald", state_dir=tmp_path, epochs=2)
    first = learner.query(6)
    learner.teach(first, np.arange(6) % 2)
    with pytest.raises(ValueError, match="dropout > 0"):
        learner.query(4)


def test_mc_dropout_proxy_keeps_the_default_proxy_unchanged():
    from asvp_fast.loop.models.proxy import ProxyConfig, proxy_mc_logits, train_proxy

    x = np.random.default_rng(1).standard_normal((80, 5)).astype(np.float32)
    rows, labels = np.arange(20), np.arange(20) % 3
    plain = train_proxy(x, rows, labels, 3, ProxyConfig(epochs=2))
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    with_dropout = train_proxy(x, rows, labels, 3, ProxyConfig(epochs=2, dropout=0.5))
    assert set(plain.state_dict()) == set(with_dropout.state_dict())
    state = torch.get_rng_state()
    mc = proxy_mc_logits(with_dropout, x, 5, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert mc.shape == (5, 80, 3) and not np.allclose(mc[0], mc[1])
    np.testing.assert_array_equal(mc, proxy_mc_logits(with_dropout, x, 5, seed=3))
    # a shard's samples are the whole pool's samples of its rows (masks per block of global rows;
    # a dropped unit moves a logit by O(1), the tolerance only absorbs the batch size's rounding)
    for lo, hi in ((0, 1), (13, 80)):
        np.testing.assert_allclose(proxy_mc_logits(with_dropout, x[lo:hi], 5, seed=3, row_offset=lo), mc[:, lo:hi],
                                   rtol=1e-5, atol=1e-5)


def test_a_method_takes_its_own_strategy(tmp_path):
    from asvp_fast.loop import parse_config, run

    raw = {"seed": 1, "methods": [{"method": "svpp", "name": "svpp:typiclust", "strategy": "typiclust"},
                                  {"method": "svpp", "name": "svpp:cluster_margin", "strategy": "cluster_margin"}],
           "data": {"case": "synthetic", "pool_size": 120, "test_size": 40},
           "schedule": {"initial": 10, "steps": [{"until": 20, "step": 10}]},
           "proxy": {"epochs": 3}, "training": {"epochs": 1, "batch_size": 16}}
    state = run(parse_config(raw), tmp_path / "r", echo=lambda *a, **k: None, report=False)
    assert all(len(state.methods[name].rounds[-1].new) == 10 for name in ("svpp:typiclust", "svpp:cluster_margin"))


def test_the_learner_saves_mc_dropout_only_when_set(tmp_path):
    import json

    x = np.random.default_rng(2).standard_normal((50, 3)).astype(np.float32)
    af.ActiveLearner(x, strategy="margin", state_dir=tmp_path / "plain", epochs=2).query(4)
    af.ActiveLearner(x, strategy="bald", state_dir=tmp_path / "mc", epochs=2, dropout=0.25).query(4)
    saved = {name: json.loads(next((tmp_path / name).glob("*.json")).read_text())["settings"]["proxy"]
             for name in ("plain", "mc")}
    assert "dropout" not in saved["plain"] and saved["mc"]["dropout"] == 0.25 and "mc_samples" not in saved["mc"]
    af.ActiveLearner(x, strategy="bald", state_dir=tmp_path / "mc", epochs=2, dropout=0.25)  # resumes
    with pytest.raises(ValueError, match="dropout"):
        af.ActiveLearner(x, strategy="bald", state_dir=tmp_path / "mc", epochs=2, dropout=0.5)


def test_the_benchmark_references_agree_with_ours_on_a_tiny_pool():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    try:
        import strategies as bench
    finally:
        sys.path.pop(0)
    p = bench._mc(6, 300, 4)
    assert bench.ref_bald(p, 10).tolist() == af.bald(p, 10).tolist()
    assert bench.ref_batchbald(p, 3).tolist() == af.batchbald(p, 3).tolist()
    x = bench._features(400, 8)
    assert bench.ref_probcover(x, 10, 2.0).tolist() == af.probcover(x, 10, delta=2.0).tolist()
    assert len(bench.ref_typiclust(x, 5)) == len(bench.ref_cluster_margin(p[0], x, 5, 20)) == 5
