// Exact top-k by radix select over 32-bit order-preserving keys (see orderable_bits in
// uncertainty_math.h; key 0 marks a row that may not be picked). The CUDA path builds the digit
// histograms on the GPU; the steps between them, and the final ordering of the k candidates,
// are host code shared with radix_select_host(), a CPU rendering of the same algorithm that the
// tests check against the NumPy reference.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "hostdevice.h"
#include "topk.h"
#include "uncertainty_math.h"

namespace asvp {

constexpr int kRadixBits = 8;
constexpr int kRadixBins = 1 << kRadixBits;

// Is `u` among the keys whose already-fixed high digits equal the prefix?
ASVP_HD bool radix_candidate(uint32_t u, uint32_t prefix, uint32_t mask) { return u != 0 && (u & mask) == prefix; }
ASVP_HD uint32_t radix_digit(uint32_t u, int shift) { return (u >> shift) & (kRadixBins - 1u); }

// Narrows down the k-th largest key one digit (most significant first) at a time.
struct RadixSelect {
  uint32_t prefix = 0;          // the digits fixed so far
  uint32_t mask = 0;            // which bits of `prefix` are fixed
  unsigned long long needed;    // how many of the k are still to be found at or below the prefix
  unsigned long long tied = 0;  // after the last digit: how many keys equal the threshold

  explicit RadixSelect(int64_t k) : needed(static_cast<unsigned long long>(k)) {}

  // histogram[d]: number of candidate keys whose digit at `shift` is d.
  void step(const unsigned long long* histogram, int shift) {
    int digit = kRadixBins - 1;
    for (; digit > 0 && histogram[digit] < needed; --digit) needed -= histogram[digit];
    prefix |= static_cast<uint32_t>(digit) << shift;
    mask |= static_cast<uint32_t>(kRadixBins - 1) << shift;
    tied = histogram[digit];
  }

  uint32_t threshold() const { return prefix; }  // the k-th largest key, once every digit is fixed
};

// The k rows, best first: every row above the threshold plus the lowest-numbered tied rows.
inline std::vector<int64_t> order_selected(const std::vector<uint32_t>& above_keys, const std::vector<int64_t>& above_rows,
                                           std::vector<int64_t> tied_rows, const RadixSelect& sel) {
  std::vector<Candidate> chosen;
  chosen.reserve(above_rows.size() + static_cast<size_t>(sel.needed));
  for (size_t i = 0; i < above_rows.size(); ++i) chosen.push_back({key_from_orderable_bits(above_keys[i]), above_rows[i]});
  const auto take = static_cast<std::ptrdiff_t>(std::min<unsigned long long>(sel.needed, tied_rows.size()));
  std::partial_sort(tied_rows.begin(), tied_rows.begin() + take, tied_rows.end());
  const float tied_key = key_from_orderable_bits(sel.threshold());
  for (std::ptrdiff_t i = 0; i < take; ++i) chosen.push_back({tied_key, tied_rows[static_cast<size_t>(i)]});
  std::sort(chosen.begin(), chosen.end(), ranks_before<float>);
  std::vector<int64_t> rows(chosen.size());
  for (size_t i = 0; i < chosen.size(); ++i) rows[i] = chosen[i].index;
  return rows;
}

// The whole algorithm on the host, single-threaded (for tests; the GPU runs the same steps).
inline std::vector<int64_t> radix_select_host(const uint32_t* keys, int64_t n, int64_t k) {
  RadixSelect sel(k);
  for (int shift = 32 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    std::vector<unsigned long long> histogram(kRadixBins, 0);
    for (int64_t i = 0; i < n; ++i)
      if (radix_candidate(keys[i], sel.prefix, sel.mask)) ++histogram[radix_digit(keys[i], shift)];
    sel.step(histogram.data(), shift);
  }
  std::vector<uint32_t> above_keys;
  std::vector<int64_t> above_rows, tied_rows;
  for (int64_t i = 0; i < n; ++i) {
    if (keys[i] > sel.threshold()) {
      above_keys.push_back(keys[i]);
      above_rows.push_back(i);
    } else if (keys[i] == sel.threshold()) {
      tied_rows.push_back(i);
    }
  }
  return order_selected(above_keys, above_rows, std::move(tied_rows), sel);
}

}  // namespace asvp
