// Per-element and per-row math of BALD (mutual information from T Monte-Carlo dropout samples),
// shared by the CPU kernel (bald_cpu.cpp) and the CUDA kernel (bald.cu):
//
//     BALD(row) = H[mean_t p_t] - mean_t H[p_t]        (natural log, 0 ln 0 = 0)
//
// Everything is double precision: BALD is a difference of two entropies of similar size, so the
// float rounding of either would swamp small mutual informations (and their ranking).
//
// A row is reduced sample by sample. Each sample's C values are pushed into a BaldSample (any
// number of partial summaries merged with merge_bald_sample, like the uncertainty kernels'
// lanes); its entropy follows from the merged summary, and its class probabilities are added to
// the row's running sum of probabilities (the mean times T).
#pragma once

#include <cfloat>
#include <cmath>

#include "hostdevice.h"
#include "uncertainty_math.h"

namespace asvp {

// ---------------------------------------------------------------------------------------------
// e^x and ln x in double precision as branch-free polynomials (relative error ~1e-16, checked
// against libm in tests/test_bald_kernel.py), so the host compiler vectorises the per-element
// loops (libm's calls do not vectorise without -ffast-math); the GPU runs the same code.

// e^x for x in [-708, 0] (callers pass z - max z, clamped; e^-708 is just above DBL_MIN).
ASVP_HD double bald_exp(double x) {
  x = max_of(x, -708.0);
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to the nearest integer n
  const double shifted = x * 1.4426950408889634 + shifter;
  const double n = shifted - shifter;
  // Cody-Waite: r = x - n ln2 with ln2 split into a head exact in 32 bits and a tail.
  double r = x - n * 0.6931471803691238;
  r = r - n * 1.9082149292705877e-10;
  // Taylor series of e^r to degree 13 on |r| <= ln2 / 2: the first term left out is < 2e-16.
  double q = 1.0 / 6227020800.0;
  q = q * r + 1.0 / 479001600.0;
  q = q * r + 1.0 / 39916800.0;
  q = q * r + 1.0 / 3628800.0;
  q = q * r + 1.0 / 362880.0;
  q = q * r + 1.0 / 40320.0;
  q = q * r + 1.0 / 5040.0;
  q = q * r + 1.0 / 720.0;
  q = q * r + 1.0 / 120.0;
  q = q * r + 1.0 / 24.0;
  q = q * r + 1.0 / 6.0;
  q = q * r + 0.5;
  q = q * r + 1.0;
  q = q * r + 1.0;
  // 2^n from the low bits of `shifted` (they hold n): n + 1023 in [1, 1023] is the biased exponent.
  return q * bits_to_double((double_to_bits(shifted) + 1023u) << 52);
}

// ln x for normal positive x.
ASVP_HD double bald_log(double x) {
  const uint64_t bits = double_to_bits(x);
  // The biased exponent as a double without an int64 -> double conversion (AVX2 has none):
  // 2^52 + e has e in its low mantissa bits.
  const double biased = bits_to_double((bits >> 52) | 0x4330000000000000ull) - 4503599627370496.0;
  double m = bits_to_double((bits & 0x000fffffffffffffull) | 0x3ff0000000000000ull);  // [1, 2)
  const bool upper = m > 1.4142135623730951;  // centre the mantissa on 1: [0.707, 1.414)
  m = m * (upper ? 0.5 : 1.0);
  const double e = biased - (upper ? 1022.0 : 1023.0);
  // ln m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.1716: odd series to s^19 (next term < 3e-17).
  const double f = m - 1.0;
  const double s = f / (2.0 + f);
  const double s2 = s * s;
  double q = 1.0 / 19.0;
  q = q * s2 + 1.0 / 17.0;
  q = q * s2 + 1.0 / 15.0;
  q = q * s2 + 1.0 / 13.0;
  q = q * s2 + 1.0 / 11.0;
  q = q * s2 + 1.0 / 9.0;
  q = q * s2 + 1.0 / 7.0;
  q = q * s2 + 1.0 / 5.0;
  q = q * s2 + 1.0 / 3.0;
  q = q * s2 + 1.0;
  return e * 0.6931471803691238 + (e * 1.9082149292705877e-10 + 2.0 * s * q);
}

// p ln p with 0 ln 0 = 0 (and negative p, possible only with validate=False, counted as 0); p below
// DBL_MIN contributes below 1e-305.
ASVP_HD double bald_xlogx(double p) { return p > 0.0 ? p * bald_log(max_of(p, DBL_MIN)) : 0.0; }

// The softmax terms of a logit z of a sample whose maximum is m: e = e^(z - m) and e (z - m); both
// 0 below the exponent floor (the rule of uncertainty_math.h's softmax_terms, with bald_exp).
ASVP_HD void bald_softmax_terms(double z, double m, double& e, double& e_times_gap) {
  const double d = z - m;
  const bool kept = d >= -708.0;  // false for d = -inf as well
  e = kept ? bald_exp(d) : 0.0;
  e_times_gap = kept ? e * d : 0.0;
}

// Summary of one sample of a row. Probabilities: max, min, sum p, sum p ln p. Logits: max (pass 1),
// then Z = sum e^(z - max) and sum e^(z - max) (z - max) (pass 2).
struct BaldSample {
  double max;
  double min;
  double sum;
  double aux;
  double nonfinite;  // 0, or NaN once an element was NaN/Inf
};

ASVP_HD BaldSample bald_sample_identity() {
  BaldSample s;
  s.max = -DBL_MAX;
  s.min = DBL_MAX;
  s.sum = 0.0;
  s.aux = 0.0;
  s.nonfinite = 0.0;
  return s;
}

ASVP_HD void merge_bald_sample(BaldSample& a, const BaldSample& b) {
  a.max = max_of(a.max, b.max);
  a.min = min_of(a.min, b.min);
  a.sum += b.sum;
  a.aux += b.aux;
  a.nonfinite += b.nonfinite;
}

// One probability v and its term bald_xlogx(v) (the CPU computes the terms in a vector loop first).
ASVP_HD void bald_push_probability_term(BaldSample& s, double v, double v_log_v) {
  s.max = max_of(s.max, v);
  s.min = min_of(s.min, v);
  s.sum += v;
  s.aux += v_log_v;
  s.nonfinite += v - v;
}

ASVP_HD void bald_push_probability(BaldSample& s, double v) { bald_push_probability_term(s, v, bald_xlogx(v)); }

ASVP_HD void bald_push_logit_pass1(BaldSample& s, double z) {
  s.max = max_of(s.max, z);
  s.nonfinite += z - z;
}

// Pass 2 of a logit (s.max is the sample's maximum): adds the softmax terms and returns
// e^(z - max), which the caller keeps to form the probability without a second exponential.
ASVP_HD double bald_push_logit_pass2(BaldSample& s, double z) {
  double e, e_times_gap;
  bald_softmax_terms(z, s.max, e, e_times_gap);
  s.sum += e;
  s.aux += e_times_gap;
  return e;
}

// Whether a sample's values are acceptable (the contract of af.bald: finite always; with
// validate, probabilities in [0, 1] summing to 1 within the tolerance).
ASVP_HD RowProblem check_bald_sample(const BaldSample& s, bool from_logits, bool validate, double sum_tolerance) {
  if (!(s.nonfinite == 0.0)) return RowProblem::NonFinite;
  if (from_logits || !validate) return RowProblem::None;
  if (s.min < 0.0 || s.max > 1.0) return RowProblem::OutOfRange;
  const double deviation = s.sum - 1.0;
  if (!(deviation <= sum_tolerance && -deviation <= sum_tolerance)) return RowProblem::BadSum;
  return RowProblem::None;
}

// The entropy of one sample from its merged summary.
ASVP_HD double bald_sample_entropy(const BaldSample& s, bool from_logits) {
  return from_logits ? bald_log(s.sum) - s.aux / s.sum : -s.aux;
}

// The probability a sample gives a class: `value` is the stored probability, or for logits the
// e^(z - max) returned by bald_push_logit_pass2.
ASVP_HD double bald_probability(double value, const BaldSample& s, bool from_logits) {
  return from_logits ? value / s.sum : max_of(value, 0.0);
}

// One class's term of the entropy of the mean: -m ln m with m = (sum of its probabilities) / T.
ASVP_HD double bald_mean_entropy_term(double probability_sum, int64_t samples) {
  return -bald_xlogx(probability_sum / static_cast<double>(samples));
}

// BALD from the entropy of the mean and the sum of the samples' entropies; never negative (the
// true value is >= 0 by Jensen; rounding can give -1e-17), and 0 for the NaN that only
// unvalidated garbage input can produce.
ASVP_HD double bald_value(double entropy_of_mean, double entropy_sum, int64_t samples) {
  const double mi = entropy_of_mean - entropy_sum / static_cast<double>(samples);
  return mi == mi ? max_of(mi, 0.0) : 0.0;
}

}  // namespace asvp
