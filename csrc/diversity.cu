// CUDA kernels for the diversity methods (k-center greedy, k-means++ seeding, BADGE).
//
// The decision rules are those of the CPU engine, from the shared diversity_math.h: the pruning
// test, the distance update, BADGE's factorised distance, the farthest-row key, the counter-based
// random numbers and the in-block D² walk. Per pick, four kernels run back to back on one stream
// and the host never waits for them:
//   choose  (1 block)       reads the per-block aggregates, picks the next row, writes it to
//                           device memory (k-center: the largest key; D²: a walk of block sums);
//   centre  (1 warp)        copies that row into a dense float32 centre;
//   gaps    (warp per centre) squared distances from every earlier centre to the new one;
//   update  (block per 1024 rows, warp per row) folds the new centre into every row the
//                           triangle inequality does not rule out, then recomputes the block's
//                           aggregates (max key, weight sum, candidate count) in a fixed order.
// The host only synchronises every few dozen picks, to report progress and let Ctrl-C through.
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_util.cuh"
#include "diversity.h"
#include "uncertainty_math.h"

namespace asvp {
namespace {

constexpr int kWarp = 32;
constexpr int kBlockThreads = 256;  // 8 warps per sample block of kSampleBlock rows
constexpr int kChooseThreads = 1024;
constexpr unsigned long long kNoBadRow = ULLONG_MAX;
constexpr int64_t kProgressEvery = 32;  // picks between host synchronisations

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// A strided matrix whose element type is known only at run time: one kernel instantiation serves
// every dtype (the switch is uniform across a warp and the kernels are memory-bound).
struct AnyMatrix {
  const void* data = nullptr;
  DType dtype = DType::Float32;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;

  __device__ __forceinline__ float at(int64_t r, int64_t c) const {
    const int64_t i = r * row_stride + c * col_stride;
    switch (dtype) {
      case DType::Float16: return half_to_float(static_cast<const uint16_t*>(data)[i]);
      case DType::BFloat16: return bf16_to_float(static_cast<const uint16_t*>(data)[i]);
      case DType::Float64: return static_cast<float>(static_cast<const double*>(data)[i]);
      default: return static_cast<const float*>(data)[i];
    }
  }
};

// Squared Euclidean distance between feature rows; a dense centre is the row in float32.
struct EuclideanDevice {
  AnyMatrix x;
  float slack = 0.0f;

  __device__ void load(int64_t row, float* dense, int lane) const {
    for (int64_t j = lane; j < x.cols; j += kWarp) dense[j] = x.at(row, j);
  }
  __device__ float distance(const float* centre, int64_t row, int lane) const {
    float acc = 0.0f;
    for (int64_t j = lane; j < x.cols; j += kWarp) {
      const float t = x.at(row, j) - centre[j];
      acc += t * t;
    }
    return warp_sum(acc);
  }
  __device__ float row_distance(int64_t a, int64_t b, int lane) const {
    float acc = 0.0f;
    for (int64_t j = lane; j < x.cols; j += kWarp) {
      const float t = x.at(a, j) - x.at(b, j);
      acc += t * t;
    }
    return warp_sum(acc);
  }
  __device__ bool row_finite(int64_t row, int lane) const {
    float acc = 0.0f;
    for (int64_t j = lane; j < x.cols; j += kWarp) {
      const float v = x.at(row, j);
      acc += v - v;  // NaN for NaN and +-Inf
    }
    return warp_sum(acc) == 0.0f;
  }
};

// BADGE's gradient embeddings through the factorised distance; a dense centre is q (C), h (d),
// |q|^2, |h|^2. Per-row constants come from badge_prepare_kernel.
struct BadgeDevice {
  AnyMatrix s, h;
  bool logits = false;
  const int32_t* predicted = nullptr;
  const float* q_norm = nullptr;
  const float* h_norm = nullptr;
  const float* log_partition = nullptr;
  float slack = 0.0f;

  __device__ float probability(int64_t row, int64_t j) const {
    const float v = s.at(row, j);
    return logits ? exp_approx(v - log_partition[row]) : v;
  }
  // q at the predicted class: p - 1, or for logits minus the other probabilities (no cancellation).
  __device__ float predicted_q(int64_t row, int32_t y, float others) const {
    return logits ? -others : s.at(row, y) - 1.0f;
  }
  __device__ void load(int64_t row, float* dense, int lane) const {
    const int32_t y = predicted[row];
    float others = 0.0f;
    for (int64_t j = lane; j < s.cols; j += kWarp) {
      const float p = probability(row, j);
      dense[j] = p;
      others += j == y ? 0.0f : p;
    }
    others = warp_sum(others);
    for (int64_t j = lane; j < h.cols; j += kWarp) dense[s.cols + j] = h.at(row, j);
    __syncwarp();
    if (lane == 0) {
      dense[y] = predicted_q(row, y, others);
      dense[s.cols + h.cols] = q_norm[row];
      dense[s.cols + h.cols + 1] = h_norm[row];
    }
    __syncwarp();
  }
  __device__ float distance(const float* centre, int64_t row, int lane) const {
    const int32_t y = predicted[row];
    float q_dot = 0.0f, others = 0.0f, h_dot = 0.0f;
    for (int64_t j = lane; j < s.cols; j += kWarp) {
      const float p = j == y ? 0.0f : probability(row, j);
      q_dot += centre[j] * p;
      others += p;
    }
    for (int64_t j = lane; j < h.cols; j += kWarp) h_dot += centre[s.cols + j] * h.at(row, j);
    q_dot = warp_sum(q_dot);
    others = warp_sum(others);
    h_dot = warp_sum(h_dot);
    q_dot += centre[y] * predicted_q(row, y, others);
    return badge_sq_distance(centre[s.cols + h.cols], centre[s.cols + h.cols + 1], q_norm[row], h_norm[row], q_dot,
                             h_dot);
  }
  __device__ bool row_finite(int64_t, int) const { return true; }  // checked by badge_prepare_kernel
};

// Everything the kernels share, by pointer into device memory.
struct DeviceState {
  int64_t n = 0, blocks = 0;
  float* r = nullptr;               // squared distance to the assigned centre; < 0: not a candidate
  int32_t* assigned = nullptr;      // centre slot of each row, -1 before the first centre
  int64_t* centre_rows = nullptr;   // row of each centre slot
  float* gaps = nullptr;            // per slot: squared distance to the newest centre
  uint64_t* block_farthest = nullptr;
  double* block_weight = nullptr;
  int64_t* block_candidates = nullptr;
  int64_t* picks = nullptr;
  float* pick_distances = nullptr;
  unsigned long long* counters = nullptr;  // [distances possible, distances computed]
  unsigned long long* bad = nullptr;       // (row << 3) | problem of the first bad row
};

__device__ void report_bad(const DeviceState& st, int64_t row, int problem) {
  atomicMin(st.bad, (static_cast<unsigned long long>(row) << 3) | static_cast<unsigned long long>(problem));
}

// The block's aggregates from its rows, reduced in a fixed order (deterministic). All threads of
// the block call it after a __syncthreads.
__device__ void aggregate_block(const DeviceState& st, int64_t b) {
  __shared__ uint64_t far[kBlockThreads];
  __shared__ double weight[kBlockThreads];
  __shared__ int64_t count[kBlockThreads];
  const int t = threadIdx.x;
  const int64_t begin = b * kSampleBlock;
  const int64_t end = min_of<int64_t>(st.n, begin + kSampleBlock);
  uint64_t f = 0;
  double w = 0.0;
  int64_t c = 0;
  for (int64_t i = begin + t; i < end; i += kBlockThreads) {
    const float r = st.r[i];
    f = max_of(f, farthest_key(r, i));
    w += d2_weight(r);
    c += r >= 0.0f ? 1 : 0;
  }
  far[t] = f;
  weight[t] = w;
  count[t] = c;
  __syncthreads();
  for (int width = kBlockThreads / 2; width > 0; width /= 2) {
    if (t < width) {
      far[t] = max_of(far[t], far[t + width]);
      weight[t] += weight[t + width];
      count[t] += count[t + width];
    }
    __syncthreads();
  }
  if (t == 0) {
    st.block_farthest[b] = far[0];
    st.block_weight[b] = weight[0];
    st.block_candidates[b] = count[0];
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

__global__ void __launch_bounds__(kBlockThreads) aggregate_kernel(DeviceState st) { aggregate_block(st, blockIdx.x); }

// Exact distance of every candidate to its nearest labelled row (found by a GEMM-style search).
__global__ void __launch_bounds__(kBlockThreads) labelled_distances_kernel(EuclideanDevice m, DeviceState st,
                                                                           const int64_t* nearest) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = blockIdx.x;
  const int64_t end = min_of<int64_t>(st.n, (b + 1) * kSampleBlock);
  for (int64_t i = b * kSampleBlock + threadIdx.x / kWarp; i < end; i += kBlockThreads / kWarp) {
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
  aggregate_block(st, b);
}

// BADGE's per-row constants: predicted class, log partition sum (logits), |q|^2, |h|^2, and the
// row checks (1 non-finite scores, 2 non-finite features, 3 outside [0, 1], 4 sum not 1).
__global__ void __launch_bounds__(kBlockThreads) badge_prepare_kernel(BadgeDevice m, DeviceState st, const uint8_t* exclude,
                                                                      int32_t* predicted, float* q_norm, float* h_norm,
                                                                      float* log_partition, bool validate,
                                                                      float sum_tolerance) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  const int64_t C = m.s.cols;
  for (int64_t row = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; row < st.n; row += warps) {
    if (exclude && exclude[row]) continue;
    float best = -INFINITY, lo = INFINITY, hi = -INFINITY, sum = 0.0f, nonfinite = 0.0f;
    int64_t best_j = C;
    for (int64_t j = lane; j < C; j += kWarp) {
      const float v = m.s.at(row, j);
      nonfinite += v - v;
      if (v > best) {
        best = v;
        best_j = j;
      }
      lo = min_of(lo, v);
      hi = max_of(hi, v);
      sum += v;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const float ob = __shfl_xor_sync(0xffffffffu, best, offset);
      const int64_t oj = __shfl_xor_sync(0xffffffffu, best_j, offset);
      if (ob > best || (ob == best && oj < best_j)) {  // first maximum, like numpy.argmax
        best = ob;
        best_j = oj;
      }
      lo = min_of(lo, __shfl_xor_sync(0xffffffffu, lo, offset));
      hi = max_of(hi, __shfl_xor_sync(0xffffffffu, hi, offset));
    }
    sum = warp_sum(sum);
    nonfinite = warp_sum(nonfinite);
    if (nonfinite != 0.0f) {
      if (lane == 0) report_bad(st, row, 1);
      continue;
    }
    if (!m.logits && validate) {
      if (lo < 0.0f || hi > 1.0f) {
        if (lane == 0) report_bad(st, row, 3);
        continue;
      }
      if (fabsf(sum - 1.0f) > sum_tolerance) {
        if (lane == 0) report_bad(st, row, 4);
        continue;
      }
    }
    float partition = 0.0f;
    if (m.logits) {
      for (int64_t j = lane; j < C; j += kWarp) partition += exp_approx(m.s.at(row, j) - best);
      partition = warp_sum(partition);
      if (lane == 0) log_partition[row] = best + logf(partition);
    }
    __syncwarp();
    const int32_t y = static_cast<int32_t>(best_j);
    float others = 0.0f, q_sq = 0.0f;
    for (int64_t j = lane; j < C; j += kWarp) {
      const float p = j == y ? 0.0f : m.probability(row, j);
      others += p;
      q_sq += p * p;
    }
    others = warp_sum(others);
    q_sq = warp_sum(q_sq);
    const float qy = m.predicted_q(row, y, others);
    float h_sq = 0.0f, h_bad = 0.0f;
    for (int64_t j = lane; j < m.h.cols; j += kWarp) {
      const float v = m.h.at(row, j);
      h_bad += v - v;
      h_sq += v * v;
    }
    h_sq = warp_sum(h_sq);
    h_bad = warp_sum(h_bad);
    if (h_bad != 0.0f) {
      if (lane == 0) report_bad(st, row, 2);
      continue;
    }
    if (lane == 0) {
      predicted[row] = y;
      q_norm[row] = q_sq + qy * qy;
      h_norm[row] = h_sq;
    }
  }
}

template <class Metric>
__global__ void check_row_kernel(Metric m, DeviceState st, int64_t row) {
  if (!m.row_finite(row, threadIdx.x) && threadIdx.x == 0) report_bad(st, row, 2);
}

__device__ void commit_pick(const DeviceState& st, int64_t t, int64_t row) {
  st.picks[t] = row;
  st.pick_distances[t] = st.r[row];
  st.r[row] = kNotCandidate;
}

__global__ void first_pick_kernel(DeviceState st, int64_t row) { commit_pick(st, 0, row); }

// The next pick from the block aggregates (one block of kChooseThreads threads).
__global__ void __launch_bounds__(kChooseThreads) choose_kernel(DeviceState st, bool farthest, uint64_t seed, int64_t t) {
  __shared__ uint64_t far[kChooseThreads];
  __shared__ double weight[kChooseThreads];
  __shared__ int64_t count[kChooseThreads];
  const int tid = threadIdx.x;
  uint64_t f = 0;
  double w = 0.0;
  int64_t c = 0;
  for (int64_t b = tid; b < st.blocks; b += kChooseThreads) {
    f = max_of(f, st.block_farthest[b]);
    w += st.block_weight[b];
    c += st.block_candidates[b];
  }
  far[tid] = f;
  weight[tid] = w;
  count[tid] = c;
  __syncthreads();
  for (int width = kChooseThreads / 2; width > 0; width /= 2) {
    if (tid < width) {
      far[tid] = max_of(far[tid], far[tid + width]);
      weight[tid] += weight[tid + width];
      count[tid] += count[tid + width];
    }
    __syncthreads();
  }
  if (tid != 0) return;
  if (farthest) {
    commit_pick(st, t, farthest_row(far[0]));
    return;
  }
  const double u = uniform01(seed, static_cast<uint64_t>(t));
  const auto weight_at = [&st](int64_t i) { return d2_weight(st.r[i]); };
  int64_t row = -1;
  if (weight[0] > 0.0) {
    const double target = u * weight[0];
    double before = 0.0;
    int64_t last_block = -1;
    for (int64_t b = 0; b < st.blocks && row < 0; ++b) {
      const double bw = st.block_weight[b];
      if (!(bw > 0.0)) continue;
      last_block = b;
      if (before + bw > target)
        row = d2_pick_in_block(weight_at, b * kSampleBlock, min_of<int64_t>(st.n, (b + 1) * kSampleBlock), before, target);
      before += bw;
    }
    if (row < 0)
      row = d2_pick_in_block(weight_at, last_block * kSampleBlock, min_of<int64_t>(st.n, (last_block + 1) * kSampleBlock), 0.0, INFINITY);
  } else {  // every candidate coincides with a centre: uniform among them
    int64_t j = scale_to_count(u, count[0]);
    for (int64_t b = 0; b < st.blocks && row < 0; ++b) {
      if (j >= st.block_candidates[b]) {
        j -= st.block_candidates[b];
        continue;
      }
      for (int64_t i = b * kSampleBlock; row < 0; ++i)
        if (st.r[i] >= 0.0f && j-- == 0) row = i;
    }
  }
  commit_pick(st, t, row);
}

template <class Metric>
__global__ void load_centre_kernel(Metric m, DeviceState st, float* centre, int64_t t, int64_t slot) {
  const int64_t row = st.picks[t];
  m.load(row, centre, threadIdx.x);
  if (threadIdx.x == 0) st.centre_rows[slot] = row;
}

template <class Metric>
__global__ void __launch_bounds__(kBlockThreads) gaps_kernel(Metric m, DeviceState st, const float* centre, int64_t slots) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t s = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarp; s < slots; s += warps) {
    const float g = m.distance(centre, st.centre_rows[s], lane);
    if (lane == 0) st.gaps[s] = g;
  }
}

template <class Metric>
__global__ void __launch_bounds__(kBlockThreads) update_kernel(Metric m, DeviceState st, const float* centre,
                                                               int32_t slot, bool prune, bool validate) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = blockIdx.x;
  const int64_t end = min_of<int64_t>(st.n, (b + 1) * kSampleBlock);
  unsigned long long possible = 0, computed = 0;
  for (int64_t i = b * kSampleBlock + threadIdx.x / kWarp; i < end; i += kBlockThreads / kWarp) {
    float r = st.r[i];
    if (r < 0.0f) continue;
    ++possible;
    int32_t a = st.assigned[i];
    if (prune && a >= 0 && cannot_improve(r, st.gaps[a], m.slack)) continue;
    if (validate && !m.row_finite(i, lane)) {
      if (lane == 0) report_bad(st, i, 2);
      continue;
    }
    ++computed;
    const float d = m.distance(centre, i, lane);
    if (lane == 0 && fold_in_centre(r, a, d, slot)) {
      st.r[i] = r;
      st.assigned[i] = a;
    }
  }
  if (lane == 0) {
    atomicAdd(&st.counters[0], possible);
    atomicAdd(&st.counters[1], computed);
  }
  __syncthreads();
  aggregate_block(st, b);
}

// A device copy of a host matrix (or the matrix itself when it already is on the device).
AnyMatrix device_matrix(const ArrayView& v, DeviceBuffer<char>& storage, cudaStream_t stream, const char* what) {
  AnyMatrix m;
  m.dtype = v.dtype;
  m.rows = v.shape[0];
  m.cols = v.shape[1];
  if (v.device == DeviceKind::CUDA) {
    m.data = v.data;
    m.row_stride = v.strides[0];
    m.col_stride = v.strides[1];
    return m;
  }
  if (m.cols > 1 && v.strides[1] != 1)
    throw std::invalid_argument(std::string(what) + " must have contiguous rows for the CUDA path; use device='cpu' or pass a contiguous array");
  const size_t item = static_cast<size_t>(dtype_size(v.dtype));
  const size_t row_bytes = static_cast<size_t>(m.cols) * item;
  storage = DeviceBuffer<char>(static_cast<size_t>(m.rows) * row_bytes);
  if (m.rows > 0)
    check_cuda(cudaMemcpy2DAsync(storage.get(), row_bytes, v.data, static_cast<size_t>(v.strides[0]) * item, row_bytes,
                                 static_cast<size_t>(m.rows), cudaMemcpyHostToDevice, stream),
               "cudaMemcpy2DAsync (the input may not fit in device memory: use device='cpu')");
  m.data = storage.get();
  m.row_stride = m.cols;
  m.col_stride = 1;
  return m;
}

template <class T>
void upload(DeviceBuffer<T>& dst, const T* src, size_t count, cudaStream_t stream) {
  dst = DeviceBuffer<T>(count);
  if (count) check_cuda(cudaMemcpyAsync(dst.get(), src, count * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
}

// Owns the device memory of one run.
struct DeviceRun {
  DeviceBuffer<float> r, gaps, centre, pick_distances;
  DeviceBuffer<int32_t> assigned;
  DeviceBuffer<int64_t> centre_rows, picks, block_candidates;
  DeviceBuffer<uint64_t> block_farthest;
  DeviceBuffer<double> block_weight;
  DeviceBuffer<unsigned long long> counters, bad;
  DeviceState st;

  DeviceRun(int64_t n, int64_t centres, int64_t k, int64_t dense, cudaStream_t stream)
      : r(n), gaps(centres), centre(dense), pick_distances(k), assigned(n), centre_rows(centres), picks(k),
        block_candidates((n + kSampleBlock - 1) / kSampleBlock), block_farthest(block_candidates.size()),
        block_weight(block_candidates.size()), counters(2), bad(1) {
    st.n = n;
    st.blocks = static_cast<int64_t>(block_candidates.size());
    st.r = r.get();
    st.assigned = assigned.get();
    st.centre_rows = centre_rows.get();
    st.gaps = gaps.get();
    st.block_farthest = block_farthest.get();
    st.block_weight = block_weight.get();
    st.block_candidates = block_candidates.get();
    st.picks = picks.get();
    st.pick_distances = pick_distances.get();
    st.counters = counters.get();
    st.bad = bad.get();
    const unsigned long long zero[2] = {0, 0}, none = kNoBadRow;
    check_cuda(cudaMemcpyAsync(counters.get(), zero, sizeof zero, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
    check_cuda(cudaMemcpyAsync(bad.get(), &none, sizeof none, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
  }

  // Waits for the stream and returns the first bad row (or -1) with its problem code.
  int64_t first_bad(cudaStream_t stream, int* problem) const {
    unsigned long long v = kNoBadRow;
    check_cuda(cudaMemcpyAsync(&v, bad.get(), sizeof v, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    if (v == kNoBadRow) return -1;
    *problem = static_cast<int>(v & 7u);
    return static_cast<int64_t>(v >> 3);
  }
};

// The pick loop shared by the methods: first pick given (or chosen on the device when centres
// exist already), then choose -> centre -> gaps -> update per pick.
template <class Metric>
void pick_loop(const DiversityParams& p, Metric m, DeviceRun& run, int64_t first_slot, int64_t first_row,
               bool validate_first_pass, cudaStream_t stream, DiversityStats& stats) {
  const int64_t blocks = run.st.blocks;
  const bool farthest = p.method == DiversityMethod::KCenter;
  for (int64_t t = 0; t < p.k; ++t) {
    if (t == 0 && first_row >= 0) {
      first_pick_kernel<<<1, 1, 0, stream>>>(run.st, first_row);
    } else {
      choose_kernel<<<1, kChooseThreads, 0, stream>>>(run.st, farthest, p.seed, t);
    }
    check_cuda(cudaGetLastError(), "choose_kernel");
    if (t + 1 == p.k) break;
    const int64_t slot = first_slot + t;
    load_centre_kernel<Metric><<<1, kWarp, 0, stream>>>(m, run.st, run.centre.get(), t, slot);
    if (p.prune && slot > 0) {
      gaps_kernel<Metric><<<grid_for(slot, kBlockThreads / kWarp), kBlockThreads, 0, stream>>>(m, run.st, run.centre.get(), slot);
      stats.centre_distances += slot;
    }
    const bool validate = validate_first_pass && t == 0;
    update_kernel<Metric><<<static_cast<unsigned>(blocks), kBlockThreads, 0, stream>>>(
        m, run.st, run.centre.get(), static_cast<int32_t>(slot), p.prune, validate);
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
  unsigned long long counters[2] = {0, 0};
  check_cuda(cudaMemcpyAsync(p.picks_out.data, run.picks.get(), static_cast<size_t>(p.k) * sizeof(int64_t),
                             cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  if (!p.distances_out.empty())
    check_cuda(cudaMemcpyAsync(p.distances_out.data, run.pick_distances.get(), static_cast<size_t>(p.k) * sizeof(float),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaMemcpyAsync(counters, run.counters.get(), sizeof counters, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  stats.distances_possible += static_cast<int64_t>(counters[0]);
  stats.distances_computed += static_cast<int64_t>(counters[1]);
  if (p.on_progress && !stats.cancelled) p.on_progress(p.k, p.k);
}

// Row `j` among those the mask leaves (host side, for the first uniform pick).
int64_t nth_unmasked(const uint8_t* mask, int64_t n, int64_t j) {
  for (int64_t i = 0; i < n; ++i)
    if (!(mask && mask[i]) && j-- == 0) return i;
  return -1;
}

void run_euclidean(const DiversityParams& p, cudaStream_t stream, DiversityStats& stats) {
  DeviceBuffer<char> storage(0);
  EuclideanDevice m;
  m.x = device_matrix(p.features, storage, stream, "features");
  const int64_t n = m.x.rows;
  const int64_t L = p.labeled.empty() ? 0 : p.labeled.shape[0];
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  DeviceRun run(n, L + p.k, p.k, m.x.cols, stream);
  DeviceBuffer<uint8_t> exclude(0);
  if (mask) upload(exclude, mask, static_cast<size_t>(n), stream);
  init_rows_kernel<<<grid_for(n, 256), 256, 0, stream>>>(run.st, mask ? exclude.get() : nullptr);
  check_cuda(cudaGetLastError(), "init_rows_kernel");
  int64_t first = -1;
  if (L > 0) {
    DeviceBuffer<int64_t> labeled(0), nearest(0);
    upload(labeled, static_cast<const int64_t*>(p.labeled.data), static_cast<size_t>(L), stream);
    upload(nearest, static_cast<const int64_t*>(p.labeled_nearest.data), static_cast<size_t>(n), stream);
    mark_labelled_kernel<<<grid_for(L, 256), 256, 0, stream>>>(run.st, labeled.get(), L);
    labelled_distances_kernel<<<static_cast<unsigned>(run.st.blocks), kBlockThreads, 0, stream>>>(m, run.st, nearest.get());
    check_cuda(cudaGetLastError(), "labelled_distances_kernel");
    int problem = 0;
    const int64_t bad = run.first_bad(stream, &problem);  // also keeps labeled/nearest alive until done
    if (bad >= 0) {
      stats.bad_row = bad;
      stats.bad_problem = 2;
      return;
    }
    stats.distances_computed += n - L;
  } else {
    aggregate_kernel<<<static_cast<unsigned>(run.st.blocks), kBlockThreads, 0, stream>>>(run.st);
    int64_t excluded = 0;
    for (int64_t i = 0; mask && i < n; ++i) excluded += mask[i] ? 1 : 0;
    first = nth_unmasked(mask, n, scale_to_count(uniform01(p.seed, 0), n - excluded));
    check_row_kernel<<<1, kWarp, 0, stream>>>(m, run.st, first);  // reported with the first pass
  }
  pick_loop(p, m, run, L, first, L == 0, stream, stats);
  if (stats.bad_row < 0 && !stats.cancelled) copy_results(p, run, stream, stats);
  else check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

void run_badge(const DiversityParams& p, cudaStream_t stream, DiversityStats& stats) {
  DeviceBuffer<char> score_storage(0), feature_storage(0);
  BadgeDevice m;
  m.s = device_matrix(p.scores, score_storage, stream, "x");
  m.h = device_matrix(p.features, feature_storage, stream, "features");
  m.logits = p.from_logits;
  const int64_t n = m.s.rows, C = m.s.cols, d = m.h.cols;
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  DeviceRun run(n, p.k, p.k, C + d + 2, stream);
  DeviceBuffer<uint8_t> exclude(0);
  if (mask) upload(exclude, mask, static_cast<size_t>(n), stream);
  DeviceBuffer<int32_t> predicted(static_cast<size_t>(n));
  DeviceBuffer<float> q_norm(static_cast<size_t>(n)), h_norm(static_cast<size_t>(n)),
      log_partition(p.from_logits ? static_cast<size_t>(n) : 0);
  m.predicted = predicted.get();
  m.q_norm = q_norm.get();
  m.h_norm = h_norm.get();
  m.log_partition = log_partition.get();
  init_rows_kernel<<<grid_for(n, 256), 256, 0, stream>>>(run.st, mask ? exclude.get() : nullptr);
  badge_prepare_kernel<<<grid_for(n, kBlockThreads / kWarp), kBlockThreads, 0, stream>>>(
      m, run.st, mask ? exclude.get() : nullptr, predicted.get(), q_norm.get(), h_norm.get(), log_partition.get(),
      p.validate, static_cast<float>(p.sum_tolerance));
  check_cuda(cudaGetLastError(), "badge_prepare_kernel");
  aggregate_kernel<<<static_cast<unsigned>(run.st.blocks), kBlockThreads, 0, stream>>>(run.st);
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
  check_cuda(cudaMemcpy(qn.data(), q_norm.get(), qn.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
  check_cuda(cudaMemcpy(hn.data(), h_norm.get(), hn.size() * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
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
  m.slack = badge_prune_slack(C, d, best);
  pick_loop(p, m, run, 0, first, false, stream, stats);
  if (!stats.cancelled) copy_results(p, run, stream, stats);
  else check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

}  // namespace

void diversity_cuda(const DiversityParams& p, DiversityStats& stats) {
  const bool on_device = p.features.device == DeviceKind::CUDA;
  DeviceGuard guard(on_device ? p.features.device_id : 0);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(p.cuda_stream);
  if (p.method == DiversityMethod::Badge) run_badge(p, stream, stats);
  else run_euclidean(p, stream, stats);
}

}  // namespace asvp
