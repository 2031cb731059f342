// Host-side streaming top-k: bounded per-thread heaps, merged once at the end.
// Order: larger key first; equal keys go to the lower row index.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace asvp {

struct Candidate {
  float key;
  int64_t index;
};

inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// Keeps the k best candidates offered so far. The heap's front is the weakest one kept, so a
// candidate that cannot enter costs a single comparison.
class BoundedTopK {
 public:
  explicit BoundedTopK(int64_t k = 0) : k_(static_cast<size_t>(k)) {}

  void reserve(int64_t n) { heap_.reserve(static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(k_)))); }

  void offer(float key, int64_t index) {
    if (k_ == 0) return;
    if (heap_.size() < k_) {
      heap_.push_back({key, index});
      std::push_heap(heap_.begin(), heap_.end(), ranks_before);
      return;
    }
    const Candidate candidate{key, index};
    if (!ranks_before(candidate, heap_.front())) return;
    std::pop_heap(heap_.begin(), heap_.end(), ranks_before);
    heap_.back() = candidate;
    std::push_heap(heap_.begin(), heap_.end(), ranks_before);
  }

  std::vector<Candidate>& items() { return heap_; }

 private:
  size_t k_;
  std::vector<Candidate> heap_;
};

// Orders the union of candidate lists and keeps the best k (fewer if fewer were offered).
inline std::vector<Candidate> best_k(std::vector<Candidate> all, int64_t k) {
  const auto keep = static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(all.size())));
  if (keep < all.size()) {
    std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(), ranks_before);
    all.resize(keep);
  }
  std::sort(all.begin(), all.end(), ranks_before);
  return all;
}

}  // namespace asvp
