// Element types the kernels read natively, and their conversion to the accumulation type.
// The 16-bit conversions are pure integer arithmetic (no denormal float operations, no
// branches), so they vectorise on any x86 level and run unchanged on the GPU.
#pragma once

#include "hostdevice.h"

namespace asvp {

enum class DType : int { Float16 = 0, BFloat16 = 1, Float32 = 2, Float64 = 3, Bool = 4, UInt8 = 5, Int64 = 6 };

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16";
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Bool: return "bool";
    case DType::UInt8: return "uint8";
    case DType::Int64: return "int64";
  }
  return "unknown";
}

inline int dtype_size(DType d) {
  switch (d) {
    case DType::Float16:
    case DType::BFloat16: return 2;
    case DType::Float32: return 4;
    case DType::Float64:
    case DType::Int64: return 8;
    case DType::Bool:
    case DType::UInt8: return 1;
  }
  return 0;
}

// Storage wrappers: distinct types so templates can tell IEEE half from bfloat16.
struct half_bits { uint16_t bits; };
struct bf16_bits { uint16_t bits; };

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, zeros, Inf, NaN).
ASVP_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t magnitude = h & 0x7fffu;
  const uint32_t exponent = magnitude & 0x7c00u;
  // Re-bias the exponent from 15 to 127 by shifting the exponent+mantissa field into place.
  uint32_t shifted = (magnitude << 13) + ((127u - 15u) << 23);
  // Inf/NaN: push the exponent to all ones (the mantissa, hence NaN-ness, is kept).
  shifted = (exponent == 0x7c00u) ? shifted + ((128u - 16u) << 23) : shifted;
  // Zero/subnormal: build 2^-14 * (1 + m/1024) and subtract 2^-14, which is exact.
  const float subnormal = bits_to_float(shifted + (1u << 23)) - bits_to_float(113u << 23);
  const uint32_t body = (exponent == 0) ? float_to_bits(subnormal) : shifted;
  return bits_to_float(body | sign);
}

ASVP_HD float bf16_to_float(uint16_t h) { return bits_to_float(static_cast<uint32_t>(h) << 16); }

// to_acc<A>(stored value) converts one stored element to the accumulation type A.
template <class A> ASVP_HD A to_acc(half_bits v) { return static_cast<A>(half_to_float(v.bits)); }
template <class A> ASVP_HD A to_acc(bf16_bits v) { return static_cast<A>(bf16_to_float(v.bits)); }
template <class A> ASVP_HD A to_acc(float v) { return static_cast<A>(v); }
template <class A> ASVP_HD A to_acc(double v) { return static_cast<A>(v); }

// Accumulation type per stored type: float64 input keeps double precision, the rest use float.
template <class T> struct acc_of { using type = float; };
template <> struct acc_of<double> { using type = double; };

}  // namespace asvp
