// BALD scoring and top-k selection: parameters and entry points of the CPU and CUDA paths.
#pragma once

#include <cstdint>
#include <functional>

#include "array_view.h"
#include "uncertainty.h"  // RowError, DeviceAlloc

namespace asvp {

struct BaldParams {
  // Sample 0 of the (T, N, C) MC-dropout samples as an N x C view; sample t starts
  // t * sample_stride elements further (any sign). Probabilities, or logits with from_logits.
  ArrayView x;
  int64_t samples = 0;        // T >= 2
  int64_t sample_stride = 0;  // in elements
  bool from_logits = false;
  bool validate = true;       // probabilities in [0, 1] summing to 1 (finiteness is always checked)
  double sum_tolerance = 1e-3;
  ArrayView exclude;          // optional (N,) bool/uint8 mask: rows neither read nor picked
  ArrayView scores_out;       // optional (N,) float64: BALD of every row (excluded rows: left as they are)
  ArrayView indices_out;      // optional (k,) int64: the k rows of largest BALD, largest first
  int64_t k = 0;
  int threads = 0;            // <= 0: every available core
  int64_t chunk_bytes = int64_t(64) << 20;  // rows are streamed in chunks of about this many bytes
  uintptr_t cuda_stream = 0;  // CUDA path: the caller's stream
  int cuda_device = -1;
  DeviceAlloc device_alloc;   // CUDA path: scratch from the caller's framework (empty: stream-ordered pool)
  // Called by the calling thread after each chunk with (rows done, rows in total); false cancels.
  std::function<bool(int64_t, int64_t)> on_progress;
};

// CPU path: runs the best SIMD variant this processor supports (see cpu_features.h).
void bald_cpu(const BaldParams& params, RowError& error);

// CUDA path: x, exclude and outputs on one device. Only defined when built with CUDA.
void bald_cuda(const BaldParams& params, RowError& error);

}  // namespace asvp
