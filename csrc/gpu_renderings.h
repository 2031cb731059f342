// Host renderings of the GPU diversity engine's block-level algorithms (diversity.cu), for the
// CPU tests: the same steps, thread by thread and lane by lane, through the same shared helpers
// (diversity_math.h). A ballot is a 32-bit word built from the lanes' flags; a warp shuffle is
// an array read; a block-wide scan is a serial scan (integers: the order does not matter).
//   render_update_block  the update kernel on one block: phase 1 (coalesced test, ballots, slice
//                        counts, their scan, compaction in row order), phase 2 (fold the given
//                        distances into the listed rows) and the aggregates epilogue;
//   render_choose_d2     the choose kernel's D² draw (groups in parallel, then the staged walks),
//                        with its uniform fallback (runs of blocks, a scan, ballots over rows);
//   render_warp_*        a warp's row-to-centre distance and BADGE's per-row constants over
//                        float32 rows (EuclideanDevice / BadgeDevice::distance, badge_row_norms),
//                        which the sharded CUDA fold-in shares with the run.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
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

// ---------------------------------------------------------------------------------------------
// A warp over rows of features (diversity.cu). Lane l of 32 takes the 16-byte chunks l, l + 32,
// l + 64, ... of a row in that order (a chunk is 16 / sizeof(T) elements of the stored type T:
// 4 for float32, 8 for float16/bfloat16, 2 for float64; the values here are those elements
// converted to float32, as the kernel converts them), element by element, each step one fused
// multiply-add (std::fma rounds once, like fmaf); elements past the row read as 0. Strided
// per-element loops (scores, and the norms' features) give lane l the elements l, l + 32, ...
// A warp sum is the xor butterfly: at offsets 16, 8, 4, 2, 1 every lane adds its partner's value
// (lane ^ offset); float addition commutes, so all lanes end with the same bits, lane 0's here.
constexpr int kRenderWarp = 32;

inline float render_warp_sum(std::array<float, kRenderWarp> lanes) {
  for (int offset = kRenderWarp / 2; offset > 0; offset /= 2) {
    std::array<float, kRenderWarp> next{};
    for (int l = 0; l < kRenderWarp; ++l) next[l] = lanes[l] + lanes[l ^ offset];
    lanes = next;
  }
  return lanes[0];
}

inline int64_t render_padded8(int64_t n) { return (n + 7) / 8 * 8; }

// Per lane, term(e, acc) over the elements e of its chunks of `width` elements (n in all), merged.
template <class Term>
float render_chunked_sum(int64_t n, int64_t width, const Term& term) {
  std::array<float, kRenderWarp> acc{};
  const int64_t chunks = (n + width - 1) / width;
  for (int l = 0; l < kRenderWarp; ++l)
    for (int64_t ch = l; ch < chunks; ch += kRenderWarp)
      for (int64_t e = ch * width; e < (ch + 1) * width; ++e) acc[l] = term(e, acc[l]);
  return render_warp_sum(acc);
}

// EuclideanDevice<float>::distance: t = row - centre per element, acc = fma(t, t, acc); the centre
// is the dense one (padded8(d) floats, zeros past d).
inline float render_warp_sq_distance(const float* row, const float* centre, int64_t d, int64_t width) {
  return render_chunked_sum(d, width, [&](int64_t e, float acc) {
    const float t = (e < d ? row[e] : 0.0f) - centre[e];
    return std::fma(t, t, acc);
  });
}

// BadgeDevice<float>::distance from probabilities: q . c over the classes other than y (strided),
// h . c (chunked), each merged, then the predicted class's term fused in, then the factorised
// combination. The centre is dense: q (padded8(C)) | h (padded8(d)) | |q|^2 | |h|^2.
inline float render_warp_badge_distance(const float* p, const float* h, int64_t C, int64_t d, int64_t y, float qn,
                                        float hn, const float* centre, int64_t width) {
  std::array<float, kRenderWarp> q{};
  for (int l = 0; l < kRenderWarp; ++l)
    for (int64_t j = l; j < C; j += kRenderWarp) q[l] = std::fma(centre[j], j == y ? 0.0f : p[j], q[l]);
  const int64_t cp = render_padded8(C), dp = render_padded8(d);
  const float h_dot = render_chunked_sum(d, width, [&](int64_t e, float acc) {
    return std::fma(centre[cp + e], e < d ? h[e] : 0.0f, acc);
  });
  const float q_dot = std::fma(centre[y], p[y] - 1.0f, render_warp_sum(q));
  return badge_sq_distance(centre[cp + dp], centre[cp + dp + 1], qn, hn, q_dot, h_dot);
}

// badge_row_norms after scan_scores for a row of finite probabilities: y is the first maximum
// (the butterfly keeps the lower class on ties); |q|^2 = fma(q_y, q_y, sum of p_j^2 over j != y),
// |h|^2 = sum of h_j^2, both strided with fused squares.
struct RenderedNorms {
  int64_t y = 0;
  float qn = 0.0f, hn = 0.0f;
};

inline RenderedNorms render_warp_badge_norms(const float* p, const float* h, int64_t C, int64_t d) {
  RenderedNorms out;
  out.y = std::max_element(p, p + C) - p;
  std::array<float, kRenderWarp> q{}, hh{};
  for (int l = 0; l < kRenderWarp; ++l) {
    for (int64_t j = l; j < C; j += kRenderWarp) {
      const float v = j == out.y ? 0.0f : p[j];
      q[l] = std::fma(v, v, q[l]);
    }
    for (int64_t j = l; j < d; j += kRenderWarp) hh[l] = std::fma(h[j], h[j], hh[l]);
  }
  const float qy = p[out.y] - 1.0f;
  out.qn = std::fma(qy, qy, render_warp_sum(q));
  out.hn = render_warp_sum(hh);
  return out;
}

}  // namespace asvp
