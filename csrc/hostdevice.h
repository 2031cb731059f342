// Portability layer for code that is compiled both by the host C++ compiler and by nvcc.
// Everything in the shared math headers is marked ASVP_HD so the CPU tests exercise exactly
// the arithmetic the CUDA kernels run.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ASVP_HD __host__ __device__ __forceinline__
#else
#define ASVP_HD inline __attribute__((always_inline))
#endif

namespace asvp {

// Bit casts written so that GCC vectorises them on the host and nvcc maps them to register moves.
ASVP_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}

ASVP_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

ASVP_HD double bits_to_double(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, sizeof d);
  return d;
#endif
}

ASVP_HD uint64_t double_to_bits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, sizeof u);
  return u;
#endif
}

template <class T>
ASVP_HD T max_of(T a, T b) { return a > b ? a : b; }
template <class T>
ASVP_HD T min_of(T a, T b) { return a < b ? a : b; }

}  // namespace asvp
