"""The GPU diversity engine's block algorithms, run on the host (``csrc/gpu_renderings.h``), against
plain references; and the compiled module's own precondition checks. Runs without a GPU.

* the two-phase update (coalesced prune test, compaction in row order, fold, aggregates);
* the D² draw of the choose kernel (group sums, staged walks, uniform fallback), which must equal
  the hierarchical definition the CPU engine samples with, bit for bit (Python floats are IEEE
  doubles, so the reference below reproduces every rounding);
* the CPU engine's k-means++ against a from-scratch Python rendering on data where all arithmetic is
  exact (so a GPU run on such data must pick the same rows).
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asvp_fast as af
import asvp_fast._C as _C

BLOCK, SEGMENT, GROUP = 1024, 32, 32
PRUNE_FACTOR = np.float32(4.04)
MASK64 = (1 << 64) - 1


# --- plain references -------------------------------------------------------------------------

def serial(values) -> float:
    total = 0.0
    for v in values:
        total += v
    return total


def weights(r: np.ndarray) -> list:
    return [float(v) if v > 0 else 0.0 for v in r]


def segment_sums(w: list, block: int) -> list:
    first = block * BLOCK
    return [serial(w[first + s * SEGMENT:first + (s + 1) * SEGMENT]) for s in range(BLOCK // SEGMENT)]


def walk(values, running: float, target: float):
    last = -1
    for i, v in enumerate(values):
        if not v > 0.0:
            continue
        nxt = running + v
        last = i
        if nxt > target:
            return i, running, target
        running = nxt
    return last, running, math.inf


def reference_draw(r: np.ndarray, u: float) -> int:
    """The hierarchical D² draw (diversity_math.h d2_draw), or -1 when every weight is 0."""
    w = weights(r)
    blocks = -(-len(w) // BLOCK)
    seg = [segment_sums(w, b) for b in range(blocks)]
    block_w = [serial(s) for s in seg]
    group_w = [serial(block_w[g * GROUP:(g + 1) * GROUP]) for g in range(-(-blocks // GROUP))]
    total = serial(group_w)
    if not total > 0.0:
        return -1
    g, running, target = walk(group_w, 0.0, u * total)
    bi, running, target = walk(block_w[g * GROUP:(g + 1) * GROUP], running, target)
    b = g * GROUP + bi
    s, running, target = walk(seg[b], running, target)
    first = b * BLOCK + s * SEGMENT
    i, _, _ = walk(w[first:first + SEGMENT], running, target)
    return first + i


def scale_to_count(u: float, n: int) -> int:
    return min(int(u * n), n - 1)


def reference_uniform(r: np.ndarray, u: float) -> int:
    candidates = np.flatnonzero(r >= 0)
    return int(candidates[scale_to_count(u, candidates.size)]) if candidates.size else -1


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def uniform01(seed: int, counter: int) -> float:
    bits = splitmix64(splitmix64(seed) ^ splitmix64((counter + 0x632BE59BD9B4E019) & MASK64))
    return (bits >> 11) * (1.0 / 9007199254740992.0)


def farthest_key(r: np.float32, row: int) -> int:
    if not r >= 0:
        return 0
    return (int(np.float32(r).view(np.uint32)) << 32) | (0xFFFFFFFF - row)


def pool(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """r values as the engine holds them: < 0 not a candidate, 0 on a centre, ties, tiny and huge."""
    if kind == "mixed":
        specials = rng.choice(np.array([-1, 0, 1, 2, 2, 3, 1e-30, 7.5, 1e30], np.float32), n)
        return np.where(rng.random(n) < 0.5, specials, rng.exponential(1.0, n)).astype(np.float32)
    if kind == "zeros":
        return np.where(rng.random(n) < 0.3, -1.0, 0.0).astype(np.float32)
    if kind == "excluded":
        return np.full(n, -1.0, np.float32)
    if kind == "ties":
        return np.where(rng.random(n) < 0.2, -1.0, 4.0).astype(np.float32)
    if kind == "integers":
        return np.where(rng.random(n) < 0.1, -1.0, rng.integers(0, 50, n)).astype(np.float32)
    return rng.exponential(1.0, n).astype(np.float32)


KINDS = ["mixed", "zeros", "excluded", "ties", "integers", "smooth"]
SIZES = [1, 31, 33, 1023, 1024, 1025, 5000, 33 * BLOCK + 17]


# --- D² draw ----------------------------------------------------------------------------------

def test_uniform01_port_matches_the_kernels():
    for seed, counter in [(0, 0), (1, 2), (2**64 - 1, 5), (123456789, 10**6)]:
        assert uniform01(seed, counter) == _C.uniform01(seed, counter)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from(SIZES), kind=st.sampled_from(KINDS),
       u=st.floats(0.0, 1.0, exclude_max=True))
def test_choose_kernel_draw_equals_the_definition_bit_for_bit(seed, n, kind, u):
    r = pool(np.random.default_rng(seed), n, kind)
    expected = reference_draw(r, u)
    assert _C.d2_draw_definition(r, u) == expected
    gpu = _C.render_choose_d2(r, u)
    if expected >= 0:
        assert gpu == expected and r[gpu] > 0
    else:  # every weight 0: uniform among the candidates, -1 when none is left
        assert gpu == reference_uniform(r, u)


def test_draw_on_exact_data_is_the_first_prefix_past_the_target(rng):
    n = 40 * BLOCK + 3  # two groups, a partial block
    r = np.where(rng.random(n) < 0.3, 0.0, rng.integers(1, 64, n)).astype(np.float32)
    r[rng.random(n) < 0.05] = -1
    w = np.where(r > 0, r, 0).astype(np.float64)
    prefix = np.cumsum(w)  # exact: integers below 2**53
    for u in rng.random(200):
        target = u * prefix[-1]
        row = int(np.flatnonzero((prefix > target) & (w > 0))[0])
        assert _C.render_choose_d2(r, u) == row == _C.d2_draw_definition(r, u)


def test_draw_edge_weights():
    r = np.zeros(3000, np.float32)
    r[2999] = 5.0
    for u in (0.0, 0.5, 1.0 - 2**-53):
        assert _C.render_choose_d2(r, u) == 2999
    r[:] = -1
    assert _C.render_choose_d2(r, 0.3) == -1  # every candidate excluded: no row, never one past the end
    r[1500] = 0.0
    assert _C.render_choose_d2(r, 0.99) == 1500  # the only candidate, weight 0: uniform among one


# --- two-phase update -------------------------------------------------------------------------

def reference_update(r, assigned, gaps, distance, slot, slack, prune, validate):
    candidate = r >= 0
    gap = np.where(assigned >= 0, gaps[np.clip(assigned, 0, None)], np.float32(0))
    ruled_out = (r == 0) | (gap >= PRUNE_FACTOR * r + np.float32(slack))
    need = candidate & (validate | ~(prune & (assigned >= 0) & ruled_out))
    better = need & (distance < r)
    new_r = np.where(better, distance, r).astype(np.float32)
    new_a = np.where(better, slot, assigned).astype(np.int32)
    return np.flatnonzero(need), new_r, new_a, int(candidate.sum())


def check_aggregates(out, r):
    n = r.size
    w = weights(r)
    for b in range(-(-n // BLOCK)):
        rows = range(b * BLOCK, min(n, (b + 1) * BLOCK))
        assert out["farthest"][b] == max([farthest_key(r[i], i) for i in rows] + [0])
        assert out["candidates"][b] == int(np.count_nonzero(r[b * BLOCK:(b + 1) * BLOCK] >= 0))
        seg = segment_sums(w + [0.0] * BLOCK, b)
        assert out["segments"][b * 32:(b + 1) * 32].tolist() == seg
        assert out["weight"][b] == serial(seg)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), n=st.sampled_from([1, 7, 256, 1024, 1500, 2048 + 300]),
       kind=st.sampled_from(KINDS), prune=st.booleans(), validate=st.booleans(),
       slack=st.sampled_from([0.0, 0.5]))
def test_update_block_matches_the_reference(seed, n, kind, prune, validate, slack):
    rng = np.random.default_rng(seed)
    r = pool(rng, n, kind)
    slots = 6
    assigned = np.where(r >= 0, rng.integers(-1, slots - 1, n), -1).astype(np.int32)
    gaps = rng.choice(np.array([0, 1, 4, 9, 100, 1e30], np.float32), slots).astype(np.float32)
    distance = np.where(rng.random(n) < 0.5, rng.exponential(1.0, n), r).astype(np.float32)  # ties with r too
    distance[distance < 0] = 0
    out = _C.render_update(r, assigned, gaps, distance, slots - 1, slack, prune, validate)
    todo, new_r, new_a, possible = reference_update(r, assigned, gaps, distance, slots - 1, slack, prune, validate)
    np.testing.assert_array_equal(out["todo"], todo)  # compacted in row order, nothing lost or doubled
    np.testing.assert_array_equal(out["r"], new_r)
    np.testing.assert_array_equal(out["assigned"], new_a)
    assert out["possible"] == possible
    check_aggregates(out, new_r)


def test_update_with_every_row_excluded_or_on_a_centre():
    n = 2500
    out = _C.render_update(np.full(n, -1, np.float32), np.full(n, -1, np.int32), np.zeros(1, np.float32),
                           np.zeros(n, np.float32), 0, 0.0, True, False)
    assert out["todo"].size == 0 and out["possible"] == 0
    assert not out["farthest"].any() and not out["weight"].any() and not out["candidates"].any()
    zeros = np.zeros(n, np.float32)
    out = _C.render_update(zeros, np.zeros(n, np.int32), np.zeros(1, np.float32), zeros, 0, 0.0, True, False)
    assert out["todo"].size == 0 and out["possible"] == n  # r == 0 never improves: all pruned
    assert not out["weight"].any() and out["candidates"].sum() == n


# --- the CPU engine on exact data: the picks the GPU must reproduce ---------------------------

def reference_kmeans_pp(x: np.ndarray, k: int, seed: int, exclude=()) -> list:
    n = x.shape[0]
    r = np.full(n, np.inf, np.float32)
    r[list(exclude)] = -1
    first = int(np.flatnonzero(r >= 0)[scale_to_count(uniform01(seed, 0), int(np.count_nonzero(r >= 0)))])
    picks = []
    for t in range(k):
        if t == 0:
            row = first
        else:
            u = uniform01(seed, t)
            row = reference_draw(r, u)
            if row < 0:
                row = reference_uniform(r, u)
        picks.append(row)
        r[row] = -1
        d = ((x - x[row]) ** 2).sum(1).astype(np.float32)  # exact: small integers
        r = np.where((r >= 0) & (d < r), d, r).astype(np.float32)
    return picks


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_cpu_kmeans_pp_is_the_definition_on_exact_data(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-6, 7, (5000, 3)).astype(np.float32)  # several blocks, many ties and duplicates
    exclude = rng.choice(5000, 400, replace=False)
    picks = af.kmeans_pp(x, 40, seed=seed, exclude=exclude)
    assert picks.tolist() == reference_kmeans_pp(x, 40, seed, exclude)


def test_cpu_kmeans_pp_on_identical_rows_draws_uniformly_like_the_renderer():
    x = np.zeros((3000, 2), np.float32)
    picks = af.kmeans_pp(x, 30, seed=3)
    assert picks.tolist() == reference_kmeans_pp(x, 30, 3)


# --- the row kernel's chunk map (uncertainty) -------------------------------------------------

@pytest.mark.parametrize("lanes,width", [(8, 8), (32, 8), (32, 4), (8, 2), (32, 1)])
def test_chunked_lane_map_matches_the_reference(lanes, width, rng):
    import reference as ref

    for c in (1, 2, 5, 37, 64, 129, 1000):
        p = rng.dirichlet(np.ones(c), 50).astype(np.float32)
        z = rng.standard_normal((50, c)).astype(np.float32) * 4
        for kind, code in (("margin", 0), ("entropy", 1), ("least_confidence", 2)):
            if kind == "margin" and c < 2:
                continue
            np.testing.assert_allclose(_C.warp_emulated_scores(p, code, False, lanes, width), ref.scores(p, kind),
                                       rtol=1e-4, atol=2e-5)
            np.testing.assert_allclose(_C.warp_emulated_scores(z, code, True, lanes, width),
                                       ref.scores(z, kind, True), rtol=1e-4, atol=2e-5)


# --- native preconditions (fake CUDA DLPack tensors: checked before anything is read) --------

class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _Device), ("ndim", ctypes.c_int32), ("dtype", _DType),
                ("shape", ctypes.POINTER(ctypes.c_int64)), ("strides", ctypes.POINTER(ctypes.c_int64)),
                ("byte_offset", ctypes.c_uint64)]


class _Managed(ctypes.Structure):
    _fields_ = [("dl_tensor", _Tensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


_KEEP: list = []


def fake_cuda_capsule(a: np.ndarray, device_id: int):
    """A DLPack capsule that claims `a` lives on cuda:device_id (never dereferenced by these tests)."""
    shape = (ctypes.c_int64 * a.ndim)(*a.shape)
    code = {"f": 2, "u": 1, "b": 6, "i": 0}[a.dtype.kind]
    managed = _Managed(_Tensor(a.ctypes.data, _Device(2, device_id), a.ndim, _DType(code, a.itemsize * 8, 1), shape,
                               None, 0), None, None)
    _KEEP.extend([a, shape, managed])
    new = ctypes.pythonapi.PyCapsule_New
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new(ctypes.addressof(managed), b"dltensor", None)


def test_native_layer_compares_device_ids_of_every_operand(rng):
    h = rng.standard_normal((64, 4)).astype(np.float32)
    p = rng.dirichlet(np.ones(3), 64).astype(np.float32)
    picks = np.empty(2, np.int64)
    with pytest.raises(ValueError, match="x is on cuda:1 but features is on cuda:0"):
        _C.diversity(2, fake_cuda_capsule(h, 0), fake_cuda_capsule(p, 1), False, True, None, None, None, picks, None,
                     2, 0, 0, True, True, 0)
    with pytest.raises(ValueError, match="x and features must be on the same device"):
        _C.diversity(2, h, fake_cuda_capsule(p, 0), False, True, None, None, None, picks, None, 2, 0, 0, True, True, 0)
    with pytest.raises(ValueError, match="exclude mask must be on the same device as x"):
        _C.uncertainty(fake_cuda_capsule(p, 0), 0, False, True, fake_cuda_capsule(np.zeros(64, np.uint8), 1), None,
                       None, 0, 0, False, 0, True, 0)


def test_native_layer_rejects_k_beyond_the_candidates(rng):
    x = rng.standard_normal((50, 3)).astype(np.float32)
    picks = np.empty(3, np.int64)
    mask = np.ones(50, np.uint8)
    with pytest.raises(ValueError, match="k is larger than the rows that may be picked"):
        _C.diversity(0, x, None, False, True, None, None, mask, picks, None, 3, 0, 0, True, False, 0)
    mask[:2] = 0
    with pytest.raises(ValueError, match="k is larger than the rows that may be picked"):
        _C.diversity(1, x, None, False, True, None, None, mask, picks, None, 3, 0, 0, True, False, 0)


def test_k_one_nan_row_is_rejected_on_the_cpu():
    with pytest.raises(ValueError, match="row 0 of features contains NaN"):
        af.kcenter_greedy(np.full((1, 8), np.nan, np.float32), 1)
