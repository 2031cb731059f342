"""The written per-pick model of bench/distributed_model.py (its arithmetic with fixed numbers)."""

import pytest

distributed_model = pytest.importorskip("distributed_model")


def test_per_pick_streams_the_shard_and_pays_each_collectives_latency():
    device = distributed_model.Device("test", 1e12)
    fabric = distributed_model.Fabric("test", 10, 20.0)
    stream, comm, total = distributed_model.per_pick("kcenter", device, fabric)
    # 10M / 10 rows x 2048 fp16 = 4.096 GB at 80% of 1 TB/s; 2 collectives x (20 + 15) us
    assert stream == pytest.approx(4.096e9 / 0.8e12 * 1e3)
    assert comm == pytest.approx(2 * 35e-3)
    assert total == pytest.approx(stream + comm)
    badge_stream, badge_comm, _ = distributed_model.per_pick("badge", device, fabric)
    assert badge_stream == pytest.approx(stream * (2048 + 1000) / 2048)
    assert badge_comm == pytest.approx(8 * 35e-3)


def test_the_table_has_a_row_per_method_fabric_and_device():
    lines = distributed_model.table().splitlines()
    assert len(lines) == 2 + 2 * len(distributed_model.FABRICS) * len(distributed_model.DEVICES)
