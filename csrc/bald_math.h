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

// p ln p with 0 ln 0 = 0 (and negative p, possible only with validate=False, counted as 0).
ASVP_HD double bald_xlogx(double p) { return p > 0.0 ? p * log(p) : 0.0; }

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

ASVP_HD void bald_push_probability(BaldSample& s, double v) {
  s.max = max_of(s.max, v);
  s.min = min_of(s.min, v);
  s.sum += v;
  s.aux += bald_xlogx(v);
  s.nonfinite += v - v;
}

ASVP_HD void bald_push_logit_pass1(BaldSample& s, double z) {
  s.max = max_of(s.max, z);
  s.nonfinite += z - z;
}

// Pass 2 of a logit (s.max is the sample's maximum): adds the softmax terms and returns
// e^(z - max), which the caller keeps to form the probability without a second exponential.
ASVP_HD double bald_push_logit_pass2(BaldSample& s, double z) {
  double e, e_times_gap;
  softmax_terms(z, s.max, e, e_times_gap);
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
  return from_logits ? log(s.sum) - s.aux / s.sum : -s.aux;
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
