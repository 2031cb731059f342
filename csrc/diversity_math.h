// Per-element and per-pick math of the diversity kernels (k-center greedy, k-means++ D² seeding,
// BADGE), shared by the CPU engine (diversity_cpu.cpp) and the CUDA kernels (diversity.cu), so
// the CPU tests exercise the arithmetic and decision rules the GPU runs.
//
// Every method keeps, for each candidate row i, r[i] = squared distance to its assigned centre
// a[i] (the nearest one seen so far) and folds in one new centre per pick. r < 0 marks rows that
// are not candidates (labelled, excluded or already picked); r == 0 rows coincide with a centre.
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace asvp {

// Sentinel for rows that may never be picked again (and need no distance updates).
constexpr float kNotCandidate = -1.0f;

// Safety factor of the triangle-inequality test. The test skips row i when its centre a and the
// new centre c satisfy d(a, c) >= 2 sqrt(r), because then d(i, c) >= d(a, c) - d(i, a) >= sqrt(r)
// and the new centre cannot lower r. Distances are float32 sums, each with a relative error of
// at most ~d * 2^-24 (about 1e-4 at d = 8192): demanding d(a,c)^2 >= 4 r (1 + 1e-2) leaves a wide
// margin, so a skipped row is always one whose computed distance would not have been smaller.
constexpr float kPruneFactor = 4.04f;

// True when the new centre provably cannot lower r: the row coincides with its centre (r == 0;
// a squared distance is never negative) or the triangle inequality rules it out. `slack` is an
// absolute allowance for distances whose error is not relative to their size (BADGE's
// factorised form cancels); 0 for direct Euclidean sums.
ASVP_HD bool cannot_improve(float r, float centre_to_new_sq, float slack) {
  return r == 0.0f || centre_to_new_sq >= kPruneFactor * r + slack;
}

// BADGE's absolute error allowance: the float dots of C and d terms carry an error of at most
// about (C + d) 2^-24 times |g_i| |g_j| <= max |g|^2, and the combination doubles it.
ASVP_HD float badge_prune_slack(int64_t C, int64_t d, double max_embedding_sq_norm) {
  return static_cast<float>(4.0 * static_cast<double>(C + d) * 5.9604644775390625e-08 * max_embedding_sq_norm);
}

// Squared-distance update of one row; returns true when the new centre is now its nearest.
ASVP_HD bool fold_in_centre(float& r, int32_t& assigned, float distance_sq, int32_t new_slot) {
  if (distance_sq < r) {
    r = distance_sq;
    assigned = new_slot;
    return true;
  }
  return false;
}

// BADGE's factorised squared distance between gradient embeddings g = q (x) h:
//   ||g_i - g_j||^2 = |q_i|^2 |h_i|^2 + |q_j|^2 |h_j|^2 - 2 (q_i . q_j)(h_i . h_j),
// combined in double (the products of float dots cancel when g_i ~ g_j) and clamped at 0.
ASVP_HD float badge_sq_distance(float qn_i, float hn_i, float qn_j, float hn_j, float q_dot, float h_dot) {
  const double a = static_cast<double>(qn_i) * hn_i;
  const double b = static_cast<double>(qn_j) * hn_j;
  const double cross = 2.0 * static_cast<double>(q_dot) * h_dot;
  const double d = (a + b) - cross;
  return d > 0.0 ? static_cast<float>(d) : 0.0f;
}

// ---------------------------------------------------------------------------------------------
// Random numbers: a counter-based generator, so the CPU and the GPU draw the same uniform for
// pick t of a run with a given seed without sharing any state.

ASVP_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) with 53 random bits, for draw number `counter` of stream `seed`.
ASVP_HD double uniform01(uint64_t seed, uint64_t counter) {
  const uint64_t bits = splitmix64(splitmix64(seed) ^ splitmix64(counter + 0x632be59bd9b4e019ull));
  return static_cast<double>(bits >> 11) * (1.0 / 9007199254740992.0);
}

// floor(u * n) clamped to n - 1 (u < 1 always, but rounding of u * n may reach n).
ASVP_HD int64_t scale_to_count(double u, int64_t n) {
  const int64_t j = static_cast<int64_t>(u * static_cast<double>(n));
  return j < n ? j : n - 1;
}

// ---------------------------------------------------------------------------------------------
// Farthest-point selection key: larger r first, equal r to the lower row index. Packing both in
// one 64-bit integer lets the GPU reduce with a single atomicMax, and the CPU compare the same
// way. r >= 0 for candidates, so its float bits order like the float; non-candidates map to 0.
ASVP_HD uint64_t farthest_key(float r, int64_t row) {
  if (!(r >= 0.0f)) return 0;
  return (static_cast<uint64_t>(float_to_bits(r)) << 32) | (0xffffffffull - static_cast<uint64_t>(row));
}
ASVP_HD int64_t farthest_row(uint64_t key) { return static_cast<int64_t>(0xffffffffull - (key & 0xffffffffull)); }
ASVP_HD float farthest_distance(uint64_t key) { return bits_to_float(static_cast<uint32_t>(key >> 32)); }

// ---------------------------------------------------------------------------------------------
// D² sampling over rows grouped in fixed blocks with a cached weight sum per block: a pick finds
// its block by walking the block sums, then its row inside the block. Weights are r (squared
// distances; non-candidates count as 0).

// Rows per sampling block (and per cached aggregate). Shared so both paths group rows alike.
constexpr int64_t kSampleBlock = 1024;

ASVP_HD double d2_weight(float r) { return r > 0.0f ? static_cast<double>(r) : 0.0; }

// The row of block [begin, end) where the running sum `before + w(begin..row)` first exceeds
// `target`; rounding can leave the target just past the block's last weight, in which case the
// last row of positive weight is taken. Returns -1 for a block without positive weight.
template <class WeightAt>
ASVP_HD int64_t d2_pick_in_block(const WeightAt& weight_at, int64_t begin, int64_t end, double before, double target) {
  double running = before;
  int64_t last_positive = -1;
  for (int64_t i = begin; i < end; ++i) {
    const double w = weight_at(i);
    if (w <= 0.0) continue;
    running += w;
    last_positive = i;
    if (running > target) return i;
  }
  return last_positive;
}

}  // namespace asvp
