// The DLPack data-interchange ABI (https://dmlc.github.io/dlpack), declared here so that the
// extension can take tensors from PyTorch, CuPy, JAX ... without linking any of them.
// Only the fields this project reads are documented; the layout follows the published ABI.
#pragma once

#include <cstdint>

namespace asvp::dlpack {

enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
enum TypeCode : uint8_t { kInt = 0, kUInt = 1, kFloat = 2, kBfloat = 4, kBool = 6 };

struct Device {
  int32_t device_type;
  int32_t device_id;
};

struct DataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

struct Tensor {
  void* data;
  Device device;
  int32_t ndim;
  DataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means compact row-major
  uint64_t byte_offset;
};

// Capsule name "dltensor".
struct ManagedTensor {
  Tensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(ManagedTensor*);
};

// Capsule name "dltensor_versioned" (DLPack >= 1.0).
struct PackVersion {
  uint32_t major;
  uint32_t minor;
};
struct ManagedTensorVersioned {
  PackVersion version;
  void* manager_ctx;
  void (*deleter)(ManagedTensorVersioned*);
  uint64_t flags;  // bit 0: read only
  Tensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = 1;

}  // namespace asvp::dlpack
