// Host-side streaming top-k: bounded per-thread heaps, merged once at the end.
// Order: larger key first; equal keys go to the lower row index.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "array_view.h"

namespace asvp {

// Key: float for the uncertainty statistics (ranked exactly as the float32 scores they return),
// double for BALD (a difference of entropies, kept in double precision).
template <class Key>
struct CandidateOf {
  Key key;
  int64_t index;
};
using Candidate = CandidateOf<float>;

template <class Key>
inline bool ranks_before(const CandidateOf<Key>& a, const CandidateOf<Key>& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

// Keeps the k best candidates offered so far. The heap's front is the weakest one kept, so a
// candidate that cannot enter costs a single comparison.
template <class Key>
class BoundedTopKOf {
 public:
  using Item = CandidateOf<Key>;
  explicit BoundedTopKOf(int64_t k = 0) : k_(static_cast<size_t>(k)) {}

  void reserve(int64_t n) { heap_.reserve(static_cast<size_t>(std::min<int64_t>(n, static_cast<int64_t>(k_)))); }

  void offer(Key key, int64_t index) {
    if (k_ == 0) return;
    if (heap_.size() < k_) {
      heap_.push_back({key, index});
      std::push_heap(heap_.begin(), heap_.end(), ranks_before<Key>);
      return;
    }
    const Item candidate{key, index};
    if (!ranks_before(candidate, heap_.front())) return;
    std::pop_heap(heap_.begin(), heap_.end(), ranks_before<Key>);
    heap_.back() = candidate;
    std::push_heap(heap_.begin(), heap_.end(), ranks_before<Key>);
  }

  std::vector<Item>& items() { return heap_; }

 private:
  size_t k_;
  std::vector<Item> heap_;
};
using BoundedTopK = BoundedTopKOf<float>;

// Orders the union of candidate lists and keeps the best k (fewer if fewer were offered).
template <class Key>
std::vector<CandidateOf<Key>> best_k(std::vector<CandidateOf<Key>> all, int64_t k) {
  const auto keep = static_cast<size_t>(std::min<int64_t>(k, static_cast<int64_t>(all.size())));
  if (keep < all.size()) {
    std::nth_element(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(), ranks_before<Key>);
    all.resize(keep);
  }
  std::sort(all.begin(), all.end(), ranks_before<Key>);
  return all;
}

// Merges per-thread heaps and writes the best k rows, best first, into `out` ((k,) int64 on the host).
template <class Key>
void write_best_k(std::vector<BoundedTopKOf<Key>>& heaps, int64_t k, const ArrayView& out) {
  std::vector<CandidateOf<Key>> all;
  for (BoundedTopKOf<Key>& h : heaps) all.insert(all.end(), h.items().begin(), h.items().end());
  const std::vector<CandidateOf<Key>> best = best_k(std::move(all), k);
  int64_t* rows = static_cast<int64_t*>(out.data);
  for (size_t i = 0; i < best.size(); ++i) rows[static_cast<int64_t>(i) * out.strides[0]] = best[i].index;
}

}  // namespace asvp
