"""Seeded torch work that leaves the caller's random state untouched."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run the block with torch's global RNG seeded to ``seed``, restoring the previous state after.

    Layer initialisation and dropout draw from the global generator, so a training is only
    reproducible with it seeded; forking it keeps library code from changing the user's RNG
    state. The CUDA generators of all visible devices are forked too (``manual_seed`` seeds them).
    """
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(int(seed))
        yield
