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

// CPU path: the best SIMD variant this processor supports (see cpu_features.h).
// One pick of sharded selection (acquisition/sharded_diversity.py) on this rank's rows: for every
// row i with r[i] > 0, r[i] = min(r[i], distance(centre, row i)), with the kernel's own distance
// functions (so the result is bit for bit the single-process kernel's). Euclidean when probs is
// null (centre: d floats); else BADGE's factorised distance from probabilities (centre: q (C),
// h (d), |q|^2, |h|^2; y, qn, hn: each row's predicted class, |q|^2 and |h|^2). Row-major float32.
struct ShardFoldIn {
  const float* x = nullptr;      // m x d features
  const float* probs = nullptr;  // m x C probabilities (BADGE) or null
  const int64_t* y = nullptr;
  const float* qn = nullptr;
  const float* hn = nullptr;
  const float* centre = nullptr;
  float* r = nullptr;            // m distances, updated in place
  int64_t m = 0, d = 0, C = 0;
  int threads = 0;
};

void shard_fold_in(const ShardFoldIn& params);

void diversity_cpu(const DiversityParams& params, DiversityStats& stats);

// CUDA path (inputs on the host or the device). Only defined when built with CUDA.
void diversity_cuda(const DiversityParams& params, DiversityStats& stats);

}  // namespace asvp
