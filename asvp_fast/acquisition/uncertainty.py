"""Uncertainty statistics and top-k selection (margin, entropy, least confidence).

One pass over an N x C matrix of probabilities (or logits, with a numerically stable softmax
computed on the fly): the statistic, the validation of every row and a streaming top-k happen
together, with no sort of the pool and no float64 or softmax copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

import numpy as np

from .. import _C
from ..core.arrays import (
    Operand,
    Outputs,
    as_operand,
    check_float_matrix,
    cuda_index,
    exclusion_mask,
    resolve_device,
)
from ..core.checks import parse_choice, parse_count, parse_flag, parse_optional_flag, parse_threads
from ..core.progress import row_progress
from .distributed import check_group, select_uncertain_sharded

Kind = Literal["margin", "entropy", "least_confidence"]
Device = str  # "auto" | "cpu" | "cuda" | "cuda:N"

_KINDS = {"margin": 0, "entropy": 1, "least_confidence": 2}
_CHUNK_BYTES = 64 << 20


@dataclass
class _Call:
    """A validated call: the input as the kernels take it and where the results go."""

    op: Operand
    n: int
    kind_code: int
    threads: int
    use_cuda: bool
    outputs: Outputs
    cuda_device: int = -1

    def run(self, *, from_logits: bool, validate: bool, mask: Any, scores_out: Any, indices_out: Any, k: int,
            progress: Optional[bool], description: str) -> None:
        bar = row_progress(progress, self.op.nbytes, self.n, description)
        try:
            _C.uncertainty(self.op.handle, self.kind_code, bool(from_logits), bool(validate), mask, scores_out,
                           indices_out, k, self.threads, self.op.release_pages, _CHUNK_BYTES, self.use_cuda,
                           self.outputs.cuda_stream(), bar, workspace=self.outputs.workspace(),
                           cuda_device=self.cuda_device)
        finally:
            if bar is not None:
                bar.close()


def _prepare(x: Any, kind: str, threads: Optional[int], device: str) -> _Call:
    parse_choice(kind, tuple(_KINDS), "uncertainty kind")
    op = as_operand(x)
    n, c = check_float_matrix(op)
    if kind == "margin" and c < 2:
        raise ValueError(f"margin needs at least 2 classes, x has {c}")
    return _Call(op, n, _KINDS[kind], parse_threads(threads), resolve_device(device, op), Outputs(op),
                 cuda_index(device))


def scores(
    x: Any,
    kind: Kind,
    *,
    from_logits: bool = False,
    validate: bool = True,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """The raw uncertainty statistic of every row of ``x`` as float32 (N,).

    Args:
        x: N x C probabilities (each row in [0, 1], summing to 1 within 1e-3), or logits with
            ``from_logits=True``. float16, bfloat16, float32 or float64; numpy array, numpy
            memmap (streamed in chunks) or torch tensor (CPU or CUDA); any strides.
        kind: ``"margin"`` (p(1) - p(2), the largest minus the second largest probability),
            ``"entropy"`` (-sum p ln p, natural log, 0 ln 0 = 0) or ``"least_confidence"`` (max p).
        from_logits: treat rows as logits; the softmax is computed stably (max-subtracted).
        validate: check that probability rows lie in [0, 1] and sum to 1. NaN and Inf are
            rejected regardless.
        device: ``"auto"`` (where ``x`` lives), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; a device
            that is not usable here raises RuntimeError naming it.
        threads: CPU threads (None: all cores; more than 1024 is clamped to 1024).
        progress: show a progress bar (tqdm); None shows one for inputs of 8 GB or more when
            stderr is a terminal. Ctrl-C interrupts a scan between 64 MB chunks either way.

    Returns:
        float32 array of length N: numpy for numpy input, a torch tensor on x's device for
        torch input.

    Raises:
        ValueError: wrong shape, unknown kind, or a row that is not valid (the first bad row is
            named).
        TypeError: unsupported dtype; an argument of the wrong type (``from_logits="False"``,
            ``kind=["margin"]``), named in the message.
        RuntimeError: ``device`` names a device that is not usable here.

    ``group`` (a torch.distributed process group) is accepted for symmetry with the selection
    functions: scores are per row, so each rank simply gets the scores of its own shard.
    """
    check_group(group)
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    progress = parse_optional_flag(progress, "progress")
    call = _prepare(x, kind, threads, device)
    result, handle = call.outputs.empty(call.n, "float32")
    if call.n:
        call.run(from_logits=from_logits, validate=validate, mask=None, scores_out=handle, indices_out=None, k=0,
                 progress=progress, description=f"{kind} scores")
    return result


def _shard_rows(x: Any, kind: str, exclude: Any, k: Any) -> Any:
    """(rows, excluded rows, k) of this rank's shard, checked."""
    call = _prepare(x, kind, 1, "auto")
    k = parse_count(k)
    _, excluded = exclusion_mask(exclude, call.n, call.op)
    return call.n, excluded, k


def select_uncertain(
    x: Any,
    k: int,
    kind: Kind = "margin",
    *,
    from_logits: bool = False,
    exclude: Any = None,
    validate: bool = True,
    device: Device = "auto",
    threads: Optional[int] = None,
    progress: Optional[bool] = None,
    group: Any = None,
) -> Any:
    """Indices of the ``k`` most uncertain rows of ``x``, most uncertain first.

    Most uncertain means the smallest margin, the largest entropy or the smallest maximum
    probability. The order is exactly that of :func:`scores` (float32); equal scores go to the
    lower row index.

    Args:
        x: as for :func:`scores`.
        k: how many rows to pick; 0 gives an empty result. Must not exceed the rows not excluded.
        kind: as for :func:`scores`.
        from_logits, validate, device, threads, progress: as for :func:`scores`.
        exclude: rows that may not be picked (e.g. already labelled): a bool mask of length N or
            an array of row indices in [0, N). Excluded rows are not read.
        group: a torch.distributed process group, or None. With a group, ``x`` is this rank's
            shard (ranks hold consecutive rows in rank order), ``exclude`` is local to the shard,
            and the result is global row numbers, the same on every rank and equal to one
            process's answer on the whole pool (docs/api.md, "Distributed").

    Returns:
        int64 array of length k: numpy for numpy input, a torch tensor on x's device for torch
        input.
    """
    if group is not None:
        def local_top() -> Any:
            n, excluded, kk = _shard_rows(x, kind, exclude, k)
            take = min(kk, n - excluded)
            local = select_uncertain(x, take, kind, from_logits=from_logits, exclude=exclude, validate=validate,
                                     device=device, threads=threads, progress=progress)
            rows = x if hasattr(x, "shape") else np.asarray(x)
            picked = rows[local] if take else rows[:0]
            values = scores(picked, kind, from_logits=from_logits, validate=validate, device=device,
                            threads=threads)
            return kk, n, n - excluded, local, values

        return select_uncertain_sharded(group, x, kind == "entropy", local_top)
    from_logits, validate = parse_flag(from_logits, "from_logits"), parse_flag(validate, "validate")
    progress = parse_optional_flag(progress, "progress")
    call = _prepare(x, kind, threads, device)
    k = parse_count(k)
    n = call.n
    mask, excluded = exclusion_mask(exclude, n, call.op)
    if k > n - excluded:
        raise ValueError(f"k={k} is larger than the {n - excluded} rows that may be picked "
                         f"({n} rows, {excluded} excluded)")
    result, handle = call.outputs.empty(k, "int64")
    if k:
        call.run(from_logits=from_logits, validate=validate, mask=mask, scores_out=None, indices_out=handle, k=k,
                 progress=progress, description=f"selecting {k} by {kind}")
    return result
