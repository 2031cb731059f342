import os

import numpy as np
import pytest

import asvp_fast as af

# ASVP_REQUIRE_CUDA=1 (scripts/gpu_check.py sets it): a CUDA test that would be skipped fails
# instead, so a machine whose GPU is unusable (no driver, a driver older than the CUDA runtime
# the module was built with, a CPU build of torch) cannot look green. Only the skip of a test
# that needs more GPUs than the machine has stays a skip.
REQUIRE_CUDA = os.environ.get("ASVP_REQUIRE_CUDA", "").strip() not in ("", "0")
MULTI_GPU_SKIP = "needs at least 2 CUDA devices"


def _has_cuda_device() -> bool:
    return af.backends()["cuda_devices"] > 0


def _no_device_reason() -> str:
    import asvp_fast._C as _C

    b = af.backends()
    return (f"no CUDA device: {b['cuda_status']} (compiled with CUDA: {b['cuda_compiled']}, runtime "
            f"{b['cuda_runtime_version']}, driver {_C.build_info().get('cuda_driver_version', 0)})")


def pytest_collection_modifyitems(config, items):
    if _has_cuda_device():
        return
    reason = _no_device_reason()
    for item in items:
        # the marker itself, not the keyword: a parametrize id "cuda" must not skip a CPU test
        if item.get_closest_marker("cuda") is None:
            continue
        if REQUIRE_CUDA:
            item.add_marker(pytest.mark.usefixtures("_cuda_required"))
        else:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def _cuda_required():
    pytest.fail(f"ASVP_REQUIRE_CUDA is set but {_no_device_reason()}", pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (REQUIRE_CUDA and report.skipped and item.get_closest_marker("cuda") is not None):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if MULTI_GPU_SKIP in reason:
        return
    report.outcome = "failed"
    report.longrepr = f"skipped under ASVP_REQUIRE_CUDA=1: {reason}"


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
