// CUDA kernel of BALD: one warp per row (grid-stride over rows). For each of the T samples the
// 32 lanes reduce the row's columns (lane l takes columns l, l + 32, ...) with the shared math of
// bald_math.h and merge by butterfly shuffles, so every lane holds the sample's summary; each
// lane then adds the sample's probabilities of its own columns to the warp's running sums (a
// C-element float64 slice of one scratch buffer per resident warp). A final butterfly sums the
// entropy of the mean. The summation order is fixed per row, so duplicated rows score
// bit-identically (the tie rule holds); values differ from the CPU kernel's in the last bits.
//
// Selection: the N float64 values are copied to the host once and ranked there with the same
// bounded heaps as the CPU path (N x 8 bytes cross the bus against T x N x C elements read on the
// device). Input must be on the device (CUDA tensors); host input runs the CPU kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <stdexcept>
#include <vector>

#include "bald.h"
#include "bald_math.h"
#include "cuda_util.cuh"
#include "topk.h"

namespace asvp {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / kWarp;
constexpr int64_t kMaxWarps = 8192;                    // resident warps worth of scratch at most
constexpr int64_t kScratchBytes = int64_t(256) << 20;  // cap on the probability-sum scratch
constexpr unsigned long long kNoBadRow = ULLONG_MAX;
constexpr double kExcluded = -1.0;                     // a value no row can have (BALD >= 0)

template <class T>
struct BaldKernelArgs {
  const T* x;
  int64_t rows, cols, samples, sample_stride, row_stride, col_stride;
  bool from_logits, validate;
  double sum_tolerance;
  const uint8_t* exclude;  // or null
  int64_t exclude_stride;
  double* values;          // (rows,) contiguous scratch: BALD, or kExcluded
  double* scores;          // the caller's (rows,) output on the device, or null
  int64_t scores_stride;
  double* probability_sums;  // (warps, cols)
  unsigned long long* first_bad;  // min over bad rows of row * 4 + problem
};

__device__ __forceinline__ void warp_merge(BaldSample& s) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    BaldSample o;
    o.max = __shfl_xor_sync(0xffffffffu, s.max, offset);
    o.min = __shfl_xor_sync(0xffffffffu, s.min, offset);
    o.sum = __shfl_xor_sync(0xffffffffu, s.sum, offset);
    o.aux = __shfl_xor_sync(0xffffffffu, s.aux, offset);
    o.nonfinite = __shfl_xor_sync(0xffffffffu, s.nonfinite, offset);
    merge_bald_sample(s, o);  // symmetric: every lane ends with the same totals
  }
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The summary of sample t of a row (every lane returns the merged one). For logits, pass 2 runs
// only on finite samples.
template <class T>
__device__ BaldSample sample_summary(const BaldKernelArgs<T>& a, const T* row, int lane) {
  BaldSample s = bald_sample_identity();
  if (a.from_logits) {
    for (int64_t c = lane; c < a.cols; c += kWarp) bald_push_logit_pass1(s, to_acc<double>(row[c * a.col_stride]));
    warp_merge(s);
    if (!(s.nonfinite == 0.0)) return s;
    BaldSample terms = bald_sample_identity();
    terms.max = s.max;
    for (int64_t c = lane; c < a.cols; c += kWarp) bald_push_logit_pass2(terms, to_acc<double>(row[c * a.col_stride]));
    warp_merge(terms);
    s.sum = terms.sum;
    s.aux = terms.aux;
    return s;
  }
  for (int64_t c = lane; c < a.cols; c += kWarp) bald_push_probability(s, to_acc<double>(row[c * a.col_stride]));
  warp_merge(s);
  return s;
}

template <class T>
__global__ void __launch_bounds__(kThreads) bald_rows_kernel(BaldKernelArgs<T> a) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int64_t warp = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  double* sums = a.probability_sums + warp * a.cols;
  for (int64_t r = warp; r < a.rows; r += warps) {
    if (a.exclude && a.exclude[r * a.exclude_stride]) {
      if (lane == 0) a.values[r] = kExcluded;
      continue;
    }
    for (int64_t c = lane; c < a.cols; c += kWarp) sums[c] = 0.0;
    double entropy_sum = 0.0;
    RowProblem problem = RowProblem::None;
    for (int64_t t = 0; t < a.samples; ++t) {
      const T* row = a.x + t * a.sample_stride + r * a.row_stride;
      const BaldSample s = sample_summary(a, row, lane);
      problem = check_bald_sample(s, a.from_logits, a.validate, a.sum_tolerance);
      if (problem != RowProblem::None) break;  // uniform across the warp: every lane holds s
      entropy_sum += bald_sample_entropy(s, a.from_logits);
      for (int64_t c = lane; c < a.cols; c += kWarp) {
        const double v = to_acc<double>(row[c * a.col_stride]);
        double value = v;
        if (a.from_logits) {
          BaldSample scratch = s;  // same e^(z - max) as pass 2 computed
          value = bald_push_logit_pass2(scratch, v);
        }
        sums[c] += bald_probability(value, s, a.from_logits);
      }
    }
    if (problem != RowProblem::None) {
      if (lane == 0) {
        atomicMin(a.first_bad, static_cast<unsigned long long>(r) * 4ull + static_cast<unsigned long long>(problem));
        a.values[r] = kExcluded;
      }
      continue;
    }
    double entropy_of_mean = 0.0;
    for (int64_t c = lane; c < a.cols; c += kWarp) entropy_of_mean += bald_mean_entropy_term(sums[c], a.samples);
    entropy_of_mean = warp_sum(entropy_of_mean);
    if (lane == 0) {
      const double value = bald_value(entropy_of_mean, entropy_sum, a.samples);
      a.values[r] = value;
      if (a.scores) a.scores[r * a.scores_stride] = value;
    }
  }
}

template <class T>
void run_on_device(const BaldParams& p, RowError& error) {
  const ArrayView& x = p.x;
  if (x.device != DeviceKind::CUDA) throw std::invalid_argument("the CUDA BALD kernel needs x on a CUDA device");
  const int64_t N = x.rows(), C = x.cols();
  DeviceGuard guard(x.device_id);
  cudaStream_t stream = reinterpret_cast<cudaStream_t>(p.cuda_stream);
  const bool exclude_on_host = !p.exclude.empty() && p.exclude.device == DeviceKind::CPU;

  const int64_t by_bytes = std::max<int64_t>(1, kScratchBytes / (C * static_cast<int64_t>(sizeof(double))));
  const int64_t warps = std::max<int64_t>(1, std::min({kMaxWarps, by_bytes, N}));
  const int blocks = static_cast<int>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const int64_t warps_launched = static_cast<int64_t>(blocks) * kWarpsPerBlock;

  Arena arena(stream, p.device_alloc);
  const size_t o_values = arena.plan<double>(static_cast<size_t>(std::max<int64_t>(N, 1)));
  const size_t o_sums = arena.plan<double>(static_cast<size_t>(warps_launched * C));
  const size_t o_exclude = arena.plan<uint8_t>(exclude_on_host ? static_cast<size_t>(N) : 0);
  const size_t o_bad = arena.plan<unsigned long long>(1);
  arena.allocate();

  if (exclude_on_host) stage_host_mask(p.exclude, N, arena.at<uint8_t>(o_exclude), stream);
  unsigned long long* first_bad = arena.at<unsigned long long>(o_bad);
  check_cuda(cudaMemsetAsync(first_bad, 0xff, sizeof(unsigned long long), stream), "cudaMemsetAsync");

  BaldKernelArgs<T> a{};
  a.x = static_cast<const T*>(x.data);
  a.rows = N;
  a.cols = C;
  a.samples = p.samples;
  a.sample_stride = p.sample_stride;
  a.row_stride = x.strides[0];
  a.col_stride = x.ndim == 2 ? x.strides[1] : 1;
  a.from_logits = p.from_logits;
  a.validate = p.validate;
  a.sum_tolerance = p.sum_tolerance;
  a.exclude = exclude_on_host ? arena.at<uint8_t>(o_exclude) : static_cast<const uint8_t*>(p.exclude.data);
  a.exclude_stride = exclude_on_host ? 1 : p.exclude.strides[0];
  a.values = arena.at<double>(o_values);
  const bool scores_on_device = !p.scores_out.empty() && p.scores_out.device == DeviceKind::CUDA;
  a.scores = scores_on_device ? static_cast<double*>(p.scores_out.data) : nullptr;
  a.scores_stride = scores_on_device ? p.scores_out.strides[0] : 0;
  a.probability_sums = arena.at<double>(o_sums);
  a.first_bad = first_bad;
  if (N > 0) {
    bald_rows_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
    check_cuda(cudaGetLastError(), "bald_rows_kernel launch");
  }

  unsigned long long bad = kNoBadRow;
  copy_to_host(&bad, first_bad, 1, stream);
  if (bad != kNoBadRow) {
    error.row = static_cast<int64_t>(bad / 4);
    error.problem = static_cast<RowProblem>(bad % 4);
    return;
  }
  std::vector<double> values(static_cast<size_t>(N));
  if (N > 0) copy_to_host(values.data(), a.values, values.size(), stream);
  if (p.on_progress && !p.on_progress(N, N)) {
    error.cancelled = true;
    return;
  }
  if (!p.scores_out.empty() && !scores_on_device) {  // excluded rows keep what the output held
    double* dst = static_cast<double*>(p.scores_out.data);
    for (int64_t i = 0; i < N; ++i)
      if (values[static_cast<size_t>(i)] != kExcluded) dst[i * p.scores_out.strides[0]] = values[static_cast<size_t>(i)];
  }
  if (p.k <= 0 || p.indices_out.empty()) return;

  BoundedTopKOf<double> heap(p.k);
  heap.reserve(p.k);
  for (int64_t i = 0; i < N; ++i)
    if (values[static_cast<size_t>(i)] != kExcluded) heap.offer(values[static_cast<size_t>(i)], i);
  const std::vector<CandidateOf<double>> best = best_k(std::move(heap.items()), p.k);
  std::vector<int64_t> rows(best.size());
  for (size_t i = 0; i < best.size(); ++i) rows[i] = best[i].index;
  write_indices(rows, p.indices_out, stream);
}

}  // namespace

void bald_cuda(const BaldParams& p, RowError& error) {
  switch (p.x.dtype) {
    case DType::Float16: return run_on_device<half_bits>(p, error);
    case DType::BFloat16: return run_on_device<bf16_bits>(p, error);
    case DType::Float32: return run_on_device<float>(p, error);
    case DType::Float64: return run_on_device<double>(p, error);
    default: throw std::invalid_argument("unsupported dtype for the CUDA path");
  }
}

}  // namespace asvp
