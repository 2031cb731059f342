import numpy as np
import pytest

import asvp_fast as af


def _has_cuda_device() -> bool:
    return af.backends()["cuda_devices"] > 0


def pytest_collection_modifyitems(config, items):
    if _has_cuda_device():
        return
    skip = pytest.mark.skip(reason="no CUDA device: " + af.backends()["cuda_status"])
    for item in items:
        # the marker itself, not the keyword: a parametrize id "cuda" must not skip a CPU test
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
