// Diversity selection (k-center greedy, k-means++ seeding, BADGE): parameters and entry points
// of the CPU and CUDA paths.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "array_view.h"
#include "diversity_math.h"

namespace asvp {

enum class DiversityMethod : int {
  KCenter = 0,   // farthest point from (labelled u picked), Sener & Savarese 2018
  KMeansPP = 1,  // D² sampling, Arthur & Vassilvitskii 2007
  Badge = 2,     // D² sampling in the gradient-embedding space, Ash et al. 2020
};

struct DiversityParams {
  DiversityMethod method = DiversityMethod::KCenter;
  ArrayView features;     // N x d, float16/bfloat16/float32/float64, unit column stride
  ArrayView scores;       // BADGE only: N x C probabilities (or logits when from_logits)
  bool from_logits = false;
  bool validate = true;   // BADGE: probability rows must lie in [0, 1] and sum to 1
  double sum_tolerance = 1e-3;
  ArrayView labeled;      // k-center: (L,) int64 row indices that act as centres and are never picked
  ArrayView labeled_nearest;  // k-center with labels: (N,) int64, position in `labeled` of each row's
                              // nearest labelled row (found by a GEMM-style search in Python)
  ArrayView exclude;      // k-means++/BADGE: optional (N,) uint8 mask of rows that may not be picked
  ArrayView picks_out;    // (k,) int64: the picks, in order
  ArrayView distances_out;  // optional (k,) float32: each pick's squared distance to the nearest
                            // earlier centre at the moment it was picked (inf for a first pick)
  int64_t k = 0;
  uint64_t seed = 0;
  int threads = 0;        // <= 0: every available core
  bool prune = true;      // triangle-inequality skipping (results are identical either way)
  uintptr_t cuda_stream = 0;  // CUDA path: the caller's stream (0: the legacy default stream)
  int cuda_device = -1;         // CUDA path with host input: the device to use (-1: the current one)
  DeviceAlloc device_alloc;     // CUDA path: scratch from the caller's framework (empty: stream-ordered pool)
  // Called by the calling thread after each pick with (picks done, k); returning false cancels.
  std::function<bool(int64_t, int64_t)> on_progress;
};

// What the run did, for benchmarks and tests.
struct DiversityStats {
  int64_t distances_possible = 0;  // candidate-row x pick pairs an unpruned run evaluates
  int64_t distances_computed = 0;  // row-to-centre distances actually evaluated
  int64_t centre_distances = 0;    // centre-to-centre distances evaluated for the pruning test
  int64_t bad_row = -1;            // first row holding NaN or Inf (features or scores), or -1
  bool bad_row_in_scores = false;  // bad_row refers to `scores`, not `features`
  int bad_problem = 0;             // BADGE: 1 non-finite scores, 2 non-finite features,
                                   // 3 probabilities outside [0, 1], 4 not summing to 1
  bool cancelled = false;
  bool no_candidate = false;       // a pick found no row left (the caller's k check failed)
};

// One pick of sharded selection (acquisition/sharded_diversity.py) on this rank's rows: for every
// row i with r[i] > 0, r[i] = min(r[i], distance(centre, row i)), with the kernel's own distance
// functions (so the result is bit for bit the single-process kernel's on the same kind of
// device). Euclidean when probs is null; else BADGE's factorised distance from probabilities
// (y, qn, hn: each row's predicted class, |q|^2 and |h|^2). Row-major contiguous float32 (the
// CUDA path also takes the features in their stored type, see x_dtype).
// The centre is the dense centre of the kernel that runs: on the host (shard_fold_in, CPU
// engine) d floats, or q (C) | h (d) | |q|^2 | |h|^2 for BADGE; on the device
// (shard_fold_in_cuda, the CUDA engine's layout) each part padded with zeros to a multiple of 8
// floats, 16-byte aligned: padded8(d), or padded8(C) | padded8(d) | |q|^2 | |h|^2.
struct ShardFoldIn {
  const float* x = nullptr;      // m x d features (CUDA path: of x_dtype, read through this pointer
                                 // as raw memory)
  DType x_dtype = DType::Float32;  // CUDA path: float16, bfloat16, float32 or float64, read as the
                                   // run reads them (chunks of 16 bytes: the lane map depends on it)
  const float* probs = nullptr;  // m x C probabilities (BADGE) or null
  const int64_t* y = nullptr;
  const float* qn = nullptr;
  const float* hn = nullptr;
  const float* centre = nullptr;
  float* r = nullptr;            // m distances, updated in place
  int64_t m = 0, d = 0, C = 0;
  int threads = 0;               // CPU path: <= 0 every available core
  uintptr_t cuda_stream = 0;     // CUDA path: the caller's stream (0: the legacy default stream)
  int cuda_device = -1;          // CUDA path: the device every pointer lives on
};

// Length of one part of a dense centre on the device: n padded with zeros to a multiple of 8.
inline int64_t shard_padded8(int64_t n) { return (n + 7) / 8 * 8; }

// CPU path: the best SIMD variant this processor supports (see cpu_features.h).
void shard_fold_in(const ShardFoldIn& params);

// BADGE's per-row constants of a shard on the device, as the CUDA run computes them
// (badge_prepare_kernel's lane map and rounding): y (first maximum of the probabilities), |q|^2
// and |h|^2. Row-major contiguous inputs, float32 probabilities; the rows were validated by the
// caller.
struct ShardBadgeNorms {
  const float* probs = nullptr;  // m x C
  const void* h = nullptr;      // m x d, of h_dtype (float16, bfloat16, float32 or float64)
  DType h_dtype = DType::Float32;
  int64_t* y = nullptr;          // m outputs each
  float* qn = nullptr;
  float* hn = nullptr;
  int64_t m = 0, C = 0, d = 0;
  uintptr_t cuda_stream = 0;
  int cuda_device = -1;
};

// CUDA path of both (device pointers). Only defined when built with CUDA; they enqueue on the
// stream and return without waiting.
void shard_fold_in_cuda(const ShardFoldIn& params);
void shard_badge_norms_cuda(const ShardBadgeNorms& params);

void diversity_cpu(const DiversityParams& params, DiversityStats& stats);

// CUDA path (inputs on the host or the device). Only defined when built with CUDA.
void diversity_cuda(const DiversityParams& params, DiversityStats& stats);

}  // namespace asvp
