// Uncertainty scoring and top-k selection: parameters and entry points of the CPU and CUDA paths.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "array_view.h"
#include "uncertainty_math.h"

namespace asvp {

struct UncertaintyParams {
  ArrayView x;              // N x C probabilities or logits
  Kind kind = Kind::Margin;
  bool from_logits = false;
  bool validate = true;     // check probability rows lie in [0, 1] and sum to 1 (finiteness is always checked)
  double sum_tolerance = 1e-3;  // |sum - 1| allowed for a probability row
  ArrayView exclude;        // optional (N,) bool/uint8 mask of rows that may not be picked
  ArrayView scores_out;     // optional (N,) float32: the statistic of every row
  ArrayView indices_out;    // optional (k,) int64: the k most uncertain rows, most uncertain first
  int64_t k = 0;
  int threads = 0;          // <= 0: every available core
  bool release_pages = false;   // x is a shared file mapping: drop each chunk's pages once read
  int64_t chunk_bytes = int64_t(64) << 20;  // rows are streamed in chunks of about this many bytes
  uintptr_t cuda_stream = 0;    // CUDA path: the caller's stream (0: the legacy default stream)
  int cuda_device = -1;         // CUDA path with host input: the device to use (-1: the current one)
  DeviceAlloc device_alloc;     // CUDA path: scratch from the caller's framework (empty: stream-ordered pool)
  // Called by the calling thread after each chunk with (rows done, rows in total); returning
  // false cancels the scan (Ctrl-C, a progress bar's exception). May be empty.
  std::function<bool(int64_t, int64_t)> on_progress;
};

// |row sum - 1| accepted for probabilities stored as `dtype`: 1e-3, or bfloat16's machine
// epsilon (2^-7), since rounding each probability to bfloat16 alone can move the sum by 2^-9.
inline double default_sum_tolerance(DType dtype) { return dtype == DType::BFloat16 ? 0.0078125 : 1e-3; }

// The first row that failed validation, with what is wrong with it.
struct RowError {
  int64_t row = -1;
  RowProblem problem = RowProblem::None;
  double min = 0, max = 0, sum = 0;
  double tolerance = 0;  // the sum tolerance in force
  bool cancelled = false;  // on_progress asked to stop; outputs are incomplete
};

// CPU path: runs the best SIMD variant this processor supports (see cpu_features.h).
void uncertainty_cpu(const UncertaintyParams& params, RowError& error);

// CUDA path (x, exclude and outputs may be on the host or the device). Only defined when the
// extension is built with CUDA; callers check cuda_compiled() first.
void uncertainty_cuda(const UncertaintyParams& params, RowError& error);

}  // namespace asvp
