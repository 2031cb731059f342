// A borrowed, strided 1-D or 2-D array living on the host or on a CUDA device.
// Built in the bindings from numpy arrays or DLPack capsules; kernels never own memory.
#pragma once

#include <cstdint>

#include "dtypes.h"

namespace asvp {

enum class DeviceKind : int { CPU = 0, CUDA = 1 };

struct ArrayView {
  void* data = nullptr;
  DType dtype = DType::Float32;
  int ndim = 0;
  int64_t shape[2] = {0, 0};
  int64_t strides[2] = {0, 0};  // in elements, not bytes
  DeviceKind device = DeviceKind::CPU;
  int device_id = 0;

  int64_t rows() const { return ndim >= 1 ? shape[0] : 0; }
  int64_t cols() const { return ndim == 2 ? shape[1] : 1; }
  bool empty() const { return data == nullptr; }
};

}  // namespace asvp
