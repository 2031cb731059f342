"""The written per-pick model of bench/distributed_model.py (its arithmetic with fixed numbers), and
the clear refusal of group= by the strategies with no exact sharded form yet."""

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


@pytest.mark.parametrize("name", ["typiclust", "probcover", "cluster_margin", "activeft_select"])
def test_strategies_without_an_exact_sharded_form_refuse_a_group(name):
    import numpy as np

    import asvp_fast as af
    from asvp_fast.acquisition.activeft import activeft_select

    x = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    call = {"typiclust": lambda: af.typiclust(x, 3, group="a group"),
            "probcover": lambda: af.probcover(x, 3, delta=1.0, group="a group"),
            "cluster_margin": lambda: af.cluster_margin(np.full((50, 3), 1 / 3), x, 3, group="a group"),
            "activeft_select": lambda: activeft_select(x, 3, group="a group")}[name]
    with pytest.raises(NotImplementedError, match=rf"^{name} over row shards \(group=\) is not implemented"):
        call()
