// CPU engine of the diversity methods: k-center greedy, k-means++ D² seeding and BADGE.
//
// This file is compiled once per instruction-set level (ASVP_ISA_NAMESPACE names the variant);
// cpu_features.cpp picks one at run time. Memory beyond the input is O(N): per row the squared
// distance to its nearest centre and which centre that is, plus per-block aggregates. Each pick
// is one parallel pass that folds the new centre into every row the triangle inequality cannot
// rule out (diversity_math.h), then picks the next row from the block aggregates: the farthest
// row (k-center) or a D² draw (k-means++, BADGE) that walks cached block sums, never an O(N)
// table rebuilt per pick.
#include <omp.h>
#if defined(__F16C__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "diversity.h"
#include "uncertainty_math.h"

#ifndef ASVP_ISA_NAMESPACE
#error "ASVP_ISA_NAMESPACE must name the instruction-set variant being compiled"
#endif

namespace asvp {
namespace ASVP_ISA_NAMESPACE {
namespace {

// ---------------------------------------------------------------------------------------------
// Row arithmetic in float32. Element j always goes to lane j % kLanes and the lanes merge in a
// fixed tree, so a distance does not depend on which thread computed it or on the row's address.
constexpr int kLanes = 16;

float merge_lanes(float* acc) {
  for (int width = kLanes / 2; width >= 1; width /= 2)
    for (int j = 0; j < width; ++j) acc[j] += acc[j + width];
  return acc[0];
}

float sq_distance(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float t = a[j + l] - b[j + l];
      acc[l] += t * t;
    }
  for (int l = 0; j + l < n; ++l) {
    const float t = a[j + l] - b[j + l];
    acc[l] += t * t;
  }
  return merge_lanes(acc);
}

// Two interleaved accumulator sets: long rows (BADGE's C + d terms) keep two FMA chains in
// flight instead of waiting on one.
float dot(const float* a, const float* b, int64_t n) {
  float acc[kLanes] = {}, acc2[kLanes] = {};
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes)
    for (int l = 0; l < kLanes; ++l) {
      acc[l] += a[j + l] * b[j + l];
      acc2[l] += a[j + kLanes + l] * b[j + kLanes + l];
    }
  for (int l = 0; l < kLanes; ++l) acc[l] += acc2[l];
  for (int l = 0; j + l < n; ++l) acc[l % kLanes] += a[j + l] * b[j + l];
  return merge_lanes(acc);
}

// sq_distance for float16 rows, converted in registers (no buffer round trip), 16 values per
// step in two accumulators. Used for every float16 row, so distances stay consistent. The
// AVX-512 variant uses it too: 512-bit conversions were no faster on the machine we measure on.
#if defined(__F16C__) && defined(__FMA__) && defined(__AVX2__)
inline float horizontal_sum(__m256 acc) {
  __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_movehdup_ps(v));
  return _mm_cvtss_f32(v);
}

float sq_distance_half(const half_bits* row, const float* c, int64_t n) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256 a = _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j))),
                                   _mm256_loadu_ps(c + j));
    const __m256 b = _mm256_sub_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j + 8))),
                                   _mm256_loadu_ps(c + j + 8));
    acc0 = _mm256_fmadd_ps(a, a, acc0);
    acc1 = _mm256_fmadd_ps(b, b, acc1);
  }
  float tail = 0.0f;
  for (; j < n; ++j) {
    const float t = half_to_float(h[j]) - c[j];
    tail += t * t;
  }
  return horizontal_sum(_mm256_add_ps(acc0, acc1)) + tail;
}

// dot for float16 rows, converted in registers like sq_distance_half.
float dot_half(const half_bits* row, const float* c, int64_t n) {
  const uint16_t* h = reinterpret_cast<const uint16_t*>(row);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j))),
                           _mm256_loadu_ps(c + j), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j + 8))),
                           _mm256_loadu_ps(c + j + 8), acc1);
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += half_to_float(h[j]) * c[j];
  return horizontal_sum(_mm256_add_ps(acc0, acc1)) + tail;
}
#define ASVP_HAVE_FUSED_HALF 1
#endif

// True when every value is finite (x - x is 0 for finite x, NaN for NaN and +-Inf).
bool all_finite(const float* v, int64_t n) {
  float acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += v[j + l] - v[j + l];
  for (int l = 0; j + l < n; ++l) acc[l] += v[j + l] - v[j + l];
  return merge_lanes(acc) == 0.0f;
}

// One stored row as float32: the row itself when it already is contiguous float32, otherwise a
// converted copy in `buffer` (n floats, stays in L1/L2).
template <class T>
const float* row_as_float(const ArrayView& a, int64_t row, float* buffer) {
  const int64_t n = a.shape[1];
  const int64_t stride = a.strides[1];
  const T* src = static_cast<const T*>(a.data) + row * a.strides[0];
  if constexpr (std::is_same<T, float>::value) {
    if (stride == 1) return src;
  }
  int64_t j = 0;
#if defined(__F16C__)
  if constexpr (std::is_same<T, half_bits>::value) {
    if (stride == 1)
      for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(buffer + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
#endif
  if (stride == 1) {
    for (; j < n; ++j) buffer[j] = to_acc<float>(src[j]);
  } else {
    for (; j < n; ++j) buffer[j] = to_acc<float>(src[j * stride]);
  }
  return buffer;
}

// Asks for a stored row's cache lines ahead of use.
inline void prefetch_row(const ArrayView& a, int64_t row) {
  const char* p = static_cast<const char*>(a.data) + row * a.strides[0] * dtype_size(a.dtype);
  const int64_t bytes = (a.strides[1] == 1 ? a.shape[1] : 1) * dtype_size(a.dtype);
  for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(p + off);
}

// centre . row for a stored row, reading float16 rows through the fused conversion.
template <class T>
float row_dot(const ArrayView& a, int64_t row, const float* centre, float* scratch) {
#if defined(ASVP_HAVE_FUSED_HALF)
  if constexpr (std::is_same<T, half_bits>::value) {
    if (a.strides[1] == 1)
      return dot_half(static_cast<const half_bits*>(a.data) + row * a.strides[0], centre, a.shape[1]);
  }
#endif
  return dot(centre, row_as_float<T>(a, row, scratch), a.shape[1]);
}

// ---------------------------------------------------------------------------------------------
// Metrics. A centre is held "dense" (float32, prepared once per pick); distance(centre, row)
// reads one row. distance(dense(i), j) == distance(dense(j), i) bit for bit, so centre-to-centre
// gaps (for the pruning test) and row-to-centre distances are computed consistently.

// Squared Euclidean distance between feature rows.
template <class T>
class Euclidean {
 public:
  explicit Euclidean(const ArrayView& features) : x_(features), d_(features.shape[1]) {}

  int64_t dense_size() const { return d_; }
  int64_t scratch_size() const { return d_; }
  float prune_slack() const { return 0.0f; }  // direct sums: the error is relative (see kPruneFactor)
  void prefetch(int64_t row) const { prefetch_row(x_, row); }

  void load(int64_t row, float* dense, float* scratch) const {
    const float* v = row_as_float<T>(x_, row, scratch);
    std::copy(v, v + d_, dense);
  }

  float distance(const float* centre, int64_t row, float* scratch) const {
#if defined(ASVP_HAVE_FUSED_HALF)
    if constexpr (std::is_same<T, half_bits>::value) {
      if (x_.strides[1] == 1)
        return sq_distance_half(static_cast<const half_bits*>(x_.data) + row * x_.strides[0], centre, d_);
    }
#endif
    return sq_distance(centre, row_as_float<T>(x_, row, scratch), d_);
  }

  bool row_finite(int64_t row, float* scratch) const { return all_finite(row_as_float<T>(x_, row, scratch), d_); }

  void block_distances(const float* centre, int64_t begin, const int32_t* rows, int count, float* out,
                       float* scratch) const {
    for (int j = 0; j < count; ++j) out[j] = distance(centre, begin + rows[j], scratch);
  }

 private:
  ArrayView x_;
  int64_t d_;
};

// BADGE: g = q (x) h with q = p - onehot(argmax p), through the factorised distance. Per row it
// keeps the predicted class, |q|^2, |h|^2 and (for logits) the log partition sum; q is rebuilt
// from the stored row when needed, so nothing of size N x C or N x C*d is ever held.
template <class TS, class TF>
class Badge {
 public:
  Badge(const ArrayView& scores, bool from_logits, bool validate, double sum_tolerance, const ArrayView& features)
      : s_(scores), h_(features), logits_(from_logits), validate_(validate), sum_tolerance_(sum_tolerance),
        C_(scores.shape[1]), d_(features.shape[1]) {
    const size_t n = static_cast<size_t>(scores.shape[0]);
    predicted_.assign(n, 0);
    q_norm_.assign(n, 0.0f);
    h_norm_.assign(n, 0.0f);
    log_partition_.assign(from_logits ? n : 0, 0.0f);
  }

  // Layout of a dense centre: q (C), h (d), |q|^2, |h|^2.
  int64_t dense_size() const { return C_ + d_ + 2; }
  int64_t scratch_size() const { return C_ + d_; }
  float prune_slack() const { return slack_; }
  void prefetch(int64_t row) const {
    prefetch_row(s_, row);
    prefetch_row(h_, row);
  }
  void set_largest_embedding(double sq_norm) { slack_ = badge_prune_slack(C_, d_, sq_norm); }

  // Fills the per-row constants; returns the row's problem (0 none, 1 non-finite scores,
  // 2 non-finite features, 3 probabilities outside [0, 1], 4 probabilities not summing to 1).
  int prepare_row(int64_t row, float* scratch) {
    const float* p = row_as_float<TS>(s_, row, scratch);
    if (!all_finite(p, C_)) return 1;
    int64_t top = 0;
    for (int64_t j = 1; j < C_; ++j)
      if (p[j] > p[top]) top = j;  // first maximum: ties go to the lower class, like numpy.argmax
    const size_t i = static_cast<size_t>(row);
    predicted_[i] = static_cast<int32_t>(top);
    if (logits_) {
      double sum = 0.0;
      for (int64_t j = 0; j < C_; ++j) sum += exp_approx(p[j] - p[top]);
      log_partition_[i] = static_cast<float>(p[top] + std::log(sum));
    } else if (validate_) {
      // In lanes, like the distances: a serial double sum would cost ~4 cycles per value.
      float lo[kLanes], hi[kLanes], sum[kLanes] = {};
      for (int l = 0; l < kLanes; ++l) lo[l] = hi[l] = p[0];
      const auto push = [&](int l, float v) {
        lo[l] = std::min(lo[l], v);
        hi[l] = std::max(hi[l], v);
        sum[l] += v;
      };
      int64_t j = 0;
      for (; j + kLanes <= C_; j += kLanes)
        for (int l = 0; l < kLanes; ++l) push(l, p[j + l]);
      for (int l = 0; j + l < C_; ++l) push(l, p[j + l]);
      const float low = *std::min_element(lo, lo + kLanes), high = *std::max_element(hi, hi + kLanes);
      if (low < 0.0f || high > 1.0f) return 3;
      if (std::fabs(static_cast<double>(merge_lanes(sum)) - 1.0) > sum_tolerance_) return 4;
    }
    const float* q = build_q(row, scratch);
    q_norm_[i] = dot(q, q, C_);
    const float* h = row_as_float<TF>(h_, row, scratch + C_);
    if (!all_finite(h, d_)) return 2;
    h_norm_[i] = dot(h, h, d_);
    return 0;
  }

  // Every candidate row was checked by prepare_row before the first pick.
  bool row_finite(int64_t, float*) const { return true; }

  double embedding_sq_norm(int64_t row) const {
    const size_t i = static_cast<size_t>(row);
    return static_cast<double>(q_norm_[i]) * h_norm_[i];
  }

  void load(int64_t row, float* dense, float* scratch) const {
    const float* q = build_q(row, scratch);
    std::copy(q, q + C_, dense);
    const float* h = row_as_float<TF>(h_, row, scratch + C_);
    std::copy(h, h + d_, dense + C_);
    dense[C_ + d_] = q_norm_[static_cast<size_t>(row)];
    dense[C_ + d_ + 1] = h_norm_[static_cast<size_t>(row)];
  }

  float distance(const float* centre, int64_t row, float* scratch) const {
    return combine(centre, row, q_dot(centre, row, scratch), row_dot<TF>(h_, row, centre + C_, scratch + C_));
  }

  // The distances of a block's rows, bit-identical to distance(): first every row's q . c,
  // then every row's h . c, so each pass reads one input stream at a time.
  void block_distances(const float* centre, int64_t begin, const int32_t* rows, int count, float* out,
                       float* scratch) const {
    for (int j = 0; j < count; ++j) out[j] = q_dot(centre, begin + rows[j], scratch);
    for (int j = 0; j < count; ++j) {
      const int64_t row = begin + rows[j];
      out[j] = combine(centre, row, out[j], row_dot<TF>(h_, row, centre + C_, scratch + C_));
    }
  }

 private:
  // q . c: for probabilities straight from the stored row, q = p - onehot(y) giving
  // p . c - c[y] (no copy of the row); for logits through the rebuilt q.
  float q_dot(const float* centre, int64_t row, float* scratch) const {
    if (logits_) return dot(centre, build_q(row, scratch), C_);
    return row_dot<TS>(s_, row, centre, scratch) - centre[predicted_[static_cast<size_t>(row)]];
  }

  float combine(const float* centre, int64_t row, float q, float h) const {
    const size_t i = static_cast<size_t>(row);
    return badge_sq_distance(centre[C_ + d_], centre[C_ + d_ + 1], q_norm_[i], h_norm_[i], q, h);
  }

  // q = p - onehot(predicted) in `scratch` (C floats). For logits p = exp(z - log Z) and the
  // predicted class's entry is -(sum of the other probabilities): equal to p - 1 but without
  // the cancellation when p is close to 1.
  const float* build_q(int64_t row, float* scratch) const {
    const size_t i = static_cast<size_t>(row);
    const int64_t y = predicted_[i];
    const float* v = row_as_float<TS>(s_, row, scratch);
    if (v != scratch) std::copy(v, v + C_, scratch);
    if (logits_) {
      const float shift = log_partition_[i];
      float others[kLanes] = {};
      int64_t j = 0;
      auto step = [&](int64_t c, int l) {
        const float pc = exp_approx(scratch[c] - shift);
        scratch[c] = pc;
        others[l] += c == y ? 0.0f : pc;
      };
      for (; j + kLanes <= C_; j += kLanes)
        for (int l = 0; l < kLanes; ++l) step(j + l, l);
      for (int l = 0; j + l < C_; ++l) step(j + l, l);
      scratch[y] = -merge_lanes(others);
    } else {
      scratch[y] -= 1.0f;
    }
    return scratch;
  }

  ArrayView s_, h_;
  bool logits_, validate_;
  double sum_tolerance_;
  float slack_ = 0.0f;
  int64_t C_, d_;
  std::vector<int32_t> predicted_;
  std::vector<float> q_norm_, h_norm_, log_partition_;
};

// ---------------------------------------------------------------------------------------------
// The engine shared by the three methods.

struct BlockAggregates {
  std::vector<uint64_t> farthest;  // k-center: max farthest_key in the block
  std::vector<double> weight;      // D²: the block's weight (block_weight_of, diversity_math.h)
  std::vector<int64_t> candidates; // rows with r >= 0 in the block
};

template <class Metric>
class Engine {
 public:
  Engine(const DiversityParams& p, Metric& metric, DiversityStats& stats)
      : p_(p), m_(metric), st_(stats), n_(p.features.shape[0]),
        blocks_((n_ + kSampleBlock - 1) / kSampleBlock),
        threads_(p.threads > 0 ? p.threads : omp_get_max_threads()) {
    r_.assign(static_cast<size_t>(n_), std::numeric_limits<float>::infinity());
    assigned_.assign(static_cast<size_t>(n_), -1);
    agg_.farthest.assign(static_cast<size_t>(blocks_), 0);
    agg_.weight.assign(static_cast<size_t>(blocks_), 0.0);
    agg_.candidates.assign(static_cast<size_t>(blocks_), 0);
    scratch_.resize(static_cast<size_t>(threads_));
    for (auto& s : scratch_) s.assign(static_cast<size_t>(2 * m_.scratch_size() + m_.dense_size()), 0.0f);
    centre_.assign(static_cast<size_t>(m_.dense_size()), 0.0f);
  }

  std::vector<float>& r() { return r_; }

  // Rows that are centres before the first pick (k-center's labelled rows), each row's nearest
  // of them given: folds in the exact distances in one pass.
  void start_from_labelled(const int64_t* labeled, int64_t count, const int64_t* nearest) {
    centre_rows_.assign(labeled, labeled + count);
    for (int64_t j = 0; j < count; ++j) r_[static_cast<size_t>(labeled[j])] = kNotCandidate;
    std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks_; ++b) {
      float* s = scratch_[static_cast<size_t>(omp_get_thread_num())].data();
      float* other = s + 2 * m_.scratch_size();
      for (int64_t i = b * kSampleBlock; i < std::min(n_, (b + 1) * kSampleBlock); ++i) {
        if (r_[static_cast<size_t>(i)] < 0.0f) continue;
        if (!m_.row_finite(i, s)) record_bad(bad, i);
        const int64_t slot = nearest[i];
        m_.load(labeled[slot], other, s);
        r_[static_cast<size_t>(i)] = m_.distance(other, i, s);
        assigned_[static_cast<size_t>(i)] = static_cast<int32_t>(slot);
      }
      aggregate(b);
    }
    st_.distances_computed += n_ - count;
    if (bad.load() >= 0) st_.bad_row = bad.load();
  }

  // Marks rows that may not be picked (and need no updates).
  void exclude(int64_t row) { r_[static_cast<size_t>(row)] = kNotCandidate; }

  // The lowest candidate row holding NaN/Inf (or a value beyond the float32 range), or -1. For
  // runs without an update pass (one pick, no labelled rows), which would otherwise read only
  // the row they pick and accept bad rows elsewhere that any larger k rejects.
  int64_t first_bad_candidate() {
    std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 1)
    for (int64_t b = 0; b < blocks_; ++b) {
      float* s = scratch_[static_cast<size_t>(omp_get_thread_num())].data();
      for (int64_t i = b * kSampleBlock; i < std::min(n_, (b + 1) * kSampleBlock); ++i) {
        if (r_[static_cast<size_t>(i)] >= 0.0f && !m_.row_finite(i, s)) {
          record_bad(bad, i);
          break;  // later rows of this block cannot be lower
        }
      }
    }
    return bad.load();
  }

  void aggregate_all() {
#pragma omp parallel for num_threads(threads_) schedule(static)
    for (int64_t b = 0; b < blocks_; ++b) aggregate(b);
  }

  int64_t candidate_count() const {
    int64_t total = 0;
    for (int64_t c : agg_.candidates) total += c;
    return total;
  }

  // The `j`-th candidate row in row order.
  int64_t nth_candidate(int64_t j) const {
    for (int64_t b = 0; b < blocks_; ++b) {
      const int64_t c = agg_.candidates[static_cast<size_t>(b)];
      if (j >= c) {
        j -= c;
        continue;
      }
      for (int64_t i = b * kSampleBlock;; ++i)
        if (r_[static_cast<size_t>(i)] >= 0.0f && j-- == 0) return i;
    }
    return -1;
  }

  int64_t farthest() const {
    uint64_t best = 0;
    for (uint64_t key : agg_.farthest) best = std::max(best, key);
    return best ? farthest_row(best) : -1;
  }

  // A D² draw with uniform u: row i with probability r_i / sum(r), through the hierarchy of
  // diversity_math.h (the GPU's choose kernel walks the same sums). When every candidate already
  // coincides with a centre (all weights 0), a uniform draw among the candidates instead.
  int64_t d2_sample(double u) const {
    const auto row_w = [this](int64_t i) { return d2_weight(r_[static_cast<size_t>(i)]); };
    const auto block_w = [this](int64_t b) { return agg_.weight[static_cast<size_t>(b)]; };
    const auto group_w = [&](int64_t g) { return group_weight(block_w, blocks_, g); };
    const auto seg_w = [&](int64_t b, int s) { return segment_weight(row_w, n_, b, s); };
    const int64_t row = d2_draw(u, n_, blocks_, group_w, block_w, seg_w, row_w);
    return row >= 0 ? row : nth_candidate(scale_to_count(u, candidate_count()));
  }

  // Makes `row` a centre: it leaves the candidates and every other row's distance is updated.
  // `validate`: also check each row read for NaN/Inf (used on the first full pass).
  void add_centre(int64_t row, int64_t pick, bool update, bool validate) {
    r_[static_cast<size_t>(row)] = kNotCandidate;
    const int32_t slot = static_cast<int32_t>(centre_rows_.size());
    centre_rows_.push_back(row);
    if (!update) {
      aggregate(row / kSampleBlock);
      return;
    }
    m_.load(row, centre_.data(), scratch_[0].data());
    ensure_gap_cache();
    // The pruning test costs a centre-gap lookup per row; where it skips almost nothing (data
    // whose distances concentrate) it is paused and probed again every kProbeEvery picks.
    const bool check = p_.prune && slot > 0 && (pruning_pays_ || pick >= next_probe_);
    int64_t possible = 0, computed = 0, gaps = 0;
    std::atomic<int64_t> bad{-1};
#pragma omp parallel for num_threads(threads_) schedule(dynamic, 4) reduction(+ : possible, computed, gaps)
    for (int64_t b = 0; b < blocks_; ++b) {
      float* s = scratch_[static_cast<size_t>(omp_get_thread_num())].data();
      // First the cheap test for every row of the block; then the distances. When few rows
      // remain they are visited with software prefetch a few rows ahead (the gaps left by
      // skipped rows defeat the hardware prefetcher); when many remain, every open row of the
      // block is computed in order, which streams faster than a gappy walk (measured on BADGE:
      // a gappy walk costs 2.6x more per distance). Computing a row the test ruled out changes
      // nothing, since its distance cannot be the smaller one.
      const auto visit = [&](int64_t i) {  // fold the new centre into row i
        if (validate && !m_.row_finite(i, s)) record_bad(bad, i);
        fold_in_centre(r_[static_cast<size_t>(i)], assigned_[static_cast<size_t>(i)],
                       m_.distance(centre_.data(), i, s), slot);
      };
      int32_t todo[kSampleBlock];
      int count = 0, open = 0;
      const int64_t begin = b * kSampleBlock;
      const int64_t end = std::min(n_, begin + kSampleBlock);
      for (int64_t i = begin; i < end; ++i) {
        const float r = r_[static_cast<size_t>(i)];
        if (r < 0.0f) continue;
        ++possible;
        const int32_t a = assigned_[static_cast<size_t>(i)];
        open += r > 0.0f;
        if (check && a >= 0 && cannot_improve(r, centre_gap(a, pick, s, gaps), m_.prune_slack())) continue;
        todo[count++] = static_cast<int32_t>(i - begin);
      }
      if (10 * count >= 4 * open) {  // dense: stream the block
        count = 0;
        for (int64_t i = begin; i < end; ++i)
          if (r_[static_cast<size_t>(i)] > 0.0f || (validate && r_[static_cast<size_t>(i)] >= 0.0f))
            todo[count++] = static_cast<int32_t>(i - begin);
        float distance[kSampleBlock];
        m_.block_distances(centre_.data(), begin, todo, count, distance, s);
        for (int j = 0; j < count; ++j) {
          const int64_t i = begin + todo[j];
          if (validate && !m_.row_finite(i, s)) record_bad(bad, i);
          fold_in_centre(r_[static_cast<size_t>(i)], assigned_[static_cast<size_t>(i)], distance[j], slot);
        }
        computed += count;
        aggregate(b);
        continue;
      }
      constexpr int kAhead = 2;
      for (int j = 0; j < std::min(count, kAhead); ++j) m_.prefetch(begin + todo[j]);
      for (int j = 0; j < count; ++j) {
        if (j + kAhead < count) m_.prefetch(begin + todo[j + kAhead]);
        visit(begin + todo[j]);
      }
      computed += count;
      aggregate(b);
    }
    st_.distances_possible += possible;
    st_.distances_computed += computed;
    st_.centre_distances += gaps;
    if (check) {
      pruning_pays_ = 20 * (possible - computed) >= possible;  // skipped at least 5%
      if (!pruning_pays_) next_probe_ = pick + kProbeEvery;
    }
    if (bad.load() >= 0) st_.bad_row = bad.load();
  }

 private:
  static void record_bad(std::atomic<int64_t>& bad, int64_t row) {
    int64_t seen = bad.load();
    while ((seen < 0 || row < seen) && !bad.compare_exchange_weak(seen, row)) {
    }
  }

  void aggregate(int64_t b) {
    uint64_t best = 0;
    int64_t count = 0;
    for (int64_t i = b * kSampleBlock; i < std::min(n_, (b + 1) * kSampleBlock); ++i) {
      const float r = r_[static_cast<size_t>(i)];
      best = std::max(best, farthest_key(r, i));
      count += r >= 0.0f;
    }
    agg_.farthest[static_cast<size_t>(b)] = best;
    agg_.candidates[static_cast<size_t>(b)] = count;
    if (p_.method == DiversityMethod::KCenter) return;  // k-center never samples
    const auto row_w = [this](int64_t i) { return d2_weight(r_[static_cast<size_t>(i)]); };
    agg_.weight[static_cast<size_t>(b)] = block_weight_of([&](int s) { return segment_weight(row_w, n_, b, s); });
  }

  void ensure_gap_cache() {
    const size_t needed = centre_rows_.size();
    if (gap_capacity_ >= needed) return;
    size_t capacity = std::max<size_t>(needed, 2 * gap_capacity_);
    capacity = std::max<size_t>(capacity, static_cast<size_t>(p_.k + (p_.labeled.empty() ? 0 : p_.labeled.shape[0])));
    std::unique_ptr<std::atomic<int64_t>[]> stamps(new std::atomic<int64_t>[capacity]);
    std::unique_ptr<std::atomic<float>[]> gaps(new std::atomic<float>[capacity]);
    for (size_t j = 0; j < capacity; ++j) {
      stamps[j].store(-1, std::memory_order_relaxed);
      gaps[j].store(0.0f, std::memory_order_relaxed);
    }
    gap_stamp_ = std::move(stamps);
    gap_ = std::move(gaps);
    gap_capacity_ = capacity;
  }

  // Squared distance from centre `slot` to the newest centre, computed on first use in a pick
  // and shared by all threads (a race only computes the same value twice).
  float centre_gap(int32_t slot, int64_t pick, float* scratch, int64_t& computed) {
    if (gap_stamp_[slot].load(std::memory_order_acquire) == pick) return gap_[slot].load(std::memory_order_relaxed);
    const float g = m_.distance(centre_.data(), centre_rows_[static_cast<size_t>(slot)], scratch);
    ++computed;
    gap_[slot].store(g, std::memory_order_relaxed);
    gap_stamp_[slot].store(pick, std::memory_order_release);
    return g;
  }

  const DiversityParams& p_;
  Metric& m_;
  DiversityStats& st_;
  int64_t n_, blocks_;
  int threads_;
  std::vector<float> r_;
  std::vector<int32_t> assigned_;
  BlockAggregates agg_;
  std::vector<std::vector<float>> scratch_;
  std::vector<float> centre_;
  std::vector<int64_t> centre_rows_;
  static constexpr int64_t kProbeEvery = 16;
  bool pruning_pays_ = true;
  int64_t next_probe_ = 0;
  std::unique_ptr<std::atomic<int64_t>[]> gap_stamp_;
  std::unique_ptr<std::atomic<float>[]> gap_;
  size_t gap_capacity_ = 0;
};

// Reports progress at most every 0.1 s (and at the end); false when the caller cancels.
class Progress {
 public:
  explicit Progress(const DiversityParams& p) : p_(p), last_(std::chrono::steady_clock::now()) {}
  bool operator()(int64_t done) {
    if (!p_.on_progress) return true;
    const auto now = std::chrono::steady_clock::now();
    if (done < p_.k && now - last_ < std::chrono::milliseconds(100)) return true;
    last_ = now;
    return p_.on_progress(done, p_.k);
  }

 private:
  const DiversityParams& p_;
  std::chrono::steady_clock::time_point last_;
};

template <class Metric>
void run(const DiversityParams& p, DiversityStats& st, Engine<Metric>& engine, bool has_centres, int64_t first) {
  int64_t* picks = static_cast<int64_t*>(p.picks_out.data);
  float* pick_distance = static_cast<float*>(p.distances_out.data);
  Progress progress(p);
  bool validated = has_centres;  // the labelled pass already checked every candidate row
  for (int64_t t = 0; t < p.k; ++t) {
    int64_t row = first;
    if (t > 0 || has_centres) {
      row = p.method == DiversityMethod::KCenter ? engine.farthest() : engine.d2_sample(uniform01(p.seed, static_cast<uint64_t>(t)));
    }
    // Unreachable when the caller checked k against the rows that may be picked; a guard
    // all the same, since a missing row (-1) would index out of bounds below.
    if (row < 0 || row >= p.features.shape[0]) {
      st.no_candidate = true;
      return;
    }
    picks[t] = row;
    if (pick_distance) pick_distance[t] = engine.r()[static_cast<size_t>(row)];
    engine.add_centre(row, t, t + 1 < p.k, !validated);
    validated = true;
    if (st.bad_row >= 0) return;
    if (!progress(t + 1)) {
      st.cancelled = true;
      return;
    }
  }
}

template <class T>
void run_euclidean(const DiversityParams& p, DiversityStats& st) {
  Euclidean<T> metric(p.features);
  Engine<Euclidean<T>> engine(p, metric, st);
  const int64_t L = p.labeled.empty() ? 0 : p.labeled.shape[0];
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  if (mask)
    for (int64_t i = 0; i < p.features.shape[0]; ++i)
      if (mask[i]) engine.exclude(i);
  if (L > 0) {
    const int64_t* labeled = static_cast<const int64_t*>(p.labeled.data);
    std::vector<float> s(static_cast<size_t>(metric.scratch_size()));
    for (int64_t j = 0; j < L; ++j)
      if (!metric.row_finite(labeled[j], s.data())) {
        st.bad_row = labeled[j];
        return;
      }
    engine.start_from_labelled(labeled, L, static_cast<const int64_t*>(p.labeled_nearest.data));
    if (st.bad_row >= 0) return;
  } else {
    engine.aggregate_all();
  }
  const int64_t first = L > 0 ? -1 : engine.nth_candidate(scale_to_count(uniform01(p.seed, 0), engine.candidate_count()));
  if (first >= 0) {
    std::vector<float> s(static_cast<size_t>(metric.scratch_size()));
    if (p.k == 1) {
      // No update pass follows, so check every row that could have been picked (the pick
      // included), naming the lowest bad one as the update pass of a larger k would.
      st.bad_row = engine.first_bad_candidate();
    } else if (!metric.row_finite(first, s.data())) {
      st.bad_row = first;  // the first pass reads the other rows
    }
    if (st.bad_row >= 0) return;
  }
  run(p, st, engine, L > 0, first);
}

template <class TS, class TF>
void run_badge(const DiversityParams& p, DiversityStats& st) {
  Badge<TS, TF> metric(p.scores, p.from_logits, p.validate, p.sum_tolerance, p.features);
  Engine<Badge<TS, TF>> engine(p, metric, st);
  const int64_t n = p.features.shape[0];
  const uint8_t* mask = static_cast<const uint8_t*>(p.exclude.data);
  const int threads = p.threads > 0 ? p.threads : omp_get_max_threads();
  const int64_t scratch = metric.scratch_size();
  std::atomic<int64_t> bad{-1};
  std::atomic<int> bad_problem{0};
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> s(static_cast<size_t>(scratch));
#pragma omp for schedule(dynamic, 1024)
    for (int64_t i = 0; i < n; ++i) {
      if (mask && mask[i]) continue;
      const int problem = metric.prepare_row(i, s.data());
      if (problem == 0) continue;
      int64_t seen = bad.load();
      while ((seen < 0 || i < seen) && !bad.compare_exchange_weak(seen, i)) {
      }
      if (bad.load() == i) bad_problem.store(problem);
    }
  }
  if (bad.load() >= 0) {
    st.bad_row = bad.load();
    st.bad_row_in_scores = bad_problem.load() != 2;
    st.bad_problem = bad_problem.load();
    return;
  }
  if (mask)
    for (int64_t i = 0; i < n; ++i)
      if (mask[i]) engine.exclude(i);
  engine.aggregate_all();
  // First pick: the largest gradient embedding (lowest row on ties).
  int64_t first = -1;
  double best = -1.0;
  for (int64_t i = 0; i < n; ++i) {
    if (mask && mask[i]) continue;
    const double g = metric.embedding_sq_norm(i);
    if (g > best) {
      best = g;
      first = i;
    }
  }
  metric.set_largest_embedding(best);
  run(p, st, engine, false, first);
}

template <class TS>
void run_badge_for_scores(const DiversityParams& p, DiversityStats& st) {
  switch (p.features.dtype) {
    case DType::Float16: return run_badge<TS, half_bits>(p, st);
    case DType::BFloat16: return run_badge<TS, bf16_bits>(p, st);
    case DType::Float32: return run_badge<TS, float>(p, st);
    default: return run_badge<TS, double>(p, st);
  }
}

}  // namespace

void shard_fold_in_kernel(const ShardFoldIn& a) {
  const int threads = a.threads > 0 ? a.threads : omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t i = 0; i < a.m; ++i) {
    if (!(a.r[i] > 0.0f)) continue;
    float distance;
    if (a.probs == nullptr) {
      distance = sq_distance(a.centre, a.x + i * a.d, a.d);  // Euclidean::distance
    } else {  // Badge::distance for probabilities: p . c - c[y], then h . c, combined
      const float q = dot(a.probs + i * a.C, a.centre, a.C) - a.centre[a.y[i]];
      const float h = dot(a.x + i * a.d, a.centre + a.C, a.d);
      distance = badge_sq_distance(a.centre[a.C + a.d], a.centre[a.C + a.d + 1], a.qn[i], a.hn[i], q, h);
    }
    a.r[i] = std::min(a.r[i], distance);
  }
}

void diversity_cpu_kernel(const DiversityParams& p, DiversityStats& st) {
  if (p.method == DiversityMethod::Badge) {
    switch (p.scores.dtype) {
      case DType::Float16: return run_badge_for_scores<half_bits>(p, st);
      case DType::BFloat16: return run_badge_for_scores<bf16_bits>(p, st);
      case DType::Float32: return run_badge_for_scores<float>(p, st);
      default: return run_badge_for_scores<double>(p, st);
    }
  }
  switch (p.features.dtype) {
    case DType::Float16: return run_euclidean<half_bits>(p, st);
    case DType::BFloat16: return run_euclidean<bf16_bits>(p, st);
    case DType::Float32: return run_euclidean<float>(p, st);
    default: return run_euclidean<double>(p, st);
  }
}

}  // namespace ASVP_ISA_NAMESPACE
}  // namespace asvp
