"""The sharded CUDA fold-in on the CPU: its warp arithmetic rendered on the host, and the device
path of the sharded driver run on CPU tensors with that rendering in the kernel's place.

- ``_C.shard_fold_cuda_rendering`` / ``_C.shard_badge_norms_rendering`` (csrc/gpu_renderings.h)
  follow the CUDA engine's lane map (16-byte chunks, lane l takes chunks l, l + 32, ..., fused
  multiply-adds, xor butterfly); an independent NumPy rendering here must give the same bits,
  and the values must agree with the CPU engine's (another summation order) to rounding.
- The sharded driver's device path (r, rows and the D² sums as tensors) with the rendered
  kernel must pick what one process with those distances picks: k-center's farthest row,
  k-means++/BADGE's draw (``_C.render_choose_d2``, the CUDA choose kernel rendered).
- ``_C.shard_fold_in`` checks its device operands natively; on a build without CUDA it names the
  problem (fake CUDA DLPack capsules: nothing is read from them).
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gloo_ranks import spawn
from shard_fold_workers import BOUNDS, CASES, LABELLED, _pool, _worker

import asvp_fast._C as _C
from asvp_fast.acquisition import sharded_math as sm

LANES, CHUNK = 32, 4


def _butterfly(acc: np.ndarray) -> np.ndarray:
    lanes = np.arange(LANES)
    for offset in (16, 8, 4, 2, 1):
        acc = acc + acc[:, lanes ^ offset]
    return acc[:, 0]


def _chunked(a: np.ndarray, b: np.ndarray, n: int, width: int = CHUNK) -> np.ndarray:
    """Per row: lane l folds fma(a[e], b[e], acc) over its chunks of ``width`` elements, l, l + 32,
    ... (a and b hold zeros from n up to a whole chunk)."""
    m = a.shape[0]
    chunks = -(-n // width)
    acc = np.zeros((m, LANES), dtype=np.float32)
    for step in range(-(-chunks // LANES)):
        lanes = np.arange(LANES)
        live = lanes[step * LANES + lanes < chunks]
        for e in range(width):
            idx = (step * LANES + live) * width + e
            acc[:, live] = sm.fma32(a[:, idx], b[:, idx], acc[:, live])
    return _butterfly(acc)


def _strided(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: lane l folds fma(a[j], b[j], acc) over j = l, l + 32, ..."""
    m, n = a.shape
    acc = np.zeros((m, LANES), dtype=np.float32)
    for j in range(n):
        acc[:, j % LANES] = sm.fma32(a[:, j], b[:, j], acc[:, j % LANES])
    return _butterfly(acc)


def _pad(rows: np.ndarray, width: int) -> np.ndarray:
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    out[:, :rows.shape[1]] = rows
    return out


def _p8(n: int) -> int:
    return (n + 7) // 8 * 8


def _euclidean_centre(row: np.ndarray) -> np.ndarray:
    return _pad(row[None], _p8(row.size))[0]


def _badge_centre(p: np.ndarray, h: np.ndarray, y: int, qn: float, hn: float) -> np.ndarray:
    q = p.copy()
    q[y] -= np.float32(1.0)
    return np.concatenate([_pad(q[None], _p8(q.size))[0], _pad(h[None], _p8(h.size))[0],
                           np.array([qn, hn], dtype=np.float32)])


@pytest.mark.parametrize("width", [4, 8, 2])  # chunks of float32, 16-bit types, float64
@pytest.mark.parametrize("d", [1, 3, 4, 5, 31, 127, 128, 129, 130, 515, 1100])
def test_euclidean_rendering_follows_the_lane_map(d, width, rng):
    x = rng.standard_normal((40, d)).astype(np.float32) * np.float32(3.0)
    centre = _euclidean_centre(rng.standard_normal(d).astype(np.float32))
    r = np.full(40, np.inf, dtype=np.float32)
    got = _C.shard_fold_cuda_rendering(x, centre, r, width=width)
    span = -(-d // width) * width
    t = _pad(x, span) - _pad(centre[None, :d], span)
    want = _chunked(t, t, span, width)  # elements past d are 0 - 0: fma(0, 0, acc) adds nothing
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    cpu = r.copy()
    _C.shard_fold_in(x, centre[:d].copy(), cpu)  # the CPU engine's distances: another order
    np.testing.assert_allclose(got, cpu, rtol=2e-5 * max(1, d) ** 0.5, atol=0)


def _probs(rng, m, c):
    p = rng.dirichlet(np.full(c, 0.3), m).astype(np.float32)
    p[0, :] = np.float32(1.0 / c)  # a row of ties: the first class
    return p


@pytest.mark.parametrize("c,d", [(1, 1), (3, 5), (10, 33), (40, 70), (100, 260)])
def test_badge_rendering_follows_the_lane_map(c, d, rng):
    m = 30
    p, h = _probs(rng, m, c), rng.standard_normal((m, d)).astype(np.float32)
    y, qn, hn = _C.shard_badge_norms_rendering(p, h)
    np.testing.assert_array_equal(y, np.argmax(p, axis=1))
    q_other = p.copy()
    q_other[np.arange(m), y] = 0.0
    qy = p[np.arange(m), y] - np.float32(1.0)
    np.testing.assert_array_equal(qn.view(np.int32), sm.fma32(qy, qy, _strided(q_other, q_other)).view(np.int32))
    np.testing.assert_array_equal(hn.view(np.int32), _strided(h, h).view(np.int32))

    j = 7
    centre = _badge_centre(p[j], h[j], int(y[j]), qn[j], hn[j])
    r = np.full(m, np.inf, dtype=np.float32)
    r[j] = -1.0
    got = _C.shard_fold_cuda_rendering(h, centre, r, p, y, qn, hn)
    cp = _p8(c)
    q_dot = _strided(np.broadcast_to(centre[:c], (m, c)).copy(), q_other)
    q_dot = sm.fma32(centre[y], qy, q_dot)  # the predicted class's term, fused in after the merge
    h_dot = _chunked(np.broadcast_to(centre[cp:cp + _p8(d)], (m, _p8(d))).copy(), _pad(h, _p8(d)), _p8(d))
    want = sm.badge_sq_distances(centre[-2], centre[-1], qn, hn, q_dot, h_dot)
    want[j] = -1.0
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    # the CPU engine's values (its own |q|^2, |h|^2 and dots): the same distances to rounding
    q_cpu, h_cpu = p.copy(), h
    q_cpu[np.arange(m), y] -= np.float32(1.0)
    qn_cpu, hn_cpu = sm.dots(q_cpu, q_cpu, False), sm.dots(h_cpu, h_cpu, False)
    cpu = np.full(m, np.inf, dtype=np.float32)
    cpu[j] = -1.0
    centre_cpu = np.concatenate([q_cpu[j], h[j], [qn_cpu[j], hn_cpu[j]]]).astype(np.float32)
    _C.shard_fold_in(h, centre_cpu, cpu, p, y.astype(np.int64), qn_cpu, hn_cpu)
    scale = float((qn * hn).max())
    np.testing.assert_allclose(got, cpu, rtol=0, atol=1e-5 * scale * (c + d) ** 0.5)


# -- native checks of the device path ---------------------------------------------------------------

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32), ("dtype", _DLDataType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_KEEP: list = []


def _fake(shape, code=2, bits=32, device=0, strides=None, kind=2):
    """A DLPack capsule that claims to live on cuda:``device`` (kind 2) over a small host buffer:
    the binding checks it and must refuse before reading anything."""
    buf = (ctypes.c_byte * 64)()
    shp = (ctypes.c_int64 * len(shape))(*shape)
    std = (ctypes.c_int64 * len(shape))(*strides) if strides else None
    t = _DLManaged()
    t.dl_tensor = _DLTensor(ctypes.addressof(buf), _DLDevice(kind, device), len(shape), _DLDataType(code, bits, 1),
                            shp, std, 0)
    _KEEP.extend([buf, shp, std, t])
    new = ctypes.pythonapi.PyCapsule_New
    new.restype, new.argtypes = ctypes.py_object, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.addressof(t), b"dltensor", None)


def _cuda_compiled():
    return bool(_C.build_info().get("cuda_compiled", False))


def test_device_operands_are_checked_natively():
    with pytest.raises(TypeError, match="centre must be float32, got float64"):
        _C.shard_fold_in(_fake([5, 3]), _fake([8], bits=64), _fake([5]))
    with pytest.raises(ValueError, match="r is on cuda:1 but x is on cuda:0"):
        _C.shard_fold_in(_fake([5, 3]), _fake([8]), _fake([5], device=1))
    with pytest.raises(ValueError, match="r is on the host but x is on cuda:0"):
        _C.shard_fold_in(_fake([5, 3]), _fake([8]), np.zeros(5, dtype=np.float32))
    with pytest.raises(ValueError, match="x must be contiguous"):
        _C.shard_fold_in(_fake([5, 3], strides=[1, 5]), _fake([8]), _fake([5]))
    with pytest.raises(ValueError, match="r must have one entry per row of x"):
        _C.shard_fold_in(_fake([5, 3]), _fake([8]), _fake([4]))
    with pytest.raises(ValueError, match="centre has length 3, expected 8"):
        _C.shard_fold_in(_fake([5, 3]), _fake([3]), _fake([5]))
    with pytest.raises(ValueError, match="expected 18"):  # BADGE: padded8(4) + padded8(3) + 2
        _C.shard_fold_in(_fake([5, 3]), _fake([9]), _fake([5]), _fake([5, 4]), _fake([5], code=0, bits=64),
                         _fake([5]), _fake([5]))
    with pytest.raises(TypeError, match="y must be int64"):
        _C.shard_fold_in(_fake([5, 3]), _fake([18]), _fake([5]), _fake([5, 4]), _fake([5]), _fake([5]), _fake([5]))
    with pytest.raises(ValueError, match="x is a host DLPack array"):
        _C.shard_fold_in(_fake([5, 3], kind=1), _fake([8]), _fake([5]))


@pytest.mark.skipif(_cuda_compiled(), reason="this build has CUDA kernels: the CUDA tests cover the device path")
def test_cuda_arrays_without_cuda_kernels_name_the_problem():
    with pytest.raises(ValueError, match="no CUDA kernels"):
        _C.shard_fold_in(_fake([5, 3]), _fake([8]), _fake([5]))
    with pytest.raises(ValueError, match="no CUDA kernels"):
        _C.shard_badge_norms(_fake([5, 4]), _fake([5, 3]), _fake([5], code=0, bits=64), _fake([5]), _fake([5]))


# -- the device path of the sharded driver, on CPU tensors with the rendered kernel ----------------

def _fold_rendered(method, x, r, row, probs=None, norms=None):
    if method == "badge":
        y, qn, hn = norms
        centre = _badge_centre(probs[row], x[row], int(y[row]), qn[row], hn[row])
        return _C.shard_fold_cuda_rendering(x, centre, r, probs, y, qn, hn)
    return _C.shard_fold_cuda_rendering(x, _euclidean_centre(x[row]), r)


def _reference(method, x, k, seed, probs=None):
    """One process with the rendered distances: k-center's farthest (lowest row on ties; the
    labelled rows folded in first), k-means++/BADGE's draw by the CUDA choose kernel rendered."""
    n = x.shape[0]
    r = np.full(n, np.inf, dtype=np.float32)
    norms = _C.shard_badge_norms_rendering(probs, x) if method == "badge" else None
    if method == "kcenter_labelled":
        r[LABELLED] = -1.0
        for row in LABELLED:
            r = _fold_rendered(method, x, r, row)
        picks = []
    elif method == "badge":
        picks = [int(np.argmax(norms[1].astype(np.float64) * norms[2].astype(np.float64)))]
    else:
        picks = [sm.scale_to_count(sm.uniform01(seed, 0), n)]
    while len(picks) < k:
        if picks:
            r[picks[-1]] = -1.0
            r = _fold_rendered(method, x, r, picks[-1], probs, norms)
        if method.startswith("kcenter"):
            picks.append(int(np.argmax(r)))
        else:  # the choose kernel
            picks.append(int(_C.render_choose_d2(r, sm.uniform01(seed, len(picks)))))
    return np.array(picks)


def test_device_path_of_the_driver_picks_as_one_process(tmp_path):
    pytest.importorskip("torch")
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    world = len(BOUNDS) - 1
    per_rank = spawn(_worker, world, tmp_path)
    x, probs = _pool(3)
    for rank, got in enumerate(per_rank):
        assert "error" not in got, got.get("error")
        for method, k in CASES.items():
            want = _reference(method, x, k, 11, probs if method == "badge" else None)
            np.testing.assert_array_equal(got[method], want, err_msg=f"{method}, rank {rank}")
