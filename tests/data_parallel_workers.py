"""What the spawned ranks of tests/test_data_parallel.py run (a module of its own, importable by
name in the child processes, like tests/distributed_workers.py)."""

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from gloo_ranks import init_gloo, leave_together, write_rank


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _batches():
    """Global batches of 10, 5 and 2 rows (on 3 ranks: parts of 4/3/3, 1/2/2 and 0/1/1 rows)."""
    rng = np.random.default_rng(0)
    for size in (10, 5, 2):
        x = torch.from_numpy(rng.standard_normal((size, 2, 5, 5)).astype(np.float32))
        yield x, torch.from_numpy(rng.integers(0, 3, size))


def _train(model, step):
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in _batches():
        opt.zero_grad()
        step(x, y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _one_process():
    model = _net(1)
    return _train(model, lambda x, y: nn.functional.cross_entropy(model(x), y))


def _ranks(group):
    from asvp_fast.loop.models.data_parallel import data_parallel
    from asvp_fast.loop.models.ranks import rank_part

    world = dist.get_world_size(group)
    model = _net(1)
    with data_parallel(model, group, torch.device("cpu")) as net:
        _train(net, lambda x, y: nn.functional.cross_entropy(
            net(rank_part(x, group)), rank_part(y, group), reduction="sum") * (world / len(y)))
    plain = all(not type(m).__name__.startswith("Group") for m in model.modules())
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, plain


def _proxy_and_fine_tune(group):
    from asvp_fast.loop.cases.builtin import synthetic_case
    from asvp_fast.loop.models.proxy import ProxyConfig, train_proxy
    from asvp_fast.loop.models.trainers import TrainConfig, train_classifier

    rng = np.random.default_rng(2)
    feats = rng.standard_normal((90, 6)).astype(np.float32)
    rows = rng.choice(90, 37, replace=False)
    proxy = train_proxy(feats, rows, rows % 3, 3, ProxyConfig(epochs=4, batch_size=8), seed=5, group=group)
    case = synthetic_case(pool_size=120, test_size=20)
    cls = train_classifier(case.make_backbone, case.pool, case.collate, rows, case.pool_labels[rows], case.num_classes,
                           TrainConfig(epochs=2, batch_size=8), seed=4, group=group)
    return ({k: v.clone() for k, v in proxy.state_dict().items()}, {k: v.clone() for k, v in cls.state_dict().items()})


class _WithUnused(nn.Module):
    """A model with a parameter no forward uses (like a Hugging Face encoder's pooler)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.used, self.unused = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


def _unused_parameters(group):
    from asvp_fast.loop.models.data_parallel import data_parallel
    from asvp_fast.loop.models.ranks import rank_part

    model = _WithUnused()
    before = model.unused.weight.detach().clone()
    with data_parallel(model, group, torch.device("cpu")) as net:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
        for _ in range(3):  # DDP without static_graph fails from the second step on
            opt.zero_grad()
            net(rank_part(x, group)).sum().backward()
            opt.step()
    return torch.equal(model.unused.weight, before)


def _gathered_rows(group):
    """gather_rows on parts of 5 rows (1/2/2 on 3 ranks): the global rows in rank order, and the
    gradient of a loss of the global rows reaching each rank's own part."""
    from asvp_fast.loop.models.data_parallel import gather_rows
    from asvp_fast.loop.models.ranks import rank_part

    whole = torch.arange(15, dtype=torch.float64).reshape(5, 3) / 7
    weights = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3)
    part = rank_part(whole, group).clone().requires_grad_(True)
    gathered = gather_rows(part, group)
    (gathered ** 2 * weights).sum().backward()
    return gathered.detach(), part.grad.detach(), (2 * whole * weights)


def worker(rank, world, port, out_dir):
    torch.set_num_threads(1)
    init_gloo(rank, world, port, seconds=60)
    try:
        result = {"ranks": _ranks(dist.group.WORLD), "loop": _proxy_and_fine_tune(dist.group.WORLD),
                  "unused_untouched": _unused_parameters(dist.group.WORLD),
                  "gathered": _gathered_rows(dist.group.WORLD)}
        if rank == 0:
            result["one"] = _one_process()
            result["loop_one"] = _proxy_and_fine_tune(None)
    finally:
        write_rank(out_dir, rank, result)
    leave_together()
