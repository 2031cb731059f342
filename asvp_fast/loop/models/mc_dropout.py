"""Dropout masks for MC-dropout sampling that do not depend on how the pool is split.

BALD and BatchBALD score each pool row from T stochastic passes. For a run on W ranks to pick
what one process picks, a row must get the same masks whichever rank holds it and wherever its
chunk starts. So masks are drawn per fixed block of :data:`MASK_BLOCK` global rows, from a
generator seeded by (seed, block): a rank whose shard starts inside a block draws that block's
masks and keeps the rows it owns.
"""

from __future__ import annotations

from typing import Iterator, Tuple

import torch

MASK_BLOCK = 4096


def block_generator(seed: int, block: int, device: torch.device) -> torch.Generator:
    """The generator of one block's masks (a 63-bit mix of the seed and the block number)."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(block) * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)
    return torch.Generator(device=device).manual_seed(mixed)


def mask_blocks(n: int, offset: int) -> Iterator[Tuple[int, int, int, int, int]]:
    """For local rows [0, n) that are global rows [offset, offset + n): (block, local lo, local hi,
    first row within the block, last row within the block + 1), block by block."""
    start, end = int(offset), int(offset) + int(n)
    block = start // MASK_BLOCK
    while block * MASK_BLOCK < end:
        lo, hi = max(start, block * MASK_BLOCK), min(end, (block + 1) * MASK_BLOCK)
        yield block, lo - start, hi - start, lo - block * MASK_BLOCK, hi - block * MASK_BLOCK
        block += 1


def keep_masks(gen: torch.Generator, samples: int, width: int, cut: Tuple[int, int], keep: float,
               device: torch.device) -> Iterator[torch.Tensor]:
    """The ``samples`` masks of a block, drawn in order from its generator (each a whole block's),
    cut to the rows [cut[0], cut[1]) of the block: True keeps a unit."""
    for _ in range(samples):
        yield torch.rand((MASK_BLOCK, width), generator=gen, device=device)[cut[0]:cut[1]] < keep
