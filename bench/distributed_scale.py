"""Sharded selection (``group=``) with 1, 2 and 4 local gloo processes: time per pick and the
share of it spent in collectives.

    PYTHONPATH=. python bench/distributed_scale.py [--rows 20000] [--dim 64] [--classes 10] [--picks 20]

Prints a markdown table (for bench/RESULTS.md). Every rank holds N / W consecutive rows; the
collectives are timed by wrapping the driver's communication methods (rank 0's times are shown;
the time a rank waits for slower ranks inside a collective counts as communication). With more
processes than cores the per-pick compute is shared out, not parallel.
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("kcenter", "badge")


def _data(n: int, d: int, c: int):
    rng = np.random.default_rng(0)
    h = rng.standard_normal((n, d)).astype(np.float32)
    z = rng.standard_normal((n, c))
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return h, (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _timed_comm(counter):
    from asvp_fast.acquisition.distributed import Shards

    for name in ("gather", "gather_objects", "max_reduce", "broadcast_row"):
        original = getattr(Shards, name)

        def wrapped(self, *args, _original=original, **kwargs):
            start = time.perf_counter()
            try:
                return _original(self, *args, **kwargs)
            finally:
                counter[0] += time.perf_counter() - start
                counter[1] += 1

        setattr(Shards, name, wrapped)


def _worker(rank, world, port, args, out):
    sys.path.insert(0, ROOT)
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    import asvp_fast as af

    counter = [0.0, 0]
    _timed_comm(counter)
    h, p = _data(args.rows, args.dim, args.classes)
    bounds = np.linspace(0, args.rows, world + 1).astype(int)
    lo, hi = bounds[rank], bounds[rank + 1]
    rows = []
    for method in METHODS:
        dist.barrier()
        counter[0], counter[1] = 0.0, 0
        start = time.perf_counter()
        if method == "kcenter":
            picks = af.kcenter_greedy(h[lo:hi], args.picks, seed=1, group=dist.group.WORLD)
            ref = af.kcenter_greedy(h, args.picks, seed=1, threads=1) if rank == 0 else None
        else:
            picks = af.badge(p[lo:hi], h[lo:hi], args.picks, seed=1, group=dist.group.WORLD)
            ref = af.badge(p, h, args.picks, seed=1, threads=1) if rank == 0 else None
        total = time.perf_counter() - start
        if rank == 0:
            t0 = time.perf_counter()
            af.kcenter_greedy(h, args.picks, seed=1, threads=1) if method == "kcenter" else \
                af.badge(p, h, args.picks, seed=1, threads=1)
            native = time.perf_counter() - t0
            rows.append((method, world, total, counter[0], counter[1], native, bool(np.array_equal(picks, ref))))
    if rank == 0:
        out.put(rows)  # a SimpleQueue writes before returning
    dist.barrier()
    os._exit(0)  # skip gloo's teardown, which can abort while a peer is still closing


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--picks", type=int, default=20)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = []
    for world in args.worlds:
        queue = ctx.SimpleQueue()
        mp.start_processes(_worker, args=(world, _port(), args, queue), nprocs=world, join=True, start_method="spawn")
        results.extend(queue.get())
    print(f"{args.rows:,} x {args.dim} float32 features ({args.classes} classes for BADGE), {args.picks} picks, "
          f"{os.cpu_count()} logical cores\n")
    print("| method | processes | ms per pick | collectives per pick | ms in collectives per pick | "
          "communication share | native kernel, 1 process, ms per pick | same picks as 1 process |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for method, world, total, comm, calls, native, same in sorted(results):
        k = args.picks
        print(f"| {method} | {world} | {1e3 * total / k:.2f} | {calls / k:.1f} | {1e3 * comm / k:.2f} | "
              f"{100 * comm / total:.0f}% | {1e3 * native / k:.2f} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
