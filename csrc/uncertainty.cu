// CUDA kernels for uncertainty scoring and top-k selection.
//
// One warp per row: each lane reduces a strided subset of the row's columns with the shared math
// of uncertainty_math.h, the lanes merge by butterfly shuffles, and lane 0 writes the statistic
// and a 32-bit order-preserving ranking key. Selection is a radix select over the keys (four
// 8-bit digit histograms find the k-th key exactly), a compaction of the rows above it and of
// the tied rows, and a final ordering of just those k candidates on the host. Per call: four
// 2 KB histogram reads and one candidate copy cross to the host, never anything per row.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_runtime_info.h"
#include "cuda_util.cuh"
#include "radix_select.h"
#include "uncertainty.h"

namespace asvp {
namespace {

constexpr int kWarp = 32;
constexpr int kRowThreads = 256;
constexpr unsigned long long kNoBadRow = ULLONG_MAX;

template <class T>
struct RowKernelArgs {
  const T* x;               // rows [row_offset, row_offset + rows) of the input
  int64_t rows, cols, row_stride, col_stride, row_offset;
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

template <class A>
__device__ __forceinline__ void warp_merge(RowStats<A>& s) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    RowStats<A> o;
    o.max1 = __shfl_xor_sync(0xffffffffu, s.max1, offset);
    o.max2 = __shfl_xor_sync(0xffffffffu, s.max2, offset);
    o.min = __shfl_xor_sync(0xffffffffu, s.min, offset);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    o.aux = __shfl_xor_sync(0xffffffffu, s.aux, offset);
    o.nonfinite = __shfl_xor_sync(0xffffffffu, s.nonfinite, offset);
    merge_row_stats(s, o);  // symmetric, so every lane ends with the same totals
  }
}

template <class T>
__global__ void __launch_bounds__(kRowThreads) row_statistics_kernel(RowKernelArgs<T> a) {
  using A = typename acc_of<T>::type;
  const int lane = threadIdx.x % kWarp;
  const int64_t first_warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) / kWarp;
  const bool entropy = a.kind == Kind::Entropy;
  for (int64_t r = first_warp; r < a.rows; r += warps) {
    const int64_t g = a.row_offset + r;
    if (a.exclude && a.exclude[g * a.exclude_stride]) {
      if (lane == 0 && a.keys) a.keys[g] = 0;
      continue;
    }
    const T* row = a.x + r * a.row_stride;
    const int64_t col_stride = a.col_stride;
    const auto load = [row, col_stride](int64_t c) { return to_acc<A>(row[c * col_stride]); };
    RowStats<A> s = lane_pass1<A>(load, a.cols, lane, kWarp, a.from_logits, entropy);
    warp_merge(s);
    const RowProblem problem = a.from_logits ? check_logit_row(s) : check_probability_row(s, a.validate, static_cast<A>(a.sum_tolerance));
    if (problem != RowProblem::None) {
      if (lane == 0) {
        atomicMin(a.first_bad, static_cast<unsigned long long>(g));
        if (a.keys) a.keys[g] = 0;
      }
      continue;
    }
    float statistic;
    if (a.from_logits) {
      RowStats<A> t = lane_pass2<A>(load, a.cols, lane, kWarp, s.max1, entropy);
      warp_merge(t);
      s.sum = t.sum;
      s.aux = t.aux;
      statistic = statistic_from_logits(s, a.kind);
    } else {
      statistic = statistic_from_probabilities(s, a.kind);
    }
    if (lane == 0) {
      if (a.scores) a.scores[g * a.scores_stride] = statistic;
      if (a.keys) a.keys[g] = orderable_bits(uncertainty_key(a.kind, statistic));
    }
  }
}

// Histogram of one 8-bit digit of the keys whose higher digits equal `prefix` (key 0 = not
// selectable, never counted).
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

// Rows whose key is above the threshold, and rows tied with it.
__global__ void gather_candidates_kernel(const uint32_t* keys, int64_t n, uint32_t threshold, uint32_t* above_keys,
                                         int64_t* above_rows, unsigned long long* above_count, int64_t* tied_rows,
                                         unsigned long long* tied_count, unsigned long long tied_capacity) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t u = keys[i];
    if (u > threshold) {
      const unsigned long long slot = atomicAdd(above_count, 1ull);
      above_keys[slot] = u;
      above_rows[slot] = i;
    } else if (u == threshold) {
      const unsigned long long slot = atomicAdd(tied_count, 1ull);
      if (slot < tied_capacity) tied_rows[slot] = i;
    }
  }
}


// Finds the k largest keys (ties to the lower row) and returns their rows, best first.
std::vector<int64_t> select_top_keys(const uint32_t* keys, int64_t n, int64_t k, cudaStream_t stream) {
  DeviceBuffer<unsigned long long> histogram(kRadixBins);
  std::vector<unsigned long long> host_hist(kRadixBins);
  RadixSelect sel(k);
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    check_cuda(cudaMemsetAsync(histogram.get(), 0, kRadixBins * sizeof(unsigned long long), stream), "cudaMemsetAsync");
    digit_histogram_kernel<<<grid_for(n, 256), 256, 0, stream>>>(keys, n, sel.prefix, sel.mask, shift, histogram.get());
    check_cuda(cudaGetLastError(), "digit_histogram_kernel");
    check_cuda(cudaMemcpyAsync(host_hist.data(), histogram.get(), kRadixBins * sizeof(unsigned long long),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    sel.step(host_hist.data(), shift);
  }
  const unsigned long long above_total = static_cast<unsigned long long>(k) - sel.needed;
  const unsigned long long tied_total = sel.tied;

  DeviceBuffer<uint32_t> above_keys(std::max<unsigned long long>(above_total, 1));
  DeviceBuffer<int64_t> above_rows(std::max<unsigned long long>(above_total, 1));
  DeviceBuffer<int64_t> tied_rows(std::max<unsigned long long>(tied_total, 1));
  DeviceBuffer<unsigned long long> counts(2);
  check_cuda(cudaMemsetAsync(counts.get(), 0, 2 * sizeof(unsigned long long), stream), "cudaMemsetAsync");
  gather_candidates_kernel<<<grid_for(n, 256), 256, 0, stream>>>(keys, n, sel.threshold(), above_keys.get(),
                                                                  above_rows.get(), counts.get(), tied_rows.get(),
                                                                  counts.get() + 1, tied_total);
  check_cuda(cudaGetLastError(), "gather_candidates_kernel");
  std::vector<uint32_t> host_above_keys(above_total);
  std::vector<int64_t> host_above_rows(above_total), host_tied(tied_total);
  if (above_total) {
    check_cuda(cudaMemcpyAsync(host_above_keys.data(), above_keys.get(), above_total * sizeof(uint32_t),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
    check_cuda(cudaMemcpyAsync(host_above_rows.data(), above_rows.get(), above_total * sizeof(int64_t),
                               cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  }
  if (tied_total)
    check_cuda(cudaMemcpyAsync(host_tied.data(), tied_rows.get(), tied_total * sizeof(int64_t), cudaMemcpyDeviceToHost,
                               stream), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  return order_selected(host_above_keys, host_above_rows, std::move(host_tied), sel);
}

// Copies one row to the host and lets the CPU path (same math) describe what is wrong with it.
void describe_bad_row(const UncertaintyParams& p, int64_t row, RowError& error) {
  const ArrayView& x = p.x;
  const int64_t item = dtype_size(x.dtype);
  const int64_t span = (x.cols() - 1) * x.strides[1] + 1;
  std::vector<char> host(static_cast<size_t>(span * item));
  const char* src = static_cast<const char*>(x.data) + row * x.strides[0] * item;
  check_cuda(cudaMemcpy(host.data(), src, host.size(), x.device == DeviceKind::CUDA ? cudaMemcpyDeviceToHost
                                                                                    : cudaMemcpyHostToHost),
             "cudaMemcpy");
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
  DeviceGuard guard(on_device ? x.device_id : 0);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(p.cuda_stream);
  const bool want_topk = p.k > 0 && !p.indices_out.empty();

  // Outputs and mask must be reachable by the kernels: use them in place when they are on the
  // device, else go through device buffers.
  DeviceBuffer<uint32_t> keys(want_topk ? static_cast<size_t>(N) : 0);
  const bool scores_on_host = !p.scores_out.empty() && p.scores_out.device == DeviceKind::CPU;
  DeviceBuffer<float> scores_staging(scores_on_host ? static_cast<size_t>(N) : 0);
  DeviceBuffer<uint8_t> exclude_staging(!p.exclude.empty() && p.exclude.device == DeviceKind::CPU ? static_cast<size_t>(N) : 0);
  if (exclude_staging.size()) {
    std::vector<uint8_t> mask(static_cast<size_t>(N));
    const uint8_t* src = static_cast<const uint8_t*>(p.exclude.data);
    for (int64_t i = 0; i < N; ++i) mask[static_cast<size_t>(i)] = src[i * p.exclude.strides[0]];
    check_cuda(cudaMemcpy(exclude_staging.get(), mask.data(), mask.size(), cudaMemcpyHostToDevice), "cudaMemcpy");
  }
  DeviceBuffer<unsigned long long> first_bad(1);
  const unsigned long long none = kNoBadRow;
  check_cuda(cudaMemcpyAsync(first_bad.get(), &none, sizeof none, cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");

  RowKernelArgs<T> a{};
  a.cols = C;
  a.kind = p.kind;
  a.from_logits = p.from_logits;
  a.validate = p.validate;
  a.sum_tolerance = p.sum_tolerance;
  a.exclude = exclude_staging.size() ? exclude_staging.get() : static_cast<const uint8_t*>(p.exclude.data);
  a.exclude_stride = exclude_staging.size() ? 1 : p.exclude.strides[0];
  a.scores = scores_on_host ? scores_staging.get() : static_cast<float*>(p.scores_out.data);
  a.scores_stride = scores_on_host ? 1 : p.scores_out.strides[0];
  a.keys = want_topk ? keys.get() : nullptr;
  a.first_bad = first_bad.get();

  const int rows_per_block = kRowThreads / kWarp;
  if (on_device) {
    a.x = static_cast<const T*>(x.data);
    a.rows = N;
    a.row_stride = x.strides[0];
    a.col_stride = x.strides[1];
    a.row_offset = 0;
    row_statistics_kernel<T><<<grid_for(N, rows_per_block), kRowThreads, 0, stream>>>(a);
    check_cuda(cudaGetLastError(), "row_statistics_kernel");
  } else {
    // Host input (e.g. a memory-mapped file): stream row chunks through a device staging buffer.
    if ((C > 1 && x.strides[1] != 1) || x.strides[0] < C)
      throw std::invalid_argument("the CUDA path needs host input with contiguous rows; use device='cpu' or pass a contiguous array");
    const int64_t row_bytes = C * static_cast<int64_t>(sizeof(T));
    const int64_t chunk_rows = std::max<int64_t>(1, p.chunk_bytes / row_bytes);
    DeviceBuffer<T> staging(static_cast<size_t>(std::min(N, chunk_rows) * C));
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, N - start);
      check_cuda(cudaMemcpy2DAsync(staging.get(), row_bytes, static_cast<const T*>(x.data) + start * x.strides[0],
                                   x.strides[0] * sizeof(T), row_bytes, rows, cudaMemcpyHostToDevice, stream),
                 "cudaMemcpy2DAsync");
      a.x = staging.get();
      a.rows = rows;
      a.row_stride = C;
      a.col_stride = 1;
      a.row_offset = start;
      row_statistics_kernel<T><<<grid_for(rows, rows_per_block), kRowThreads, 0, stream>>>(a);
      check_cuda(cudaGetLastError(), "row_statistics_kernel");
      if (p.on_progress && !p.on_progress(start + rows, N)) {
        error.cancelled = true;
        check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");  // before buffers are freed
        return;
      }
    }
  }

  unsigned long long bad = kNoBadRow;
  check_cuda(cudaMemcpyAsync(&bad, first_bad.get(), sizeof bad, cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  if (bad != kNoBadRow) {
    describe_bad_row(p, static_cast<int64_t>(bad), error);
    return;
  }
  if (scores_on_host)
    check_cuda(cudaMemcpy2D(p.scores_out.data, p.scores_out.strides[0] * sizeof(float), scores_staging.get(),
                            sizeof(float), sizeof(float), static_cast<size_t>(N), cudaMemcpyDeviceToHost),
               "cudaMemcpy2D");
  if (!want_topk) return;

  const std::vector<int64_t> rows = select_top_keys(keys.get(), N, p.k, stream);
  int64_t* out = static_cast<int64_t*>(p.indices_out.data);
  const int64_t out_stride = p.indices_out.strides[0];
  if (p.indices_out.device == DeviceKind::CPU) {
    for (size_t i = 0; i < rows.size(); ++i) out[static_cast<int64_t>(i) * out_stride] = rows[i];
  } else {
    check_cuda(cudaMemcpy2DAsync(out, out_stride * sizeof(int64_t), rows.data(), sizeof(int64_t), sizeof(int64_t),
                                 rows.size(), cudaMemcpyHostToDevice, stream), "cudaMemcpy2DAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
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

}  // namespace asvp
