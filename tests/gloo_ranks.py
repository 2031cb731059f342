"""Shared scaffolding of the tests that spawn local gloo process groups (test_distributed*.py,
test_approximate_selection.py, test_data_parallel.py and their worker modules): starting the
ranks, collecting what each wrote, recording expected failures, leaving the group together.

A module of its own on pytest's ``pythonpath``, so spawned children import it by name.
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable[..., None], world: int, out_dir: "Path | str", *args: Any) -> List[Any]:
    """Run ``worker(rank, world, port, out_dir, *args)`` on ``world`` spawned processes and return
    what each rank wrote (``rank<r>.pkl`` in ``out_dir``), in rank order."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(world, free_port(), str(out_dir), *args), nprocs=world, join=True)
    return [read_rank(out_dir, rank) for rank in range(world)]


def start_and_wait(worker: Callable[..., None], world: int, out_dir: "Path | str", *args: Any,
                   seconds: float = 90) -> None:
    """Start the ranks without joining them as a group, wait up to ``seconds`` for each and fail if
    one hangs (the ranks of a failure test exit on their own, some of them abruptly)."""
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=(world, free_port(), str(out_dir), *args), nprocs=world, join=False,
                                 start_method="spawn")
    try:
        for process in context.processes:
            process.join(seconds)
            assert process.exitcode is not None, "a rank hangs"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def read_rank(out_dir: "Path | str", rank: int) -> Any:
    return pickle.loads((Path(out_dir) / f"rank{rank}.pkl").read_bytes())


def init_gloo(rank: int, world: int, port: int, seconds: float = 30) -> None:
    """This process's place in a local gloo group (with a timeout, so nothing waits forever)."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=seconds))


def record_failures(failures: Dict[str, Callable[..., Any]], group: Any, rank: int, world: int,
                    results: Dict[str, Any]) -> None:
    """``results["fail_<name>"]``: (exception type, message) of each call, or None if it did not raise."""
    for name, call in failures.items():
        try:
            call(group, rank, world)
            results["fail_" + name] = None
        except Exception as exc:  # noqa: BLE001 - recorded for the test to judge
            results["fail_" + name] = (type(exc).__name__, str(exc))


def write_rank(out_dir: "Path | str", rank: int, value: Any) -> None:
    with open(os.path.join(str(out_dir), f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(value, f)


def leave_together() -> None:
    """Leave together and skip the interpreter's teardown: a gloo group torn down while a peer is
    still closing its connections can abort the process ("terminate called ...")."""
    import torch.distributed as dist

    dist.barrier()
    os._exit(0)


def assert_every_rank_raised(per_rank: List[Dict[str, Any]], name: str, kind: str, words: str) -> None:
    """Every rank recorded ``fail_<name>`` as an exception of type ``kind`` whose message has ``words``."""
    for rank, answers in enumerate(per_rank):
        outcome = answers["fail_" + name]
        assert outcome is not None, f"rank {rank} did not raise"
        assert outcome[0] == kind and words in outcome[1], outcome
