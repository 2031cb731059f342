// Host-side helpers shared by the .cu files: error checks, the device of a call, scratch memory
// (one arena per call, from the caller's framework or stream-ordered) and pinned, double-buffered
// staging of host rows.
//
// Memory rules: no synchronous cudaMalloc/cudaFree per call and no work on the legacy stream
// unless the caller's stream is that one. Scratch comes either from the caller's framework (an
// allocator callback: the bindings hand PyTorch's caching allocator over for torch input, so the
// memory is accounted and reused by PyTorch, on the caller's stream) or from the device's default
// memory pool with cudaMallocAsync/cudaFreeAsync on the caller's stream.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "array_view.h"

namespace asvp {

inline void check_cuda(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  std::string message = std::string("CUDA error in ") + what + ": " + cudaGetErrorString(status);
  if (status == cudaErrorMemoryAllocation) message += " (the input may not fit in device memory: use device='cpu')";
  throw std::runtime_error(message);
}

// Makes `device` current for the lifetime of the guard (-1: keep the current device).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device >= 0 && device != previous_) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() { cudaSetDevice(previous_); }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

// The device a call runs on: a CUDA operand's own device, else the one the caller asked for.
inline int call_device(const ArrayView& x, int requested) { return x.device == DeviceKind::CUDA ? x.device_id : requested; }

// Blocks for `work` items at `threads` per block (grid-stride loops cover the rest).
inline int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, 65535)));
}

// Whether the current device has stream-ordered memory pools (cached per device).
inline bool memory_pools_supported() {
  static std::atomic<int> cache[64];  // 0 unknown, 1 yes, 2 no
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  if (device < 0 || device >= 64) return false;
  int known = cache[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int value = 0;
    check_cuda(cudaDeviceGetAttribute(&value, cudaDevAttrMemoryPoolsSupported, device), "cudaDeviceGetAttribute");
    known = value ? 1 : 2;
    cache[device].store(known, std::memory_order_relaxed);
  }
  return known == 1;
}

// Scratch memory of one call, planned first and then taken in one allocation: from `external`
// (the caller's framework; its memory is released by the caller after the call returns) or, when
// none is given, stream-ordered from the device's pool on `stream`.
class Arena {
 public:
  static constexpr size_t kAlign = 256;

  Arena(cudaStream_t stream, const DeviceAlloc& external) : stream_(stream), external_(external) {}
  ~Arena() {
    if (!owned_ || !base_) return;
    if (pooled_) cudaFreeAsync(base_, stream_);
    else cudaFree(base_);
  }
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // Reserves `count` elements of T; returns their offset (valid after allocate()).
  template <class T>
  size_t plan(size_t count) {
    const size_t at = (bytes_ + kAlign - 1) / kAlign * kAlign;
    bytes_ = at + count * sizeof(T);
    return at;
  }

  void allocate() {
    const size_t bytes = std::max<size_t>(bytes_, kAlign);
    if (external_) {
      void* p = external_(bytes + kAlign);
      if (!p) throw std::runtime_error("the caller's allocator returned no memory");
      const uintptr_t aligned = (reinterpret_cast<uintptr_t>(p) + kAlign - 1) / kAlign * kAlign;
      base_ = reinterpret_cast<char*>(aligned);
      return;
    }
    void* p = nullptr;
    pooled_ = memory_pools_supported();
    if (pooled_) check_cuda(cudaMallocAsync(&p, bytes, stream_), "cudaMallocAsync");
    else check_cuda(cudaMalloc(&p, bytes), "cudaMalloc");
    base_ = static_cast<char*>(p);
    owned_ = true;
  }

  template <class T>
  T* at(size_t offset) const {
    return reinterpret_cast<T*>(base_ + offset);
  }
  size_t bytes() const { return bytes_; }

 private:
  cudaStream_t stream_;
  const DeviceAlloc& external_;
  size_t bytes_ = 0;
  char* base_ = nullptr;
  bool owned_ = false, pooled_ = false;
};

// Page-locked host buffers, kept for the life of the process and shared by calls (pinning memory
// is slow, and freeing it synchronises the device).
class PinnedPool {
 public:
  static void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex());
      auto& free_list = buffers();
      for (size_t i = 0; i < free_list.size(); ++i)
        if (free_list[i].second >= bytes) {
          void* p = free_list[i].first;
          free_list.erase(free_list.begin() + static_cast<std::ptrdiff_t>(i));
          return p;
        }
    }
    void* p = nullptr;
    check_cuda(cudaHostAlloc(&p, bytes, cudaHostAllocPortable), "cudaHostAlloc");
    return p;
  }
  static void release(void* p, size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex());
    buffers().emplace_back(p, bytes);
  }

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static std::vector<std::pair<void*, size_t>>& buffers() {
    static std::vector<std::pair<void*, size_t>> list;
    return list;
  }
};

// Two pinned buffers and the events that say when their last copy to the device is done: the host
// fills one while the other's copy (and the kernels after it) run on the stream.
class PinnedStaging {
 public:
  PinnedStaging(size_t bytes, cudaStream_t stream) : bytes_(std::max<size_t>(bytes, 1)), stream_(stream) {
    for (int i = 0; i < 2; ++i) {
      buffer_[i] = static_cast<char*>(PinnedPool::acquire(bytes_));
      check_cuda(cudaEventCreateWithFlags(&event_[i], cudaEventDisableTiming), "cudaEventCreate");
    }
  }
  ~PinnedStaging() {
    for (int i = 0; i < 2; ++i) {
      if (recorded_[i]) cudaEventSynchronize(event_[i]);  // the DMA may still read the buffer
      cudaEventDestroy(event_[i]);
      PinnedPool::release(buffer_[i], bytes_);
    }
  }
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;

  // Copies `rows` host rows (`row_bytes` each, `src_pitch` apart) to the device, `dst_pitch`
  // apart, chunk by chunk. Chunk c lands at dst + start * dst_pitch, or at dst itself when
  // `dst_is_chunk_buffer` (a one-chunk device buffer reused: the stream orders each copy after
  // the kernels that read the previous chunk). each(start, count, device_rows) runs after a
  // chunk's copy is enqueued (it may launch kernels on the stream); false stops early.
  template <class Each>
  bool copy_rows(const char* src, int64_t src_pitch, int64_t row_bytes, int64_t rows, char* dst, int64_t dst_pitch,
                 bool dst_is_chunk_buffer, Each each) {
    const int64_t chunk_rows = std::max<int64_t>(1, static_cast<int64_t>(bytes_) / dst_pitch);
    int which = 0;
    for (int64_t start = 0; start < rows; start += chunk_rows, which ^= 1) {
      const int64_t count = std::min(chunk_rows, rows - start);
      if (recorded_[which]) check_cuda(cudaEventSynchronize(event_[which]), "cudaEventSynchronize");
      char* host = buffer_[which];
      const char* from = src + start * src_pitch;
      if (src_pitch == row_bytes && dst_pitch == row_bytes) {
        std::memcpy(host, from, static_cast<size_t>(count * row_bytes));
      } else {
        for (int64_t r = 0; r < count; ++r)
          std::memcpy(host + r * dst_pitch, from + r * src_pitch, static_cast<size_t>(row_bytes));
      }
      char* target = dst_is_chunk_buffer ? dst : dst + start * dst_pitch;
      check_cuda(cudaMemcpyAsync(target, host, static_cast<size_t>(count * dst_pitch), cudaMemcpyHostToDevice, stream_),
                 "cudaMemcpyAsync");
      check_cuda(cudaEventRecord(event_[which], stream_), "cudaEventRecord");
      recorded_[which] = true;
      if (!each(start, count, target)) return false;
    }
    return true;
  }

 private:
  size_t bytes_;
  cudaStream_t stream_;
  char* buffer_[2] = {nullptr, nullptr};
  cudaEvent_t event_[2] = {nullptr, nullptr};
  bool recorded_[2] = {false, false};
};

// Bytes per staging buffer for host input (two are used per call).
constexpr int64_t kStagingBytes = int64_t(32) << 20;

// A host vector copied to the device on the stream (pageable source: the call returns once the
// source has been read, so `src` may go away afterwards).
template <class T>
void copy_to_device(T* dst, const T* src, size_t count, cudaStream_t stream) {
  if (count) check_cuda(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyHostToDevice, stream), "cudaMemcpyAsync");
}

// A device vector copied back on the stream, then waits for it.
template <class T>
void copy_to_host(T* dst, const T* src, size_t count, cudaStream_t stream) {
  if (count) check_cuda(cudaMemcpyAsync(dst, src, count * sizeof(T), cudaMemcpyDeviceToHost, stream), "cudaMemcpyAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

// Writes host `rows` into the (k,) int64 output, on the host or on the device (then synchronised).
inline void write_indices(const std::vector<int64_t>& rows, const ArrayView& out, cudaStream_t stream) {
  int64_t* dst = static_cast<int64_t*>(out.data);
  const int64_t stride = out.strides[0];
  if (out.device == DeviceKind::CPU) {
    for (size_t i = 0; i < rows.size(); ++i) dst[static_cast<int64_t>(i) * stride] = rows[i];
    return;
  }
  check_cuda(cudaMemcpy2DAsync(dst, stride * sizeof(int64_t), rows.data(), sizeof(int64_t), sizeof(int64_t),
                               rows.size(), cudaMemcpyHostToDevice, stream), "cudaMemcpy2DAsync");
  check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
}

// Copies a host (N,) bool/uint8 mask of any stride into contiguous device memory.
inline void stage_host_mask(const ArrayView& mask, int64_t n, uint8_t* device_dst, cudaStream_t stream) {
  std::vector<uint8_t> dense(static_cast<size_t>(n));
  const uint8_t* src = static_cast<const uint8_t*>(mask.data);
  for (int64_t i = 0; i < n; ++i) dense[static_cast<size_t>(i)] = src[i * mask.strides[0]];
  copy_to_device(device_dst, dense.data(), dense.size(), stream);
}

}  // namespace asvp
