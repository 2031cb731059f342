// CUDA kernels for the diversity methods (k-center greedy, k-means++ seeding, BADGE).
//
// The decision rules are those of the CPU engine, from the shared diversity_math.h: the pruning
// test, the distance update, BADGE's factorised distance, the farthest-row key, the counter-based
// random numbers and the D² hierarchy (segment, block and group sums and the walk through them).
// Per pick, four kernels run back to back on the caller's stream and the host never waits:
//   choose  (1 block)   k-center: the largest key of the block aggregates; D²: group sums in
//                       parallel, then the walk groups -> blocks -> segments -> rows, each level
//                       staged in shared memory (same sums and rounding as the CPU, so the CPU
//                       and the GPU draw the same row);
//   centre  (1 warp)    copies the picked row into a dense float32 centre;
//   gaps    (memoised)  the distance from the new centre to each earlier centre that some
//                       candidate row is assigned to (marked by the previous update), only those;
//   update  (block per 1024 rows) phase 1: the block's threads test their rows in coalesced
//                       passes (r, assigned centre, its gap) and compact the rows that need a
//                       distance into a shared-memory list, in row order; phase 2: the warps
//                       compute only those, with 16-byte loads (device_rows.cuh), and fold the
//                       new centre in; then the block's aggregates (farthest key; D²: segment
//                       sums, block weight, candidates) and one atomic per counter per block.
// The host synchronises only every kProgressEvery picks (progress, Ctrl-C), after a validating
// pass, and at the end. Every operand's device was checked by the bindings; the kernels still
// guard their own preconditions: a pick that finds no row sets a status word (no write out of
// bounds) and every later kernel of the run returns at once.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_util.cuh"
#include "device_rows.cuh"
#include "diversity.h"
#include "uncertainty_math.h"

namespace asvp {
namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kChooseThreads = 1024;
constexpr int kChunksInFlight = 4;  // 16-byte chunks each lane loads before using them
// Blocks of kBlockThreads per multiprocessor the row kernels are compiled for: 3 caps them at 80
// registers (24 warps, 2 KB in flight per warp: about 6 MB over an H100/H200, above the ~3 MB
// that its latency-bandwidth product asks for).
constexpr int kMinBlocks = 3;
constexpr unsigned long long kNoBadRow = ULLONG_MAX;
constexpr int64_t kProgressEvery = 32;  // picks between host synchronisations
constexpr unsigned kNoCandidate = 1;    // status: a pick found no row left
static_assert(kRowsPerThread * kBlockWarps == kWarp, "one warp scans the slice counts");
static_assert(kBlockSegments == kWarp && kSegmentRows == kWarp, "one lane per segment and per row of a segment");

__host__ __device__ inline int64_t padded8(int64_t n) { return (n + 7) / 8 * 8; }

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFull, v, offset);
  return v;
}
__device__ __forceinline__ uint64_t warp_max(uint64_t v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = max_of<uint64_t>(v, __shfl_xor_sync(kFull, v, offset));
  return v;
}

__device__ __forceinline__ int padded(int local) { return padded_row(local); }

// V consecutive floats of a dense centre (16-byte aligned chunks; padded with zeros).
template <int V>
__device__ __forceinline__ void centre_chunk(const float* p, float (&c)[V]) {
  if constexpr (V == 8) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p)), b = __ldg(reinterpret_cast<const float4*>(p) + 1);
    c[0] = a.x; c[1] = a.y; c[2] = a.z; c[3] = a.w; c[4] = b.x; c[5] = b.y; c[6] = b.z; c[7] = b.w;
  } else if constexpr (V == 4) {
    const float4 a = __ldg(reinterpret_cast<const float4*>(p));
    c[0] = a.x; c[1] = a.y; c[2] = a.z; c[3] = a.w;
  } else {
    const float2 a = __ldg(reinterpret_cast<const float2*>(p));
    c[0] = a.x; c[1] = a.y;
  }
}

// A strided matrix whose element type is known only at run time (BADGE's scores).
struct AnyRows {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;

  __device__ __forceinline__ float at(int64_t r, int64_t c) const {
    const int64_t i = r * row_stride + c * col_stride;
    switch (dtype) {
      case DType::Float16: return device_half_to_float(__ldg(static_cast<const unsigned short*>(data) + i));
      case DType::BFloat16:
        return __uint_as_float(static_cast<uint32_t>(__ldg(static_cast<const unsigned short*>(data) + i)) << 16);
      case DType::Float64: return static_cast<float>(__ldg(static_cast<const double*>(data) + i));
      default: return __ldg(static_cast<const float*>(data) + i);
    }
  }
};

// Squared Euclidean distance between feature rows; a dense centre is the row in float32, padded
// with zeros to a multiple of 8 (so whole chunks never need a bound check: padding adds 0).
template <class T>
struct EuclideanDevice {
  static constexpr int V = Rows<T>::V;
  static constexpr int U = kChunksInFlight;
  Rows<T> x;
  float slack = 0.0f;

  int64_t dense_size() const { return padded8(x.cols); }

  __device__ void load(int64_t row, float* dense, int lane) const {
    const int64_t chunks = (x.cols + V - 1) / V;
    for (int64_t ch = lane; ch < chunks; ch += kWarp) {
      float v[V];
      x.template chunk<float, false>(row, ch * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) dense[ch * V + e] = v[e];
    }
    for (int64_t j = chunks * V + lane; j < padded8(x.cols); j += kWarp) dense[j] = 0.0f;
  }

  // Check: also whether every value of the row is finite (x - x is 0 for finite x).
  template <bool Check>
  __device__ float to_centre(const float* centre, int64_t row, int lane, bool* finite) const {
    const int64_t chunks = (x.cols + V - 1) / V;
    float acc = 0.0f, nonfinite = 0.0f;
    for (int64_t ch0 = lane; ch0 < chunks; ch0 += static_cast<int64_t>(kWarp) * U) {
      uint4 raw[U];  // U loads in flight, 4 registers each
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = ch0 + static_cast<int64_t>(u) * kWarp;
        if (ch < chunks) raw[u] = x.template raw<true>(row, ch * V);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = ch0 + static_cast<int64_t>(u) * kWarp;
        if (ch >= chunks) continue;
        float v[V], c[V];
        Elem<T>::unpack(raw[u], v);
        centre_chunk<V>(centre + ch * V, c);
#pragma unroll
        for (int e = 0; e < V; ++e) {
          const float t = v[e] - c[e];
          acc = fmaf(t, t, acc);
          if (Check) nonfinite += v[e] - v[e];
        }
      }
    }
    if (Check) *finite = warp_sum(nonfinite) == 0.0f;
    return warp_sum(acc);
  }
  __device__ float distance(const float* centre, int64_t row, int lane) const {
    return to_centre<false>(centre, row, lane, nullptr);
  }
  __device__ float checked_distance(const float* centre, int64_t row, int lane, bool& finite) const {
    return to_centre<true>(centre, row, lane, &finite);
  }

  // Between two stored rows (the labelled pass), with the same element order.
  __device__ float row_distance(int64_t a, int64_t b, int lane) const {
    const int64_t chunks = (x.cols + V - 1) / V;
    float acc = 0.0f;
    for (int64_t ch = lane; ch < chunks; ch += kWarp) {
      float va[V], vb[V];
      x.template chunk<float, false>(a, ch * V, va);
      x.template chunk<float, true>(b, ch * V, vb);
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float t = vb[e] - va[e];
        acc = fmaf(t, t, acc);
      }
    }
    return warp_sum(acc);
  }

  __device__ bool row_finite(int64_t row, int lane) const {
    const int64_t chunks = (x.cols + V - 1) / V;
    float acc = 0.0f;
    for (int64_t ch = lane; ch < chunks; ch += kWarp) {
      float v[V];
      x.template chunk<float, true>(row, ch * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) acc += v[e] - v[e];  // NaN for NaN and +-Inf
    }
    return warp_sum(acc) == 0.0f;
  }
};

// BADGE's gradient embeddings through the factorised distance. A dense centre is
// q (C, padded to 8) | h (d, padded to 8) | |q|^2 | |h|^2. Per-row constants come from
// badge_prepare_kernel. Features are read in 16-byte chunks; scores (dtype known at run time)
// one value per lane, round-robin.
// TY: the stored type of the predicted classes (int32 in a run; int64 for a sharded fold-in,
// whose classes come from a torch tensor).
template <class TF, class TY = int32_t>
struct BadgeDevice {
  static constexpr int V = Rows<TF>::V;
  static constexpr int U = kChunksInFlight;
  AnyRows s;
  Rows<TF> h;
  bool logits = false;
  const TY* predicted = nullptr;
  const float* q_norm = nullptr;
  const float* h_norm = nullptr;
  const float* log_partition = nullptr;
  float slack = 0.0f;
  int64_t cp = 0, dp = 0;  // padded C and d

  int64_t dense_size() const { return cp + dp + 2; }

  __device__ float probability(int64_t row, int64_t j) const {
    const float v = s.at(row, j);
    return logits ? exp_approx(v - log_partition[row]) : v;
  }
  // q at the predicted class: p - 1, or for logits minus the other probabilities (no cancellation).
  __device__ float predicted_q(int64_t row, int32_t y, float others) const {
    return logits ? -others : s.at(row, y) - 1.0f;
  }
  __device__ void load(int64_t row, float* dense, int lane) const {
    const int32_t y = static_cast<int32_t>(predicted[row]);
    float others = 0.0f;
    for (int64_t j = lane; j < cp; j += kWarp) {
      const float p = j < s.cols ? probability(row, j) : 0.0f;
      dense[j] = p;
      others += j == y ? 0.0f : p;
    }
    others = warp_sum(others);
    const int64_t chunks = (h.cols + V - 1) / V;
    for (int64_t ch = lane; ch < chunks; ch += kWarp) {
      float v[V];
      h.template chunk<float, false>(row, ch * V, v);
#pragma unroll
      for (int e = 0; e < V; ++e) dense[cp + ch * V + e] = v[e];
    }
    for (int64_t j = chunks * V + lane; j < dp; j += kWarp) dense[cp + j] = 0.0f;
    __syncwarp();
    if (lane == 0) {
      dense[y] = predicted_q(row, y, others);
      dense[cp + dp] = q_norm[row];
      dense[cp + dp + 1] = h_norm[row];
    }
    __syncwarp();
  }
  __device__ float distance(const float* centre, int64_t row, int lane) const {
    const int32_t y = static_cast<int32_t>(predicted[row]);
    float q_dot = 0.0f, others = 0.0f, h_dot = 0.0f;
    for (int64_t j = lane; j < s.cols; j += kWarp) {
      const float p = j == y ? 0.0f : probability(row, j);
      q_dot = fmaf(centre[j], p, q_dot);
      others += p;
    }
    const int64_t chunks = (h.cols + V - 1) / V;
    for (int64_t ch0 = lane; ch0 < chunks; ch0 += static_cast<int64_t>(kWarp) * U) {
      uint4 raw[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = ch0 + static_cast<int64_t>(u) * kWarp;
        if (ch < chunks) raw[u] = h.template raw<true>(row, ch * V);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = ch0 + static_cast<int64_t>(u) * kWarp;
        if (ch >= chunks) continue;
        float v[V], c[V];
        Elem<TF>::unpack(raw[u], v);
        centre_chunk<V>(centre + cp + ch * V, c);
#pragma unroll
        for (int e = 0; e < V; ++e) h_dot = fmaf(c[e], v[e], h_dot);
      }
    }
    q_dot = warp_sum(q_dot);
    others = warp_sum(others);
    h_dot = warp_sum(h_dot);
    // Fused, as nvcc contracted the former `q_dot += c * q` (explicit so a host rendering can
    // follow it and no inlining context may decide otherwise).
    q_dot = fmaf(centre[y], predicted_q(row, y, others), q_dot);
    return badge_sq_distance(centre[cp + dp], centre[cp + dp + 1], q_norm[row], h_norm[row], q_dot, h_dot);
  }
  // Every candidate row was validated by badge_prepare_kernel.
  __device__ float checked_distance(const float* centre, int64_t row, int lane, bool& finite) const {
    finite = true;
    return distance(centre, row, lane);
  }
  __device__ bool row_finite(int64_t, int) const { return true; }
};

// Everything the kernels share, by pointer into the run's arena.
struct DeviceState {
  int64_t n = 0, blocks = 0, groups = 0;
  float* r = nullptr;               // squared distance to the assigned centre; < 0: not a candidate
  int32_t* assigned = nullptr;      // centre slot of each row, -1 before the first centre
  int64_t* centre_rows = nullptr;   // row of each centre slot
  float* gaps = nullptr;            // per slot: squared distance to the newest centre (when needed)
  int32_t* need = nullptr;          // per slot: the pick whose pruning test reads its gap
  uint64_t* block_farthest = nullptr;
  double* block_weight = nullptr;
  double* block_segments = nullptr;  // kBlockSegments per block
  int64_t* block_candidates = nullptr;
  double* group_sum = nullptr;       // choose's scratch when the groups exceed its shared memory
  int64_t* picks = nullptr;
  float* pick_distances = nullptr;
  unsigned long long* counters = nullptr;  // [distances possible, computed, centre distances]
  unsigned long long* bad = nullptr;       // [(row << 3) | problem of the first bad row, labelled position]
  unsigned* status = nullptr;              // 0, or kNoCandidate
};

__device__ __forceinline__ void report_bad(const DeviceState& st, int64_t row, int problem) {
  atomicMin(st.bad, (static_cast<unsigned long long>(row) << 3) | static_cast<unsigned long long>(problem));
}

__device__ __forceinline__ bool halted(const DeviceState& st) {
  return *static_cast<volatile unsigned*>(st.status) != 0;
}

// Marks slot `slot` as needed by pick `pick` (one store per distinct slot of the warp). Every
// lane of the warp must call it.
__device__ __forceinline__ void mark_needed(int32_t* need, int32_t slot, bool flag, int32_t pick) {
  const unsigned peers = __match_any_sync(kFull, flag ? slot : -1);
  const int lane = threadIdx.x % kWarp;
  if (flag && lane == __ffs(peers) - 1 && need[slot] != pick) need[slot] = pick;
}

// Sum over the block of one value per thread; thread 0 adds it to *counter.
__device__ void block_count(unsigned long long* counter, int value) {
  __shared__ int warp_total[kBlockWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  value = warp_sum_int(value);
  __syncthreads();  // an earlier call's total has been read
  if (lane == 0) warp_total[warp] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total = 0;
    for (int w = 0; w < kBlockWarps; ++w) total += static_cast<unsigned long long>(warp_total[w]);
    if (total) atomicAdd(counter, total);
  }
}

// The block's r values into shared memory (-1 past the last row).
__device__ void stage_r(const DeviceState& st, int64_t b, float* r_s, int rows) {
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int local = j * kBlockThreads + static_cast<int>(threadIdx.x);
    r_s[padded(local)] = local < rows ? st.r[b * kSampleBlock + local] : kNotCandidate;
  }
}

// Block b's aggregates from its staged r values: the farthest key, and for D² the segment sums
// (lane s of warp 0 sums segment s serially), the block weight and the candidate count. All
// threads call it after a __syncthreads that follows the last write to r_s.
template <bool D2>
__device__ void block_aggregates(const DeviceState& st, int64_t b, const float* r_s, int rows) {
  __shared__ uint64_t warp_far[kBlockWarps];
  __shared__ int warp_count[kBlockWarps];
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t begin = b * kSampleBlock;
  uint64_t far = 0;
  int count = 0;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int local = j * kBlockThreads + tid;
    const float r = r_s[padded(local)];
    if (local < rows) {
      far = max_of(far, farthest_key(r, begin + local));
      count += r >= 0.0f ? 1 : 0;
    }
  }
  far = warp_max(far);
  count = warp_sum_int(count);
  if (lane == 0) {
    warp_far[warp] = far;
    warp_count[warp] = count;
  }
  if (D2 && warp == 0) {
    const double seg = staged_segment_weight(r_s, lane);
    st.block_segments[b * kBlockSegments + lane] = seg;
    const double w = block_weight_of([&](int s) { return __shfl_sync(kFull, seg, s); });
    if (lane == 0) st.block_weight[b] = w;
  }
  __syncthreads();
  if (tid == 0) {
    uint64_t f = 0;
    int64_t c = 0;
    for (int w = 0; w < kBlockWarps; ++w) {
      f = max_of(f, warp_far[w]);
      c += warp_count[w];
    }
    st.block_farthest[b] = f;
    if (D2) st.block_candidates[b] = c;
  }
}

__global__ void init_rows_kernel(DeviceState st, const uint8_t* exclude) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < st.n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    st.r[i] = exclude && exclude[i] ? kNotCandidate : INFINITY;
    st.assigned[i] = -1;
  }
}

__global__ void mark_labelled_kernel(DeviceState st, const int64_t* labeled, int64_t count) {
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < count;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    st.r[labeled[j]] = kNotCandidate;
    st.centre_rows[j] = labeled[j];
  }
}

template <bool D2>
__global__ void __launch_bounds__(kBlockThreads) aggregate_kernel(DeviceState st) {
  __shared__ float r_s[kPaddedBlock];
  const int64_t b = blockIdx.x;
  const int rows = static_cast<int>(min_of<int64_t>(kSampleBlock, st.n - b * kSampleBlock));
  stage_r(st, b, r_s, rows);
  __syncthreads();
  block_aggregates<D2>(st, b, r_s, rows);
}

// NaN/Inf in a labelled row: the lowest position in `labeled` (the CPU checks them in order).
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    check_labelled_kernel(Metric m, const int64_t* labeled, int64_t count, unsigned long long* bad_position) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t j = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; j < count; j += warps)
    if (!m.row_finite(labeled[j], lane) && lane == 0) atomicMin(bad_position, static_cast<unsigned long long>(j));
}

// Every candidate row (k = 1 without labelled rows: no update pass follows the pick).
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks) check_candidates_kernel(Metric m, DeviceState st) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; i < st.n; i += warps)
    if (st.r[i] >= 0.0f && !m.row_finite(i, lane) && lane == 0) report_bad(st, i, 2);
}

template <class Metric>
__global__ void check_row_kernel(Metric m, DeviceState st, int64_t row) {
  if (!m.row_finite(row, threadIdx.x) && threadIdx.x == 0) report_bad(st, row, 2);
}

// Exact distance of every candidate to its nearest labelled row (found by a GEMM-style search),
// then the block's aggregates, and (pruning) the slots the first pick's test will read.
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks) labelled_distances_kernel(Metric m, DeviceState st,
                                                                           const int64_t* nearest, bool prune) {
  __shared__ float r_s[kPaddedBlock];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int64_t b = blockIdx.x;
  const int64_t begin = b * kSampleBlock;
  const int rows = static_cast<int>(min_of<int64_t>(kSampleBlock, st.n - begin));
  for (int local = warp; local < rows; local += kBlockWarps) {
    const int64_t i = begin + local;
    if (st.r[i] < 0.0f) continue;
    if (!m.row_finite(i, lane)) {
      if (lane == 0) report_bad(st, i, 2);
      continue;
    }
    const int64_t slot = nearest[i];
    const float d = m.row_distance(st.centre_rows[slot], i, lane);
    if (lane == 0) {
      st.r[i] = d;
      st.assigned[i] = static_cast<int32_t>(slot);
    }
  }
  __syncthreads();
  stage_r(st, b, r_s, rows);
  __syncthreads();
  block_aggregates<false>(st, b, r_s, rows);
  if (prune) {
#pragma unroll
    for (int j = 0; j < kRowsPerThread; ++j) {
      const int local = j * kBlockThreads + static_cast<int>(threadIdx.x);
      const bool flag = local < rows && r_s[padded(local)] > 0.0f;
      mark_needed(st.need, flag ? st.assigned[begin + local] : 0, flag, 0);
    }
  }
}

// One score row read by a warp (lane l takes classes l, l + 32, ...): its first maximum (like
// numpy.argmax, ties to the lower class), range, sum and whether every value is finite.
struct ScoreScan {
  float best = -INFINITY, lo = INFINITY, hi = -INFINITY, sum = 0.0f, nonfinite = 0.0f;
  int64_t best_j = 0;
};

template <class M>
__device__ ScoreScan scan_scores(const M& m, int64_t row, int lane) {
  ScoreScan sc;
  sc.best_j = m.s.cols;
  for (int64_t j = lane; j < m.s.cols; j += kWarp) {
    const float v = m.s.at(row, j);
    sc.nonfinite += v - v;
    if (v > sc.best) {
      sc.best = v;
      sc.best_j = j;
    }
    sc.lo = min_of(sc.lo, v);
    sc.hi = max_of(sc.hi, v);
    sc.sum += v;
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const float ob = __shfl_xor_sync(kFull, sc.best, offset);
    const int64_t oj = __shfl_xor_sync(kFull, sc.best_j, offset);
    if (ob > sc.best || (ob == sc.best && oj < sc.best_j)) {
      sc.best = ob;
      sc.best_j = oj;
    }
    sc.lo = min_of(sc.lo, __shfl_xor_sync(kFull, sc.lo, offset));
    sc.hi = max_of(sc.hi, __shfl_xor_sync(kFull, sc.hi, offset));
  }
  sc.sum = warp_sum(sc.sum);
  sc.nonfinite = warp_sum(sc.nonfinite);
  return sc;
}

// |q|^2 and |h|^2 of a row whose predicted class is y, by a warp in the lane map above (the
// squares fused into the sums, as nvcc contracted them before they were written out), and
// h_bad != 0 when a feature is not finite. Shared by the run and the sharded fold-in so both
// use the very same per-row constants.
struct RowNorms {
  float q_sq = 0.0f, h_sq = 0.0f, h_bad = 0.0f;
};

template <class M>
__device__ RowNorms badge_row_norms(const M& m, int64_t row, int32_t y, int lane) {
  RowNorms n;
  float others = 0.0f, q_sq = 0.0f;
  for (int64_t j = lane; j < m.s.cols; j += kWarp) {
    const float p = j == y ? 0.0f : m.probability(row, j);
    others += p;
    q_sq = fmaf(p, p, q_sq);
  }
  others = warp_sum(others);
  q_sq = warp_sum(q_sq);
  const float qy = m.predicted_q(row, y, others);
  for (int64_t j = lane; j < m.h.cols; j += kWarp) {
    const float v = m.h.template value<float>(row, j);
    n.h_bad += v - v;
    n.h_sq = fmaf(v, v, n.h_sq);
  }
  n.h_sq = warp_sum(n.h_sq);
  n.h_bad = warp_sum(n.h_bad);
  n.q_sq = fmaf(qy, qy, q_sq);
  return n;
}

// BADGE's per-row constants: predicted class, log partition sum (logits), |q|^2, |h|^2, and the
// row checks (1 non-finite scores, 2 non-finite features, 3 outside [0, 1], 4 sum not 1).
template <class TF>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks) badge_prepare_kernel(BadgeDevice<TF> m, DeviceState st,
                                                                      const uint8_t* exclude, int32_t* predicted,
                                                                      float* q_norm, float* h_norm,
                                                                      float* log_partition, bool validate,
                                                                      float sum_tolerance) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t C = m.s.cols;
  for (int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; row < st.n; row += warps) {
    if (exclude && exclude[row]) continue;
    const ScoreScan sc = scan_scores(m, row, lane);
    if (sc.nonfinite != 0.0f) {
      if (lane == 0) report_bad(st, row, 1);
      continue;
    }
    if (!m.logits && validate) {
      if (sc.lo < 0.0f || sc.hi > 1.0f) {
        if (lane == 0) report_bad(st, row, 3);
        continue;
      }
      if (fabsf(sc.sum - 1.0f) > sum_tolerance) {
        if (lane == 0) report_bad(st, row, 4);
        continue;
      }
    }
    float partition = 0.0f;
    if (m.logits) {
      for (int64_t j = lane; j < C; j += kWarp) partition += exp_approx(m.s.at(row, j) - sc.best);
      partition = warp_sum(partition);
      if (lane == 0) log_partition[row] = sc.best + logf(partition);
    }
    __syncwarp();
    const int32_t y = static_cast<int32_t>(sc.best_j);
    const RowNorms n = badge_row_norms(m, row, y, lane);
    if (n.h_bad != 0.0f) {
      if (lane == 0) report_bad(st, row, 2);
      continue;
    }
    if (lane == 0) {
      predicted[row] = y;
      q_norm[row] = n.q_sq;
      h_norm[row] = n.h_sq;
    }
  }
}

__device__ void commit_pick(const DeviceState& st, int64_t t, int64_t row) {
  st.picks[t] = row;
  st.pick_distances[t] = st.r[row];
  st.r[row] = kNotCandidate;
}

// No row to pick (the caller's k check failed): nothing is written out of bounds, and every
// later kernel of the run returns at once.
__device__ void fail_pick(const DeviceState& st, int64_t t) {
  st.picks[t] = -1;
  *st.status = kNoCandidate;
}

__global__ void first_pick_kernel(DeviceState st, int64_t row) { commit_pick(st, 0, row); }

// k-center: the row of the largest key over the block aggregates.
__global__ void __launch_bounds__(kChooseThreads) choose_farthest_kernel(DeviceState st, int64_t t) {
  __shared__ uint64_t warp_far[kChooseThreads / kWarp];
  if (halted(st)) return;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  uint64_t f = 0;
  for (int64_t b = tid; b < st.blocks; b += kChooseThreads) f = max_of(f, st.block_farthest[b]);
  f = warp_max(f);
  if (lane == 0) warp_far[warp] = f;
  __syncthreads();
  if (warp != 0) return;
  f = warp_max(warp_far[lane]);
  if (lane != 0) return;
  if (f == 0) fail_pick(st, t);
  else commit_pick(st, t, farthest_row(f));
}

// Every weight is 0 (each candidate coincides with a centre): the j-th candidate in row order,
// j uniform. Threads count the candidates of contiguous runs of blocks, a block-wide scan finds
// the run, its thread the block, and warp 0 the row by ballots over the block's rows.
__device__ void uniform_pick(const DeviceState& st, double u, int64_t t) {
  __shared__ int64_t warp_total[kChooseThreads / kWarp];
  __shared__ int64_t found_block, found_rest;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  int64_t lo = 0, hi = 0;
  uniform_run(tid, kChooseThreads, st.blocks, lo, hi);
  int64_t c = 0;
  for (int64_t b = lo; b < hi; ++b) c += st.block_candidates[b];
  int64_t inclusive = c;
  for (int offset = 1; offset < kWarp; offset *= 2) {
    const int64_t other = __shfl_up_sync(kFull, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == kWarp - 1) warp_total[warp] = inclusive;
  if (tid == 0) found_block = -1;
  __syncthreads();
  if (warp == 0) {
    int64_t v = warp_total[lane];
    for (int offset = 1; offset < kWarp; offset *= 2) {
      const int64_t other = __shfl_up_sync(kFull, v, offset);
      if (lane >= offset) v += other;
    }
    warp_total[lane] = v;  // inclusive over warps
  }
  __syncthreads();
  const int64_t total = warp_total[kWarp - 1];
  if (total == 0) {
    if (tid == 0) fail_pick(st, t);
    return;
  }
  const int64_t before = inclusive - c + (warp > 0 ? warp_total[warp - 1] : 0);
  const int64_t j = scale_to_count(u, total);
  if (j >= before && j < before + c) {
    int64_t rest = j - before;
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t cb = st.block_candidates[b];
      if (rest < cb) {
        found_block = b;
        found_rest = rest;
        break;
      }
      rest -= cb;
    }
  }
  __syncthreads();
  if (warp != 0) return;
  const int64_t b = found_block;
  int64_t rest = found_rest;
  if (b >= 0) {
    for (int step = 0; step < kBlockSegments; ++step) {
      const int64_t first = b * kSampleBlock + static_cast<int64_t>(step) * kWarp;
      const bool candidate = first + lane < st.n && st.r[first + lane] >= 0.0f;
      unsigned ballot = __ballot_sync(kFull, candidate);
      const int count = __popc(ballot);
      if (rest < count) {
        for (int64_t skip = 0; skip < rest; ++skip) ballot &= ballot - 1;
        if (lane == 0) commit_pick(st, t, first + __ffs(ballot) - 1);
        return;
      }
      rest -= count;
    }
  }
  if (lane == 0) fail_pick(st, t);  // the counts disagreed with the rows: never pick out of range
}

// k-means++ / BADGE: the D² draw of diversity_math.h (d2_draw), cooperatively. All threads sum
// the groups (in shared memory when they fit), thread 0 walks them, then warp 0 stages each lower
// level (the group's block weights, the block's segment sums, the segment's row weights) in
// shared memory and lane 0 walks it. The same sums in the same order as the CPU engine.
__global__ void __launch_bounds__(kChooseThreads) choose_d2_kernel(DeviceState st, uint64_t seed, int64_t t) {
  __shared__ double groups_s[kChooseThreads];
  __shared__ double level[kWarp];
  __shared__ int64_t chosen_group;
  __shared__ double running_s, target_s;
  __shared__ int uniform_s;
  if (halted(st)) return;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t B = st.blocks, G = st.groups;
  double* gs = G <= kChooseThreads ? groups_s : st.group_sum;
  const auto block_w = [&st](int64_t b) { return st.block_weight[b]; };
  for (int64_t g = tid; g < G; g += kChooseThreads) gs[g] = group_weight(block_w, B, g);
  __syncthreads();
  const double u = uniform01(seed, static_cast<uint64_t>(t));
  if (tid == 0) {
    const auto group_w = [gs](int64_t g) { return gs[g]; };
    const double total = serial_sum(group_w, G);
    uniform_s = !(total > 0.0);
    if (!uniform_s) {
      double target = u * total, running = 0.0;
      chosen_group = d2_walk(group_w, G, running, target);
      running_s = running;
      target_s = target;
    }
  }
  __syncthreads();
  if (uniform_s) {
    uniform_pick(st, u, t);
    return;
  }
  if (warp != 0) return;
  const double* staged_values = level;
  const auto staged = [staged_values](int64_t i) { return staged_values[i]; };
  double running = running_s, target = target_s;
  const int64_t g = chosen_group;
  const int64_t b0 = g * kGroupBlocks;
  const int in_group = static_cast<int>(min_of<int64_t>(kGroupBlocks, B - b0));
  level[lane] = g >= 0 && lane < in_group ? st.block_weight[b0 + lane] : 0.0;
  __syncwarp();
  int64_t b = -1;
  if (lane == 0 && g >= 0) b = b0 + d2_walk(staged, in_group, running, target);
  b = __shfl_sync(kFull, b, 0);
  running = __shfl_sync(kFull, running, 0);
  target = __shfl_sync(kFull, target, 0);
  __syncwarp();
  level[lane] = b >= 0 ? st.block_segments[b * kBlockSegments + lane] : 0.0;
  __syncwarp();
  int64_t s = -1;
  if (lane == 0 && b >= 0) s = d2_walk(staged, kBlockSegments, running, target);
  s = __shfl_sync(kFull, s, 0);
  running = __shfl_sync(kFull, running, 0);
  target = __shfl_sync(kFull, target, 0);
  __syncwarp();
  const int64_t first = b * kSampleBlock + s * kSegmentRows;
  const int count = s >= 0 ? static_cast<int>(min_of<int64_t>(kSegmentRows, st.n - first)) : 0;
  level[lane] = lane < count ? d2_weight(st.r[first + lane]) : 0.0;
  __syncwarp();
  if (lane != 0) return;
  const int64_t i = count > 0 ? d2_walk(staged, count, running, target) : -1;
  if (i < 0) fail_pick(st, t);
  else commit_pick(st, t, first + i);
}

template <class Metric>
__global__ void load_centre_kernel(Metric m, DeviceState st, float* centre, int64_t t, int64_t slot) {
  if (halted(st)) return;
  const int64_t row = st.picks[t];
  if (row < 0) return;
  m.load(row, centre, threadIdx.x);
  if (threadIdx.x == 0) st.centre_rows[slot] = row;
}

// Memoised centre gaps: only the slots the previous pass marked as needed by pick `pick`; a
// warp takes 32 slots and computes the marked ones with all its lanes.
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks) gaps_kernel(Metric m, DeviceState st, const float* centre,
                                                             int64_t slots, int32_t pick) {
  if (halted(st)) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  int done = 0;
  const int64_t first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp;
  for (int64_t g = first; g * kWarp < slots; g += warps) {
    const int64_t s = g * kWarp + lane;
    unsigned ballot = __ballot_sync(kFull, s < slots && st.need[s] == pick);
    while (ballot) {
      const int64_t slot = g * kWarp + __ffs(ballot) - 1;
      ballot &= ballot - 1;
      const float d = m.distance(centre, st.centre_rows[slot], lane);
      if (lane == 0) {
        st.gaps[slot] = d;
        ++done;
      }
    }
  }
  block_count(&st.counters[2], done);
}

// One pick's pass over a block of kSampleBlock rows (see the file comment). Phase 1 is the
// shared index arithmetic of diversity_math.h (needs_distance, slice_index, compact_position).
template <class Metric, bool D2>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    update_kernel(Metric m, DeviceState st, const float* centre, int32_t slot, int32_t pick, bool prune, bool validate) {
  __shared__ float r_s[kPaddedBlock];
  __shared__ int32_t a_s[kSampleBlock];
  __shared__ uint16_t todo[kSampleBlock];
  __shared__ int slice_count[kWarp];
  __shared__ int slice_base[kWarp];
  __shared__ int total_s;
  if (halted(st)) return;
  const int tid = threadIdx.x, lane = tid % kWarp, warp = tid / kWarp;
  const int64_t b = blockIdx.x;
  const int64_t begin = b * kSampleBlock;
  const int rows = static_cast<int>(min_of<int64_t>(kSampleBlock, st.n - begin));
  const int32_t next = pick + 1;

  // Phase 1: coalesced test of every row; flags by ballot.
  uint32_t ballots[kRowsPerThread];
  int possible = 0;
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j) {
    const int local = j * kBlockThreads + tid;
    float r = kNotCandidate;
    int32_t a = -1;
    if (local < rows) {
      r = st.r[begin + local];
      a = st.assigned[begin + local];
    }
    r_s[padded(local)] = r;
    a_s[local] = a;
    const float gap = needs_gap(r, a, prune, validate) ? st.gaps[a] : 0.0f;
    const bool need = needs_distance(r, a, gap, m.slack, prune, validate);
    possible += r >= 0.0f ? 1 : 0;
    ballots[j] = __ballot_sync(kFull, need);
    if (lane == 0) slice_count[slice_index(j, warp)] = __popc(ballots[j]);
    // The next pick's test reads the gaps of the slots these rows are assigned to (or the new one).
    if (prune) mark_needed(st.need, a, r > 0.0f && a >= 0, next);
  }
  if (prune && tid == 0) st.need[slot] = next;
  __syncthreads();
  if (warp == 0) {
    const int count = slice_count[lane];
    int inclusive = count;
    for (int offset = 1; offset < kWarp; offset *= 2) {
      const int other = __shfl_up_sync(kFull, inclusive, offset);
      if (lane >= offset) inclusive += other;
    }
    slice_base[lane] = inclusive - count;
    if (lane == kWarp - 1) total_s = inclusive;
  }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kRowsPerThread; ++j)
    if ((ballots[j] >> lane) & 1u)
      todo[compact_position(slice_base[slice_index(j, warp)], ballots[j], lane)] =
          static_cast<uint16_t>(j * kBlockThreads + tid);
  __syncthreads();

  // Phase 2: full distances for the listed rows only, a warp per row.
  const int total = total_s;
  for (int s = warp; s < total; s += kBlockWarps) {
    const int local = todo[s];
    const int64_t i = begin + local;
    bool finite = true;
    const float d = validate ? m.checked_distance(centre, i, lane, finite) : m.distance(centre, i, lane);
    if (!finite) {
      if (lane == 0) report_bad(st, i, 2);
      continue;
    }
    if (lane == 0) {
      float r = r_s[padded(local)];
      int32_t a = a_s[local];
      if (fold_in_centre(r, a, d, slot)) {
        st.r[i] = r;
        st.assigned[i] = a;
        r_s[padded(local)] = r;
      }
    }
  }
  __syncthreads();
  block_aggregates<D2>(st, b, r_s, rows);
  block_count(&st.counters[0], possible);
  block_count(&st.counters[1], tid == 0 ? total : 0);
}

// The memory of one run, planned and then taken from one arena.
struct RunPlan {
  size_t r, assigned, centre_rows, gaps, need, far, weight, segments, candidates, groups, picks, distances, counters,
      bad, status, centre;
};

struct DeviceRun {
  Arena arena;
  RunPlan o{};
  DeviceState st;

  DeviceRun(const DiversityParams& p, cudaStream_t stream) : arena(stream, p.device_alloc) {}

  // Plans the shared state for n rows, `slots` centre slots, k picks and a dense centre.
  void plan(int64_t n, int64_t slots, int64_t k, int64_t dense) {
    st.n = n;
    st.blocks = ceil_div(n, kSampleBlock);
    st.groups = ceil_div(st.blocks, kGroupBlocks);
    const size_t rows = static_cast<size_t>(n), blocks = static_cast<size_t>(st.blocks);
    o.r = arena.plan<float>(rows);
    o.assigned = arena.plan<int32_t>(rows);
    o.centre_rows = arena.plan<int64_t>(static_cast<size_t>(slots));
    o.gaps = arena.plan<float>(static_cast<size_t>(slots));
    o.need = arena.plan<int32_t>(static_cast<size_t>(slots));
    o.far = arena.plan<uint64_t>(blocks);
    o.weight = arena.plan<double>(blocks);
    o.segments = arena.plan<double>(blocks * kBlockSegments);
    o.candidates = arena.plan<int64_t>(blocks);
    o.groups = arena.plan<double>(static_cast<size_t>(st.groups));
    o.picks = arena.plan<int64_t>(static_cast<size_t>(k));
    o.distances = arena.plan<float>(static_cast<size_t>(k));
    o.counters = arena.plan<unsigned long long>(3);
    o.bad = arena.plan<unsigned long long>(2);
    o.status = arena.plan<unsigned>(1);
    o.centre = arena.plan<float>(static_cast<size_t>(dense));
  }

  // After arena.allocate(): the pointers and their initial values, on the stream.
  void start(int64_t slots, cudaStream_t stream) {
    st.r = arena.at<float>(o.r);
    st.assigned = arena.at<int32_t>(o.assigned);
    st.centre_rows = arena.at<int64_t>(o.centre_rows);
    st.gaps = arena.at<float>(o.gaps);
    st.need = arena.at<int32_t>(o.need);
    st.block_farthest = arena.at<uint64_t>(o.far);
    st.block_weight = arena.at<double>(o.weight);
    st.block_segments = arena.at<double>(o.segments);
    st.block_candidates = arena.at<int64_t>(o.candidates);
    st.group_sum = arena.at<double>(o.groups);
    st.picks = arena.at<int64_t>(o.picks);
    st.pick_distances = arena.at<float>(o.distances);
    st.counters = arena.at<unsigned long long>(o.counters);
    st.bad = arena.at<unsigned long long>(o.bad);
    st.status = arena.at<unsigned>(o.status);
    check_cuda(cudaMemsetAsync(st.counters, 0, 3 * sizeof(unsigned long long), stream), "cudaMemsetAsync");
    check_cuda(cudaMemsetAsync(st.bad, 0xff, 2 * sizeof(unsigned long long), stream), "cudaMemsetAsync");
    check_cuda(cudaMemsetAsync(st.status, 0, sizeof(unsigned), stream), "cudaMemsetAsync");
    if (slots) check_cuda(cudaMemsetAsync(st.need, 0xff, static_cast<size_t>(slots) * sizeof(int32_t), stream), "cudaMemsetAsync");
  }

  float* centre() const { return arena.at<float>(o.centre); }

  // Waits for the stream and returns the first bad row (or -1) with its problem code.
  int64_t first_bad(cudaStream_t stream, int* problem) const {
    unsigned long long v = kNoBadRow;
    copy_to_host(&v, st.bad, 1, stream);
    if (v == kNoBadRow) return -1;
    *problem = static_cast<int>(v & 7u);
    return static_cast<int64_t>(v >> 3);
  }
};

// A device view of a feature matrix: the array itself when it is on the device, else a copy in
// the arena (rows padded to 16 bytes) filled through the pinned double buffers.
struct Staged {
  size_t offset = 0;
  int64_t pitch = 0;  // bytes; 0: on the device already
};

Staged plan_matrix(const ArrayView& v, Arena& arena, const char* what) {
  Staged s;
  if (v.device == DeviceKind::CUDA) return s;
  if (v.shape[1] > 1 && v.strides[1] != 1)
    throw std::invalid_argument(std::string(what) + " must have contiguous rows for the CUDA path; use device='cpu' or pass a contiguous array");
  s.pitch = staged_pitch(v.shape[1], dtype_size(v.dtype));
  s.offset = arena.plan<char>(static_cast<size_t>(v.shape[0] * s.pitch));
  return s;
}

// Fills a planned copy; returns (data, row stride in elements, column stride).
void fill_matrix(const ArrayView& v, const Staged& s, const Arena& arena, cudaStream_t stream, const void** data,
                 int64_t* row_stride, int64_t* col_stride) {
  if (v.device == DeviceKind::CUDA) {
    *data = v.data;
    *row_stride = v.strides[0];
    *col_stride = v.strides[1];
    return;
  }
  const int64_t item = dtype_size(v.dtype);
  char* dst = arena.at<char>(s.offset);
  if (v.shape[0] > 0) {
    // At least one row per buffer, at most kStagingBytes unless a single row is larger.
    const int64_t bytes = std::max(s.pitch, std::min<int64_t>(kStagingBytes, v.shape[0] * s.pitch));
    PinnedStaging staging(static_cast<size_t>(bytes), stream);
    staging.copy_rows(static_cast<const char*>(v.data), v.strides[0] * item, v.shape[1] * item, v.shape[0], dst, s.pitch,
                      false, [](int64_t, int64_t, char*) { return true; });
  }
  *data = dst;
  *row_stride = s.pitch / item;
  *col_stride = 1;
}

// The pick loop shared by the methods: first pick given (or chosen on the device when centres
// exist already), then choose -> centre -> gaps -> update per pick.
template <class Metric, bool D2>
void pick_loop(const DiversityParams& p, const Metric& m, DeviceRun& run, int64_t first_slot, int64_t first_row,
               bool validate_first_pass, cudaStream_t stream, DiversityStats& stats) {
  const int64_t blocks = run.st.blocks;
  for (int64_t t = 0; t < p.k; ++t) {
    if (t == 0 && first_row >= 0) first_pick_kernel<<<1, 1, 0, stream>>>(run.st, first_row);
    else if (D2) choose_d2_kernel<<<1, kChooseThreads, 0, stream>>>(run.st, p.seed, t);
    else choose_farthest_kernel<<<1, kChooseThreads, 0, stream>>>(run.st, t);
    check_cuda(cudaGetLastError(), "choose_kernel");
    if (t + 1 == p.k) break;
    const int64_t slot = first_slot + t;
    load_centre_kernel<Metric><<<1, kWarp, 0, stream>>>(m, run.st, run.centre(), t, slot);
    if (p.prune && slot > 0)
      gaps_kernel<Metric><<<grid_for(ceil_div(slot, kWarp), kBlockWarps), kBlockThreads, 0, stream>>>(
          m, run.st, run.centre(), slot, static_cast<int32_t>(t));
    const bool validate = validate_first_pass && t == 0;
    update_kernel<Metric, D2><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(
        m, run.st, run.centre(), static_cast<int32_t>(slot), static_cast<int32_t>(t), p.prune, validate);
    check_cuda(cudaGetLastError(), "update_kernel");
    if (validate) {
      int problem = 0;
      const int64_t bad = run.first_bad(stream, &problem);
      if (bad >= 0) {
        stats.bad_row = bad;
        stats.bad_problem = problem;
        return;
      }
    }
    if (p.on_progress && (t + 1) % kProgressEvery == 0) {
      check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      if (!p.on_progress(t + 1, p.k)) {
        stats.cancelled = true;
        return;
      }
    }
  }
}

void copy_results(const DiversityParams& p, DeviceRun& run, cudaStream_t stream, DiversityStats& stats) {
  unsigned long long counters[3] = {0, 0, 0};
  unsigned status = 0;
  check_cuda(cudaMemcpyAsync(p.picks_out.data, run.st.picks, static_cast<size_t>(p.k) * sizeof(int64_t),
                             cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  if (!p.distances_out.empty())
    check_cuda(cudaMemcpyAsync(p.distances_out.data, run.st.pick_distances, static_cast<size_t>(p.k) * sizeof(float),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaMemcpyAsync(counters, run.st.counters, sizeof counters, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  copy_to_host(&status, run.st.status, 1, stream);
  stats.distances_possible += static_cast<int64_t>(counters[0]);
  stats.distances_computed += static_cast<int64_t>(counters[1]);
  stats.centre_distances += static_cast<int64_t>(counters[2]);
  if (status == kNoCandidate) {
    stats.no_candidate = true;
    return;
  }
  if (p.on_progress && !stats.cancelled) p.on_progress(p.k, p.k);
}

// Row `j` among those the mask leaves (host side, for the first uniform pick), or -1.
int64_t nth_unmasked(const uint8_t* mask, int64_t n, int64_t j) {
  for (int64_t i = 0; i < n; ++i)
    if (!(mask && mask[i]) && j-- == 0) return i;
  return -1;
}

template <class T>
void run_euclidean(const DiversityParams& p, cudaStream_t stream, DiversityStats& stats) {
  const ArrayView& f = p.features;
  const int64_t n = f.shape[0], d = f.shape[1];
  const int64_t L = p.labeled.empty() ? 0 : p.labeled.shape[0];
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  const bool d2 = p.method != DiversityMethod::KCenter;
  const bool prune = p.prune;

  DeviceRun run(p, stream);
  const Staged staged = plan_matrix(f, run.arena, "features");
  run.plan(n, L + p.k, p.k, padded8(d));
  const size_t o_exclude = run.arena.plan<uint8_t>(mask ? static_cast<size_t>(n) : 0);
  const size_t o_labeled = run.arena.plan<int64_t>(static_cast<size_t>(L));
  const size_t o_nearest = run.arena.plan<int64_t>(L > 0 ? static_cast<size_t>(n) : 0);
  run.arena.allocate();
  run.start(L + p.k, stream);

  EuclideanDevice<T> m;
  const void* data = nullptr;
  int64_t row_stride = 0, col_stride = 1;
  fill_matrix(f, staged, run.arena, stream, &data, &row_stride, &col_stride);
  m.x = device_rows<T>(data, n, d, row_stride, col_stride);
  const unsigned blocks = static_cast<unsigned>(run.st.blocks);
  uint8_t* exclude = mask ? run.arena.at<uint8_t>(o_exclude) : nullptr;
  if (mask) copy_to_device(exclude, mask, static_cast<size_t>(n), stream);
  init_rows_kernel<<<grid_for(n, 256), 256, 0, stream>>>(run.st, exclude);
  check_cuda(cudaGetLastError(), "init_rows_kernel");

  int64_t first = -1;
  if (L > 0) {
    const int64_t* host_labeled = static_cast<const int64_t*>(p.labeled.data);
    int64_t* labeled = run.arena.at<int64_t>(o_labeled);
    int64_t* nearest = run.arena.at<int64_t>(o_nearest);
    copy_to_device(labeled, host_labeled, static_cast<size_t>(L), stream);
    copy_to_device(nearest, static_cast<const int64_t*>(p.labeled_nearest.data), static_cast<size_t>(n), stream);
    mark_labelled_kernel<<<grid_for(L, 256), 256, 0, stream>>>(run.st, labeled, L);
    // Labelled rows first, in order, as on the CPU: they are centres, never candidates.
    check_labelled_kernel<<<grid_for(L, kBlockWarps), kBlockThreads, 0, stream>>>(m, labeled, L, run.st.bad + 1);
    check_cuda(cudaGetLastError(), "check_labelled_kernel");
    unsigned long long position = kNoBadRow;
    copy_to_host(&position, run.st.bad + 1, 1, stream);
    if (position != kNoBadRow) {
      stats.bad_row = host_labeled[position];
      stats.bad_problem = 2;
      return;
    }
    labelled_distances_kernel<<<blocks, kBlockThreads, 0, stream>>>(m, run.st, nearest, prune);
    check_cuda(cudaGetLastError(), "labelled_distances_kernel");
    int problem = 0;
    const int64_t bad = run.first_bad(stream, &problem);
    if (bad >= 0) {
      stats.bad_row = bad;
      stats.bad_problem = 2;
      return;
    }
    stats.distances_computed += n - L;
  } else {
    if (d2) aggregate_kernel<true><<<blocks, kBlockThreads, 0, stream>>>(run.st);
    else aggregate_kernel<false><<<blocks, kBlockThreads, 0, stream>>>(run.st);
    check_cuda(cudaGetLastError(), "aggregate_kernel");
    int64_t excluded = 0;
    for (int64_t i = 0; mask && i < n; ++i) excluded += mask[i] ? 1 : 0;
    if (n - excluded < 1) {
      stats.no_candidate = true;
      check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      return;
    }
    first = nth_unmasked(mask, n, scale_to_count(uniform01(p.seed, 0), n - excluded));
    // As on the CPU: k = 1 checks every candidate row (no update pass reads them), else the
    // first pick alone before the first pass checks the others.
    if (p.k == 1) check_candidates_kernel<<<grid_for(n, kBlockWarps), kBlockThreads, 0, stream>>>(m, run.st);
    else check_row_kernel<<<1, kWarp, 0, stream>>>(m, run.st, first);
    check_cuda(cudaGetLastError(), "check kernel");
    int problem = 0;
    const int64_t bad = run.first_bad(stream, &problem);
    if (bad >= 0) {
      stats.bad_row = bad;
      stats.bad_problem = 2;
      return;
    }
  }
  if (d2) pick_loop<EuclideanDevice<T>, true>(p, m, run, L, first, L == 0, stream, stats);
  else pick_loop<EuclideanDevice<T>, false>(p, m, run, L, first, L == 0, stream, stats);
  if (stats.bad_row < 0 && !stats.cancelled) copy_results(p, run, stream, stats);
  else check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

template <class TF>
void run_badge(const DiversityParams& p, cudaStream_t stream, DiversityStats& stats) {
  const int64_t n = p.features.shape[0], C = p.scores.shape[1], d = p.features.shape[1];
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  BadgeDevice<TF> m;
  m.cp = padded8(C);
  m.dp = padded8(d);
  m.logits = p.from_logits;

  DeviceRun run(p, stream);
  const Staged staged_scores = plan_matrix(p.scores, run.arena, "x");
  const Staged staged_features = plan_matrix(p.features, run.arena, "features");
  run.plan(n, p.k, p.k, m.dense_size());
  const size_t o_exclude = run.arena.plan<uint8_t>(mask ? static_cast<size_t>(n) : 0);
  const size_t o_predicted = run.arena.plan<int32_t>(static_cast<size_t>(n));
  const size_t o_q = run.arena.plan<float>(static_cast<size_t>(n));
  const size_t o_h = run.arena.plan<float>(static_cast<size_t>(n));
  const size_t o_log = run.arena.plan<float>(p.from_logits ? static_cast<size_t>(n) : 0);
  run.arena.allocate();
  run.start(p.k, stream);

  const void* data = nullptr;
  int64_t row_stride = 0, col_stride = 1;
  fill_matrix(p.scores, staged_scores, run.arena, stream, &data, &row_stride, &col_stride);
  m.s = AnyRows{data, p.scores.dtype, n, C, row_stride, col_stride};
  fill_matrix(p.features, staged_features, run.arena, stream, &data, &row_stride, &col_stride);
  m.h = device_rows<TF>(data, n, d, row_stride, col_stride);
  int32_t* predicted = run.arena.at<int32_t>(o_predicted);
  float* q_norm = run.arena.at<float>(o_q);
  float* h_norm = run.arena.at<float>(o_h);
  float* log_partition = run.arena.at<float>(o_log);
  m.predicted = predicted;
  m.q_norm = q_norm;
  m.h_norm = h_norm;
  m.log_partition = log_partition;
  uint8_t* exclude = mask ? run.arena.at<uint8_t>(o_exclude) : nullptr;
  if (mask) copy_to_device(exclude, mask, static_cast<size_t>(n), stream);
  init_rows_kernel<<<grid_for(n, 256), 256, 0, stream>>>(run.st, exclude);
  badge_prepare_kernel<TF><<<grid_for(n, kBlockWarps), kBlockThreads, 0, stream>>>(
      m, run.st, exclude, predicted, q_norm, h_norm, log_partition, p.validate, static_cast<float>(p.sum_tolerance));
  check_cuda(cudaGetLastError(), "badge_prepare_kernel");
  aggregate_kernel<true><<<static_cast<unsigned>(run.st.blocks), kBlockThreads, 0, stream>>>(run.st);
  int problem = 0;
  const int64_t bad = run.first_bad(stream, &problem);
  if (bad >= 0) {
    stats.bad_row = bad;
    stats.bad_problem = problem;
    stats.bad_row_in_scores = problem != 2;
    return;
  }
  // First pick: the largest gradient embedding, lowest row on ties (on the host, as on the CPU).
  std::vector<float> qn(static_cast<size_t>(n)), hn(static_cast<size_t>(n));
  check_cuda(cudaMemcpyAsync(qn.data(), q_norm, qn.size() * sizeof(float), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  copy_to_host(hn.data(), h_norm, hn.size(), stream);
  int64_t first = -1;
  double best = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    if (mask && mask[i]) continue;
    const double g = static_cast<double>(qn[static_cast<size_t>(i)]) * hn[static_cast<size_t>(i)];
    if (g > best) {
      best = g;
      first = i;
    }
  }
  if (first < 0) {
    stats.no_candidate = true;
    return;
  }
  m.slack = badge_prune_slack(C, d, best);
  pick_loop<BadgeDevice<TF>, true>(p, m, run, 0, first, false, stream, stats);
  if (!stats.cancelled) copy_results(p, run, stream, stats);
  else check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

}  // namespace

void diversity_cuda(const DiversityParams& p, DiversityStats& stats) {
  // The bindings checked that every CUDA operand is on one device; x's is then the features'.
  DeviceGuard guard(call_device(p.features, p.cuda_device));
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(p.cuda_stream);
  const bool badge = p.method == DiversityMethod::Badge;
  switch (p.features.dtype) {
    case DType::Float16: return badge ? run_badge<half_bits>(p, stream, stats) : run_euclidean<half_bits>(p, stream, stats);
    case DType::BFloat16: return badge ? run_badge<bf16_bits>(p, stream, stats) : run_euclidean<bf16_bits>(p, stream, stats);
    case DType::Float32: return badge ? run_badge<float>(p, stream, stats) : run_euclidean<float>(p, stream, stats);
    case DType::Float64: return badge ? run_badge<double>(p, stream, stats) : run_euclidean<double>(p, stream, stats);
    default: throw std::invalid_argument("unsupported features dtype for the CUDA path");
  }
}

// ---------------------------------------------------------------------------------------------
// Sharded selection on the device (acquisition/sharded_diversity.py with CUDA tensors): each
// rank folds a pick's centre into its own rows. The distances are the run's: the same Metric
// structs, hence the same lanes, chunk order, fused multiply-adds and butterfly, so a row's
// distance to a centre is bit for bit what the single-process update kernel computes for it,
// and the sharded picks are the single-process CUDA picks. There is no pruning (it never changes
// a result) and no assigned centre (sharded selection keeps only r).
namespace {

// A warp per row, over the rows in a grid-stride loop. A row takes part when r > 0 (rows at 0
// coincide with a centre, rows below 0 may not be picked): every lane reads the same r, so the
// warp stays converged for the shuffles. The fold is fold_in_centre's: the smaller value wins.
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    shard_fold_in_kernel(Metric m, const float* centre, float* r, int64_t rows) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; i < rows; i += warps) {
    const float ri = r[i];
    if (!(ri > 0.0f)) continue;
    const float d = m.distance(centre, i, lane);
    if (lane == 0 && d < ri) r[i] = d;
  }
}

// BADGE with classes out of [0, C) would read outside the row and the centre: such rows are
// left as they are (the classes come from shard_badge_norms_cuda, which cannot produce them).
template <class Metric>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    shard_fold_in_badge_kernel(Metric m, const float* centre, float* r, int64_t rows) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; i < rows; i += warps) {
    const float ri = r[i];
    const int64_t y = m.predicted[i];
    if (!(ri > 0.0f) || y < 0 || y >= m.s.cols) continue;
    const float d = m.distance(centre, i, lane);
    if (lane == 0 && d < ri) r[i] = d;
  }
}

// The run's per-row constants (scan_scores, badge_row_norms) for every row of the shard.
template <class TF>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    shard_badge_norms_kernel(BadgeDevice<TF, int64_t> m, int64_t rows, int64_t* y, float* qn, float* hn) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kBlockWarps;
  for (int64_t i = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; i < rows; i += warps) {
    const int32_t yi = static_cast<int32_t>(scan_scores(m, i, lane).best_j);
    const RowNorms n = badge_row_norms(m, i, yi, lane);
    if (lane == 0) {
      y[i] = yi;
      qn[i] = n.q_sq;
      hn[i] = n.h_sq;
    }
  }
}

// BADGE over float32 probabilities (not logits) and features of TF, contiguous rows.
template <class TF>
BadgeDevice<TF, int64_t> shard_badge(const float* probs, const void* h, int64_t m, int64_t C, int64_t d) {
  BadgeDevice<TF, int64_t> b;
  b.s = AnyRows{probs, DType::Float32, m, C, C, 1};
  b.h = device_rows<TF>(h, m, d, d, 1);
  b.cp = padded8(C);
  b.dp = padded8(d);
  return b;
}

unsigned shard_grid(int64_t rows) { return static_cast<unsigned>(grid_for(rows, kBlockWarps)); }

template <class T>
void launch_shard_fold_in(const ShardFoldIn& a, cudaStream_t stream) {
  if (a.probs == nullptr) {
    EuclideanDevice<T> m;
    m.x = device_rows<T>(a.x, a.m, a.d, a.d, 1);
    shard_fold_in_kernel<<<shard_grid(a.m), kBlockThreads, 0, stream>>>(m, a.centre, a.r, a.m);
  } else {
    BadgeDevice<T, int64_t> m = shard_badge<T>(a.probs, a.x, a.m, a.C, a.d);
    m.predicted = a.y;
    m.q_norm = a.qn;
    m.h_norm = a.hn;
    shard_fold_in_badge_kernel<<<shard_grid(a.m), kBlockThreads, 0, stream>>>(m, a.centre, a.r, a.m);
  }
}

template <class TF>
void launch_shard_badge_norms(const ShardBadgeNorms& a, cudaStream_t stream) {
  const BadgeDevice<TF, int64_t> m = shard_badge<TF>(a.probs, a.h, a.m, a.C, a.d);
  shard_badge_norms_kernel<TF><<<shard_grid(a.m), kBlockThreads, 0, stream>>>(m, a.m, a.y, a.qn, a.hn);
}

}  // namespace

void shard_fold_in_cuda(const ShardFoldIn& a) {
  if (a.m == 0) return;
  DeviceGuard guard(a.cuda_device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.cuda_stream);
  switch (a.x_dtype) {
    case DType::Float16: launch_shard_fold_in<half_bits>(a, stream); break;
    case DType::BFloat16: launch_shard_fold_in<bf16_bits>(a, stream); break;
    case DType::Float32: launch_shard_fold_in<float>(a, stream); break;
    case DType::Float64: launch_shard_fold_in<double>(a, stream); break;
    default: throw std::invalid_argument("unsupported features dtype for the sharded CUDA fold-in");
  }
  check_cuda(cudaGetLastError(), "shard_fold_in_kernel");
}

void shard_badge_norms_cuda(const ShardBadgeNorms& a) {
  if (a.m == 0) return;
  DeviceGuard guard(a.cuda_device);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(a.cuda_stream);
  switch (a.h_dtype) {
    case DType::Float16: launch_shard_badge_norms<half_bits>(a, stream); break;
    case DType::BFloat16: launch_shard_badge_norms<bf16_bits>(a, stream); break;
    case DType::Float32: launch_shard_badge_norms<float>(a, stream); break;
    case DType::Float64: launch_shard_badge_norms<double>(a, stream); break;
    default: throw std::invalid_argument("unsupported features dtype for the sharded CUDA BADGE constants");
  }
  check_cuda(cudaGetLastError(), "shard_badge_norms_kernel");
}

}  // namespace asvp
