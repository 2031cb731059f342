"""Host renderings of the diversity kernels' arithmetic, for sharded (torch.distributed) selection.

The distributed drivers (:mod:`asvp_fast.acquisition.distributed`) update each shard's
distances in NumPy, so they must produce the very float32 values the CPU kernel does
(``csrc/diversity_cpu.cpp``): a squared distance is accumulated in 16 float32 lanes (element j
to lane j % 16) merged in a fixed tree. Variants built with FMA (avx2, avx512) fuse each
``acc += t * t`` into one rounding; :func:`fma32` renders that exactly (the product of two
float32 is exact in float64, and the one case where rounding the float64 sum to float32 would
round twice, a sum that lands on a float32 midpoint, is settled by the sum's exact error term).

It also holds the counter-based uniforms and the D² walk of ``csrc/diversity_math.h``.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

LANES = 16
SAMPLE_BLOCK = 1024  # rows per block (kSampleBlock)
FAN_IN = 32  # rows per segment, segments per block, blocks per group
_MASK = (1 << 64) - 1


def fma32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fma(a, b, c) with a single rounding, elementwise."""
    p = a.astype(np.float64) * b.astype(np.float64)  # exact: 24 + 24 bits
    c64 = c.astype(np.float64)
    s = p + c64
    f = s.astype(np.float32)
    # Rounding s once more can only go wrong where s lies exactly on a float32 midpoint (its 29
    # bits below float32 precision are 1000...0) or in float32's subnormal range; elsewhere f is it.
    bits = np.ascontiguousarray(s).view(np.uint64)
    doubtful = ((bits & np.uint64((1 << 29) - 1)) == np.uint64(1 << 28)) | (np.abs(s) < 2.0 ** -126)
    if not doubtful.any():
        return f
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)  # s + err == p + c exactly (TwoSum)
    f64 = f.astype(np.float64)
    toward = np.where(s > f64, np.float32(np.inf), np.float32(-np.inf)).astype(np.float32)
    g = np.nextafter(f, toward)
    on_midpoint = (s != f64) & (s == (f64 + g.astype(np.float64)) * 0.5) & (err != 0)
    if not on_midpoint.any():
        return f
    return np.where(on_midpoint, np.where(err > 0, np.maximum(f, g), np.minimum(f, g)), f)


def _merge_lanes(acc: np.ndarray) -> np.ndarray:
    width = LANES // 2
    while width >= 1:
        acc[:, :width] = acc[:, :width] + acc[:, width:2 * width]
        width //= 2
    return acc[:, 0].copy()


def sq_distances(rows: np.ndarray, centre: np.ndarray, fma: bool) -> np.ndarray:
    """float32 squared distances of float32 ``rows`` (m x d) to ``centre`` (d,), bit for bit
    those of the CPU kernel's ``sq_distance`` (``fma``: the variant fuses multiply-adds)."""
    m, d = rows.shape
    acc = np.zeros((m, LANES), dtype=np.float32)
    full = d - d % LANES
    for j in range(0, full, LANES):
        t = centre[j:j + LANES] - rows[:, j:j + LANES]
        acc = fma32(t, t, acc) if fma else acc + t * t
    for lane in range(d - full):
        t = centre[full + lane] - rows[:, full + lane]
        acc[:, lane] = fma32(t, t, acc[:, lane]) if fma else acc[:, lane] + t * t
    return _merge_lanes(acc)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def uniform01(seed: int, counter: int) -> float:
    """Draw ``counter`` of stream ``seed`` in [0, 1): the kernels' ``uniform01``."""
    bits = _splitmix64(_splitmix64(seed) ^ _splitmix64((counter + 0x632BE59BD9B4E019) & _MASK))
    return float(bits >> 11) * (1.0 / 9007199254740992.0)


def scale_to_count(u: float, n: int) -> int:
    """floor(u * n), clamped to n - 1."""
    j = int(u * float(n))
    return j if j < n else n - 1


def serial_sums(leaves: Any) -> Any:
    """Sums of consecutive runs of FAN_IN float64 leaves, each added in index order from 0.0
    (the last run may be short: missing leaves weigh 0, and adding 0.0 changes nothing).

    ``leaves`` is a NumPy array or a torch tensor (then the sums stay on its device): FAN_IN
    elementwise float64 additions, correctly rounded on any device, so both give the same bits."""
    n = len(leaves)
    runs = -(-n // FAN_IN)
    if isinstance(leaves, np.ndarray):
        padded = np.zeros(runs * FAN_IN, dtype=np.float64)
        total = np.zeros(runs, dtype=np.float64)
    else:
        padded = leaves.new_zeros(runs * FAN_IN)
        total = leaves.new_zeros(runs)
    padded[:n] = leaves
    table = padded.reshape(runs, FAN_IN)
    for i in range(FAN_IN):
        total = total + table[:, i]
    return total


def serial_sum(values: np.ndarray) -> float:
    s = 0.0
    for v in values.tolist():
        s += v
    return s


def d2_walk(weights: np.ndarray, running: float, target: float) -> Tuple[int, float, float]:
    """One level of a draw (``d2_walk`` in diversity_math.h): (index, running, target)."""
    last = -1
    for i, w in enumerate(weights.tolist()):
        if not w > 0.0:
            continue
        nxt = running + w
        last = i
        if nxt > target:
            return i, running, target
        running = nxt
    return last, running, float("inf")


def d2_row_weights(r: np.ndarray) -> np.ndarray:
    """The D² weight of each row: r as float64 where r > 0, else 0."""
    return np.where(r > 0, r.astype(np.float64), 0.0)



def _madd(a: np.ndarray, b: np.ndarray, c: np.ndarray, fma: bool) -> np.ndarray:
    return fma32(a, b, c) if fma else c + a * b


def dots(rows: np.ndarray, other: np.ndarray, fma: bool) -> np.ndarray:
    """float32 dot products of ``rows`` (m x n) with ``other`` (n,) or (m x n), bit for bit the
    CPU kernel's ``dot``: two sets of 16 lanes over steps of 32 elements, merged, then the tail
    into lane j % 16, then the lane tree."""
    m, n = rows.shape
    other = np.broadcast_to(other, rows.shape)
    acc = np.zeros((m, LANES), dtype=np.float32)
    acc2 = np.zeros((m, LANES), dtype=np.float32)
    j = 0
    while j + 2 * LANES <= n:
        acc = _madd(other[:, j:j + LANES], rows[:, j:j + LANES], acc, fma)
        acc2 = _madd(other[:, j + LANES:j + 2 * LANES], rows[:, j + LANES:j + 2 * LANES], acc2, fma)
        j += 2 * LANES
    acc = acc + acc2
    while j < n:
        width = min(LANES, n - j)
        acc[:, :width] = _madd(other[:, j:j + width], rows[:, j:j + width], acc[:, :width], fma)
        j += width
    return _merge_lanes(acc)


def badge_sq_distances(qn_c: float, hn_c: float, qn: np.ndarray, hn: np.ndarray, q_dot: np.ndarray,
                       h_dot: np.ndarray) -> np.ndarray:
    """BADGE's factorised squared distance (``badge_sq_distance``): combined in float64 (every
    product there is exact, so fused or not gives the same), clamped at 0, rounded to float32."""
    a = np.float64(qn_c) * np.float64(hn_c)
    b = qn.astype(np.float64) * hn.astype(np.float64)
    cross = 2.0 * q_dot.astype(np.float64) * h_dot.astype(np.float64)
    d = (a + b) - cross
    return np.where(d > 0.0, d, 0.0).astype(np.float32)
