// Reading matrix rows on the GPU in chunks of 16 bytes.
//
// A row of C elements of type T is split into chunks of V = 16 / sizeof(T) consecutive elements;
// lane l of a group of G lanes handles chunks l, l + G, l + 2G, ... in that order (the host
// renderings in uncertainty_math.h / diversity_math.h use the same map). When the rows are
// 16-byte aligned with unit column stride a chunk is one 16-byte load; otherwise (strided,
// transposed or unaligned input, or the row's last partial chunk) its elements are loaded one by
// one. Both give the same values in the same order, so a result never depends on the layout:
// a strided or transposed tensor scores exactly like its contiguous copy.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "dtypes.h"

namespace asvp {

// IEEE half -> float with the hardware conversion (exact, like half_to_float).
__device__ __forceinline__ float device_half_to_float(uint16_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}

template <bool Streaming>
__device__ __forceinline__ uint4 load16(const void* p) {
  // Streaming: rows read once per pass (evict first); otherwise through the read-only path.
  if constexpr (Streaming) return __ldcs(static_cast<const uint4*>(p));
  else return __ldg(static_cast<const uint4*>(p));
}

template <class T>
struct Elem;

template <>
struct Elem<half_bits> {
  static constexpr int V = 8;
  // Elements past `left` read as 0 (all-zero bits: 0.0 in every type).
  __device__ static uint4 gather(const half_bits* p, int64_t stride, int64_t left) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const uint32_t lo = 2 * i < left ? __ldg(reinterpret_cast<const unsigned short*>(p + 2 * i * stride)) : 0u;
      const uint32_t hi = 2 * i + 1 < left ? __ldg(reinterpret_cast<const unsigned short*>(p + (2 * i + 1) * stride)) : 0u;
      w[i] = lo | (hi << 16);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
  template <class A>
  __device__ static A one(const half_bits* p) {
    return static_cast<A>(device_half_to_float(__ldg(reinterpret_cast<const unsigned short*>(p))));
  }
  template <class A>
  __device__ static void unpack(const uint4& u, A* out) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = static_cast<A>(device_half_to_float(static_cast<uint16_t>(w[i] & 0xffffu)));
      out[2 * i + 1] = static_cast<A>(device_half_to_float(static_cast<uint16_t>(w[i] >> 16)));
    }
  }
};

template <>
struct Elem<bf16_bits> {
  static constexpr int V = 8;
  __device__ static uint4 gather(const bf16_bits* p, int64_t stride, int64_t left) {
    return Elem<half_bits>::gather(reinterpret_cast<const half_bits*>(p), stride, left);  // same 16-bit moves
  }
  template <class A>
  __device__ static A one(const bf16_bits* p) {
    return static_cast<A>(__uint_as_float(static_cast<uint32_t>(__ldg(reinterpret_cast<const unsigned short*>(p))) << 16));
  }
  template <class A>
  __device__ static void unpack(const uint4& u, A* out) {
    const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      out[2 * i] = static_cast<A>(__uint_as_float(w[i] << 16));
      out[2 * i + 1] = static_cast<A>(__uint_as_float(w[i] & 0xffff0000u));
    }
  }
};

template <>
struct Elem<float> {
  static constexpr int V = 4;
  __device__ static uint4 gather(const float* p, int64_t stride, int64_t left) {
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = i < left ? __float_as_uint(__ldg(p + i * stride)) : 0u;
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
  template <class A>
  __device__ static A one(const float* p) {
    return static_cast<A>(__ldg(p));
  }
  template <class A>
  __device__ static void unpack(const uint4& u, A* out) {
    out[0] = static_cast<A>(__uint_as_float(u.x));
    out[1] = static_cast<A>(__uint_as_float(u.y));
    out[2] = static_cast<A>(__uint_as_float(u.z));
    out[3] = static_cast<A>(__uint_as_float(u.w));
  }
};

template <>
struct Elem<double> {
  static constexpr int V = 2;
  __device__ static uint4 gather(const double* p, int64_t stride, int64_t left) {
    const double a = 0 < left ? __ldg(p) : 0.0, b = 1 < left ? __ldg(p + stride) : 0.0;
    return make_uint4(static_cast<uint32_t>(__double2loint(a)), static_cast<uint32_t>(__double2hiint(a)),
                      static_cast<uint32_t>(__double2loint(b)), static_cast<uint32_t>(__double2hiint(b)));
  }
  template <class A>
  __device__ static A one(const double* p) {
    return static_cast<A>(__ldg(p));
  }
  template <class A>
  __device__ static void unpack(const uint4& u, A* out) {
    out[0] = static_cast<A>(__hiloint2double(static_cast<int>(u.y), static_cast<int>(u.x)));
    out[1] = static_cast<A>(__hiloint2double(static_cast<int>(u.w), static_cast<int>(u.z)));
  }
};

// A strided matrix of T in device memory.
template <class T>
struct Rows {
  static constexpr int V = Elem<T>::V;
  const T* data = nullptr;
  int64_t rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  bool vec = false;  // 16-byte aligned rows with unit column stride: whole chunks are one load

  __device__ __forceinline__ const T* row_ptr(int64_t r) const { return data + r * row_stride; }

  // Elements [c0, c0 + V) of row r as one raw 16-byte word (4 registers; convert with
  // Elem<T>::unpack where they are used). Those past the row's end are 0 and not read.
  template <bool Streaming>
  __device__ __forceinline__ uint4 raw(int64_t r, int64_t c0) const {
    const T* p = row_ptr(r);
    const int64_t left = cols - c0;
    if (vec && left >= V) return load16<Streaming>(p + c0);
    return Elem<T>::gather(p + c0 * col_stride, col_stride, left);
  }

  template <class A, bool Streaming>
  __device__ __forceinline__ void chunk(int64_t r, int64_t c0, A (&out)[V]) const {
    Elem<T>::unpack(raw<Streaming>(r, c0), out);
  }

  template <class A>
  __device__ __forceinline__ A value(int64_t r, int64_t c) const {
    return Elem<T>::template one<A>(row_ptr(r) + c * col_stride);
  }
};

// Whether rows of T at `data` (strides in elements) can be read in 16-byte chunks.
template <class T>
inline bool rows_vectorisable(const void* data, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  if (cols > 1 && col_stride != 1) return false;
  if (reinterpret_cast<uintptr_t>(data) % 16 != 0) return false;
  return rows <= 1 || (row_stride > 0 && (row_stride * static_cast<int64_t>(sizeof(T))) % 16 == 0);
}

template <class T>
inline Rows<T> device_rows(const void* data, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride) {
  Rows<T> m;
  m.data = static_cast<const T*>(data);
  m.rows = rows;
  m.cols = cols;
  m.row_stride = row_stride;
  m.col_stride = col_stride;
  m.vec = rows_vectorisable<T>(data, rows, cols, row_stride, col_stride);
  return m;
}

// Device pitch (bytes) of a staged copy of rows of `cols` elements: a multiple of 16.
inline int64_t staged_pitch(int64_t cols, int64_t item) { return (cols * item + 15) / 16 * 16; }

}  // namespace asvp
