// CUDA kernels for uncertainty scoring and top-k selection.
//
// G lanes per row (32, or 8 for short rows: four rows per warp). Each lane reduces its 16-byte
// chunks of the row (device_rows.cuh: one vector load per chunk where the layout allows, several
// chunks in flight) with the shared math of uncertainty_math.h; the lanes merge by butterfly
// shuffles and the group's first lane writes the statistic and a 32-bit order-preserving ranking
// key. For logits a row that fits in the lanes' registers is read once for both passes.
// Selection is a radix select over the keys (four 8-bit digit histograms find the k-th key
// exactly), a compaction of the rows above it and of the tied rows, and a final ordering of just
// those k candidates on the host. Per call: four 2 KB histogram reads and one candidate copy cross
// to the host, never anything per row.
//
// Memory and streams: every copy and kernel runs on the caller's stream; scratch is one arena
// (cuda_util.cuh: the caller's allocator or stream-ordered); host input is streamed through two
// pinned buffers, so the host fills one while the other's copy and kernel run.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime_info.h"
#include "cuda_util.cuh"
#include "device_rows.cuh"
#include "radix_select.h"
#include "uncertainty.h"

namespace asvp {
namespace {

constexpr int kWarp = 32;
constexpr int kRowThreads = 256;
constexpr int kChunksInFlight = 4;  // 16-byte chunks each lane loads before using them
constexpr int kMinBlocks = 3;       // blocks per multiprocessor: at most 80 registers (see diversity.cu)
constexpr unsigned long long kNoBadRow = ULLONG_MAX;

template <class T>
struct RowKernelArgs {
  Rows<T> x;                // rows [row_offset, row_offset + x.rows) of the input
  int64_t row_offset;
  Kind kind;
  bool from_logits, validate;
  double sum_tolerance;
  const uint8_t* exclude;   // indexed by global row, or null
  int64_t exclude_stride;
  float* scores;            // indexed by global row, or null
  int64_t scores_stride;
  uint32_t* keys;           // indexed by global row, or null
  unsigned long long* first_bad;
};

// Butterfly merge among the G lanes of a row (offsets below G stay inside the group). Every lane
// of the warp takes part, active or not, so the full mask is always right.
template <int G, class A>
__device__ __forceinline__ void group_merge(RowStats<A>& s) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) {
    RowStats<A> o;
    o.max1 = __shfl_xor_sync(0xffffffffu, s.max1, offset);
    o.max2 = __shfl_xor_sync(0xffffffffu, s.max2, offset);
    o.min = __shfl_xor_sync(0xffffffffu, s.min, offset);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    o.aux = __shfl_xor_sync(0xffffffffu, s.aux, offset);
    o.nonfinite = __shfl_xor_sync(0xffffffffu, s.nonfinite, offset);
    merge_row_stats(s, o);  // symmetric, so every lane of the group ends with the same totals
  }
}

// What a row's first pass accumulates: logits (maximum, runner-up, finiteness), probabilities
// with the entropy sum, or probabilities without it. A template parameter, so the per-element
// loop has no branch.
enum class RowMode : int { Logits = 0, Entropy = 1, Plain = 2 };

// Pushes the values of chunk `ch` (raw 16-byte word) into a row summary: branch-free for whole
// chunks, with a bound check only in a row's last, partial chunk.
template <class T, class A, class Push>
__device__ __forceinline__ void push_chunk(const uint4& raw, int64_t ch, int64_t C, const Push& push) {
  constexpr int V = Elem<T>::V;
  A v[V];
  Elem<T>::unpack(raw, v);
  if (ch * V + V <= C) {
#pragma unroll
    for (int e = 0; e < V; ++e) push(v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e)
      if (ch * V + e < C) push(v[e]);
  }
}

template <class T, int G, RowMode M>
__global__ void __launch_bounds__(kRowThreads, kMinBlocks) row_statistics_kernel(RowKernelArgs<T> a) {
  using A = typename acc_of<T>::type;
  constexpr int V = Elem<T>::V;
  constexpr int U = kChunksInFlight;
  constexpr int kRowsPerWarp = kWarp / G;
  const int lane = threadIdx.x % kWarp;
  const int sub = lane % G;
  const int group = lane / G;
  const int64_t first_warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) / kWarp;
  const int64_t C = a.x.cols;
  const int64_t chunks = (C + V - 1) / V;
  // Rows of at most G * U chunks stay in registers between the two logit passes.
  const bool in_registers = chunks <= static_cast<int64_t>(G) * U;
  for (int64_t base = first_warp * kRowsPerWarp; base < a.x.rows; base += warps * kRowsPerWarp) {
    const int64_t r = base + group;
    const int64_t g = a.row_offset + r;
    bool active = r < a.x.rows;
    if (active && a.exclude && a.exclude[g * a.exclude_stride]) {
      if (sub == 0 && a.keys) a.keys[g] = 0;
      active = false;
    }
    uint4 raw[U];  // the lane's chunks in flight, kept raw (4 registers each) and converted at use
    RowStats<A> s = row_stats_identity<A>();
    const auto push1 = [&s](A v) {
      if constexpr (M == RowMode::Logits) push_logit_pass1(s, v);
      else push_probability(s, v, M == RowMode::Entropy);
    };
    if (active) {
      for (int64_t ch0 = sub; ch0 < chunks; ch0 += static_cast<int64_t>(G) * U) {
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t ch = ch0 + static_cast<int64_t>(u) * G;
          if (ch < chunks) raw[u] = a.x.template raw<false>(r, ch * V);
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          const int64_t ch = ch0 + static_cast<int64_t>(u) * G;
          if (ch < chunks) push_chunk<T, A>(raw[u], ch, C, push1);
        }
      }
    }
    group_merge<G>(s);
    const RowProblem problem = M == RowMode::Logits ? check_logit_row(s)
                                                    : check_probability_row(s, a.validate, static_cast<A>(a.sum_tolerance));
    const bool bad = active && problem != RowProblem::None;
    if (bad && sub == 0) {
      atomicMin(a.first_bad, static_cast<unsigned long long>(g));
      if (a.keys) a.keys[g] = 0;
    }
    float statistic = 0.0f;
    if constexpr (M == RowMode::Logits) {
      RowStats<A> t = row_stats_identity<A>();
      const A row_max = s.max1;
      const bool entropy = a.kind == Kind::Entropy;
      const auto push2 = [&t, row_max, entropy](A v) { push_logit_pass2(t, v, row_max, entropy); };
      if (active && !bad) {
        for (int64_t ch0 = sub; ch0 < chunks; ch0 += static_cast<int64_t>(G) * U) {
          if (!in_registers) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
              const int64_t ch = ch0 + static_cast<int64_t>(u) * G;
              if (ch < chunks) raw[u] = a.x.template raw<false>(r, ch * V);
            }
          }
#pragma unroll
          for (int u = 0; u < U; ++u) {
            const int64_t ch = ch0 + static_cast<int64_t>(u) * G;
            if (ch < chunks) push_chunk<T, A>(raw[u], ch, C, push2);
          }
        }
      }
      group_merge<G>(t);
      s.sum = t.sum;
      s.aux = t.aux;
      if (active && !bad) statistic = statistic_from_logits(s, a.kind);
    } else {
      if (active && !bad) statistic = statistic_from_probabilities(s, a.kind);
    }
    if (active && !bad && sub == 0) {
      if (a.scores) a.scores[g * a.scores_stride] = statistic;
      if (a.keys) a.keys[g] = orderable_bits(uncertainty_key(a.kind, statistic));
    }
  }
}

template <class T, int G>
void launch_mode(const RowKernelArgs<T>& a, int grid, cudaStream_t stream) {
  if (a.from_logits) row_statistics_kernel<T, G, RowMode::Logits><<<grid, kRowThreads, 0, stream>>>(a);
  else if (a.kind == Kind::Entropy) row_statistics_kernel<T, G, RowMode::Entropy><<<grid, kRowThreads, 0, stream>>>(a);
  else row_statistics_kernel<T, G, RowMode::Plain><<<grid, kRowThreads, 0, stream>>>(a);
}

template <class T>
void launch_rows(const RowKernelArgs<T>& a, cudaStream_t stream) {
  constexpr int V = Elem<T>::V;
  const int lanes = uncertainty_lanes(a.x.cols, V);
  const int64_t rows_per_block = kRowThreads / lanes;
  const int grid = grid_for(a.x.rows, static_cast<int>(rows_per_block));
  if (lanes == 8) launch_mode<T, 8>(a, grid, stream);
  else launch_mode<T, 32>(a, grid, stream);
  check_cuda(cudaGetLastError(), "row_statistics_kernel");
}

// Histogram of one 8-bit digit of the keys whose higher digits equal `prefix` (key 0 = not
// selectable, never counted): per block in shared memory, then one global atomic per bin.
__global__ void digit_histogram_kernel(const uint32_t* keys, int64_t n, uint32_t prefix, uint32_t prefix_mask,
                                       int shift, unsigned long long* histogram) {
  __shared__ unsigned int local[kRadixBins];
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x) local[i] = 0;
  __syncthreads();
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t u = keys[i];
    if (radix_candidate(u, prefix, prefix_mask)) atomicAdd(&local[radix_digit(u, shift)], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kRadixBins; i += blockDim.x)
    if (local[i]) atomicAdd(&histogram[i], static_cast<unsigned long long>(local[i]));
}

// One slot per flagged lane of the warp from a single atomic (the lowest flagged lane adds).
__device__ __forceinline__ unsigned long long warp_slot(bool flag, unsigned long long* counter) {
  const unsigned mask = __ballot_sync(0xffffffffu, flag);
  const int lane = threadIdx.x % kWarp;
  unsigned long long base = 0;
  const int leader = mask ? __ffs(mask) - 1 : 0;
  if (mask && lane == leader) base = atomicAdd(counter, static_cast<unsigned long long>(__popc(mask)));
  base = __shfl_sync(0xffffffffu, base, leader);
  return base + static_cast<unsigned long long>(__popc(mask & ((1u << lane) - 1u)));
}

// Rows whose key is above the threshold, and rows tied with it (every lane of a warp loops the
// same number of times, so the warp-wide ballots see all of them).
__global__ void gather_candidates_kernel(const uint32_t* keys, int64_t n, uint32_t threshold, uint32_t* above_keys,
                                         int64_t* above_rows, unsigned long long* above_count, int64_t* tied_rows,
                                         unsigned long long* tied_count, unsigned long long tied_capacity) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t rounds = (n + stride - 1) / stride;
  for (int64_t round = 0; round < rounds; ++round) {
    const int64_t i = first + round * stride;
    const uint32_t u = i < n ? keys[i] : 0u;
    const bool above = i < n && u > threshold;
    const bool tied = i < n && u == threshold;
    const unsigned long long a = warp_slot(above, above_count);
    const unsigned long long t = warp_slot(tied, tied_count);
    if (above) {
      above_keys[a] = u;
      above_rows[a] = i;
    }
    if (tied && t < tied_capacity) tied_rows[t] = i;
  }
}

// Finds the k largest keys (ties to the lower row) and returns their rows, best first. Throws
// std::invalid_argument when fewer than k rows are selectable (excluded rows have key 0).
std::vector<int64_t> select_top_keys(const uint32_t* keys, int64_t n, int64_t k, unsigned long long* histogram,
                                     cudaStream_t stream, const DeviceAlloc& alloc) {
  std::vector<unsigned long long> host_hist(kRadixBins);
  RadixSelect sel(k);
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    check_cuda(cudaMemsetAsync(histogram, 0, kRadixBins * sizeof(unsigned long long), stream), "cudaMemsetAsync");
    digit_histogram_kernel<<<grid_for(n, 256), 256, 0, stream>>>(keys, n, sel.prefix, sel.mask, shift, histogram);
    check_cuda(cudaGetLastError(), "digit_histogram_kernel");
    copy_to_host(host_hist.data(), histogram, kRadixBins, stream);
    if (shift == 32 - kRadixBits) {
      unsigned long long selectable = 0;
      for (unsigned long long c : host_hist) selectable += c;
      if (selectable < static_cast<unsigned long long>(k))
        throw std::invalid_argument("k is larger than the rows that are not excluded (" + std::to_string(selectable) +
                                    " may be picked, k = " + std::to_string(k) + ")");
    }
    sel.step(host_hist.data(), shift);
  }
  const unsigned long long above_total = static_cast<unsigned long long>(k) - sel.needed;
  const unsigned long long tied_total = sel.tied;

  Arena arena(stream, alloc);
  const size_t o_above_keys = arena.plan<uint32_t>(std::max<unsigned long long>(above_total, 1));
  const size_t o_above_rows = arena.plan<int64_t>(std::max<unsigned long long>(above_total, 1));
  const size_t o_tied = arena.plan<int64_t>(std::max<unsigned long long>(tied_total, 1));
  const size_t o_counts = arena.plan<unsigned long long>(2);
  arena.allocate();
  unsigned long long* counts = arena.at<unsigned long long>(o_counts);
  check_cuda(cudaMemsetAsync(counts, 0, 2 * sizeof(unsigned long long), stream), "cudaMemsetAsync");
  gather_candidates_kernel<<<grid_for(n, 256), 256, 0, stream>>>(
      keys, n, sel.threshold(), arena.at<uint32_t>(o_above_keys), arena.at<int64_t>(o_above_rows), counts,
      arena.at<int64_t>(o_tied), counts + 1, tied_total);
  check_cuda(cudaGetLastError(), "gather_candidates_kernel");
  std::vector<uint32_t> host_above_keys(above_total);
  std::vector<int64_t> host_above_rows(above_total), host_tied(tied_total);
  if (above_total) {
    check_cuda(cudaMemcpyAsync(host_above_keys.data(), arena.at<uint32_t>(o_above_keys), above_total * sizeof(uint32_t),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check_cuda(cudaMemcpyAsync(host_above_rows.data(), arena.at<int64_t>(o_above_rows), above_total * sizeof(int64_t),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  }
  copy_to_host(host_tied.data(), arena.at<int64_t>(o_tied), tied_total, stream);
  return order_selected(host_above_keys, host_above_rows, std::move(host_tied), sel);
}

// Copies one row to the host and lets the CPU path (same math) describe what is wrong with it.
void describe_bad_row(const UncertaintyParams& p, int64_t row, cudaStream_t stream, RowError& error) {
  const ArrayView& x = p.x;
  const int64_t item = dtype_size(x.dtype);
  const int64_t span = (x.cols() - 1) * x.strides[1] + 1;
  std::vector<char> host(static_cast<size_t>(span * item));
  const char* src = static_cast<const char*>(x.data) + row * x.strides[0] * item;
  if (x.device == DeviceKind::CUDA) copy_to_host(host.data(), src, host.size(), stream);
  else std::memcpy(host.data(), src, host.size());
  UncertaintyParams one = p;
  one.x.data = host.data();
  one.x.shape[0] = 1;
  one.x.strides[0] = span;
  one.x.device = DeviceKind::CPU;
  one.exclude = ArrayView{};
  one.scores_out = ArrayView{};
  one.indices_out = ArrayView{};
  one.k = 0;
  one.threads = 1;
  one.release_pages = false;
  one.on_progress = nullptr;
  uncertainty_cpu(one, error);
  error.row = row;
}

template <class T>
void run_on_device(const UncertaintyParams& p, RowError& error) {
  const ArrayView& x = p.x;
  const int64_t N = x.rows(), C = x.cols();
  const bool on_device = x.device == DeviceKind::CUDA;
  DeviceGuard guard(call_device(x, p.cuda_device));
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(p.cuda_stream);
  const bool want_topk = p.k > 0 && !p.indices_out.empty();
  const bool scores_on_host = !p.scores_out.empty() && p.scores_out.device == DeviceKind::CPU;
  const bool exclude_on_host = !p.exclude.empty() && p.exclude.device == DeviceKind::CPU;
  if (!on_device && ((C > 1 && x.strides[1] != 1) || x.strides[0] < C))
    throw std::invalid_argument("the CUDA path needs host input with contiguous rows; use device='cpu' or pass a contiguous array");

  // Outputs and mask are used in place when they are on the device, else through the arena.
  const int64_t pitch = staged_pitch(C, static_cast<int64_t>(sizeof(T)));
  const int64_t chunk_rows = std::max<int64_t>(1, std::min<int64_t>(p.chunk_bytes, kStagingBytes) / pitch);
  Arena arena(stream, p.device_alloc);
  const size_t o_keys = arena.plan<uint32_t>(want_topk ? static_cast<size_t>(N) : 0);
  const size_t o_scores = arena.plan<float>(scores_on_host ? static_cast<size_t>(N) : 0);
  const size_t o_exclude = arena.plan<uint8_t>(exclude_on_host ? static_cast<size_t>(N) : 0);
  const size_t o_bad = arena.plan<unsigned long long>(1);
  const size_t o_hist = arena.plan<unsigned long long>(kRadixBins);
  const size_t o_chunk = arena.plan<char>(on_device ? 0 : static_cast<size_t>(std::min(N, chunk_rows) * pitch));
  arena.allocate();

  if (exclude_on_host) stage_host_mask(p.exclude, N, arena.at<uint8_t>(o_exclude), stream);
  unsigned long long* first_bad = arena.at<unsigned long long>(o_bad);
  check_cuda(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream), "cudaMemsetAsync");  // kNoBadRow

  RowKernelArgs<T> a{};
  a.kind = p.kind;
  a.from_logits = p.from_logits;
  a.validate = p.validate;
  a.sum_tolerance = p.sum_tolerance;
  a.exclude = exclude_on_host ? arena.at<uint8_t>(o_exclude) : static_cast<const uint8_t*>(p.exclude.data);
  a.exclude_stride = exclude_on_host ? 1 : p.exclude.strides[0];
  a.scores = scores_on_host ? arena.at<float>(o_scores) : static_cast<float*>(p.scores_out.data);
  a.scores_stride = scores_on_host ? 1 : p.scores_out.strides[0];
  a.keys = want_topk ? arena.at<uint32_t>(o_keys) : nullptr;
  a.first_bad = first_bad;

  if (on_device) {
    a.x = device_rows<T>(x.data, N, C, x.strides[0], x.strides[1]);
    a.row_offset = 0;
    launch_rows(a, stream);
  } else {
    // Host input (e.g. a memory-mapped file): chunks through pinned buffers into one device chunk.
    PinnedStaging staging(static_cast<size_t>(chunk_rows * pitch), stream);
    const int64_t item = static_cast<int64_t>(sizeof(T));
    const bool done = staging.copy_rows(
        static_cast<const char*>(x.data), x.strides[0] * item, C * item, N, arena.at<char>(o_chunk), pitch, true,
        [&](int64_t start, int64_t rows, char* device_rows_ptr) {
          a.x = device_rows<T>(device_rows_ptr, rows, C, pitch / item, 1);
          a.row_offset = start;
          launch_rows(a, stream);
          return !p.on_progress || p.on_progress(start + rows, N);
        });
    if (!done) {
      error.cancelled = true;
      check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");  // before buffers are released
      return;
    }
  }

  unsigned long long bad = kNoBadRow;
  copy_to_host(&bad, first_bad, 1, stream);
  if (bad != kNoBadRow) {
    describe_bad_row(p, static_cast<int64_t>(bad), stream, error);
    return;
  }
  if (scores_on_host) {
    check_cuda(cudaMemcpy2DAsync(p.scores_out.data, p.scores_out.strides[0] * sizeof(float), arena.at<float>(o_scores),
                                 sizeof(float), sizeof(float), static_cast<size_t>(N), cudaMemcpyDeviceToHost, stream),
               "cudaMemcpy2DAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
  if (!want_topk) return;

  const std::vector<int64_t> rows =
      select_top_keys(a.keys, N, p.k, arena.at<unsigned long long>(o_hist), stream, p.device_alloc);
  write_indices(rows, p.indices_out, stream);
}

}  // namespace

void uncertainty_cuda(const UncertaintyParams& p, RowError& error) {
  switch (p.x.dtype) {
    case DType::Float16: return run_on_device<half_bits>(p, error);
    case DType::BFloat16: return run_on_device<bf16_bits>(p, error);
    case DType::Float32: return run_on_device<float>(p, error);
    case DType::Float64: return run_on_device<double>(p, error);
    default: throw std::invalid_argument("unsupported dtype for the CUDA path");
  }
}

int cuda_device_count(std::string* why) {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  if (why) *why = count ? "ok" : "no CUDA device";
  return count;
}

int cuda_runtime_version() { return CUDART_VERSION; }

int cuda_driver_version() {
  int version = 0;
  if (cudaDriverGetVersion(&version) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return version;
}

}  // namespace asvp
