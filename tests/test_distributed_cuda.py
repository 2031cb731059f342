"""Sharded diversity selection on CUDA devices (needs a GPU; skipped visibly otherwise).

- One GPU: ``_C.shard_fold_in`` on CUDA tensors computes, bit for bit, the host rendering of its
  warp arithmetic and the distances of the single-process CUDA kernel: replaying that kernel's
  picks with the fold-in gives each pick's reported distance, and its farthest row (k-center) or
  its D² draw (k-means++, BADGE: the choose kernel rendered over r) is the next pick.
- Two GPUs or more: two processes (pure NCCL, and NCCL beside gloo) hold one shard each on their
  own device; sharded k-center, k-means++, BADGE, margin and (gathered) TypiClust return the
  single-process CUDA picks on every rank.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import pytest
from gloo_ranks import leave_together, spawn, write_rank

import asvp_fast as af
import asvp_fast._C as _C
from asvp_fast.acquisition import sharded_math as sm

pytestmark = pytest.mark.cuda
if os.environ.get("ASVP_REQUIRE_CUDA", "").strip() not in ("", "0"):
    import torch  # a missing torch fails the run instead of skipping it (conftest.py)
else:
    torch = pytest.importorskip("torch")

MULTI_GPU_SKIP = "needs at least 2 CUDA devices"


def _p8(n):
    return (n + 7) // 8 * 8


def _pool(seed, n=5000, d=77, c=9):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[2000:2300] = x[2000]  # coinciding rows: distances of 0 and ties
    return x, rng.dirichlet(np.full(c, 0.4), n).astype(np.float32)


def _capsule(t):
    return torch.utils.dlpack.to_dlpack(t)


def _fold(x, centre, r, *badge):
    stream = torch.cuda.current_stream(x.device).cuda_stream
    _C.shard_fold_in(*[_capsule(a) for a in (x, centre, r, *badge)], stream=stream)


def _norms(p, h):
    m = p.shape[0]
    y = torch.empty(m, dtype=torch.int64, device=p.device)
    qn, hn = (torch.empty(m, dtype=torch.float32, device=p.device) for _ in range(2))
    _C.shard_badge_norms(*[_capsule(a) for a in (p, h, y, qn, hn)],
                         stream=torch.cuda.current_stream(p.device).cuda_stream)
    return y, qn, hn


def _euclidean_centre(row):
    c = torch.zeros(_p8(row.numel()), dtype=torch.float32, device=row.device)
    c[:row.numel()] = row
    return c


def _badge_centre(p, h, y, qn, hn, i):
    C, d = p.shape[1], h.shape[1]
    c = torch.zeros(_p8(C) + _p8(d) + 2, dtype=torch.float32, device=p.device)
    c[:C] = p[i]
    c[int(y[i])] -= 1.0
    c[_p8(C):_p8(C) + d] = h[i].float()
    c[-2], c[-1] = qn[i], hn[i]
    return c


WIDTH = {"float32": 4, "bfloat16": 8, "float16": 8, "float64": 2}  # elements per 16-byte chunk


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("d", [1, 5, 64, 77, 129, 1030])
def test_fold_in_is_the_host_rendering(d, dtype):
    x, _ = _pool(1, n=3000, d=d)
    g = torch.from_numpy(x).cuda().to(getattr(torch, dtype))
    r = torch.full((3000,), float("inf"), device="cuda")
    r[10] = -1.0
    r[11] = 0.0
    centre = _euclidean_centre(g[10].float())
    _fold(g, centre, r)
    want = np.full(3000, np.inf, dtype=np.float32)
    want[10], want[11] = -1.0, 0.0
    want = _C.shard_fold_cuda_rendering(g.float().cpu().numpy(), centre.cpu().numpy(), want, width=WIDTH[dtype])
    np.testing.assert_array_equal(r.cpu().numpy().view(np.int32), want.view(np.int32))


def test_badge_norms_and_fold_in_are_the_host_rendering():
    x, p = _pool(2)
    gx, gp = torch.from_numpy(x).cuda(), torch.from_numpy(p).cuda()
    y, qn, hn = _norms(gp, gx)
    ry, rqn, rhn = _C.shard_badge_norms_rendering(p, x)
    np.testing.assert_array_equal(y.cpu().numpy(), ry)
    np.testing.assert_array_equal(qn.cpu().numpy().view(np.int32), rqn.view(np.int32))
    np.testing.assert_array_equal(hn.cpu().numpy().view(np.int32), rhn.view(np.int32))
    r = torch.full((x.shape[0],), float("inf"), device="cuda")
    centre = _badge_centre(gp, gx, y, qn, hn, 42)
    _fold(gx, centre, r, gp, y, qn, hn)
    want = _C.shard_fold_cuda_rendering(x, centre.cpu().numpy(), np.full(x.shape[0], np.inf, np.float32), p, ry, rqn,
                                        rhn)
    np.testing.assert_array_equal(r.cpu().numpy().view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("method", ["kcenter", "kmeans_pp", "badge"])
def test_fold_in_replays_the_single_process_cuda_kernel(method, dtype):
    x, p = _pool(3)
    gx, gp = torch.from_numpy(x).cuda().to(getattr(torch, dtype)), torch.from_numpy(p).cuda()
    k, seed = 40, 5
    if method == "badge":
        res = af.diversity_select("badge", gx, k, x=gp, seed=seed)
    else:
        res = af.diversity_select(method, gx, k, seed=seed)
    picks, radii = res.indices.cpu().numpy(), res.distances.cpu().numpy()
    r = torch.full((x.shape[0],), float("inf"), device="cuda")
    if method == "badge":
        y, qn, hn = _norms(gp, gx)
    for t in range(1, k):
        row = int(picks[t - 1])
        r[row] = -1.0
        if method == "badge":
            _fold(gx, _badge_centre(gp, gx, y, qn, hn, row), r, gp, y, qn, hn)
        else:
            _fold(gx, _euclidean_centre(gx[row].float()), r)
        host = r.cpu().numpy()
        assert host[picks[t]].view(np.int32) == radii[t].view(np.int32), f"pick {t}"
        if method == "kcenter":
            assert int(np.argmax(host)) == picks[t], f"pick {t}"
        else:
            assert int(_C.render_choose_d2(host, sm.uniform01(seed, t))) == picks[t], f"pick {t}"


# -- two processes, one GPU each ------------------------------------------------------------------

CASES = {"kcenter": 30, "kmeans_pp": 30, "badge": 25, "kcenter_bf16": 30, "kcenter_labelled": 20, "margin": 40,
         "typiclust": 10}
BOUNDS = [0, 2345, 5000]
LABELLED = np.array([3, 2344, 2345, 4000])


def _run(method, x, p, k, group, lo=0):
    if method == "margin":  # the sharded top-k merge (its collectives on the NCCL device)
        return af.select_uncertain(p, k, "margin", group=group)
    if method == "typiclust":  # the gathered route: the pool to rank 0 through NCCL
        return af.typiclust(x, k, seed=7, group=group)
    if method == "kcenter_bf16":
        return af.kcenter_greedy(x.bfloat16(), k, seed=7, group=group)
    if method == "kcenter_labelled":
        mine = LABELLED[(LABELLED >= lo) & (LABELLED < lo + x.shape[0])] - lo
        return af.kcenter_greedy(x, k, labeled=mine, group=group)
    if method == "badge":
        return af.badge(p, x, k, seed=7, group=group)
    if method == "kmeans_pp":
        return af.kmeans_pp(x, k, seed=7, group=group)
    return af.kcenter_greedy(x, k, seed=7, group=group)


def _worker(rank, world, port, out_dir, backend):
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.cuda.set_device(rank)
    # pure NCCL (what `torchrun -m asvp_fast` uses on GPUs: the collectives' small values go
    # through the current device), or NCCL for CUDA tensors beside gloo for host ones
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    x, p = _pool(4)
    lo, hi = BOUNDS[rank], BOUNDS[rank + 1]
    gx, gp = torch.from_numpy(x[lo:hi]).cuda(), torch.from_numpy(p[lo:hi]).cuda()
    results = {}
    try:
        for method, k in CASES.items():
            results[method] = np.asarray(_run(method, gx, gp, k, dist.group.WORLD, lo).cpu())
            if rank == 0:
                whole = _run(method, torch.from_numpy(x).cuda(), torch.from_numpy(p).cuda(), k, None)
                results["ref_" + method] = np.asarray(whole.cpu())
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        results["error"] = repr(exc)
    finally:
        write_rank(out_dir, rank, results)
    leave_together()


@pytest.mark.parametrize("backend", ["nccl", "cpu:gloo,cuda:nccl"])
def test_two_gpus_pick_as_one_gpu(tmp_path, backend):
    if torch.cuda.device_count() < 2:
        pytest.skip(MULTI_GPU_SKIP)
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_nccl_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with NCCL and gloo is not available")
    world = 2
    per_rank = spawn(_worker, world, tmp_path, backend)
    for rank, got in enumerate(per_rank):
        assert "error" not in got, f"rank {rank}: {got.get('error')}"
        for method in CASES:
            np.testing.assert_array_equal(got[method], per_rank[0]["ref_" + method], err_msg=f"{method}, rank {rank}")
