// Per-element and per-row math of the uncertainty statistics, shared by the CPU kernels
// (uncertainty_cpu.cpp) and the CUDA kernels (uncertainty.cu).
//
// A row is reduced into RowStats by "pushing" its elements into any number of partial
// accumulators (SIMD lanes on the CPU, threads of a warp on the GPU) and merging them. The
// statistic, its validation and its ranking key are then derived from the merged RowStats.
#pragma once

#include <cfloat>
#include <cmath>

#include "hostdevice.h"

namespace asvp {

enum class Kind : int { Margin = 0, Entropy = 1, LeastConfidence = 2 };
enum class RowProblem : int { None = 0, NonFinite = 1, OutOfRange = 2, BadSum = 3 };

template <class A> struct Limits;
template <> struct Limits<float> {
  ASVP_HD static float lowest() { return -FLT_MAX; }
  ASVP_HD static float highest() { return FLT_MAX; }
  ASVP_HD static float tiny() { return FLT_MIN; }
  // Below this exponent e^x is under FLT_MIN (and exp_approx clamps its argument here).
  ASVP_HD static float exp_floor() { return -87.0f; }
};
template <> struct Limits<double> {
  ASVP_HD static double lowest() { return -DBL_MAX; }
  ASVP_HD static double highest() { return DBL_MAX; }
  ASVP_HD static double tiny() { return DBL_MIN; }
  ASVP_HD static double exp_floor() { return -708.0; }  // e^-708 is just above DBL_MIN
};

// ---------------------------------------------------------------------------------------------
// Elementary functions. The float versions are branch-free polynomials (a few ulp) so that the
// host compiler vectorises the per-element loops; double input keeps the libm functions.

// e^x for x <= 0 (the callers pass z - max(z)). Below -87, where e^x < 2e-38 is negligible
// against the row's partition sum (>= 1), x is clamped so 2^n stays a normal number.
ASVP_HD float exp_approx(float x) {
  x = max_of(x, -87.0f);
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer n
  const float shifted = x * 1.44269504088896341f + shifter;
  const float n = shifted - shifter;
  // Cody-Waite reduction r = x - n ln2, ln2 split in an exactly representable head and a tail.
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // Degree-5 near-minimax fit of e^r on |r| <= ln2/2 (relative error < 2.5e-7 in float).
  float p = 8.2917166851e-3f;
  p = p * r + 4.1915028542e-2f;
  p = p * r + 1.6667662838e-1f;
  p = p * r + 4.9998899076e-1f;
  p = p * r + 9.9999966616e-01f;
  p = p * r + 1.0000000710f;
  // 2^n: the low mantissa bits of `shifted` hold n, so (bits + 127) << 23 is 2^n's bit pattern
  // (the shifter's own bits fall off the top).
  return p * bits_to_float((float_to_bits(shifted) + 127u) << 23);
}
ASVP_HD double exp_approx(double x) { return exp(x); }

// ln x for normal positive x.
ASVP_HD float log_approx(float x) {
  const uint32_t bits = float_to_bits(x);
  int32_t exponent = static_cast<int32_t>(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x007fffffu) | 0x3f800000u);  // mantissa in [1, 2)
  const bool upper = m > 1.41421356f;                           // centre it on 1: [0.707, 1.414)
  m = m * (upper ? 0.5f : 1.0f);  // unconditional arithmetic: keeps the loop branch-free
  exponent += upper ? 1 : 0;
  // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: odd series to s^9 (error < 1e-9).
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float s2 = s * s;
  float p = 0.222222222f;
  p = p * s2 + 0.285714286f;
  p = p * s2 + 0.4f;
  p = p * s2 + 0.666666667f;
  p = p * s2 + 2.0f;
  return static_cast<float>(exponent) * 0.693147181f + s * p;
}
ASVP_HD double log_approx(double x) { return log(x); }

// Accurate once-per-row functions.
ASVP_HD float exp_exact(float x) { return expf(x); }
ASVP_HD double exp_exact(double x) { return exp(x); }
ASVP_HD float log_exact(float x) { return logf(x); }
ASVP_HD double log_exact(double x) { return log(x); }

// ---------------------------------------------------------------------------------------------
// Per-element updates. Each works on one partial accumulator.

// Keeps the two largest values seen: m1 >= m2.
template <class A>
ASVP_HD void top2_push(A& m1, A& m2, A v) {
  m2 = max_of(m2, min_of(m1, v));
  m1 = max_of(m1, v);
}

// v - v is 0 for finite v and NaN for NaN/Inf: summed, it flags a non-finite row in the same pass.
template <class A>
ASVP_HD A nonfinite_term(A v) { return v - v; }

// p ln p with 0 ln 0 = 0.
template <class A>
ASVP_HD A xlogx(A p) { return p * log_approx(max_of(p, Limits<A>::tiny())); }

// ---------------------------------------------------------------------------------------------
// Row summary and its merge (associative, so lanes/threads can be combined in any fixed tree).

template <class A>
struct RowStats {
  A max1;       // largest value (probability or logit)
  A max2;       // second largest
  A min;        // smallest value (probabilities only)
  A sum;        // probabilities: sum p;   logits: Z = sum e^(z - max1)
  A aux;        // probabilities: sum p ln p;   logits: sum e^(z - max1) (z - max1)
  A nonfinite;  // 0, or NaN when any element was NaN/Inf
};

template <class A>
ASVP_HD RowStats<A> row_stats_identity() {
  RowStats<A> s;
  s.max1 = Limits<A>::lowest();
  s.max2 = Limits<A>::lowest();
  s.min = Limits<A>::highest();
  s.sum = 0;
  s.aux = 0;
  s.nonfinite = 0;
  return s;
}

template <class A>
ASVP_HD void merge_row_stats(RowStats<A>& a, const RowStats<A>& b) {
  a.max2 = max_of(max_of(a.max2, b.max2), min_of(a.max1, b.max1));
  a.max1 = max_of(a.max1, b.max1);
  a.min = min_of(a.min, b.min);
  a.sum += b.sum;
  a.aux += b.aux;
  a.nonfinite += b.nonfinite;
}

// One element of a probability row (single pass).
template <class A>
ASVP_HD void push_probability(RowStats<A>& s, A p, bool want_entropy) {
  top2_push(s.max1, s.max2, p);
  s.min = min_of(s.min, p);
  s.sum += p;
  s.nonfinite += nonfinite_term(p);
  if (want_entropy) s.aux += xlogx(p);
}

// One element of a logit row, pass 1: the maximum (and runner-up) and finiteness.
template <class A>
ASVP_HD void push_logit_pass1(RowStats<A>& s, A z) {
  top2_push(s.max1, s.max2, z);
  s.nonfinite += nonfinite_term(z);
}

// The softmax terms of one logit z of a row whose maximum is m: e = e^(z - m), added to the
// partition sum Z, and e * (z - m), added to the entropy's sum (H = ln Z - sum e (z - m) / Z).
//
// A term whose exponential is below the smallest normal number contributes exactly 0 to both.
// Without that rule the product would multiply a huge gap by a tiny (clamped) exponential:
// z - m = -1e38 gave e ~ 1.6e-38 (exp_approx's clamp at -87) and e * d ~ -1.6 per column, so a
// confident row [1e38, 0, ..., 0] scored an entropy of 103.7 instead of 0; and a gap past the
// float range (d = -inf) gave 0 * -inf = NaN or inf. The true contribution, e^d |d| < 1.5e-36
// for d < -87 (1e-305 in double), is far below the float32 result's resolution (Z >= 1).
// Branch-free selects, so the CPU loops still vectorise.
template <class A>
ASVP_HD void softmax_terms(A z, A m, A& e, A& e_times_gap) {
  const A d = z - m;
  const bool kept = d >= Limits<A>::exp_floor();  // false for d = -inf as well
  e = kept ? exp_approx(d) : A(0);
  e_times_gap = kept ? e * d : A(0);
}

// One element of a logit row, pass 2 (after the row maximum m is known): the stable softmax terms.
template <class A>
ASVP_HD void push_logit_pass2(RowStats<A>& s, A z, A m, bool want_entropy) {
  A e, e_times_gap;
  softmax_terms(z, m, e, e_times_gap);
  s.sum += e;
  if (want_entropy) s.aux += e_times_gap;
}

// ---------------------------------------------------------------------------------------------
// One lane's share of a row when `lanes` lanes split the columns round-robin (the CUDA kernel:
// lane = thread of a warp). `load(c)` returns column c converted to A.

template <class A, class Load>
ASVP_HD RowStats<A> lane_pass1(const Load& load, int64_t C, int lane, int lanes, bool from_logits, bool want_entropy) {
  RowStats<A> s = row_stats_identity<A>();
  for (int64_t c = lane; c < C; c += lanes) {
    if (from_logits) push_logit_pass1(s, load(c));
    else push_probability(s, load(c), want_entropy);
  }
  return s;
}

template <class A, class Load>
ASVP_HD RowStats<A> lane_pass2(const Load& load, int64_t C, int lane, int lanes, A row_max, bool want_entropy) {
  RowStats<A> s = row_stats_identity<A>();
  for (int64_t c = lane; c < C; c += lanes) push_logit_pass2(s, load(c), row_max, want_entropy);
  return s;
}

// The CUDA kernel's map (device_rows.cuh): the row is cut into chunks of `width` consecutive
// columns (16 bytes of the stored type), and lane `lane` of `lanes` takes chunks lane,
// lane + lanes, ... in order. One element after the other, exactly as the kernel pushes them.
template <class A, class Load>
ASVP_HD RowStats<A> chunked_pass1(const Load& load, int64_t C, int lane, int lanes, int width, bool from_logits,
                                  bool want_entropy) {
  RowStats<A> s = row_stats_identity<A>();
  for (int64_t c0 = static_cast<int64_t>(lane) * width; c0 < C; c0 += static_cast<int64_t>(lanes) * width)
    for (int64_t c = c0; c < c0 + width && c < C; ++c) {
      if (from_logits) push_logit_pass1(s, load(c));
      else push_probability(s, load(c), want_entropy);
    }
  return s;
}

template <class A, class Load>
ASVP_HD RowStats<A> chunked_pass2(const Load& load, int64_t C, int lane, int lanes, int width, A row_max,
                                  bool want_entropy) {
  RowStats<A> s = row_stats_identity<A>();
  for (int64_t c0 = static_cast<int64_t>(lane) * width; c0 < C; c0 += static_cast<int64_t>(lanes) * width)
    for (int64_t c = c0; c < c0 + width && c < C; ++c) push_logit_pass2(s, load(c), row_max, want_entropy);
  return s;
}

// Lanes per row on the GPU: 8 (four rows per warp) for rows of at most 16 chunks, else 32.
ASVP_HD int uncertainty_lanes(int64_t C, int width) { return (C + width - 1) / width <= 16 ? 8 : 32; }

// ---------------------------------------------------------------------------------------------
// Validation and the statistic.

template <class A>
ASVP_HD RowProblem check_probability_row(const RowStats<A>& s, bool validate, A sum_tolerance) {
  if (!(s.nonfinite == 0)) return RowProblem::NonFinite;
  if (!validate) return RowProblem::None;
  if (s.min < 0 || s.max1 > 1) return RowProblem::OutOfRange;
  const A deviation = s.sum - A(1);
  if (!(deviation <= sum_tolerance && -deviation <= sum_tolerance)) return RowProblem::BadSum;
  return RowProblem::None;
}

template <class A>
ASVP_HD RowProblem check_logit_row(const RowStats<A>& s) {
  return (s.nonfinite == 0) ? RowProblem::None : RowProblem::NonFinite;
}

template <class A>
ASVP_HD float statistic_from_probabilities(const RowStats<A>& s, Kind kind) {
  switch (kind) {
    case Kind::Margin: return static_cast<float>(s.max1 - s.max2);
    case Kind::Entropy: return static_cast<float>(-s.aux);
    default: return static_cast<float>(s.max1);
  }
}

// s.sum and s.aux must come from pass 2 with m = s.max1.
template <class A>
ASVP_HD float statistic_from_logits(const RowStats<A>& s, Kind kind) {
  switch (kind) {
    case Kind::Margin: return static_cast<float>((A(1) - exp_exact(s.max2 - s.max1)) / s.sum);
    case Kind::Entropy: return static_cast<float>(log_exact(s.sum) - s.aux / s.sum);
    default: return static_cast<float>(A(1) / s.sum);
  }
}

// ---------------------------------------------------------------------------------------------
// Ranking. The key is "larger = more uncertain", computed from the float32 statistic so that the
// selection order is exactly the order of the scores af.scores() returns.

ASVP_HD float uncertainty_key(Kind kind, float statistic) {
  float key = (kind == Kind::Entropy) ? statistic : -statistic;
  key = key + 0.0f;                      // -0 -> +0, so equal scores compare equal bit for bit
  return (key == key) ? key : -INFINITY;  // NaN (only possible with validate=False) ranks last
}

// Monotone map of keys to unsigned integers (larger key -> larger integer). Never returns 0,
// which the GPU selection reserves for rows that may not be picked.
ASVP_HD uint32_t orderable_bits(float key) {
  const uint32_t u = float_to_bits(key);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

ASVP_HD float key_from_orderable_bits(uint32_t u) {
  return bits_to_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}

}  // namespace asvp
