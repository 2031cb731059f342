"""CUDA path: same results as the CPU path (needs a CUDA device; skipped visibly otherwise)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import asvp_fast as af
import asvp_fast._C as _C

import reference as ref
from helpers import random_logits, random_probabilities

pytestmark = pytest.mark.cuda
if os.environ.get("ASVP_REQUIRE_CUDA", "").strip() not in ("", "0"):
    import torch  # a missing torch fails the run instead of skipping it (conftest.py)
else:
    torch = pytest.importorskip("torch")

KINDS = ["margin", "entropy", "least_confidence"]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("from_logits", [False, True])
def test_cuda_tensor_matches_cpu(dtype, from_logits, rng):
    x = random_logits(rng, 20_000, 257) if from_logits else random_probabilities(rng, 20_000, 257)
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    g = t.cuda()
    exclude = torch.arange(0, 20_000, 7)
    for kind in KINDS:
        s_gpu = af.scores(g, kind, from_logits=from_logits)
        assert s_gpu.device == g.device
        s_cpu = af.scores(t, kind, from_logits=from_logits)
        np.testing.assert_allclose(s_gpu.cpu().numpy(), s_cpu.numpy(), rtol=1e-4, atol=2e-5)
        idx = af.select_uncertain(g, 1000, kind, from_logits=from_logits, exclude=exclude)
        assert idx.device == g.device and idx.dtype == torch.int64
        mask = np.zeros(20_000, bool)
        mask[exclude.numpy()] = True
        # exactly the order of the GPU's own scores, ties to the lower index
        np.testing.assert_array_equal(idx.cpu().numpy(), ref.select(s_gpu.cpu().numpy(), 1000, kind, mask))


def test_cuda_ties_and_numpy_input(rng):
    x = np.repeat(random_probabilities(rng, 50, 10), 40, axis=0)
    idx = af.select_uncertain(x, 500, "entropy", device="cuda")
    assert isinstance(idx, np.ndarray)
    np.testing.assert_array_equal(idx, ref.select(af.scores(x, "entropy", device="cuda"), 500, "entropy"))


def test_cuda_bad_row_named(rng):
    x = torch.from_numpy(random_probabilities(rng, 1000, 5)).cuda()
    x[613, 2] = float("nan")
    with pytest.raises(ValueError, match="row 613 of x contains NaN or Inf"):
        af.select_uncertain(x, 5)


# --- diversity --------------------------------------------------------------------------------

def _clustered(rng, n, d, dtype=np.float32):
    centres = rng.standard_normal((30, d)) * 4
    return (centres[rng.integers(0, 30, n)] + 0.5 * rng.standard_normal((n, d))).astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_cuda_kcenter_is_greedy_and_matches_cpu(dtype, rng):
    from asvp_fast.acquisition.diversity import diversity_select

    x = _clustered(rng, 20_000, 40)
    t = torch.from_numpy(x).to(getattr(torch, dtype))
    labeled = rng.choice(20_000, 500, replace=False)
    gpu = diversity_select("kcenter", t.cuda(), 300, labeled=labeled)
    cpu = diversity_select("kcenter", t, 300, labeled=labeled)
    assert gpu.indices.device.type == "cuda"
    picks = gpu.indices.cpu().numpy()
    assert not np.isin(picks, labeled).any() and len(np.unique(picks)) == 300
    chosen, best = ref.greedy_radii(t.double().numpy(), picks, labeled)
    np.testing.assert_array_less(best - chosen, 2e-4 * best + 1e-6)
    # Different summation orders may split near-ties differently; the radii must agree.
    np.testing.assert_allclose(gpu.distances, cpu.distances, rtol=2e-4)
    plain = diversity_select("kcenter", t.cuda(), 300, labeled=labeled, prune=False)
    np.testing.assert_array_equal(plain.indices.cpu().numpy(), picks)


def test_cuda_kmeans_pp_and_badge_are_deterministic_and_valid(rng):
    x = _clustered(rng, 30_000, 24)
    p = rng.dirichlet(np.ones(7), 30_000).astype(np.float32)
    exclude = np.arange(0, 30_000, 3)
    g = torch.from_numpy(x).cuda()
    a = af.kmeans_pp(g, 200, seed=4, exclude=exclude)
    b = af.kmeans_pp(g, 200, seed=4, exclude=exclude)
    assert torch.equal(a, b) and not np.isin(a.cpu().numpy(), exclude).any()
    c = af.badge(torch.from_numpy(p).cuda(), g, 200, seed=4, exclude=exclude)
    assert len(torch.unique(c)) == 200 and not np.isin(c.cpu().numpy(), exclude).any()
    emb = ref.gradient_embedding(p, x)
    assert int(c[0]) == int(np.argmax(np.where(np.isin(np.arange(30_000), exclude), -1, (emb**2).sum(1))))


def test_cuda_kmeans_pp_distribution_matches_cpu_sampler():
    x = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [-2, 1], [5, -1]], dtype=np.float32)
    g = torch.from_numpy(x).cuda()
    # Same counter-based draws and D² walk: on this tiny pool (one block) the picks agree.
    for seed in range(200):
        assert af.kmeans_pp(g, 4, seed=seed).cpu().tolist() == af.kmeans_pp(x, 4, seed=seed).tolist()


def test_cuda_diversity_bad_rows_named(rng):
    x = torch.from_numpy(_clustered(rng, 5000, 8)).cuda()
    x[1234, 3] = float("nan")
    with pytest.raises(ValueError, match="row 1234 of features"):
        af.kcenter_greedy(x, 10)
    p = torch.from_numpy(rng.dirichlet(np.ones(3), 5000).astype(np.float32)).cuda()
    p[77, 0] = float("inf")
    with pytest.raises(ValueError, match="row 77 of x"):
        af.badge(p, torch.from_numpy(_clustered(rng, 5000, 8)).cuda(), 10)


# --- preconditions, devices, streams, memory (issue 16) ----------------------------------------

def test_cuda_k_one_checks_every_row():
    with pytest.raises(ValueError, match="row 0 of features contains NaN"):
        af.kcenter_greedy(np.full((1, 8), np.nan, np.float32), 1, device="cuda")
    x = torch.zeros((3000, 4), device="cuda")
    x[2345, 1] = float("inf")
    for fn in (af.kcenter_greedy, af.kmeans_pp):
        with pytest.raises(ValueError, match="row 2345 of features"):
            fn(x, 1)


def test_cuda_nan_in_a_labelled_row_is_named(rng):
    x = torch.from_numpy(_clustered(rng, 4000, 6)).cuda()
    x[17, 2] = float("nan")
    picks = np.empty(3, np.int64)
    lab = np.array([5, 17, 40], np.int64)
    nearest = np.zeros(4000, np.int64)
    handle = torch.utils.dlpack.to_dlpack(x)
    stream = torch.cuda.current_stream().cuda_stream
    with pytest.raises(ValueError, match="row 17 of features"):
        _C.diversity(0, handle, None, False, True, lab, nearest, None, picks, None, 3, 0, 0, True, True, stream)


def test_cuda_native_k_check_with_a_device_mask():
    p = torch.full((100, 4), 0.25, device="cuda")
    mask = torch.ones(100, dtype=torch.uint8, device="cuda")
    mask[:3] = 0
    out = torch.empty(5, dtype=torch.int64, device="cuda")
    with pytest.raises(ValueError, match="k is larger than the rows that are not excluded"):
        _C.uncertainty(torch.utils.dlpack.to_dlpack(p), 0, False, True, torch.utils.dlpack.to_dlpack(mask), None,
                       torch.utils.dlpack.to_dlpack(out), 5, 0, False, 0, True, torch.cuda.current_stream().cuda_stream)


def test_cuda_badge_operands_on_different_gpus_are_rejected(rng):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs at least 2 CUDA devices")
    p = torch.from_numpy(rng.dirichlet(np.ones(3), 100).astype(np.float32))
    h = torch.from_numpy(rng.standard_normal((100, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="same device"):
        af.badge(p.to("cuda:1"), h.to("cuda:0"), 5)


def test_cuda_layout_does_not_change_a_single_bit(rng):
    x = random_logits(rng, 5000, 40).astype(np.float16)
    g = torch.from_numpy(x).cuda()                # 80-byte rows: one 16-byte load per chunk
    wide = torch.zeros((5000, 80), dtype=torch.float16, device="cuda")
    wide[:, 3:43] = g
    strided = wide[:, 3:43]                       # unaligned rows, unit column stride: element loads
    transposed = g.t().contiguous().t()           # column-major
    for kind in KINDS:
        base = af.scores(g, kind, from_logits=True)
        for other in (strided, transposed):
            assert torch.equal(af.scores(other, kind, from_logits=True), base)
    f = torch.from_numpy(_clustered(rng, 6000, 40)).cuda()
    ft = f.t().contiguous().t()
    assert torch.equal(af.kcenter_greedy(f, 50), af.kcenter_greedy(ft, 50))
    assert torch.equal(af.kmeans_pp(f, 50, seed=2), af.kmeans_pp(ft, 50, seed=2))


def _exact_features(rng, n, d):
    return rng.integers(-8, 9, (n, d)).astype(np.float32)


def test_cuda_exact_parity_with_the_cpu(rng):
    x = _exact_features(rng, 20_000, 12)
    g = torch.from_numpy(x).cuda()
    labeled = rng.choice(20_000, 300, replace=False)
    exclude = rng.choice(20_000, 1000, replace=False)
    assert af.kcenter_greedy(g, 200).cpu().tolist() == af.kcenter_greedy(x, 200).tolist()
    with_labels = af.kcenter_greedy(g, 200, labeled=labeled).cpu().tolist()
    assert with_labels == af.kcenter_greedy(x, 200, labeled=labeled).tolist()
    for seed in range(3):
        assert (af.kmeans_pp(g, 150, seed=seed, exclude=exclude).cpu().tolist()
                == af.kmeans_pp(x, 150, seed=seed, exclude=exclude).tolist())
    p = (rng.multinomial(8, np.full(4, 0.25), 20_000) / 8).astype(np.float32)  # multiples of 1/8, sum exactly 1
    got = af.badge(torch.from_numpy(p).cuda(), g, 100, seed=1, exclude=exclude)
    assert got.cpu().tolist() == af.badge(p, x, 100, seed=1, exclude=exclude).tolist()


def test_cuda_host_input_through_several_staging_chunks(rng):
    x = random_logits(rng, 300_001, 23)
    s_gpu = np.empty(300_001, np.float32)
    _C.uncertainty(x, 1, True, True, None, s_gpu, None, 0, 0, False, 1 << 20, True, 0)  # 1 MB chunks
    np.testing.assert_allclose(s_gpu, af.scores(x, "entropy", from_logits=True), rtol=1e-4, atol=2e-5)


def test_cuda_workspace_goes_through_pytorch_and_memory_is_stable(rng):
    g = torch.from_numpy(_clustered(rng, 50_000, 16)).cuda()
    p = torch.from_numpy(random_probabilities(rng, 50_000, 10)).cuda()
    af.kmeans_pp(g, 20)
    torch.cuda.synchronize()
    before_count = torch.cuda.memory_stats()["allocation.all.allocated"]
    before = torch.cuda.memory_allocated()
    free_before = torch.cuda.mem_get_info()[0]
    for _ in range(10):
        af.kmeans_pp(g, 20)
        af.select_uncertain(p, 100)
    torch.cuda.synchronize()
    assert torch.cuda.memory_stats()["allocation.all.allocated"] > before_count  # scratch came from PyTorch
    assert torch.cuda.memory_allocated() == before
    assert abs(torch.cuda.mem_get_info()[0] - free_before) < 64 << 20


def test_cuda_work_is_ordered_on_the_callers_stream(rng):
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    with torch.cuda.stream(side):
        y = a
        for _ in range(20):
            y = torch.tanh(y @ a) * 0.01
        logits = y[:, :100].contiguous()
        got = af.scores(logits, "entropy", from_logits=True)  # no synchronisation before the call
        picks = af.kcenter_greedy(y[:, :64].contiguous(), 10)
    torch.cuda.synchronize()
    assert torch.equal(got, af.scores(logits, "entropy", from_logits=True))
    assert torch.equal(picks, af.kcenter_greedy(y[:, :64].contiguous(), 10))


def test_cuda_exception_in_a_progress_callback(rng):
    x = torch.from_numpy(_clustered(rng, 20_000, 8)).cuda()
    picks = np.empty(100, np.int64)

    def boom(done, total):
        raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        _C.diversity(0, torch.utils.dlpack.to_dlpack(x), None, False, True, None, None, None, picks, None, 100, 0, 0,
                     True, True, torch.cuda.current_stream().cuda_stream, boom)
    host = random_logits(rng, 200_000, 30)
    with pytest.raises(RuntimeError, match="stop here"):
        _C.uncertainty(host, 0, True, True, None, np.empty(200_000, np.float32), None, 0, 0, False, 1 << 20, True, 0,
                       boom)
    assert af.kcenter_greedy(x, 5).shape == (5,)  # the device is still fine
