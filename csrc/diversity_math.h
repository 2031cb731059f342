// Per-element and per-pick math of the diversity kernels (k-center greedy, k-means++ D² seeding,
// BADGE), shared by the CPU engine (diversity_cpu.cpp) and the CUDA kernels (diversity.cu), so
// the CPU tests exercise the arithmetic and decision rules the GPU runs.
//
// Every method keeps, for each candidate row i, r[i] = squared distance to its assigned centre
// a[i] (the nearest one seen so far) and folds in one new centre per pick. r < 0 marks rows that
// are not candidates (labelled, excluded or already picked); r == 0 rows coincide with a centre.
#pragma once

#include <cmath>
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
// D² sampling over a fixed hierarchy of nonnegative weights (r of the candidates, 0 elsewhere):
//   rows -> segments of kSegmentRows rows -> sample blocks of kSampleBlock rows (kBlockSegments
//   segments) -> groups of kGroupBlocks blocks.
// Every sum is a serial double sum in index order (serial_sum), and a draw walks the levels from
// the top (d2_walk). The rounding is therefore fixed by this definition, not by who computes it:
// the CPU engine and the GPU kernels (segment sums by 32 lanes at once, group sums by many threads,
// the walk on staged shared memory) produce bit-identical sums and picks. Each serial chain is at
// most 32 long, except the one over the groups (N / 32768 of them).

// Rows per sampling block (and per cached aggregate). Shared so both paths group rows alike.
constexpr int64_t kSampleBlock = 1024;
constexpr int kSegmentRows = 32;
constexpr int kBlockSegments = static_cast<int>(kSampleBlock / kSegmentRows);  // 32
constexpr int kGroupBlocks = 32;

ASVP_HD double d2_weight(float r) { return r > 0.0f ? static_cast<double>(r) : 0.0; }

ASVP_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// w(0) + w(1) + ... + w(count - 1), added in this order from 0.
template <class W>
ASVP_HD double serial_sum(const W& w, int64_t count) {
  double s = 0.0;
  for (int64_t i = 0; i < count; ++i) s += w(i);
  return s;
}

// Sum of the weights of segment `segment` of block `block` (rows past `n` weigh 0).
template <class RowW>
ASVP_HD double segment_weight(const RowW& row_w, int64_t n, int64_t block, int segment) {
  const int64_t first = block * kSampleBlock + static_cast<int64_t>(segment) * kSegmentRows;
  return serial_sum([&](int64_t i) { return first + i < n ? row_w(first + i) : 0.0; }, kSegmentRows);
}

// A block's weight from its segment sums.
template <class SegW>
ASVP_HD double block_weight_of(const SegW& seg_w) {
  return serial_sum([&](int64_t s) { return seg_w(static_cast<int>(s)); }, kBlockSegments);
}

// Sum of group g's block weights.
template <class BlockW>
ASVP_HD double group_weight(const BlockW& block_w, int64_t blocks, int64_t g) {
  const int64_t first = g * kGroupBlocks;
  const int64_t count = blocks - first < kGroupBlocks ? blocks - first : kGroupBlocks;
  return serial_sum([&](int64_t i) { return block_w(first + i); }, count);
}

// One level of a draw. Walks w(0..count) adding the positive weights to `running`; returns the
// first index whose inclusive running sum exceeds `target` (running is then the sum before it).
// When rounding leaves the target past the end, returns the last positive index and sets target
// to infinity, so the levels below take their last positive entry too. -1: no positive weight.
template <class W>
ASVP_HD int64_t d2_walk(const W& w, int64_t count, double& running, double& target) {
  int64_t last = -1;
  for (int64_t i = 0; i < count; ++i) {
    const double wi = w(i);
    if (!(wi > 0.0)) continue;
    const double next = running + wi;
    last = i;
    if (next > target) return i;
    running = next;
  }
  target = static_cast<double>(INFINITY);
  return last;
}

// The whole draw with uniform u: row i with probability w_i / sum(w), or -1 when every weight is
// 0 (the caller then draws uniformly among the candidates). `group_w(g)`, `block_w(b)`,
// `seg_w(b, s)` and `row_w(i)` must be the sums defined above (the GPU reads them from memory).
template <class GroupW, class BlockW, class SegW, class RowW>
ASVP_HD int64_t d2_draw(double u, int64_t n, int64_t blocks, const GroupW& group_w, const BlockW& block_w,
                        const SegW& seg_w, const RowW& row_w) {
  const int64_t groups = ceil_div(blocks, kGroupBlocks);
  const double total = serial_sum(group_w, groups);
  if (!(total > 0.0)) return -1;
  double target = u * total, running = 0.0;
  const int64_t g = d2_walk(group_w, groups, running, target);
  const int64_t b0 = g * kGroupBlocks;
  const int64_t in_group = blocks - b0 < kGroupBlocks ? blocks - b0 : kGroupBlocks;
  const int64_t b = b0 + d2_walk([&](int64_t i) { return block_w(b0 + i); }, in_group, running, target);
  const int64_t s = d2_walk([&](int64_t i) { return seg_w(b, static_cast<int>(i)); }, kBlockSegments, running, target);
  const int64_t first = b * kSampleBlock + s * kSegmentRows;
  const int64_t count = n - first < kSegmentRows ? n - first : kSegmentRows;
  return first + d2_walk([&](int64_t i) { return row_w(first + i); }, count, running, target);
}

// ---------------------------------------------------------------------------------------------
// The GPU's two-phase block update (diversity.cu): kBlockThreads threads test the block's rows in
// kRowsPerThread coalesced passes (row = pass * kBlockThreads + thread), the rows that need a
// distance are compacted, in row order, into a shared-memory list, and the warps then compute
// only those. The index arithmetic lives here so the host rendering runs the same formulas.

constexpr int kBlockThreads = 256;
constexpr int kBlockWarps = kBlockThreads / 32;
constexpr int kRowsPerThread = static_cast<int>(kSampleBlock / kBlockThreads);  // 4

// Does a row need its distance to the new centre? Not for non-candidates (r < 0); not when the
// pruning test rules it out (needs its assigned centre's gap; r == 0 never improves). A
// validating pass computes every candidate.
ASVP_HD bool needs_distance(float r, int32_t assigned, float gap, float slack, bool prune, bool validate) {
  if (!(r >= 0.0f)) return false;
  if (validate) return true;
  return !(prune && assigned >= 0 && cannot_improve(r, gap, slack));
}

// Whether the test reads the assigned centre's gap at all (so the kernel loads it only then).
ASVP_HD bool needs_gap(float r, int32_t assigned, bool prune, bool validate) {
  return prune && !validate && assigned >= 0 && r > 0.0f;
}

ASVP_HD int popcount32(uint32_t v) {
#if defined(__CUDA_ARCH__)
  return __popc(v);
#else
  return __builtin_popcount(v);
#endif
}

// Position in the block's list of a flagged row: rows before it in earlier (pass, warp) slices
// (`slice_base`, an exclusive scan of the slices' counts in row order), plus flagged lanes below.
ASVP_HD int compact_position(int slice_base, uint32_t ballot, int lane) {
  return slice_base + popcount32(ballot & ((1u << lane) - 1u));
}
ASVP_HD int slice_index(int pass, int warp) { return pass * kBlockWarps + warp; }

// Where a block's row sits in the shared-memory copy of its r values: one pad word per 32 rows,
// so lane s reading row 32 s + i (its segment) hits bank (s + i) % 32, never a conflict.
constexpr int kPaddedBlock = static_cast<int>(kSampleBlock + kSampleBlock / 32);
ASVP_HD int padded_row(int local) { return local + local / 32; }

// Segment `segment`'s weight from the staged r values (-1 past the last row): what lane
// `segment` of the aggregating warp computes, equal to segment_weight().
ASVP_HD double staged_segment_weight(const float* r_staged, int segment) {
  return serial_sum([&](int64_t i) { return d2_weight(r_staged[padded_row(segment * kSegmentRows + static_cast<int>(i))]); },
                    kSegmentRows);
}

// The choose kernel's uniform draw splits the blocks in contiguous runs, one per thread.
ASVP_HD void uniform_run(int thread, int threads, int64_t blocks, int64_t& lo, int64_t& hi) {
  const int64_t per = ceil_div(blocks, threads);
  lo = static_cast<int64_t>(thread) * per < blocks ? static_cast<int64_t>(thread) * per : blocks;
  hi = lo + per < blocks ? lo + per : blocks;
}

}  // namespace asvp
