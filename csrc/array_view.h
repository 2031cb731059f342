// A borrowed, strided 1-D or 2-D array living on the host or on a CUDA device.
// Built in the bindings from numpy arrays or DLPack capsules; kernels never own memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>

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

// Device memory from the caller's framework (e.g. PyTorch's caching allocator, on the current
// device and stream): returns `bytes` bytes that stay valid until the call returns. Empty: the
// CUDA paths take stream-ordered memory from the device's pool instead.
using DeviceAlloc = std::function<void*(size_t bytes)>;

}  // namespace asvp
