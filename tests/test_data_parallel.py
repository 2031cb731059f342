"""Data-parallel training (loop/models/data_parallel.py) on 2 and 3 local gloo processes: a step on
W ranks is the step one process takes on the whole batch (global BatchNorm statistics, loss
scaling under DDP's average, empty parts), and the proxy and FT trainers give one process's model."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

from data_parallel_workers import worker  # noqa: E402
from gloo_ranks import spawn  # noqa: E402


@pytest.fixture(scope="module", params=[2, 3], ids=lambda w: f"{w}ranks")
def results(request, tmp_path_factory):
    world = request.param
    return spawn(worker, world, tmp_path_factory.mktemp(f"dp{world}"))


def _close(a, b):
    assert set(a) == set(b)
    for key in a:  # float32 training: the same up to the order of the sums
        np.testing.assert_allclose(a[key].double().numpy(), b[key].double().numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_a_step_on_ranks_is_one_processs_step_on_the_whole_batch(results):
    reference = results[0]["one"]
    for rank in results:
        state, plain = rank["ranks"]
        assert plain  # the BatchNorm layers are ordinary ones again after training
        _close(state, reference)  # weights, and BatchNorm's running mean/var and batch count
    # every rank holds exactly the same model
    for rank in results[1:]:
        for key, value in rank["ranks"][0].items():
            assert torch.equal(value, results[0]["ranks"][0][key]), key


def test_the_proxy_and_fine_tuning_train_one_processs_model(results):
    proxy_one, classifier_one = results[0]["loop_one"]
    for rank in results:
        proxy, classifier = rank["loop"]
        _close(proxy, proxy_one)
        _close(classifier, classifier_one)


def test_parameters_no_forward_uses_do_not_stop_data_parallel_training(results):
    assert all(rank["unused_untouched"] for rank in results)


def test_gathered_rows_are_the_global_batch_and_each_part_gets_its_gradient(results):
    world = len(results)
    whole = torch.arange(15, dtype=torch.float64).reshape(5, 3) / 7
    for rank, answers in enumerate(results):
        gathered, grad, full_grad = answers["gathered"]
        assert torch.equal(gathered, whole)
        lo, hi = rank * 5 // world, (rank + 1) * 5 // world
        assert torch.equal(grad, full_grad[lo:hi])
