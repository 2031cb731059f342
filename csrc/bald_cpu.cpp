// CPU kernel of BALD: one pass over the (T, N, C) samples, T reads of each row's C values, the
// shared math of bald_math.h per element, and a bounded top-k heap per thread.
//
// Memory: two C-element double buffers per thread (the converted sample row and the running sum
// of probabilities), whatever N and T; no float64 copy of the samples and no (T, N, C) log.
// A row's value depends only on its own values (columns are reduced in order, samples in order),
// so duplicated rows score bit-identically and the tie rule (lower row first) holds.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <type_traits>
#include <vector>

#include "bald.h"
#include "bald_math.h"
#include "topk.h"

namespace asvp {
namespace {

struct BaldRow {
  double value = 0.0;
  RowProblem problem = RowProblem::None;
  BaldSample bad_sample{};  // the summary of the sample that failed, for the message
};

template <class T>
void load_sample(const T* row, int64_t C, int64_t col_stride, double* out) {
  for (int64_t c = 0; c < C; ++c) out[c] = to_acc<double>(row[c * col_stride]);
}

// BALD of one row: sample after sample, one pass (probabilities) or two (logits) over its C values.
template <class T>
BaldRow evaluate_bald_row(const T* row0, const BaldParams& p, int64_t C, int64_t col_stride, double* values,
                          double* probability_sums) {
  BaldRow out;
  std::fill(probability_sums, probability_sums + C, 0.0);
  double entropy_sum = 0.0;
  for (int64_t t = 0; t < p.samples; ++t) {
    load_sample(row0 + t * p.sample_stride, C, col_stride, values);
    BaldSample s = bald_sample_identity();
    if (p.from_logits) {
      for (int64_t c = 0; c < C; ++c) bald_push_logit_pass1(s, values[c]);
      if (s.nonfinite == 0.0)
        for (int64_t c = 0; c < C; ++c) values[c] = bald_push_logit_pass2(s, values[c]);
    } else {
      for (int64_t c = 0; c < C; ++c) bald_push_probability(s, values[c]);
    }
    out.problem = check_bald_sample(s, p.from_logits, p.validate, p.sum_tolerance);
    if (out.problem != RowProblem::None) {
      out.bad_sample = s;
      return out;
    }
    entropy_sum += bald_sample_entropy(s, p.from_logits);
    for (int64_t c = 0; c < C; ++c) probability_sums[c] += bald_probability(values[c], s, p.from_logits);
  }
  double entropy_of_mean = 0.0;
  for (int64_t c = 0; c < C; ++c) entropy_of_mean += bald_mean_entropy_term(probability_sums[c], p.samples);
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
    std::vector<double> values(static_cast<size_t>(C)), probability_sums(static_cast<size_t>(C));
    BoundedTopKOf<double>& heap = heaps[static_cast<size_t>(omp_get_thread_num())];
    heap.reserve(p.k);
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t stop = std::min(N, start + chunk_rows);
#pragma omp for schedule(dynamic, grain)
      for (int64_t r = start; r < stop; ++r) {
        if (r > first_bad.load(std::memory_order_relaxed) || excluded(p.exclude, r)) continue;
        const BaldRow res = evaluate_bald_row<T>(base + r * row_stride, p, C, col_stride, values.data(),
                                                 probability_sums.data());
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

  std::vector<CandidateOf<double>> all;
  for (BoundedTopKOf<double>& h : heaps) all.insert(all.end(), h.items().begin(), h.items().end());
  const std::vector<CandidateOf<double>> best = best_k(std::move(all), p.k);
  int64_t* out = static_cast<int64_t*>(p.indices_out.data);
  for (size_t i = 0; i < best.size(); ++i) out[static_cast<int64_t>(i) * p.indices_out.strides[0]] = best[i].index;
}

}  // namespace

void bald_cpu(const BaldParams& p, RowError& error) {
  switch (p.x.dtype) {
    case DType::Float16: return run_bald<half_bits>(p, error);
    case DType::BFloat16: return run_bald<bf16_bits>(p, error);
    case DType::Float32: return run_bald<float>(p, error);
    case DType::Float64: return run_bald<double>(p, error);
    default: break;
  }
}

}  // namespace asvp
