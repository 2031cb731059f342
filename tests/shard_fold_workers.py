"""What the spawned ranks of tests/test_shard_fold_rendering.py run: the sharded driver's device
path on CPU tensors, with the CUDA kernels' host renderings in their place (a module of its own,
importable by name in the child processes)."""

from __future__ import annotations

import numpy as np

import asvp_fast._C as _C
from gloo_ranks import init_gloo, leave_together, write_rank


def _rendered_fold_in(x, centre, r, *badge):
    """The CUDA kernel's place taken by its host rendering (r updated in place)."""
    import torch

    host = [a.numpy() for a in badge]
    r.copy_(torch.from_numpy(_C.shard_fold_cuda_rendering(x.numpy(), centre.numpy(), r.numpy(), *host)))


def _rendered_norms(p, h, y, qn, hn):
    import torch

    for out, value in zip((y, qn, hn), _C.shard_badge_norms_rendering(p.numpy(), h.numpy())):
        out.copy_(torch.from_numpy(value))


def _pool(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2200, 37)).astype(np.float32)
    x[1000:1400] = x[1000]  # ties and zero distances
    return x, rng.dirichlet(np.full(6, 0.4), 2200).astype(np.float32)


BOUNDS = [0, 0, 1, 1030, 2200]  # shards of 0, 1, 1029 (straddling blocks and segments) and 1170 rows
CASES = {"kcenter": 30, "kmeans_pp": 30, "badge": 25, "kcenter_labelled": 20}
LABELLED = np.array([0, 5, 1029, 1500, 2100])


def _worker(rank, world, port, out_dir):
    import torch
    import torch.distributed as dist

    from asvp_fast.acquisition import sharded_diversity as sd

    init_gloo(rank, world, port, seconds=60)

    class Euclidean(sd.EuclideanCuda):
        kernel = staticmethod(_rendered_fold_in)

    class Badge(sd.BadgeCuda):
        kernel = staticmethod(_rendered_fold_in)
        norms_kernel = staticmethod(_rendered_norms)

    sd._cuda_device = lambda data, like: torch.device("cpu")
    sd._metric = lambda method, data, device, like=None: (
        Badge(torch.from_numpy(data["probs"]), torch.from_numpy(data["features"])) if method == "badge"
        else Euclidean(torch.from_numpy(data["features"])))
    x, probs = _pool(3)
    lo, hi = BOUNDS[rank], BOUNDS[rank + 1]
    results = {}
    try:
        for method, k in CASES.items():
            def prepare(method=method, k=k):
                labels = LABELLED[(LABELLED >= lo) & (LABELLED < hi)] - lo if method == "kcenter_labelled" else []
                data = {"features": x[lo:hi], "labeled": np.asarray(labels, np.int64),
                        "excluded": np.empty(0, np.int64), "k": k, "seed": 11, "fma": True}
                if method == "badge":
                    data["probs"] = probs[lo:hi]
                return data

            picks, _ = sd.diversity_sharded(dist.group.WORLD, method.replace("_labelled", ""), prepare, x)
            results[method] = np.asarray(picks)
    except Exception as exc:  # noqa: BLE001 - recorded for the test
        results["error"] = repr(exc)
    finally:
        write_rank(out_dir, rank, results)
    leave_together()
