"""The build reports what it contains, imports without a GPU driver, and uses -Werror only when asked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import asvp_fast as af

ROOT = Path(__file__).resolve().parents[1]
# An entry of CMAKE_CUDA_ARCHITECTURES: 75, 90-real, 90a-virtual, ...
ARCH = re.compile(r"^(\d{2,3})([af]?)(?:-(real|virtual))?$")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def cmake_default_architectures() -> list:
    """The list CMakeLists.txt compiles for when the builder names none."""
    text = (ROOT / "CMakeLists.txt").read_text()
    found = re.search(r'set\(CMAKE_CUDA_ARCHITECTURES "([^"]+)"\)', text)
    assert found, "CMakeLists.txt no longer sets a default CMAKE_CUDA_ARCHITECTURES"
    return found.group(1).split(";")


def compiled_architectures() -> list:
    return [a for a in af.backends()["cuda_architectures"].split(",") if a]


def test_backends_keys_and_types():
    b = af.backends()
    assert b["cpu"] is True
    assert isinstance(b["openmp_threads"], int) and b["openmp_threads"] >= 1
    for key in ("cuda_compiled", "faiss", "faiss_gpu"):
        assert isinstance(b[key], bool)
    assert isinstance(b["cuda_devices"], int) and b["cuda_devices"] >= 0
    assert b["cpu_isa"] in b["cpu_isas"]
    assert isinstance(af.__version__, str)


def test_cuda_report_is_consistent():
    """Devices only with kernels and a runtime; no devices always with the runtime's reason."""
    b = af.backends()
    if b["cuda_devices"] > 0:
        assert b["cuda_compiled"], "a CUDA device is reported by a build without CUDA kernels"
        assert b["cuda_runtime_version"] >= 11000
        assert compiled_architectures(), "a CUDA build must report the architectures it was compiled for"
    else:
        assert isinstance(b["cuda_status"], str) and b["cuda_status"], "no device and no reason given"
    if not b["cuda_compiled"]:
        assert b["cuda_devices"] == 0 and b["cuda_runtime_version"] == 0 and not compiled_architectures()


def test_cuda_compiled_when_required():
    """CI builds with ASVP_CUDA=ON (nvcc on the PATH): the CUDA objects must be in the module, for
    the architectures CMakeLists.txt lists by default (CI names none)."""
    if os.environ.get("ASVP_CUDA", "AUTO").upper() != "ON":
        pytest.skip("ASVP_CUDA is not ON: this build was not required to compile the CUDA kernels")
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on the PATH")
    b = af.backends()
    assert b["cuda_compiled"], "ASVP_CUDA=ON and nvcc is available, but the extension has no CUDA kernels"
    assert b["cuda_runtime_version"] >= 11000
    archs = compiled_architectures()
    assert archs and all(ARCH.match(a) for a in archs), archs
    if os.environ.get("ASVP_CI"):  # .ci/run: the default list, as a user's `pip install` gets it
        assert archs == cmake_default_architectures()


def _device_capability():
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_capability(0)
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi:
        out = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            major, minor = out.stdout.split()[0].split(".")
            return int(major), int(minor)
    return None


def test_compiled_architectures_run_on_this_gpu():
    """The device can run the module's kernels: machine code for its major version at or below its
    compute capability, or PTX at or below it (the driver compiles it)."""
    if af.backends()["cuda_devices"] == 0:
        pytest.skip("no CUDA device: " + af.backends()["cuda_status"])
    cap = _device_capability()
    if cap is None:
        pytest.skip("cannot read the device's compute capability (no CUDA torch, no nvidia-smi)")
    device = cap[0] * 10 + cap[1]
    usable = []
    for arch in compiled_architectures():
        number, suffix, kind = ARCH.match(arch).groups()  # type: ignore[union-attr]
        sm = int(number)
        if suffix:  # 90a, 100f: arch-specific features, for that major version only
            ok = sm // 10 == cap[0] and sm <= device
        else:
            sass = kind != "virtual" and sm // 10 == cap[0] and sm <= device
            ptx = kind != "real" and sm <= device
            ok = sass or ptx
        if ok:
            usable.append(arch)
    assert usable, f"compute capability {cap} is not covered by {compiled_architectures()}"


def test_werror_is_off_for_a_users_install():
    """A user's `pip install` must not turn warnings into errors: only an env var (CI) switches it on."""
    define = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["scikit-build"]["cmake"]["define"]
    assert define["ASVP_WERROR"] == {"env": "ASVP_WERROR", "default": "OFF"}
    assert re.search(r'option\(ASVP_WERROR "[^"]*" OFF\)', (ROOT / "CMakeLists.txt").read_text())


def _configure(build: Path, werror: str) -> list:
    """Configures the project (no compilation) and returns its compile commands."""
    pybind11 = pytest.importorskip("pybind11", reason="configuring needs pybind11's CMake files")
    cmd = [shutil.which("cmake") or "cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
           f"-DASVP_WERROR={werror}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
           f"-DPython_EXECUTABLE={sys.executable}"]
    if shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    env = dict(os.environ)
    env.pop("CMAKE_ARGS", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((build / "compile_commands.json").read_text())


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not on the PATH")
def test_werror_only_with_the_option(tmp_path):
    """-Wall -Wextra always; -Werror (and nvcc's --Werror) only with ASVP_WERROR=ON. The CUDA
    sources are checked too when nvcc is found."""
    for werror in ("OFF", "ON"):
        commands = _configure(tmp_path / werror, werror)
        sources = {Path(c["file"]).name for c in commands}
        assert {"bindings.cpp", "uncertainty_cpu.cpp", "diversity_cpu.cpp"} <= sources
        for c in commands:
            flags = c["command"].split()
            assert ("Werror" in c["command"]) == (werror == "ON"), c["command"]
            if c["file"].endswith(".cu"):
                assert any(f.startswith("-Xcompiler=-Wall,-Wextra") for f in flags), c["command"]
                if werror == "ON":
                    assert "--Werror=all-warnings" in flags and "-Xcompiler=-Wall,-Wextra,-Werror" in flags, c["command"]
            else:
                assert "-Wall" in flags and "-Wextra" in flags, c["command"]
                assert ("-Werror" in flags) == (werror == "ON"), c["command"]
