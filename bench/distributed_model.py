"""A written model of the per-pick time of exact sharded k-center and BADGE at 10M x 2048 fp16 on
8 GPUs (one node) and 4 nodes x 8 GPUs (issue 15, item 5). Nothing here is measured on a GPU:
every input is a stated assumption, printed with the table, so the model can be re-run with
measured values once the first GPU is available (`scripts/gpu_check.py` reports the achieved
bandwidth of our kernels).

    python bench/distributed_model.py            # the table in bench/RESULTS.md

Per pick, every rank streams its shard once (the distance update against the new centre: rows x
(d features [+ C probabilities for BADGE]) x 2 bytes) at a fraction of its memory bandwidth, then
the ranks run the collectives of the exact protocol (acquisition/distributed.py; counts measured
with gloo in bench/distributed_scale.py): k-center 2 (the (distance, row) exchange and the
centre's broadcast), BADGE 8 (boundary sums, group sums, three 32-value draw steps, the centre).
Each small collective costs its latency; the sizes (<= 32 x 8 bytes, one 8 KB centre) are too
small for bandwidth to matter.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import List

ROWS = 10_000_000
DIM = 2048
CLASSES = 1000       # BADGE reads each row's C probabilities too (ImageNet-sized)
BYTES = 2            # fp16
EFFICIENCY = 0.80    # assumed fraction of peak HBM bandwidth our streaming update reaches
HOST_STEP_US = 15.0  # assumed per-collective host cost (torch.distributed call, stream sync)


@dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # bytes/s, peak HBM


@dataclass(frozen=True)
class Fabric:
    name: str
    gpus: int
    latency_us: float  # one small NCCL collective across all GPUs


DEVICES = [Device("H100 SXM (3.35 TB/s)", 3.35e12), Device("H200 (4.8 TB/s)", 4.8e12)]
# Small-message collective latencies: NVLink/NVSwitch inside a node ~10 us; across 4 nodes over
# InfiniBand NDR, a tree all-reduce adds ~2 x log2(4) network hops of ~3-5 us plus the intra-node
# steps: ~30 us. Both are assumptions in the range NCCL's published small-message tests report.
FABRICS = [Fabric("1 node x 8 GPUs, NVLink", 8, 10.0), Fabric("4 nodes x 8 GPUs, InfiniBand NDR", 32, 30.0)]
COLLECTIVES = {"kcenter": 2, "badge": 8}


def per_pick(method: str, device: Device, fabric: Fabric) -> "tuple[float, float, float]":
    """(streaming ms, collective ms, total ms) per pick."""
    width = DIM + (CLASSES if method == "badge" else 0)
    shard_bytes = ROWS / fabric.gpus * width * BYTES
    stream_ms = shard_bytes / (device.bandwidth * EFFICIENCY) * 1e3
    comm_ms = COLLECTIVES[method] * (fabric.latency_us + HOST_STEP_US) * 1e-3
    return stream_ms, comm_ms, stream_ms + comm_ms


def table() -> str:
    rows: List[str] = ["| method | fabric | device | shard GB per GPU | streaming ms per pick | collectives ms per pick "
                       "| ms per pick | communication share | 10,000 picks (s) |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for method in COLLECTIVES:
        for fabric in FABRICS:
            for device in DEVICES:
                stream, comm, total = per_pick(method, device, fabric)
                width = DIM + (CLASSES if method == "badge" else 0)
                gb = ROWS / fabric.gpus * width * BYTES / 1e9
                rows.append(f"| {method} | {fabric.name} | {device.name} | {gb:.2f} | {stream:.3f} | {comm:.3f} | "
                            f"{total:.3f} | {comm / total:.0%} | {total * 10:.1f} |")
    return "\n".join(rows)


def assumptions() -> str:
    return (f"{ROWS:,} rows x {DIM} fp16 features ({CLASSES} fp16 probabilities more per row for BADGE); "
            f"{EFFICIENCY:.0%} of peak HBM bandwidth; per small collective: the fabric's latency + "
            f"{HOST_STEP_US:.0f} us host cost; collectives per pick: "
            + ", ".join(f"{m} {c}" for m, c in COLLECTIVES.items()) + "; "
            + "; ".join(f"{f.name}: {f.latency_us:.0f} us" for f in FABRICS) + ".")


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print("Assumptions: " + assumptions() + "\n")
    print(table())


if __name__ == "__main__":
    main()
