"""The build reports what it contains, and imports without a GPU driver."""

from __future__ import annotations

import os
import shutil

import asvp_fast as af


def test_backends_keys_and_types():
    b = af.backends()
    assert b["cpu"] is True
    assert isinstance(b["openmp_threads"], int) and b["openmp_threads"] >= 1
    for key in ("cuda_compiled", "faiss", "faiss_gpu"):
        assert isinstance(b[key], bool)
    assert isinstance(b["cuda_devices"], int) and b["cuda_devices"] >= 0
    assert b["cpu_isa"] in b["cpu_isas"]
    assert isinstance(af.__version__, str)


def test_cuda_compiled_when_nvcc_exists():
    """CI builds with nvcc on the PATH (ASVP_CUDA=ON): the CUDA objects must be in the module."""
    if os.environ.get("ASVP_CUDA", "AUTO").upper() == "OFF" or shutil.which("nvcc") is None:
        return
    b = af.backends()
    assert b["cuda_compiled"], "nvcc is available but the extension was built without CUDA kernels"
    assert b["cuda_runtime_version"] >= 11000
    assert "75" in b["cuda_architectures"] and "90" in b["cuda_architectures"]


def test_no_driver_means_zero_devices():
    b = af.backends()
    if b["cuda_devices"] == 0:
        assert b["cuda_status"]  # the runtime's reason, e.g. no driver; never a crash
