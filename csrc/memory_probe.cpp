#include "memory_probe.h"

#include <omp.h>

namespace asvp {

double parallel_read_sum(const float* data, int64_t n, int threads) {
  constexpr int kLanes = 16;  // independent accumulators so the adds pipeline and vectorise
  double total = 0;
#pragma omp parallel num_threads(threads > 0 ? threads : omp_get_max_threads()) reduction(+ : total)
  {
    float lanes[kLanes] = {};
#pragma omp for schedule(static)
    for (int64_t block = 0; block < n / kLanes; ++block)
      for (int j = 0; j < kLanes; ++j) lanes[j] += data[block * kLanes + j];
    for (int j = 0; j < kLanes; ++j) total += lanes[j];
  }
  for (int64_t i = n / kLanes * kLanes; i < n; ++i) total += data[i];
  return total;
}

}  // namespace asvp
