// CPU kernel of BALD: one pass over the (T, N, C) samples, T reads of each row's C values, the
// shared math of bald_math.h per element, and a bounded top-k heap per thread.
//
// Compiled once per instruction-set level (ASVP_ISA_NAMESPACE, like the uncertainty kernels).
// The transcendental work (p ln p, or e^(z - max) for logits) runs first as one element-wise
// vector loop over the row's T x C values (polynomials of bald_math.h); the sums then run in
// column order. Memory: three T x C and one C-element double buffers per thread, whatever N; no
// float64 copy of the samples and no (T, N, C) log. A row's value depends only on its own values (columns in order,
// samples in order), so duplicated rows score bit-identically and the tie rule (lower row first)
// holds.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>
#include <vector>

#include "bald.h"
#include "bald_math.h"
#include "topk.h"

#ifndef ASVP_ISA_NAMESPACE
#error "ASVP_ISA_NAMESPACE must name the instruction-set variant being compiled"
#endif

namespace asvp {
namespace ASVP_ISA_NAMESPACE {
namespace {

struct BaldRow {
  double value = 0.0;
  RowProblem problem = RowProblem::None;
  BaldSample bad_sample{};  // the summary of the sample that failed, for the message
};


// A row's T x C values are converted into one buffer, so the element-wise transcendental loops
// run over T x C values at once (with C = 10, a per-sample loop would spend most of its time in
// vector-loop epilogues).
struct RowBuffers {
  RowBuffers(int64_t T, int64_t C)
      : values(static_cast<size_t>(T * C)), terms(static_cast<size_t>(T * C)), gaps(static_cast<size_t>(T * C)),
        probability_sums(static_cast<size_t>(C)), samples(static_cast<size_t>(T)) {}
  std::vector<double> values, terms, gaps, probability_sums;
  std::vector<BaldSample> samples;
};

template <class T>
void load_row(const T* row0, const BaldParams& p, int64_t C, int64_t col_stride, double* out) {
  for (int64_t t = 0; t < p.samples; ++t) {
    const T* row = row0 + t * p.sample_stride;
    double* dst = out + t * C;
    if (col_stride == 1) {
      for (int64_t c = 0; c < C; ++c) dst[c] = to_acc<double>(row[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) dst[c] = to_acc<double>(row[c * col_stride]);
    }
  }
}

// The samples' summaries (first bad sample: its problem); leaves each class's probability (or
// e^(z - max) for logits) in b.terms.
RowProblem summarise_samples(const BaldParams& p, int64_t C, RowBuffers& b, BaldSample& bad) {
  const int64_t n = p.samples * C;
  const double* v = b.values.data();
  double* terms = b.terms.data();
  if (!p.from_logits) {
    for (int64_t i = 0; i < n; ++i) terms[i] = bald_xlogx(v[i]);  // vectorised
    for (int64_t t = 0; t < p.samples; ++t) {
      BaldSample s = bald_sample_identity();
      for (int64_t c = t * C; c < (t + 1) * C; ++c) bald_push_probability_term(s, v[c], terms[c]);
      b.samples[static_cast<size_t>(t)] = s;
    }
    for (int64_t i = 0; i < n; ++i) terms[i] = v[i];
  } else {
    double* gaps = b.gaps.data();
    for (int64_t t = 0; t < p.samples; ++t) {
      BaldSample s = bald_sample_identity();
      for (int64_t c = t * C; c < (t + 1) * C; ++c) bald_push_logit_pass1(s, v[c]);
      b.samples[static_cast<size_t>(t)] = s;
      if (!(s.nonfinite == 0.0)) {
        bad = s;
        return RowProblem::NonFinite;
      }
      for (int64_t c = t * C; c < (t + 1) * C; ++c) gaps[c] = s.max;
    }
    for (int64_t i = 0; i < n; ++i) bald_softmax_terms(v[i], gaps[i], terms[i], gaps[i]);  // vectorised
    for (int64_t t = 0; t < p.samples; ++t) {
      BaldSample& s = b.samples[static_cast<size_t>(t)];
      for (int64_t c = t * C; c < (t + 1) * C; ++c) {
        s.sum += terms[c];
        s.aux += gaps[c];
      }
    }
  }
  for (int64_t t = 0; t < p.samples; ++t) {
    const RowProblem problem = check_bald_sample(b.samples[static_cast<size_t>(t)], p.from_logits, p.validate,
                                                 p.sum_tolerance);
    if (problem != RowProblem::None) {
      bad = b.samples[static_cast<size_t>(t)];
      return problem;
    }
  }
  return RowProblem::None;
}

// BALD of one row: the samples' entropies, then the entropy of the mean.
template <class T>
BaldRow evaluate_bald_row(const T* row0, const BaldParams& p, int64_t C, int64_t col_stride, RowBuffers& b) {
  BaldRow out;
  load_row(row0, p, C, col_stride, b.values.data());
  out.problem = summarise_samples(p, C, b, out.bad_sample);
  if (out.problem != RowProblem::None) return out;
  double* sums = b.probability_sums.data();
  const double* terms = b.terms.data();
  std::fill(sums, sums + C, 0.0);
  double entropy_sum = 0.0;
  for (int64_t t = 0; t < p.samples; ++t) {
    const BaldSample& s = b.samples[static_cast<size_t>(t)];
    entropy_sum += bald_sample_entropy(s, p.from_logits);
    for (int64_t c = 0; c < C; ++c) sums[c] += bald_probability(terms[t * C + c], s, p.from_logits);  // vectorised
  }
  double* mean_terms = b.gaps.data();
  for (int64_t c = 0; c < C; ++c) mean_terms[c] = bald_mean_entropy_term(sums[c], p.samples);  // vectorised
  double entropy_of_mean = 0.0;
  for (int64_t c = 0; c < C; ++c) entropy_of_mean += mean_terms[c];
  out.value = bald_value(entropy_of_mean, entropy_sum, p.samples);
  return out;
}

bool excluded(const ArrayView& mask, int64_t r) {
  return !mask.empty() && static_cast<const uint8_t*>(mask.data)[r * mask.strides[0]] != 0;
}

template <class T>
void run_bald(const BaldParams& p, RowError& error) {
  const ArrayView& x = p.x;
  const int64_t N = x.rows(), C = x.cols();
  const int64_t row_stride = x.strides[0], col_stride = x.ndim == 2 ? x.strides[1] : 1;
  const T* base = static_cast<const T*>(x.data);
  const int threads = p.threads > 0 ? p.threads : omp_get_max_threads();
  const bool want_topk = p.k > 0 && !p.indices_out.empty();
  double* scores = static_cast<double*>(p.scores_out.data);
  const int64_t scores_stride = p.scores_out.empty() ? 0 : p.scores_out.strides[0];

  // A row costs T x C elements; chunks bound the bytes between progress reports.
  const int64_t row_bytes = std::max<int64_t>(1, p.samples * C * static_cast<int64_t>(sizeof(T)));
  const int64_t chunk_rows = std::max<int64_t>(1, p.chunk_bytes / row_bytes);
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(256, chunk_rows / (int64_t(threads) * 8)));

  std::atomic<int64_t> first_bad{LLONG_MAX};
  bool cancelled = false;
  std::vector<BoundedTopKOf<double>> heaps(static_cast<size_t>(threads), BoundedTopKOf<double>(want_topk ? p.k : 0));

#pragma omp parallel num_threads(threads)
  {
    RowBuffers buffers(p.samples, C);
    BoundedTopKOf<double>& heap = heaps[static_cast<size_t>(omp_get_thread_num())];
    heap.reserve(p.k);
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t stop = std::min(N, start + chunk_rows);
#pragma omp for schedule(dynamic, grain)
      for (int64_t r = start; r < stop; ++r) {
        if (r > first_bad.load(std::memory_order_relaxed) || excluded(p.exclude, r)) continue;
        const BaldRow res = evaluate_bald_row<T>(base + r * row_stride, p, C, col_stride, buffers);
        if (res.problem != RowProblem::None) {
#pragma omp critical(asvp_bald_row_error)
          if (error.row < 0 || r < error.row) {
            error.row = r;
            error.problem = res.problem;
            error.min = res.bad_sample.min;
            error.max = res.bad_sample.max;
            error.sum = res.bad_sample.sum;
            first_bad.store(r, std::memory_order_relaxed);
          }
          continue;
        }
        if (scores) scores[r * scores_stride] = res.value;
        if (want_topk) heap.offer(res.value, r);
      }
      if (p.on_progress) {
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

void bald_cpu_kernel(const BaldParams& p, RowError& error) {
  switch (p.x.dtype) {
    case DType::Float16: return run_bald<half_bits>(p, error);
    case DType::BFloat16: return run_bald<bf16_bits>(p, error);
    case DType::Float32: return run_bald<float>(p, error);
    case DType::Float64: return run_bald<double>(p, error);
    default: break;
  }
}

}  // namespace ASVP_ISA_NAMESPACE
}  // namespace asvp
