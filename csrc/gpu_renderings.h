// Host renderings of the GPU diversity engine's block-level algorithms (diversity.cu), for the
// CPU tests: the same steps, thread by thread and lane by lane, through the same shared helpers
// (diversity_math.h). A ballot is a 32-bit word built from the lanes' flags; a warp shuffle is
// an array read; a block-wide scan is a serial scan (integers: the order does not matter).
//   render_update_block  the update kernel on one block: phase 1 (coalesced test, ballots, slice
//                        counts, their scan, compaction in row order), phase 2 (fold the given
//                        distances into the listed rows) and the aggregates epilogue;
//   render_choose_d2     the choose kernel's D² draw (groups in parallel, then the staged walks),
//                        with its uniform fallback (runs of blocks, a scan, ballots over rows).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "diversity_math.h"

namespace asvp {

struct RenderedState {
  int64_t n = 0, blocks = 0;
  std::vector<float> r;
  std::vector<int32_t> assigned;
  std::vector<uint64_t> farthest;
  std::vector<double> weight, segments;
  std::vector<int64_t> candidates;

  RenderedState(std::vector<float> r_in, std::vector<int32_t> a_in)
      : n(static_cast<int64_t>(r_in.size())), blocks(ceil_div(static_cast<int64_t>(r_in.size()), kSampleBlock)),
        r(std::move(r_in)), assigned(std::move(a_in)), farthest(static_cast<size_t>(blocks), 0),
        weight(static_cast<size_t>(blocks), 0.0), segments(static_cast<size_t>(blocks) * kBlockSegments, 0.0),
        candidates(static_cast<size_t>(blocks), 0) {}

  int rows_in(int64_t b) const { return static_cast<int>(std::min<int64_t>(kSampleBlock, n - b * kSampleBlock)); }

  // The kernel's shared copy of block b's r values (-1 past the last row).
  std::vector<float> staged(int64_t b) const {
    std::vector<float> r_s(kPaddedBlock, kNotCandidate);
    for (int local = 0; local < rows_in(b); ++local) r_s[padded_row(local)] = r[static_cast<size_t>(b * kSampleBlock + local)];
    return r_s;
  }
};

// block_aggregates(): farthest key and candidates over the rows; lane s of warp 0 sums segment s;
// the block weight is every lane's serial sum of the 32 shuffled segment sums.
inline void render_block_aggregates(RenderedState& st, int64_t b, const std::vector<float>& r_s) {
  uint64_t far = 0;
  int64_t count = 0;
  for (int local = 0; local < st.rows_in(b); ++local) {
    const float r = r_s[padded_row(local)];
    far = std::max(far, farthest_key(r, b * kSampleBlock + local));
    count += r >= 0.0f ? 1 : 0;
  }
  double seg[kBlockSegments];
  for (int lane = 0; lane < kBlockSegments; ++lane) {
    seg[lane] = staged_segment_weight(r_s.data(), lane);
    st.segments[static_cast<size_t>(b * kBlockSegments + lane)] = seg[lane];
  }
  st.weight[static_cast<size_t>(b)] = block_weight_of([&](int s) { return seg[s]; });
  st.farthest[static_cast<size_t>(b)] = far;
  st.candidates[static_cast<size_t>(b)] = count;
}

// update_kernel() on block b. `distance(i)` is what phase 2 computes for row i. Returns the
// compacted list (rows within the block, in list order); `possible` counts the candidates.
template <class Distance>
std::vector<int> render_update_block(RenderedState& st, int64_t b, const std::vector<float>& gaps, const Distance& distance,
                                     int32_t slot, float slack, bool prune, bool validate, int64_t& possible) {
  const int64_t begin = b * kSampleBlock;
  const int rows = st.rows_in(b);
  std::vector<float> r_s(kPaddedBlock, kNotCandidate);
  std::vector<int32_t> a_s(kSampleBlock, -1);
  uint32_t ballots[kRowsPerThread][kBlockWarps] = {};
  int slice_count[kRowsPerThread * kBlockWarps] = {};
  // Phase 1: pass j, warp w, lane l reads row j * kBlockThreads + 32 w + l.
  for (int j = 0; j < kRowsPerThread; ++j)
    for (int w = 0; w < kBlockWarps; ++w) {
      for (int lane = 0; lane < 32; ++lane) {
        const int local = j * kBlockThreads + w * 32 + lane;
        float r = kNotCandidate;
        int32_t a = -1;
        if (local < rows) {
          r = st.r[static_cast<size_t>(begin + local)];
          a = st.assigned[static_cast<size_t>(begin + local)];
        }
        r_s[padded_row(local)] = r;
        a_s[local] = a;
        const float gap = needs_gap(r, a, prune, validate) ? gaps[static_cast<size_t>(a)] : 0.0f;
        if (needs_distance(r, a, gap, slack, prune, validate)) ballots[j][w] |= 1u << lane;
        possible += r >= 0.0f ? 1 : 0;
      }
      slice_count[slice_index(j, w)] = popcount32(ballots[j][w]);
    }
  // Warp 0's exclusive scan of the 32 slice counts.
  int slice_base[kRowsPerThread * kBlockWarps];
  int total = 0;
  for (int s = 0; s < kRowsPerThread * kBlockWarps; ++s) {
    slice_base[s] = total;
    total += slice_count[s];
  }
  std::vector<int> todo(static_cast<size_t>(total), -1);
  for (int j = 0; j < kRowsPerThread; ++j)
    for (int w = 0; w < kBlockWarps; ++w)
      for (int lane = 0; lane < 32; ++lane)
        if ((ballots[j][w] >> lane) & 1u)
          todo[static_cast<size_t>(compact_position(slice_base[slice_index(j, w)], ballots[j][w], lane))] =
              j * kBlockThreads + w * 32 + lane;
  // Phase 2: each listed row folds in its distance (rows are independent; any warp order).
  for (int local : todo) {
    const int64_t i = begin + local;
    float r = r_s[padded_row(local)];
    int32_t a = a_s[local];
    if (fold_in_centre(r, a, distance(i), slot)) {
      st.r[static_cast<size_t>(i)] = r;
      st.assigned[static_cast<size_t>(i)] = a;
      r_s[padded_row(local)] = r;
    }
  }
  render_block_aggregates(st, b, r_s);
  return todo;
}

// uniform_pick(): 1024 threads count the candidates of their runs of blocks; the scan finds the
// run holding the j-th candidate, its thread the block, and warp 0's ballots the row.
inline int64_t render_uniform_pick(const RenderedState& st, double u, int threads = 1024) {
  std::vector<int64_t> count(static_cast<size_t>(threads), 0), before(static_cast<size_t>(threads), 0);
  int64_t total = 0;
  for (int t = 0; t < threads; ++t) {
    int64_t lo = 0, hi = 0;
    uniform_run(t, threads, st.blocks, lo, hi);
    for (int64_t b = lo; b < hi; ++b) count[static_cast<size_t>(t)] += st.candidates[static_cast<size_t>(b)];
    before[static_cast<size_t>(t)] = total;
    total += count[static_cast<size_t>(t)];
  }
  if (total == 0) return -1;
  const int64_t j = scale_to_count(u, total);
  int64_t block = -1, rest = 0;
  for (int t = 0; t < threads && block < 0; ++t) {
    if (j < before[static_cast<size_t>(t)] || j >= before[static_cast<size_t>(t)] + count[static_cast<size_t>(t)]) continue;
    int64_t lo = 0, hi = 0;
    uniform_run(t, threads, st.blocks, lo, hi);
    rest = j - before[static_cast<size_t>(t)];
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t cb = st.candidates[static_cast<size_t>(b)];
      if (rest < cb) {
        block = b;
        break;
      }
      rest -= cb;
    }
  }
  if (block < 0) return -1;
  for (int step = 0; step < kBlockSegments; ++step) {
    const int64_t first = block * kSampleBlock + static_cast<int64_t>(step) * 32;
    uint32_t ballot = 0;
    for (int lane = 0; lane < 32; ++lane)
      if (first + lane < st.n && st.r[static_cast<size_t>(first + lane)] >= 0.0f) ballot |= 1u << lane;
    const int count_here = popcount32(ballot);
    if (rest < count_here) {
      for (int64_t skip = 0; skip < rest; ++skip) ballot &= ballot - 1;
      return first + __builtin_ctz(ballot);
    }
    rest -= count_here;
  }
  return -1;
}

// choose_d2_kernel(): group sums (one thread per group), thread 0's total and group walk, then
// warp 0's staged levels walked by lane 0. -1: no row (every candidate is gone).
inline int64_t render_choose_d2(const RenderedState& st, double u) {
  const int64_t groups = ceil_div(st.blocks, kGroupBlocks);
  const auto block_w = [&](int64_t b) { return st.weight[static_cast<size_t>(b)]; };
  std::vector<double> gs(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) gs[static_cast<size_t>(g)] = group_weight(block_w, st.blocks, g);
  const auto group_w = [&](int64_t g) { return gs[static_cast<size_t>(g)]; };
  const double total = serial_sum(group_w, groups);
  if (!(total > 0.0)) return render_uniform_pick(st, u);
  double target = u * total, running = 0.0;
  const int64_t g = d2_walk(group_w, groups, running, target);
  if (g < 0) return -1;
  double level[32];
  const int64_t b0 = g * kGroupBlocks;
  const int in_group = static_cast<int>(std::min<int64_t>(kGroupBlocks, st.blocks - b0));
  for (int lane = 0; lane < 32; ++lane) level[lane] = lane < in_group ? st.weight[static_cast<size_t>(b0 + lane)] : 0.0;
  const auto staged = [&](int64_t i) { return level[i]; };
  const int64_t bi = d2_walk(staged, in_group, running, target);
  if (bi < 0) return -1;
  const int64_t b = b0 + bi;
  for (int lane = 0; lane < 32; ++lane) level[lane] = st.segments[static_cast<size_t>(b * kBlockSegments + lane)];
  const int64_t s = d2_walk(staged, kBlockSegments, running, target);
  if (s < 0) return -1;
  const int64_t first = b * kSampleBlock + s * kSegmentRows;
  const int count = static_cast<int>(std::min<int64_t>(kSegmentRows, st.n - first));
  for (int lane = 0; lane < 32; ++lane) level[lane] = lane < count ? d2_weight(st.r[static_cast<size_t>(first + lane)]) : 0.0;
  const int64_t i = count > 0 ? d2_walk(staged, count, running, target) : -1;
  return i < 0 ? -1 : first + i;
}

}  // namespace asvp
