"""The one rule of every public selection and transfer function (API.md, "One rule for every public
function"), walked through for each of them:

* ``device="auto" | "cpu" | "cuda" | "cuda:N"``; a device that is not usable here raises RuntimeError
  naming it, a misspelled one ValueError, a non-string TypeError;
* ``threads=None | positive int`` (huge counts are clamped), 0/-1 ValueError, "2"/2.0/True TypeError;
* outputs follow the input: NumPy/memmap in, NumPy out; torch in, torch on the input's device;
  int64 indices, float32 float outputs;
* the index-or-mask arguments (``exclude=``, ``labeled=``) take a bool mask, an index array, a list
  or a torch index tensor, with identical results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest

import asvp_fast as af
from asvp_fast.acquisition.diversity import diversity_select

torch = pytest.importorskip("torch")
from asvp_fast.acquisition.activeft import activeft_select  # noqa: E402

N, C, D = 60, 4, 5


def _inputs() -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "probs": rng.dirichlet(np.ones(C), N).astype(np.float32),
        "features": rng.standard_normal((N, D)).astype(np.float32),
        "labels": np.arange(N) % 3,
        "mc": rng.dirichlet(np.ones(C), (4, N)).astype(np.float32),  # (T, N, C) MC-dropout samples
    }


@dataclass
class Case:
    """One public function: how to call it on (converted) inputs, and what it returns."""

    name: str
    call: Callable[..., Any]  # call(arrays, **options) with arrays from `convert`
    outputs: Callable[[Any], List[Tuple[str, Any]]]  # [("index" | "float" | "scalar" | "count", value)]
    rows_argument: Optional[str] = None  # "exclude" or "labeled"
    on_gpu_via: str = "kernels"  # which GPU test decides: the compiled kernels or torch
    tensors: Tuple[str, ...] = ("probs", "features")  # inputs converted to torch for torch calls


def _indices(result: Any) -> List[Tuple[str, Any]]:
    return [("index", result)]


def _diversity_outputs(result: Any) -> List[Tuple[str, Any]]:
    return [("index", result.indices), ("float", result.distances)]


def _ped_outputs(result: Any) -> List[Tuple[str, Any]]:
    moved, steps = result
    return [("float", moved), ("count", steps)]


CASES = [
    Case("scores", lambda a, **o: af.scores(a["probs"], "entropy", **o), lambda r: [("float", r)]),
    Case("select_uncertain", lambda a, **o: af.select_uncertain(a["probs"], 5, "margin", **o), _indices,
         rows_argument="exclude"),
    Case("kcenter_greedy", lambda a, **o: af.kcenter_greedy(a["features"], 5, seed=1, **o), _indices,
         rows_argument="labeled"),
    Case("kmeans_pp", lambda a, **o: af.kmeans_pp(a["features"], 5, seed=1, **o), _indices,
         rows_argument="exclude"),
    Case("badge", lambda a, **o: af.badge(a["probs"], a["features"], 5, seed=1, **o), _indices,
         rows_argument="exclude"),
    Case("diversity_select", lambda a, **o: diversity_select("kcenter", a["features"], 5, seed=1, **o),
         _diversity_outputs, rows_argument="labeled"),
    Case("activeft_select", lambda a, **o: activeft_select(a["features"], 5, iterations=3, **o), _indices,
         rows_argument="labeled", on_gpu_via="torch"),
    Case("bald", lambda a, **o: af.bald(a["mc"], 5, **o), _indices, rows_argument="exclude", on_gpu_via="torch",
         tensors=("mc",)),
    Case("batchbald", lambda a, **o: af.batchbald(a["mc"], 4, seed=1, **o), _indices, rows_argument="exclude",
         on_gpu_via="torch", tensors=("mc",)),
    Case("typiclust", lambda a, **o: af.typiclust(a["features"], 5, seed=1, **o), _indices, rows_argument="labeled",
         on_gpu_via="torch", tensors=("features",)),
    Case("probcover", lambda a, **o: af.probcover(a["features"], 5, seed=1, **o), _indices, rows_argument="labeled",
         on_gpu_via="torch", tensors=("features",)),
    Case("cluster_margin", lambda a, **o: af.cluster_margin(a["probs"], a["features"], 5, seed=1, **o), _indices,
         rows_argument="exclude", on_gpu_via="torch"),
    Case("logme", lambda a, **o: af.logme(a["features"], a["labels"], **o), lambda r: [("scalar", r)],
         on_gpu_via="torch", tensors=("features",)),
    Case("ped", lambda a, **o: af.ped(a["features"], a["labels"], steps=3, **o), _ped_outputs,
         on_gpu_via="torch", tensors=("features",)),
]
IDS = [case.name for case in CASES]
WITH_ROWS = [case for case in CASES if case.rows_argument]


def _gpu_usable(case: Case) -> bool:
    if case.on_gpu_via == "torch":
        return bool(torch.cuda.is_available())
    return af.backends()["cuda_devices"] > 0


def _as_torch(arrays: Dict[str, np.ndarray], case: Case) -> Dict[str, Any]:
    return {key: torch.from_numpy(value) if key in case.tensors else value for key, value in arrays.items()}


def _as_numpy(value: Any) -> np.ndarray:
    return value.cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


# --- device ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_auto_and_cpu_run(case, device):
    case.call(_inputs(), device=device)


# ids avoid the bare word "cuda": conftest skips every test carrying that keyword
@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", ["cuda", "cuda:0"], ids=["gpu", "gpu-0"])
def test_gpu_device_runs_or_raises_runtime_error(case, device):
    if _gpu_usable(case):
        case.call(_inputs(), device=device)
    else:
        with pytest.raises(RuntimeError, match=f"device='{device}'"):
            case.call(_inputs(), device=device)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gpu_that_does_not_exist_is_a_runtime_error(case):
    with pytest.raises(RuntimeError, match="device='cuda:99'"):
        case.call(_inputs(), device="cuda:99")


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "cpu:0", ""])
def test_misspelled_device_is_a_value_error(case, device):
    with pytest.raises(ValueError, match="device must be one of"):
        case.call(_inputs(), device=device)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("device", [5, 0.0, ["cpu"], b"cpu", None], ids=["int", "float", "list", "bytes", "none"])
def test_device_that_is_not_a_string_is_a_type_error(case, device):
    with pytest.raises(TypeError, match="device must be one of"):
        case.call(_inputs(), device=device)


# --- threads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_threads_none_one_and_huge_give_the_same_result(case):
    reference = [(kind, _as_numpy(value)) for kind, value in case.outputs(case.call(_inputs(), threads=None))]
    for threads in (1, 10**6):
        got = case.outputs(case.call(_inputs(), threads=threads))
        for (kind, want), (_, value) in zip(reference, got):
            if kind == "scalar":
                assert value == pytest.approx(float(want), rel=1e-9, abs=1e-12)
            else:
                np.testing.assert_array_equal(_as_numpy(value), want)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("threads", [0, -1])
def test_non_positive_threads_is_a_value_error(case, threads):
    with pytest.raises(ValueError, match="threads must be None or a positive integer"):
        case.call(_inputs(), threads=threads)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("threads", ["2", 2.0, True], ids=["str", "float", "bool"])
def test_threads_of_the_wrong_type_is_a_type_error(case, threads):
    with pytest.raises(TypeError, match="threads must be None or a positive integer"):
        case.call(_inputs(), threads=threads)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_thread_settings_are_restored(case):
    import faiss

    before = (torch.get_num_threads(), faiss.omp_get_max_threads(), af.backends()["openmp_threads"])
    case.call(_inputs(), threads=1)
    assert (torch.get_num_threads(), faiss.omp_get_max_threads(), af.backends()["openmp_threads"]) == before


# --- outputs follow the input -----------------------------------------------------------------------

def _check_output(kind: str, value: Any, library: str) -> None:
    if kind == "scalar":
        assert type(value) is float and np.isfinite(value)
        return
    if kind == "count":
        assert isinstance(value, int) and not isinstance(value, bool)
        return
    if library == "numpy":
        assert type(value) is np.ndarray, type(value)
        assert value.dtype == (np.int64 if kind == "index" else np.float32)
    else:
        assert isinstance(value, torch.Tensor), type(value)
        assert value.device.type == "cpu"
        assert value.dtype == (torch.int64 if kind == "index" else torch.float32)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_numpy_in_numpy_out(case):
    for kind, value in case.outputs(case.call(_inputs())):
        _check_output(kind, value, "numpy")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_memmap_in_numpy_out(case, tmp_path):
    arrays = _inputs()
    for key in case.tensors:
        path = tmp_path / f"{key}.f32"
        arrays[key].tofile(path)
        arrays[key] = np.memmap(path, dtype=np.float32, mode="r", shape=arrays[key].shape)
    for kind, value in case.outputs(case.call(arrays)):
        _check_output(kind, value, "numpy")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_torch_in_torch_out_with_the_same_values(case):
    want = case.outputs(case.call(_inputs(), device="cpu"))
    got = case.outputs(case.call(_as_torch(_inputs(), case), device="cpu"))
    for (kind, expected), (_, value) in zip(want, got):
        _check_output(kind, value, "torch")
        if kind == "scalar":
            assert value == pytest.approx(expected, rel=1e-6)
        elif kind == "count":
            assert value == expected
        else:
            np.testing.assert_allclose(_as_numpy(value), expected, rtol=1e-5, atol=1e-6)


# --- index-or-mask ------------------------------------------------------------------------------------

ROWS = np.array([3, 17, 0, 42, 8])


@pytest.mark.parametrize("case", WITH_ROWS, ids=[case.name for case in WITH_ROWS])
def test_mask_index_array_list_and_tensor_agree(case):
    mask = np.zeros(N, dtype=bool)
    mask[ROWS] = True
    forms = {
        "mask": mask,
        "indices": ROWS,
        "list": ROWS.tolist(),
        "tensor": torch.from_numpy(ROWS),
        "tensor mask": torch.from_numpy(mask),
        "int32": ROWS.astype(np.int32),
    }
    results = {name: case.outputs(case.call(_inputs(), **{case.rows_argument: rows}))[0][1]
               for name, rows in forms.items()}
    want = _as_numpy(results["mask"])
    assert not np.isin(want, ROWS).any()
    for name, value in results.items():
        np.testing.assert_array_equal(_as_numpy(value), want, err_msg=name)


@pytest.mark.parametrize("case", WITH_ROWS, ids=[case.name for case in WITH_ROWS])
@pytest.mark.parametrize("rows, error", [
    (np.zeros(N - 1, dtype=bool), ValueError),   # mask of the wrong length
    (np.array([N]), ValueError),                 # out of range
    (np.array([-1]), ValueError),
    (np.zeros((2, 2), dtype=np.int64), ValueError),
    (np.array([0.5]), TypeError),
    ("0,1", TypeError),
    ({1, 2}, TypeError),
], ids=["short-mask", "too-large", "negative", "2-d", "float", "str", "set"])
def test_bad_rows_name_the_argument(case, rows, error):
    with pytest.raises(error, match=case.rows_argument):
        case.call(_inputs(), **{case.rows_argument: rows})


@pytest.mark.parametrize("case", WITH_ROWS, ids=[case.name for case in WITH_ROWS])
def test_labelled_is_not_a_silent_alias(case):
    # The contract's spelling is `labeled=`; any other spelling is an error, never ignored.
    other = "labelled" if case.rows_argument == "labeled" else "excluded"
    with pytest.raises(TypeError, match=other):
        case.call(_inputs(), **{other: ROWS})
