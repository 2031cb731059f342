"""Sharded feature caches (issue 15, item 1): each rank extracts its consecutive rows into its own
resumable shard, the whole's manifest is written once every shard is finished, and any number of
ranks reads the rows back (re-sharding on load) exactly as one process's extraction."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from asvp_fast.loop.storage.cache import FeatureCache  # noqa: E402
from asvp_fast.loop.storage.manifest import CacheError  # noqa: E402
from asvp_fast.loop.storage.sharded_cache import ShardedFeatureCache, shard_bounds  # noqa: E402


class Crash(RuntimeError):
    pass


class _Ramp(torch.nn.Module):
    """Features a known function of the input; can crash after some batches."""

    feature_dim = 3
    backbone_id = "ramp-net"

    def __init__(self, crash_after=None, scale=1.0):
        super().__init__()
        self.calls = 0
        self.crash_after = crash_after
        self.scale = torch.nn.Parameter(torch.full((), scale))

    def to_device(self, batch, device):
        return batch.to(device)

    def forward(self, x):
        self.calls += 1
        if self.crash_after is not None and self.calls > self.crash_after:
            raise Crash("extraction crashed")
        return torch.stack([x, 2 * x, x * x], dim=1) * self.scale


def _data(n):
    return torch.arange(n, dtype=torch.float32) / 100


def _collate(items):
    return torch.stack(items)


def _shard(cache, rank, world, n=1000, backbone=None):
    return cache.extract_shard(backbone or _Ramp(), _data(n), _collate, split="pool", dataset_id="ramp", rank=rank,
                               world=world, batch_size=32, flush_every_s=0.0, progress=False)


def _whole(tmp_path, n=1000):
    return np.array(FeatureCache(tmp_path / "single").extract(_Ramp(), _data(n), _collate, split="pool",
                                                              dataset_id="ramp", batch_size=32, progress=False))


@pytest.mark.parametrize("n, world", [(10, 3), (0, 2), (5, 5), (7, 1)])
def test_shard_bounds_are_consecutive_and_balanced(n, world):
    b = shard_bounds(n, world)
    assert b[0] == 0 and b[-1] == n and len(b) == world + 1
    sizes = np.diff(b)
    assert (sizes >= 0).all() and sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError, match="world"):
        shard_bounds(n, 0)


def test_three_writers_read_back_by_any_number_of_ranks(tmp_path):
    want = _whole(tmp_path)
    cache = ShardedFeatureCache(tmp_path / "sharded")
    for rank in (2, 0, 1):  # any order: each rank owns its rows
        _shard(cache, rank, 3)
    whole = cache.finish("pool", 0, 3, n=1000, dataset_id="ramp")
    assert whole.bounds == (0, 333, 666, 1000) and len(whole.checksums) == 3
    view = ShardedFeatureCache(tmp_path / "sharded").load("pool", 0, backbone_id="ramp-net", n=1000, dim=3)
    assert view.shape == (1000, 3)
    np.testing.assert_array_equal(np.asarray(view), want)
    for world in (1, 2, 4, 7):  # re-sharding on load
        for rank, (lo, hi) in enumerate(zip(shard_bounds(1000, world)[:-1], shard_bounds(1000, world)[1:])):
            np.testing.assert_array_equal(view.for_rank(rank, world), want[lo:hi])
    assert isinstance(view.rows(10, 20), np.memmap)  # inside one shard: no copy
    rows = np.array([999, 0, 333, 332, 666, 5, 5])
    np.testing.assert_array_equal(view[rows], want[rows])
    np.testing.assert_array_equal(view[300:700], want[300:700])
    np.testing.assert_array_equal(view[400], want[400])


def test_a_crashed_shard_resumes_alone_and_the_whole_waits_for_it(tmp_path):
    cache = ShardedFeatureCache(tmp_path)
    _shard(cache, 0, 2)
    with pytest.raises(Crash):
        _shard(cache, 1, 2, backbone=_Ramp(crash_after=4))
    with pytest.raises(CacheError, match="shard 1 of 2 of 'pool' v0 is not finished"):
        cache.finish("pool", 0, 2, n=1000, dataset_id="ramp")
    again = _Ramp()
    _shard(cache, 1, 2, backbone=again)
    assert again.calls == -(-(500 - 4 * 32) // 32), "only the shard's missing batches are recomputed"
    cache.finish("pool", 0, 2, n=1000, dataset_id="ramp")
    np.testing.assert_array_equal(np.asarray(cache.load("pool", 0)), _whole(tmp_path))


def test_more_ranks_than_rows_leave_empty_shards(tmp_path):
    cache = ShardedFeatureCache(tmp_path)
    for rank in range(4):
        _shard(cache, rank, 4, n=2)
    cache.finish("pool", 0, 4, n=2, dataset_id="ramp")
    view = cache.load("pool", 0)
    np.testing.assert_array_equal(np.asarray(view), _whole(tmp_path, n=2))
    assert view.for_rank(0, 4).shape == (0, 3)


def test_inconsistent_damaged_or_foreign_shards_are_refused(tmp_path):
    cache = ShardedFeatureCache(tmp_path)
    _shard(cache, 0, 2)
    _shard(cache, 1, 2, backbone=_Ramp(scale=2.0))  # other weights on rank 1
    with pytest.raises(CacheError, match="shard 1 of 2 has weights .* different models"):
        cache.finish("pool", 0, 2, n=1000, dataset_id="ramp")
    with pytest.raises(CacheError, match="expected rows \\[0, 500\\) of 'other'"):
        cache.finish("pool", 0, 2, n=1000, dataset_id="other")  # another dataset's shards

    ok = ShardedFeatureCache(tmp_path / "ok")
    _shard(ok, 0, 2)
    _shard(ok, 1, 2)
    ok.finish("pool", 0, 2, n=1000, dataset_id="ramp")
    shard = ok.shard_cache("pool", 0, 1, 2)
    path = shard.data_path("pool", 0, "float16")
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="checksum"):
        ok.load("pool", 0)
    with pytest.raises(CacheError, match="built for row count"):
        ok.load("pool", 0, n=999, verify=False)
    manifest = json.loads(ok.manifest_path("pool", 0).read_text())
    manifest["bounds"] = [0, 400, 1000]
    ok.manifest_path("pool", 0).write_text(json.dumps(manifest))
    with pytest.raises(CacheError, match="bounds are not the consecutive shards"):
        ok.load("pool", 0)
    ok.manifest_path("pool", 0).write_text("{broken")
    with pytest.raises(CacheError, match="unreadable or corrupt"):
        ok.load("pool", 0)
    with pytest.raises(CacheError, match="no finished sharded feature cache"):
        ok.load("test", 0)
    with pytest.raises(ValueError, match="rank must be"):
        _shard(ok, 2, 2)
