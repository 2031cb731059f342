// A read-bandwidth probe: the benchmark measures the machine's sustainable read rate with it,
// so kernels can be reported as a fraction of what the memory system delivers.
#pragma once

#include <cstdint>

namespace asvp {

// Sums n floats with every thread; returns the sum so the reads cannot be optimised away.
double parallel_read_sum(const float* data, int64_t n, int threads);

}  // namespace asvp
