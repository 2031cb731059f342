"""The whole loop under torchrun: one process against 2 (or more) gloo ranks on the synthetic case.

    PYTHONPATH=. python bench/distributed_loop.py [--pool 20000] [--ranks 2] [--threads 1]

Runs the same config three times, as users do — ``python -m asvp_fast run`` on one process, and
``torchrun --standalone --nproc-per-node R -m asvp_fast run`` with data-parallel training and with
``[distributed] proxy = target = "replicated"`` — each rank with ``--threads`` threads, and
prints two markdown tables (for bench/RESULTS.md): wall time, the pool's feature
extraction, the selection and training times summed over rounds (rank 0's, from state.json); and
per method, in how many rounds both runs bought the same rows (in the same order, or as a set)
and the largest accuracy difference. On a machine with fewer cores
than ranks × threads the ranks time-share the cores: the table then shows the protocol's cost,
not a speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """seed = 0
methods = ["svpp", {{ method = "svpp", name = "svpp-coreset", strategy = "coreset" }}, "standard"]
[data]
case = "synthetic"
pool_size = {pool}
test_size = 2000
in_dim = 64
feature_dim = 64
num_classes = 10
[schedule]
initial = 200
steps = [{{ until = 800, step = 200 }}]
[training]
epochs = 3
batch_size = 64
lp_epochs = 3
[proxy]
epochs = 20
batch_size = 256
"""


def _run(command: list, threads: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _summary(state_path: Path) -> dict:
    state = json.loads(state_path.read_text())
    rounds = [r for rs in state["methods"].values() for r in rs]
    return {"extract": state["stages"].get("extract_pool_s", 0.0), "select": sum(r.get("select_s") or 0 for r in rounds),
            "train": sum(r.get("train_s") or 0 for r in rounds),
            "outcome": {name: [(r["new"], r.get("accuracy")) for r in rs] for name, rs in state["methods"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "loop.toml"
        config.write_text(CONFIG.format(pool=args.pool))
        replicated = Path(tmp) / "replicated.toml"
        replicated.write_text(CONFIG.format(pool=args.pool) + '[distributed]\nproxy = "replicated"\ntarget = "replicated"\n')
        rows = []
        for ranks, training, cfg in ((1, "—", config), (args.ranks, "ddp", config), (args.ranks, "replicated", replicated)):
            out = Path(tmp) / f"r{ranks}-{training}"
            launch = [sys.executable, "-m", "asvp_fast"] if ranks == 1 else \
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}", "-m", "asvp_fast"]
            wall = _run(launch + ["run", str(cfg), "-o", str(out), "--no-progress"], args.threads)
            rows.append((ranks, training, wall, _summary(out / "state.json")))
    print(f"synthetic case, pool {args.pool:,} x 64 (features 64), 10 classes; methods svpp (margin), svpp-coreset, "
          f"standard; 200 -> 800 labels in 4 rounds; {args.threads} thread(s) per process, {os.cpu_count()} logical cores\n")
    print("| processes | training | wall s | extraction s | selection s (all rounds) | training s (all rounds) |")
    print("|---:|---|---:|---:|---:|---:|")
    for ranks, training, wall, s in rows:
        print(f"| {ranks} | {training} | {wall:.1f} | {s['extract']:.2f} | {s['select']:.2f} | {s['train']:.2f} |")
    print("\n| method | training | rounds with the same rows in the same order | same set of rows | largest accuracy difference |")
    print("|---|---|---:|---:|---:|")
    one = rows[0][3]["outcome"]
    for _, training, _, summary in rows[1:]:
        for name in one:
            pairs = list(zip(one[name], summary["outcome"][name]))
            order = sum(a[0] == b[0] for a, b in pairs)
            sets = sum(set(a[0]) == set(b[0]) for a, b in pairs)
            gap = max(abs((a[1] or 0) - (b[1] or 0)) for a, b in pairs)
            print(f"| {name} | {training} | {order} / {len(pairs)} | {sets} / {len(pairs)} | {gap:.4f} |")


if __name__ == "__main__":
    main()
