// CPU kernels for uncertainty scoring and top-k selection.
//
// This file is compiled once per instruction-set level (ASVP_ISA_NAMESPACE names the variant);
// cpu_features.cpp picks one at run time. One pass over the input: each row is read from memory
// once (copied to a small thread-local buffer only when it must be converted or gathered) and
// reduced with the shared math of uncertainty_math.h; a bounded heap per thread keeps the best k.
#include <omp.h>
#include <sys/mman.h>
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>
#include <vector>

#include "topk.h"
#include "uncertainty.h"

#ifndef ASVP_ISA_NAMESPACE
#error "ASVP_ISA_NAMESPACE must name the instruction-set variant being compiled"
#endif

namespace asvp {
namespace ASVP_ISA_NAMESPACE {
namespace {

// Partial accumulators per row. Element c always goes to lane c % kLanes and lanes merge in a
// fixed order, so a row's result does not depend on its address or on the thread that read it:
// duplicated rows get bit-identical scores, which the tie rule relies on.
constexpr int kLanes = 16;

template <class A>
struct Lanes {
  A max1[kLanes], max2[kLanes], min[kLanes], sum[kLanes], aux[kLanes], nonfinite[kLanes];

  Lanes() {
    const RowStats<A> id = row_stats_identity<A>();
    for (int j = 0; j < kLanes; ++j) {
      max1[j] = id.max1; max2[j] = id.max2; min[j] = id.min;
      sum[j] = id.sum; aux[j] = id.aux; nonfinite[j] = id.nonfinite;
    }
  }

  // Pairwise tree over the lanes (8+8, 4+4, 2+2, 1+1): each level is one vector operation.
  RowStats<A> merged() {
    for (int width = kLanes / 2; width >= 1; width /= 2) {
      for (int j = 0; j < width; ++j) {
        RowStats<A> a{max1[j], max2[j], min[j], sum[j], aux[j], nonfinite[j]};
        const RowStats<A> b{max1[j + width], max2[j + width], min[j + width], sum[j + width], aux[j + width],
                            nonfinite[j + width]};
        merge_row_stats(a, b);
        max1[j] = a.max1; max2[j] = a.max2; min[j] = a.min;
        sum[j] = a.sum; aux[j] = a.aux; nonfinite[j] = a.nonfinite;
      }
    }
    return RowStats<A>{max1[0], max2[0], min[0], sum[0], aux[0], nonfinite[0]};
  }
};

// The per-element updates below are the SoA spelling of push_probability / push_logit_pass*
// from uncertainty_math.h, kept element-for-element identical so the compiler can vectorise
// across lanes.
template <class A, bool Entropy>
RowStats<A> reduce_probability_row(const A* v, int64_t C) {
  Lanes<A> l;
  int64_t c = 0;
  auto push = [&](int j, A p) {
    top2_push(l.max1[j], l.max2[j], p);
    l.min[j] = min_of(l.min[j], p);
    l.sum[j] += p;
    l.nonfinite[j] += nonfinite_term(p);
    if (Entropy) l.aux[j] += xlogx(p);
  };
  for (; c + kLanes <= C; c += kLanes)
    for (int j = 0; j < kLanes; ++j) push(j, v[c + j]);
  for (int j = 0; c + j < C; ++j) push(j, v[c + j]);
  return l.merged();
}

template <class A>
RowStats<A> reduce_logit_row_pass1(const A* v, int64_t C) {
  Lanes<A> l;
  int64_t c = 0;
  auto push = [&](int j, A z) {
    top2_push(l.max1[j], l.max2[j], z);
    l.nonfinite[j] += nonfinite_term(z);
  };
  for (; c + kLanes <= C; c += kLanes)
    for (int j = 0; j < kLanes; ++j) push(j, v[c + j]);
  for (int j = 0; c + j < C; ++j) push(j, v[c + j]);
  return l.merged();
}

template <class A, bool Entropy>
void reduce_logit_row_pass2(const A* v, int64_t C, RowStats<A>& s) {
  Lanes<A> l;
  const A m = s.max1;
  int64_t c = 0;
  auto push = [&](int j, A z) {
    A e, e_times_gap;
    softmax_terms(z, m, e, e_times_gap);
    l.sum[j] += e;
    if (Entropy) l.aux[j] += e_times_gap;
  };
  for (; c + kLanes <= C; c += kLanes)
    for (int j = 0; j < kLanes; ++j) push(j, v[c + j]);
  for (int j = 0; c + j < C; ++j) push(j, v[c + j]);
  const RowStats<A> t = l.merged();
  s.sum = t.sum;
  s.aux = t.aux;
}

template <class A>
struct RowResult {
  float statistic;
  RowProblem problem;
  RowStats<A> stats;
};

template <class A>
RowResult<A> evaluate_row(const A* v, int64_t C, Kind kind, bool from_logits, bool validate, A sum_tolerance) {
  const bool entropy = kind == Kind::Entropy;
  RowResult<A> r{};
  if (!from_logits) {
    r.stats = entropy ? reduce_probability_row<A, true>(v, C) : reduce_probability_row<A, false>(v, C);
    r.problem = check_probability_row(r.stats, validate, sum_tolerance);
    if (r.problem == RowProblem::None) r.statistic = statistic_from_probabilities(r.stats, kind);
    return r;
  }
  r.stats = reduce_logit_row_pass1(v, C);
  r.problem = check_logit_row(r.stats);
  if (r.problem != RowProblem::None) return r;
  if (entropy) reduce_logit_row_pass2<A, true>(v, C, r.stats);
  else reduce_logit_row_pass2<A, false>(v, C, r.stats);
  r.statistic = statistic_from_logits(r.stats, kind);
  return r;
}

// Returns a pointer to the row as contiguous accumulation-type values: the row itself when it
// already is, else a converted/gathered copy in `buffer` (C elements, stays in L1/L2).
template <class T, class A>
const A* load_row(const T* row, int64_t C, int64_t col_stride, A* buffer) {
  if constexpr (std::is_same<T, A>::value) {
    if (col_stride == 1) return row;
  }
#if defined(__F16C__)
  // The hardware conversion is exact, like half_to_float, but one instruction per 8 values.
  if constexpr (std::is_same<T, half_bits>::value && std::is_same<A, float>::value) {
    if (col_stride == 1) {
      int64_t c = 0;
      for (; c + 8 <= C; c += 8)
        _mm256_storeu_ps(buffer + c, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c))));
      for (; c < C; ++c) buffer[c] = half_to_float(row[c].bits);
      return buffer;
    }
  }
#endif
  if (col_stride == 1) {
    for (int64_t c = 0; c < C; ++c) buffer[c] = to_acc<A>(row[c]);
  } else {
    for (int64_t c = 0; c < C; ++c) buffer[c] = to_acc<A>(row[c * col_stride]);
  }
  return buffer;
}

#if defined(__AVX2__) && defined(__F16C__)
// Signed-integer order of float16 bit patterns equals float order once the magnitude bits of
// negative values are flipped (the map is its own inverse).
inline uint16_t half_order_flip(uint16_t h) { return static_cast<uint16_t>(h ^ ((h & 0x8000u) ? 0x7fffu : 0u)); }

// Float16 logits, first pass: the two largest values found on the 16-bit patterns themselves, 16
// values per instruction, fused with the conversion to float that the second pass reads. Returns
// false for a row holding NaN or Inf. The values found are exact, so every later step is the
// general path's.
bool half_row_top2_and_convert(const half_bits* row, int64_t C, float* out, float* max1, float* max2) {
  const __m256i magnitude_bits = _mm256_set1_epi16(0x7fff);
  __m256i first = _mm256_set1_epi16(INT16_MIN), second = first;
  __m256i largest_magnitude = _mm256_setzero_si256();
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + c));
    const __m256i key = _mm256_xor_si256(h, _mm256_and_si256(_mm256_srai_epi16(h, 15), magnitude_bits));
    second = _mm256_max_epi16(second, _mm256_min_epi16(first, key));
    first = _mm256_max_epi16(first, key);
    largest_magnitude = _mm256_max_epu16(largest_magnitude, _mm256_and_si256(h, magnitude_bits));
    _mm256_storeu_ps(out + c, _mm256_cvtph_ps(_mm256_castsi256_si128(h)));
    _mm256_storeu_ps(out + c + 8, _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)));
  }
  alignas(32) int16_t firsts[16], seconds[16];
  alignas(32) uint16_t magnitudes[16];
  _mm256_store_si256(reinterpret_cast<__m256i*>(firsts), first);
  _mm256_store_si256(reinterpret_cast<__m256i*>(seconds), second);
  _mm256_store_si256(reinterpret_cast<__m256i*>(magnitudes), largest_magnitude);
  int16_t top = INT16_MIN, runner_up = INT16_MIN;
  uint16_t magnitude = 0;
  for (int j = 0; j < 16; ++j) {
    top2_push(top, runner_up, seconds[j]);
    top2_push(top, runner_up, firsts[j]);
    magnitude = std::max(magnitude, magnitudes[j]);
  }
  for (; c < C; ++c) {
    const uint16_t h = row[c].bits;
    top2_push(top, runner_up, static_cast<int16_t>(half_order_flip(h)));
    magnitude = std::max<uint16_t>(magnitude, h & 0x7fffu);
    out[c] = half_to_float(h);
  }
  if (magnitude >= 0x7c00u) return false;  // exponent all ones: Inf or NaN
  *max1 = half_to_float(half_order_flip(static_cast<uint16_t>(top)));
  *max2 = half_to_float(half_order_flip(static_cast<uint16_t>(runner_up)));
  return true;
}

// A contiguous float16 logit row.
RowResult<float> evaluate_half_logit_row(const half_bits* row, int64_t C, float* buffer, Kind kind) {
  RowResult<float> r{};
  r.stats = row_stats_identity<float>();
  if (!half_row_top2_and_convert(row, C, buffer, &r.stats.max1, &r.stats.max2)) {
    r.problem = RowProblem::NonFinite;
    return r;
  }
  r.problem = RowProblem::None;
  if (kind == Kind::Entropy) reduce_logit_row_pass2<float, true>(buffer, C, r.stats);
  else reduce_logit_row_pass2<float, false>(buffer, C, r.stats);
  r.statistic = statistic_from_logits(r.stats, kind);
  return r;
}
#endif

// Dispatches one row to the general path or to a specialised one.
template <class T, class A>
RowResult<A> evaluate_stored_row(const T* row, int64_t C, int64_t col_stride, A* buffer, const UncertaintyParams& p) {
#if defined(__AVX2__) && defined(__F16C__)
  if constexpr (std::is_same<T, half_bits>::value) {
    if (col_stride == 1 && p.from_logits) return evaluate_half_logit_row(row, C, buffer, p.kind);
  }
#endif
  const A* values = load_row<T, A>(row, C, col_stride, buffer);
  return evaluate_row(values, C, p.kind, p.from_logits, p.validate, static_cast<A>(p.sum_tolerance));
}

bool mask_is_set(const ArrayView& mask, int64_t r) {
  return static_cast<const uint8_t*>(mask.data)[r * mask.strides[0]] != 0;
}

// madvise on the whole pages inside [begin, end).
void advise_pages(const void* begin, const void* end, int advice) {
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  uintptr_t lo = (reinterpret_cast<uintptr_t>(begin) + page - 1) & ~(page - 1);
  uintptr_t hi = reinterpret_cast<uintptr_t>(end) & ~(page - 1);
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, advice);
}

template <class T>
void run_uncertainty(const UncertaintyParams& p, RowError& error) {
  using A = typename acc_of<T>::type;
  const ArrayView& x = p.x;
  const int64_t N = x.rows(), C = x.cols();
  const int64_t row_stride = x.strides[0], col_stride = x.ndim == 2 ? x.strides[1] : 1;
  const T* base = static_cast<const T*>(x.data);
  const int threads = p.threads > 0 ? p.threads : omp_get_max_threads();
  const bool want_topk = p.k > 0 && !p.indices_out.empty();
  float* scores = static_cast<float*>(p.scores_out.data);
  const int64_t scores_stride = p.scores_out.empty() ? 0 : p.scores_out.strides[0];

  // Rows per chunk: bounded bytes per chunk, so pages of a memory-mapped file can be released
  // behind the scan and prefetched ahead of it.
  // A row costs its C elements of work and spans |row_stride| elements of address space.
  const int64_t row_bytes = std::max<int64_t>(1, std::max(std::abs(row_stride), C) * static_cast<int64_t>(sizeof(T)));
  const int64_t chunk_rows = std::max<int64_t>(1, p.chunk_bytes / row_bytes);
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(1024, chunk_rows / (int64_t(threads) * 8)));
  const bool advise = x.ndim == 2 && row_stride > 0 && col_stride >= 0;

  std::atomic<int64_t> first_bad{LLONG_MAX};
  bool cancelled = false;  // written by the calling thread between barriers, read by all after
  std::vector<BoundedTopK> heaps(static_cast<size_t>(threads), BoundedTopK(want_topk ? p.k : 0));

#pragma omp parallel num_threads(threads)
  {
    std::vector<A> buffer(static_cast<size_t>(C));
    BoundedTopK& heap = heaps[static_cast<size_t>(omp_get_thread_num())];
    heap.reserve(p.k);
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t stop = std::min(N, start + chunk_rows);
      if (advise && stop < N) {
#pragma omp single nowait
        advise_pages(base + stop * row_stride, base + std::min(N, stop + chunk_rows) * row_stride, MADV_WILLNEED);
      }
#pragma omp for schedule(dynamic, grain)
      for (int64_t r = start; r < stop; ++r) {
        if (r > first_bad.load(std::memory_order_relaxed)) continue;
        if (!p.exclude.empty() && mask_is_set(p.exclude, r)) continue;
        const RowResult<A> res = evaluate_stored_row<T, A>(base + r * row_stride, C, col_stride, buffer.data(), p);
        if (res.problem != RowProblem::None) {
#pragma omp critical(asvp_row_error)
          if (error.row < 0 || r < error.row) {
            error.row = r;
            error.problem = res.problem;
            error.min = static_cast<double>(res.stats.min);
            error.max = static_cast<double>(res.stats.max1);
            error.sum = static_cast<double>(res.stats.sum);
            first_bad.store(r, std::memory_order_relaxed);
          }
          continue;
        }
        if (scores) scores[r * scores_stride] = res.statistic;
        if (want_topk) heap.offer(uncertainty_key(p.kind, res.statistic), r);
      }
      // The implicit barrier above means every thread is done with this chunk.
      if (advise && p.release_pages) {
#pragma omp single nowait
        advise_pages(base + start * row_stride, base + stop * row_stride, MADV_DONTNEED);
      }
      if (p.on_progress) {
        // The calling thread reports (it is the one that can see Ctrl-C); the others wait.
#pragma omp master
        cancelled = !p.on_progress(stop, N);
#pragma omp barrier
        if (cancelled) break;
      }
    }
  }
  error.cancelled = cancelled;
  if (cancelled || error.row >= 0 || !want_topk) return;

  write_best_k(heaps, p.k, p.indices_out);
}

}  // namespace

void uncertainty_cpu_kernel(const UncertaintyParams& p, RowError& error) {
  switch (p.x.dtype) {
    case DType::Float16: return run_uncertainty<half_bits>(p, error);
    case DType::BFloat16: return run_uncertainty<bf16_bits>(p, error);
    case DType::Float32: return run_uncertainty<float>(p, error);
    case DType::Float64: return run_uncertainty<double>(p, error);
    default: break;
  }
}

}  // namespace ASVP_ISA_NAMESPACE
}  // namespace asvp
