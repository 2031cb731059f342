"""The loop's entry points: one run with its report, and one run per seed with the study summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from .cases.case import Case
from .engine.config import RunConfig
from .models.ranks import from_root, is_root
from .engine.runner import execute
from .engine.state import RunState
from .reporting.report import write_report
from .reporting.study import seed_dir


def run(config: RunConfig, run_dir: "Path | str", *, resume: bool = False, progress: Optional[bool] = None,
        echo: Any = print, report: bool = True, case: Optional[Case] = None, group: Any = None) -> RunState:
    """Run (or resume) a configured experiment in ``run_dir``; returns the final state.

    ``case``: a user-built :class:`~asvp_fast.loop.Case` instead of the config's ``[data]`` case.
    ``report``: write ``results.md`` and the plots at the end (and echo the table).
    ``group``: a ``torch.distributed`` process group: every rank calls ``run`` with the same
    arguments and gets the same state; rank 0 asks the oracle and writes the state and the report
    (``torchrun ... -m asvp_fast run`` does this for you; see the README, "Several GPUs or nodes").
    """
    state = execute(config, run_dir, resume=resume, progress=progress, echo=echo, case=case, group=group)
    if report and is_root(group):
        write_report(state, config, Path(run_dir), echo=echo)
    return state


def run_seeds(config: RunConfig, seeds: Sequence[int], out_dir: "Path | str", *, progress: Optional[bool] = None,
              echo: Callable[..., Any] = print, group: Any = None) -> Dict[int, RunState]:
    """Run ``config`` once per seed in ``out_dir/seed<S>`` (resuming runs already started); returns
    the final states (see :mod:`.reporting.study` for the summary)."""
    if not seeds:
        raise ValueError("seeds must name at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat a value: {list(seeds)}")
    out = Path(out_dir)
    states = {}
    for seed in seeds:
        cfg = dataclasses.replace(config, seed=int(seed))
        where = seed_dir(out, seed)
        if is_root(group):
            echo(f"== seed {seed}: {where}")
        # every rank must agree on resume: rank 0's view of the directory decides
        resume = from_root(group, "checking the run directory", lambda: (where / "state.json").exists())
        states[int(seed)] = run(cfg, where, resume=resume, progress=progress, echo=echo, group=group)
    return states
