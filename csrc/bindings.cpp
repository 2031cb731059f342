// The private compiled module asvp_fast._C: turns Python arrays into ArrayViews, checks what the
// kernels cannot, releases the GIL and calls the CPU or CUDA entry points. The typed public API
// lives in the Python package.
#include <omp.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>
#include <vector>

#include "array_view.h"
#include "bald.h"
#include "cpu_features.h"
#include "cuda_runtime_info.h"
#include "diversity.h"
#include "dlpack_abi.h"
#include "memory_probe.h"
#include "radix_select.h"
#include "uncertainty.h"

namespace py = pybind11;

namespace asvp {
namespace {

std::string format_number(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

DType numpy_dtype(const py::dtype& dt, const std::string& what) {
  const std::string name = py::str(dt.attr("name"));
  if (dt.byteorder() == '>') throw py::type_error(what + " has non-native byte order " + name);
  if (name == "bfloat16") return DType::BFloat16;
  switch (dt.kind()) {
    case 'f':
      if (dt.itemsize() == 2) return DType::Float16;
      if (dt.itemsize() == 4) return DType::Float32;
      if (dt.itemsize() == 8) return DType::Float64;
      break;
    case 'b': return DType::Bool;
    case 'u':
      if (dt.itemsize() == 1) return DType::UInt8;
      break;
    case 'i':
      if (dt.itemsize() == 8) return DType::Int64;
      break;
    default: break;
  }
  throw py::type_error(what + " has unsupported dtype " + name);
}

DType dlpack_dtype(const dlpack::DataType& t, const std::string& what) {
  if (t.lanes == 1) {
    if (t.code == dlpack::kFloat && t.bits == 16) return DType::Float16;
    if (t.code == dlpack::kFloat && t.bits == 32) return DType::Float32;
    if (t.code == dlpack::kFloat && t.bits == 64) return DType::Float64;
    if (t.code == dlpack::kBfloat && t.bits == 16) return DType::BFloat16;
    if (t.code == dlpack::kBool && t.bits == 8) return DType::Bool;
    if (t.code == dlpack::kUInt && t.bits == 8) return DType::UInt8;
    if (t.code == dlpack::kInt && t.bits == 64) return DType::Int64;
  }
  throw py::type_error(what + " has an unsupported DLPack dtype (code " + std::to_string(t.code) + ", " +
                       std::to_string(t.bits) + " bits)");
}

ArrayView view_of_numpy(const py::array& a, const std::string& what, bool writable) {
  if (a.ndim() > 2) throw py::value_error(what + " must have at most 2 dimensions, got " + std::to_string(a.ndim()));
  if (writable && !a.writeable()) throw py::value_error(what + " is read-only");
  ArrayView v;
  v.dtype = numpy_dtype(a.dtype(), what);
  v.ndim = static_cast<int>(a.ndim());
  v.data = const_cast<void*>(a.data());
  const int64_t item = a.itemsize();
  if (reinterpret_cast<uintptr_t>(v.data) % static_cast<uintptr_t>(item) != 0)
    throw py::value_error(what + " is not aligned to its element size; pass a copy (numpy.ascontiguousarray)");
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[d] = a.shape(d);
    if (a.strides(d) % item != 0)
      throw py::value_error(what + " has strides that are not a multiple of its element size; pass a copy");
    v.strides[d] = a.strides(d) / item;
  }
  return v;
}

// Keeps the DLPack capsules of one call alive until the kernel has finished with them.
struct Keepalive {
  std::vector<py::object> objects;
};

ArrayView view_of_dlpack(const py::capsule& cap, const std::string& what, Keepalive& keep, bool writable) {
  const char* name = PyCapsule_GetName(cap.ptr());
  const dlpack::Tensor* t = nullptr;
  if (name && std::string(name) == "dltensor") {
    t = &static_cast<dlpack::ManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), name))->dl_tensor;
  } else if (name && std::string(name) == "dltensor_versioned") {
    const auto* managed = static_cast<dlpack::ManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), name));
    if (writable && (managed->flags & dlpack::kFlagReadOnly)) throw py::value_error(what + " is read-only");
    t = &managed->dl_tensor;
  } else {
    throw py::type_error(what + ": capsule is not an unused DLPack tensor");
  }
  keep.objects.push_back(cap);
  if (t->ndim > 2) throw py::value_error(what + " must have at most 2 dimensions, got " + std::to_string(t->ndim));
  ArrayView v;
  v.dtype = dlpack_dtype(t->dtype, what);
  v.ndim = t->ndim;
  v.data = static_cast<char*>(t->data) + t->byte_offset;
  switch (t->device.device_type) {
    case dlpack::kCPU:
    case dlpack::kCUDAHost: v.device = DeviceKind::CPU; break;
    case dlpack::kCUDA:
    case dlpack::kCUDAManaged: v.device = DeviceKind::CUDA; break;
    default: throw py::value_error(what + " lives on an unsupported device type " + std::to_string(t->device.device_type));
  }
  v.device_id = t->device.device_id;
  int64_t compact = 1;
  for (int d = v.ndim - 1; d >= 0; --d) {
    v.shape[d] = t->shape[d];
    v.strides[d] = t->strides ? t->strides[d] : compact;
    compact *= t->shape[d];
  }
  return v;
}

ArrayView to_view(const py::handle& obj, const std::string& what, Keepalive& keep, bool writable = false) {
  if (obj.is_none()) return ArrayView{};
  if (py::isinstance<py::array>(obj)) return view_of_numpy(py::reinterpret_borrow<py::array>(obj), what, writable);
  if (py::isinstance<py::capsule>(obj))
    return view_of_dlpack(py::reinterpret_borrow<py::capsule>(obj), what, keep, writable);
  throw py::type_error(what + " must be a numpy array or a DLPack capsule");
}

std::string describe(const RowError& e) {
  const std::string row = "row " + std::to_string(e.row) + " of x";
  switch (e.problem) {
    case RowProblem::NonFinite: return row + " contains NaN or Inf";
    case RowProblem::OutOfRange:
      return row + " is not a probability vector: its values range from " + format_number(e.min) + " to " +
             format_number(e.max) + ", outside [0, 1] (pass from_logits=True for logits, or validate=False to skip this check)";
    case RowProblem::BadSum:
      return row + " sums to " + format_number(e.sum) +
             ", not 1 within " + format_number(e.tolerance) +
             " (pass from_logits=True for logits, or validate=False to skip this check)";
    default: return row + " is invalid";
  }
}

void require(bool ok, const std::string& message) {
  if (!ok) throw py::value_error(message);
}

// More threads than this is never useful on one machine, and libgomp runs out of stack long
// before 10^6 of them; larger requests are clamped (the Python layer does the same).
constexpr int64_t kMaxThreads = 1024;

int clamp_threads(int64_t threads) {
  require(threads >= 0, "threads must be 0 (all cores) or a positive number, got " + std::to_string(threads));
  return static_cast<int>(std::min(threads, kMaxThreads));
}

// Rows of a host mask (uint8 or bool, 1-D, any stride) that are set.
int64_t count_set(const ArrayView& mask) {
  if (mask.empty() || mask.device != DeviceKind::CPU) return 0;
  const auto* bytes = static_cast<const uint8_t*>(mask.data);
  int64_t count = 0;
  for (int64_t i = 0; i < mask.shape[0]; ++i) count += bytes[i * mask.strides[0]] != 0;
  return count;
}

void check_vector(const ArrayView& v, int64_t length, std::initializer_list<DType> dtypes, const std::string& what,
                  const ArrayView& x) {
  if (v.empty()) return;
  require(v.ndim == 1, what + " must be 1-dimensional");
  require(v.shape[0] == length, what + " has length " + std::to_string(v.shape[0]) + ", expected " + std::to_string(length));
  bool dtype_ok = false;
  for (DType d : dtypes) dtype_ok = dtype_ok || v.dtype == d;
  if (!dtype_ok) throw py::type_error(what + " has dtype " + std::string(dtype_name(v.dtype)));
  require(v.device == x.device && (v.device == DeviceKind::CPU || v.device_id == x.device_id),
          what + " must be on the same device as x");
}

// Wraps a Python progress callable (or None) into the kernels' between-steps hook: lets Ctrl-C
// through and reports progress. A Python exception cancels the kernel and is re-raised by the
// caller from `pending`.
std::function<bool(int64_t, int64_t)> progress_hook(const py::object& progress,
                                                    std::unique_ptr<py::error_already_set>& pending) {
  return [&progress, &pending](int64_t done, int64_t total) -> bool {
    py::gil_scoped_acquire gil;
    try {
      if (PyErr_CheckSignals() != 0) throw py::error_already_set();
      if (!progress.is_none()) progress(done, total);
    } catch (py::error_already_set& e) {
      pending = std::make_unique<py::error_already_set>(std::move(e));
      return false;
    }
    return true;
  };
}

// Scratch memory from the caller's framework: `workspace(nbytes)` returns a DLPack capsule of at
// least that many bytes on the call's CUDA device (the Python layer passes PyTorch's caching
// allocator for torch input). Called from the kernels' thread with the GIL taken back; the
// capsule is kept until the call returns. A Python exception is re-raised by the caller.
DeviceAlloc workspace_hook(const py::object& workspace, Keepalive& keep, int device,
                           std::unique_ptr<py::error_already_set>& pending) {
  if (workspace.is_none()) return {};
  return [&workspace, &keep, device, &pending](size_t bytes) -> void* {
    py::gil_scoped_acquire gil;
    py::object capsule;
    try {
      capsule = workspace(bytes);
    } catch (py::error_already_set& e) {
      pending = std::make_unique<py::error_already_set>(std::move(e));
      throw std::runtime_error("the workspace allocator failed");
    }
    const ArrayView v = to_view(capsule, "workspace", keep, true);
    if (v.device != DeviceKind::CUDA || (device >= 0 && v.device_id != device))
      throw std::invalid_argument("workspace must be memory on the call's CUDA device (cuda:" + std::to_string(device) + ")");
    if (v.ndim != 1 || v.strides[0] != 1 || static_cast<size_t>(v.shape[0]) * dtype_size(v.dtype) < bytes)
      throw std::invalid_argument("workspace must be a contiguous 1-D buffer of at least " + std::to_string(bytes) + " bytes");
    return v.data;
  };
}

// Runs `kernel` without the GIL. A Python exception raised by a callback (progress, workspace)
// wins over the C++ error it caused; native errors propagate (std::invalid_argument: ValueError).
template <class Kernel>
void run_without_gil(const Kernel& kernel, std::unique_ptr<py::error_already_set>& pending) {
  std::exception_ptr failure;
  {
    py::gil_scoped_release nogil;
    try {
      kernel();
    } catch (...) {
      failure = std::current_exception();
    }
  }
  if (pending) throw *pending;
  if (failure) std::rethrow_exception(failure);
}

// The device of a CUDA call: every CUDA operand's, which must be one, or the requested one.
int check_one_device(std::initializer_list<std::pair<const ArrayView*, const char*>> operands, int requested) {
  int device = -1;
  std::string first;
  for (const auto& [v, name] : operands) {
    if (v->empty() || v->device != DeviceKind::CUDA) continue;
    if (device < 0) {
      device = v->device_id;
      first = name;
    } else {
      require(v->device_id == device, std::string(name) + " is on cuda:" + std::to_string(v->device_id) + " but " + first +
                                          " is on cuda:" + std::to_string(device) + "; they must be on the same device");
    }
  }
  if (device >= 0 && requested >= 0)
    require(requested == device, first + " is on cuda:" + std::to_string(device) + " but the call asked for cuda:" +
                                     std::to_string(requested));
  return device >= 0 ? device : requested;
}

void run_uncertainty(const py::object& x_obj, int kind, bool from_logits, bool validate, const py::object& exclude_obj,
                     const py::object& scores_obj, const py::object& indices_obj, int64_t k, int64_t threads,
                     bool release_pages, int64_t chunk_bytes, bool use_cuda, uintptr_t stream,
                     const py::object& progress, const py::object& workspace, int cuda_device) {
  Keepalive keep;
  UncertaintyParams p;
  p.x = to_view(x_obj, "x", keep);
  p.exclude = to_view(exclude_obj, "exclude", keep);
  p.scores_out = to_view(scores_obj, "scores output", keep, true);
  p.indices_out = to_view(indices_obj, "indices output", keep, true);
  require(p.x.ndim == 2, "x must be 2-dimensional (N samples x C classes), got " + std::to_string(p.x.ndim) + " dimensions");
  require(kind >= 0 && kind <= 2, "unknown statistic kind");
  const DType t = p.x.dtype;
  if (t != DType::Float16 && t != DType::BFloat16 && t != DType::Float32 && t != DType::Float64)
    throw py::type_error(std::string("x must be float16, bfloat16, float32 or float64, got ") + dtype_name(t));
  const int64_t N = p.x.rows();
  check_vector(p.exclude, N, {DType::Bool, DType::UInt8}, "exclude mask", p.x);
  check_vector(p.scores_out, N, {DType::Float32}, "scores output", p.x);
  check_vector(p.indices_out, k, {DType::Int64}, "indices output", p.x);
  require(k >= 0 && k <= N, "k must lie in [0, N]");
  // A mask in host memory is counted here; one on the GPU was counted by the Python layer.
  require(k <= N - count_set(p.exclude), "k is larger than the rows that are not excluded");
  require(p.x.cols() >= 1, "x must have at least one class (column)");
  p.kind = static_cast<Kind>(kind);
  p.from_logits = from_logits;
  p.validate = validate;
  p.sum_tolerance = default_sum_tolerance(p.x.dtype);
  p.k = k;
  p.threads = clamp_threads(threads);
  p.release_pages = release_pages;
  p.chunk_bytes = chunk_bytes > 0 ? chunk_bytes : p.chunk_bytes;
  p.cuda_stream = stream;
  if (!use_cuda) require(p.x.device == DeviceKind::CPU, "x is on a CUDA device; use the CUDA path");

#if !defined(ASVP_WITH_CUDA)
  require(!use_cuda, "this build of asvp_fast has no CUDA kernels");
#endif

  std::unique_ptr<py::error_already_set> pending;
  p.on_progress = progress_hook(progress, pending);
  if (use_cuda) {
    p.cuda_device = check_one_device({{&p.x, "x"}, {&p.exclude, "exclude mask"}, {&p.scores_out, "scores output"},
                                      {&p.indices_out, "indices output"}},
                                     cuda_device);
    p.device_alloc = workspace_hook(workspace, keep, p.cuda_device, pending);
  }

  RowError error;
  run_without_gil([&] {
#if defined(ASVP_WITH_CUDA)
    if (use_cuda) uncertainty_cuda(p, error);
    else uncertainty_cpu(p, error);
#else
    uncertainty_cpu(p, error);
#endif
  }, pending);
  error.tolerance = p.sum_tolerance;
  if (error.row >= 0) throw py::value_error(describe(error));
}

using FloatRows = py::array_t<float, py::array::c_style>;

bool is_float_dtype(DType t) {
  return t == DType::Float16 || t == DType::BFloat16 || t == DType::Float32 || t == DType::Float64;
}

// Sharded selection's per-pick update of this rank's distances (see ShardFoldIn) on the host:
// float32 C-contiguous arrays, r updated in place; the GIL is released.
void shard_fold_in_host(const FloatRows& x, const FloatRows& centre, FloatRows r, const py::object& probs_obj,
                        const py::object& y_obj, const py::object& qn_obj, const py::object& hn_obj, int64_t threads) {
  require(x.ndim() == 2, "x must be 2-dimensional (rows x d)");
  require(r.ndim() == 1 && r.shape(0) == x.shape(0), "r must have one entry per row of x");
  require(r.writeable(), "r must be writable");
  ShardFoldIn a;
  a.m = x.shape(0);
  a.d = x.shape(1);
  a.x = x.data();
  a.r = r.mutable_data();
  a.centre = centre.data();
  a.threads = clamp_threads(threads);
  FloatRows probs, qn, hn;
  py::array_t<int64_t, py::array::c_style> y;
  if (!probs_obj.is_none()) {
    probs = probs_obj.cast<FloatRows>();
    y = y_obj.cast<py::array_t<int64_t, py::array::c_style>>();
    qn = qn_obj.cast<FloatRows>();
    hn = hn_obj.cast<FloatRows>();
    require(probs.ndim() == 2 && probs.shape(0) == a.m, "probs must have one row per row of x");
    a.C = probs.shape(1);
    require(y.size() == a.m && qn.size() == a.m && hn.size() == a.m, "y, qn and hn must have one entry per row");
    for (int64_t i = 0; i < a.m; ++i)
      require(y.data()[i] >= 0 && y.data()[i] < a.C, "y holds a class outside [0, C)");
    a.probs = probs.data();
    a.y = y.data();
    a.qn = qn.data();
    a.hn = hn.data();
  }
  require(centre.ndim() == 1 && centre.shape(0) == (a.probs ? a.C + a.d + 2 : a.d),
          "centre has the wrong length for this metric");
  py::gil_scoped_release nogil;
  shard_fold_in(a);
}

// A device operand of the sharded fold-in: a DLPack capsule, or an object that makes one (a
// torch tensor); None stays empty.
ArrayView device_operand(const py::object& obj, const std::string& what, Keepalive& keep, bool writable = false) {
  if (!obj.is_none() && !py::isinstance<py::array>(obj) && !py::isinstance<py::capsule>(obj) &&
      py::hasattr(obj, "__dlpack__"))
    return to_view(obj.attr("__dlpack__")(), what, keep, writable);
  return to_view(obj, what, keep, writable);
}

// The kernels index rows as dense row-major blocks: unit column stride and rows back to back
// (strides of size-1 dimensions do not matter).
bool dense_rows(const ArrayView& v) {
  if (v.ndim == 1) return v.shape[0] <= 1 || v.strides[0] == 1;
  return (v.shape[1] <= 1 || v.strides[1] == 1) && (v.shape[0] <= 1 || v.strides[0] == v.shape[1]);
}

// The element types the CUDA kernels read features in.
constexpr std::initializer_list<DType> kFloatTypes = {DType::Float16, DType::BFloat16, DType::Float32, DType::Float64};

// One operand of the device path: present, `ndim`-dimensional, of one of `dtypes`, dense, on the
// device of x (named in the message when it is not).
void check_device_operand(const ArrayView& v, const std::string& what, int ndim, std::initializer_list<DType> dtypes,
                          const ArrayView& x) {
  require(!v.empty() || (v.ndim == ndim && v.shape[0] == 0), what + " is missing");
  require(v.ndim == ndim, what + " must be " + std::to_string(ndim) + "-dimensional, got " + std::to_string(v.ndim));
  if (std::find(dtypes.begin(), dtypes.end(), v.dtype) == dtypes.end()) {
    std::string names;
    for (DType d : dtypes) names += (names.empty() ? "" : " or ") + std::string(dtype_name(d));
    throw py::type_error(what + " must be " + names + ", got " + dtype_name(v.dtype));
  }
  require(dense_rows(v), what + " must be contiguous (row-major, unit stride); pass .contiguous()");
  const std::string where = v.device == DeviceKind::CUDA ? "cuda:" + std::to_string(v.device_id) : "the host";
  require(v.device == DeviceKind::CUDA && v.device_id == x.device_id,
          what + " is on " + where + " but x is on cuda:" + std::to_string(x.device_id) +
              "; every array of the CUDA fold-in must be on that device");
}

// The same update on the device (x on a CUDA device): every array on that device, dense, float32
// (y int64; x in any float type: the run's lane map for it); the centre in the CUDA kernel's
// padded layout (ShardFoldIn). Enqueued on
// `stream` (the caller's, e.g. torch.cuda.current_stream().cuda_stream); returns at once.
void shard_fold_in_device(const ArrayView& x, const py::object& centre_obj, const py::object& r_obj,
                          const py::object& probs_obj, const py::object& y_obj, const py::object& qn_obj,
                          const py::object& hn_obj, uintptr_t stream, Keepalive& keep) {
  const ArrayView centre = device_operand(centre_obj, "centre", keep);
  const ArrayView r = device_operand(r_obj, "r", keep, true);
  check_device_operand(x, "x", 2, kFloatTypes, x);
  check_device_operand(centre, "centre", 1, {DType::Float32}, x);
  check_device_operand(r, "r", 1, {DType::Float32}, x);
  ShardFoldIn a;
  a.m = x.shape[0];
  a.d = x.shape[1];
  require(r.shape[0] == a.m, "r must have one entry per row of x");
  a.x = static_cast<const float*>(x.data);  // raw memory of x_dtype
  a.x_dtype = x.dtype;
  a.r = static_cast<float*>(r.data);
  a.centre = static_cast<const float*>(centre.data);
  if (!probs_obj.is_none()) {
    const ArrayView probs = device_operand(probs_obj, "probs", keep);
    const ArrayView y = device_operand(y_obj, "y", keep), qn = device_operand(qn_obj, "qn", keep),
                    hn = device_operand(hn_obj, "hn", keep);
    check_device_operand(probs, "probs", 2, {DType::Float32}, x);
    check_device_operand(y, "y", 1, {DType::Int64}, x);
    check_device_operand(qn, "qn", 1, {DType::Float32}, x);
    check_device_operand(hn, "hn", 1, {DType::Float32}, x);
    require(probs.shape[0] == a.m, "probs must have one row per row of x");
    require(y.shape[0] == a.m && qn.shape[0] == a.m && hn.shape[0] == a.m, "y, qn and hn must have one entry per row");
    a.C = probs.shape[1];
    require(a.C >= 1, "probs must have at least one class");
    a.probs = static_cast<const float*>(probs.data);
    a.y = static_cast<const int64_t*>(y.data);
    a.qn = static_cast<const float*>(qn.data);
    a.hn = static_cast<const float*>(hn.data);
  }
  const int64_t dense = a.probs ? shard_padded8(a.C) + shard_padded8(a.d) + 2 : shard_padded8(a.d);
  require(centre.shape[0] == dense,
          "centre has length " + std::to_string(centre.shape[0]) + ", expected " + std::to_string(dense) +
              " (the CUDA kernel's dense centre: each part padded with zeros to a multiple of 8)");
  // The kernel reads the centre in 16-byte chunks.
  require(reinterpret_cast<uintptr_t>(centre.data) % 16 == 0, "centre must be 16-byte aligned on the device");
#if defined(ASVP_WITH_CUDA)
  a.cuda_stream = stream;
  a.cuda_device = x.device_id;
  py::gil_scoped_release nogil;
  shard_fold_in_cuda(a);
#else
  (void)stream;
  throw py::value_error("_C.shard_fold_in got CUDA arrays (x on cuda:" + std::to_string(x.device_id) +
                        ") but this build of asvp_fast has no CUDA kernels; rebuild with CUDA (ASVP_CUDA=ON) or "
                        "pass host (numpy) arrays");
#endif
}

// _C.shard_fold_in: numpy arrays take the host path (the CPU engine's distances); DLPack capsules
// or torch tensors on a CUDA device the device path (the CUDA engine's distances).
void run_shard_fold_in(const py::object& x_obj, const py::object& centre_obj, const py::object& r_obj,
                       const py::object& probs_obj, const py::object& y_obj, const py::object& qn_obj,
                       const py::object& hn_obj, int64_t threads, uintptr_t stream) {
  if (py::isinstance<py::array>(x_obj))
    return shard_fold_in_host(x_obj.cast<FloatRows>(), centre_obj.cast<FloatRows>(),
                              r_obj.cast<FloatRows>(), probs_obj, y_obj, qn_obj, hn_obj, threads);
  Keepalive keep;
  const ArrayView x = device_operand(x_obj, "x", keep);
  require(!x.empty() || x.ndim == 2, "x must be a numpy array, a DLPack capsule or a tensor");
  require(x.device == DeviceKind::CUDA,
          "x is a host DLPack array; the host path of shard_fold_in takes numpy arrays (tensor.numpy())");
  shard_fold_in_device(x, centre_obj, r_obj, probs_obj, y_obj, qn_obj, hn_obj, stream, keep);
}

// _C.shard_badge_norms: BADGE's per-row constants (y, |q|^2, |h|^2) of a shard on a CUDA device,
// as the CUDA run computes them, written into the given device arrays (enqueued on `stream`).
void run_shard_badge_norms(const py::object& probs_obj, const py::object& h_obj, const py::object& y_obj,
                           const py::object& qn_obj, const py::object& hn_obj, uintptr_t stream) {
  Keepalive keep;
  const ArrayView probs = device_operand(probs_obj, "probs", keep);
  require(probs.device == DeviceKind::CUDA, "probs must be on a CUDA device (the host path computes these in NumPy)");
  const ArrayView h = device_operand(h_obj, "features", keep), y = device_operand(y_obj, "y", keep, true),
                  qn = device_operand(qn_obj, "qn", keep, true), hn = device_operand(hn_obj, "hn", keep, true);
  check_device_operand(probs, "probs", 2, {DType::Float32}, probs);
  check_device_operand(h, "features", 2, kFloatTypes, probs);
  check_device_operand(y, "y", 1, {DType::Int64}, probs);
  check_device_operand(qn, "qn", 1, {DType::Float32}, probs);
  check_device_operand(hn, "hn", 1, {DType::Float32}, probs);
  ShardBadgeNorms a;
  a.m = probs.shape[0];
  a.C = probs.shape[1];
  a.d = h.shape[1];
  require(a.C >= 1, "probs must have at least one class");
  require(h.shape[0] == a.m, "features must have one row per row of probs");
  require(y.shape[0] == a.m && qn.shape[0] == a.m && hn.shape[0] == a.m, "y, qn and hn must have one entry per row");
  a.probs = static_cast<const float*>(probs.data);
  a.h = h.data;
  a.h_dtype = h.dtype;
  a.y = static_cast<int64_t*>(y.data);
  a.qn = static_cast<float*>(qn.data);
  a.hn = static_cast<float*>(hn.data);
#if defined(ASVP_WITH_CUDA)
  a.cuda_stream = stream;
  a.cuda_device = probs.device_id;
  py::gil_scoped_release nogil;
  shard_badge_norms_cuda(a);
#else
  (void)stream;
  throw py::value_error("_C.shard_badge_norms got CUDA arrays (probs on cuda:" + std::to_string(probs.device_id) +
                        ") but this build of asvp_fast has no CUDA kernels; rebuild with CUDA (ASVP_CUDA=ON)");
#endif
}

// BALD's messages name the row as the Python contract does (af.bald: "x row R ...").
std::string describe_bald_error(const RowError& e) {
  const std::string row = "x row " + std::to_string(e.row);
  if (e.problem == RowProblem::NonFinite) return row + " contains NaN or Inf";
  return row + " is not a probability vector in every sample (entries in [0, 1] summing to 1 within " +
         format_number(e.tolerance) + "); pass from_logits=True for logits or validate=False to skip this check";
}

// x: sample 0 of the (T, N, C) samples (an N x C view); sample t lies t * sample_stride elements on.
void run_bald(const py::object& x_obj, int64_t samples, int64_t sample_stride, bool from_logits, bool validate,
              const py::object& exclude_obj, const py::object& scores_obj, const py::object& indices_obj, int64_t k,
              int64_t threads, int64_t chunk_bytes, bool use_cuda, uintptr_t stream, const py::object& progress,
              const py::object& workspace) {
  Keepalive keep;
  BaldParams p;
  p.x = to_view(x_obj, "x", keep);
  p.exclude = to_view(exclude_obj, "exclude", keep);
  p.scores_out = to_view(scores_obj, "scores output", keep, true);
  p.indices_out = to_view(indices_obj, "indices output", keep, true);
  require(p.x.ndim == 2, "x[0] must be 2-dimensional (N rows x C classes)");
  if (!is_float_dtype(p.x.dtype))
    throw py::type_error(std::string("x must be float16, bfloat16, float32 or float64, got ") + dtype_name(p.x.dtype));
  require(samples >= 2, "BALD needs at least 2 MC samples, got " + std::to_string(samples));
  const int64_t N = p.x.rows();
  require(p.x.cols() >= 1, "x must have at least one class (column)");
  check_vector(p.exclude, N, {DType::Bool, DType::UInt8}, "exclude mask", p.x);
  check_vector(p.scores_out, N, {DType::Float64}, "scores output", p.x);
  check_vector(p.indices_out, k, {DType::Int64}, "indices output", p.x);
  require(k >= 0 && k <= N - count_set(p.exclude), "k is larger than the rows that are not excluded");
  p.samples = samples;
  p.sample_stride = sample_stride;
  p.from_logits = from_logits;
  p.validate = validate;
  p.sum_tolerance = default_sum_tolerance(p.x.dtype);
  p.k = k;
  p.threads = clamp_threads(threads);
  p.chunk_bytes = chunk_bytes > 0 ? chunk_bytes : p.chunk_bytes;
  p.cuda_stream = stream;
  if (!use_cuda) require(p.x.device == DeviceKind::CPU, "x is on a CUDA device; use the CUDA path");
#if !defined(ASVP_WITH_CUDA)
  require(!use_cuda, "this build of asvp_fast has no CUDA kernels");
#endif
  std::unique_ptr<py::error_already_set> pending;
  p.on_progress = progress_hook(progress, pending);
  if (use_cuda) {
    require(p.x.device == DeviceKind::CUDA, "the CUDA BALD kernel needs x on a CUDA device (host input runs on the CPU)");
    p.cuda_device = check_one_device({{&p.x, "x"}, {&p.exclude, "exclude mask"}, {&p.scores_out, "scores output"},
                                      {&p.indices_out, "indices output"}}, -1);
    p.device_alloc = workspace_hook(workspace, keep, p.cuda_device, pending);
  }
  RowError error;
  run_without_gil([&] {
#if defined(ASVP_WITH_CUDA)
    if (use_cuda) bald_cuda(p, error);
    else bald_cpu(p, error);
#else
    bald_cpu(p, error);
#endif
  }, pending);
  error.tolerance = p.sum_tolerance;
  if (error.row >= 0) throw py::value_error(describe_bald_error(error));
}

std::string describe_diversity_error(const DiversityStats& st, double tolerance) {
  const std::string row = "row " + std::to_string(st.bad_row);
  switch (st.bad_problem) {
    case 1: return row + " of x contains NaN or Inf";
    case 3: return row + " of x is not a probability vector: its values lie outside [0, 1] "
                   "(pass from_logits=True for logits, or validate=False to skip this check)";
    case 4: return row + " of x does not sum to 1 within " + format_number(tolerance) +
                   " (pass from_logits=True for logits, or validate=False to skip this check)";
    default: return row + " of features contains NaN or Inf (or a value beyond the float32 range)";
  }
}

// Rows that are neither labelled nor excluded (both already checked: in range, host, contiguous).
// A repeated labelled row would make N - L undercount the centres and let a pick run out of rows.
int64_t pickable_rows(const ArrayView& labeled, const ArrayView& exclude, int64_t n) {
  std::vector<uint8_t> taken(static_cast<size_t>(n), 0);
  if (!exclude.empty()) {
    const auto* mask = static_cast<const uint8_t*>(exclude.data);
    for (int64_t i = 0; i < n; ++i) taken[static_cast<size_t>(i)] = mask[i] != 0;
  }
  const int64_t L = labeled.empty() ? 0 : labeled.shape[0];
  const auto* rows = static_cast<const int64_t*>(labeled.data);
  std::vector<uint8_t> seen(L > 0 ? static_cast<size_t>(n) : 0, 0);
  for (int64_t j = 0; j < L; ++j) {
    require(!seen[static_cast<size_t>(rows[j])], "labeled contains row " + std::to_string(rows[j]) + " more than once");
    seen[static_cast<size_t>(rows[j])] = 1;
    taken[static_cast<size_t>(rows[j])] = 1;
  }
  int64_t free_rows = 0;
  for (uint8_t t : taken) free_rows += t == 0;
  return free_rows;
}

py::dict run_diversity(int method, const py::object& features_obj, const py::object& scores_obj, bool from_logits,
                       bool validate, const py::object& labeled_obj, const py::object& nearest_obj,
                       const py::object& exclude_obj, const py::object& picks_obj, const py::object& distances_obj,
                       int64_t k, uint64_t seed, int64_t threads, bool prune, bool use_cuda, uintptr_t stream,
                       const py::object& progress, const py::object& workspace, int cuda_device) {
  Keepalive keep;
  DiversityParams p;
  require(method >= 0 && method <= 2, "unknown diversity method");
  p.method = static_cast<DiversityMethod>(method);
  p.features = to_view(features_obj, "features", keep);
  p.scores = to_view(scores_obj, "x", keep);
  p.labeled = to_view(labeled_obj, "labeled", keep);
  p.labeled_nearest = to_view(nearest_obj, "labeled_nearest", keep);
  p.exclude = to_view(exclude_obj, "exclude", keep);
  p.picks_out = to_view(picks_obj, "picks output", keep, true);
  p.distances_out = to_view(distances_obj, "distances output", keep, true);
  require(p.features.ndim == 2, "features must be 2-dimensional (N samples x d), got " + std::to_string(p.features.ndim) +
                                    " dimensions");
  if (!is_float_dtype(p.features.dtype))
    throw py::type_error(std::string("features must be float16, bfloat16, float32 or float64, got ") +
                         dtype_name(p.features.dtype));
  const int64_t N = p.features.rows();
  require(N < (int64_t(1) << 32) - 1, "at most 2^32 - 2 rows are supported");
  require(p.features.cols() >= 1, "features must have at least one column");
  if (p.method == DiversityMethod::Badge) {
    require(p.scores.ndim == 2, "x must be 2-dimensional (N samples x C classes)");
    if (!is_float_dtype(p.scores.dtype))
      throw py::type_error(std::string("x must be float16, bfloat16, float32 or float64, got ") + dtype_name(p.scores.dtype));
    require(p.scores.rows() == N, "x has " + std::to_string(p.scores.rows()) + " rows but features has " +
                                      std::to_string(N) + "; they must describe the same samples");
    require(p.scores.cols() >= 1, "x must have at least one class (column)");
    require(p.scores.device == p.features.device, "x and features must be on the same device");
    check_one_device({{&p.features, "features"}, {&p.scores, "x"}}, -1);
  }
  const auto host_vector = [&](const ArrayView& v, int64_t length, DType dtype, const std::string& what) {
    if (v.empty()) return;
    require(v.ndim == 1 && v.strides[0] == 1, what + " must be a contiguous 1-D array");
    require(v.shape[0] == length, what + " has length " + std::to_string(v.shape[0]) + ", expected " + std::to_string(length));
    require(v.dtype == dtype, what + " has dtype " + std::string(dtype_name(v.dtype)) + ", expected " + dtype_name(dtype));
    require(v.device == DeviceKind::CPU, what + " must be in host memory");
  };
  const int64_t L = p.labeled.empty() ? 0 : p.labeled.shape[0];
  host_vector(p.labeled, L, DType::Int64, "labeled");
  if (L > 0) {
    require(!p.labeled_nearest.empty(), "labeled_nearest is required with labelled rows");
    host_vector(p.labeled_nearest, N, DType::Int64, "labeled_nearest");
    const int64_t* lab = static_cast<const int64_t*>(p.labeled.data);
    const int64_t* near = static_cast<const int64_t*>(p.labeled_nearest.data);
    for (int64_t j = 0; j < L; ++j) require(lab[j] >= 0 && lab[j] < N, "labeled index out of range");
    for (int64_t i = 0; i < N; ++i) require(near[i] >= 0 && near[i] < L, "labeled_nearest entry out of range");
  }
  host_vector(p.exclude, N, DType::UInt8, "exclude mask");
  host_vector(p.picks_out, k, DType::Int64, "picks output");
  host_vector(p.distances_out, k, DType::Float32, "distances output");
  require(!p.picks_out.empty(), "picks output is required");
  require(k >= 1 && k <= N - L, "k must lie in [1, rows that may be picked]");
  require(k <= pickable_rows(p.labeled, p.exclude, N),
          "k is larger than the rows that may be picked (neither labelled nor excluded)");
  p.from_logits = from_logits;
  p.validate = validate;
  p.sum_tolerance = default_sum_tolerance(p.scores.empty() ? DType::Float32 : p.scores.dtype);
  p.k = k;
  p.seed = seed;
  p.threads = clamp_threads(threads);
  p.prune = prune;
  if (!use_cuda) require(p.features.device == DeviceKind::CPU, "features are on a CUDA device; use the CUDA path");
#if !defined(ASVP_WITH_CUDA)
  require(!use_cuda, "this build of asvp_fast has no CUDA kernels");
#endif
  p.cuda_stream = stream;
  std::unique_ptr<py::error_already_set> pending;
  p.on_progress = progress_hook(progress, pending);
  if (use_cuda) {
    p.cuda_device = check_one_device({{&p.features, "features"}, {&p.scores, "x"}}, cuda_device);
    p.device_alloc = workspace_hook(workspace, keep, p.cuda_device, pending);
  }
  DiversityStats st;
  run_without_gil([&] {
#if defined(ASVP_WITH_CUDA)
    if (use_cuda) diversity_cuda(p, st);
    else diversity_cpu(p, st);
#else
    diversity_cpu(p, st);
#endif
  }, pending);
  if (st.bad_row >= 0) throw py::value_error(describe_diversity_error(st, p.sum_tolerance));
  require(!st.no_candidate, "a pick found no row left to pick");
  py::dict out;
  out["distances_possible"] = st.distances_possible;
  out["distances_computed"] = st.distances_computed;
  out["centre_distances"] = st.centre_distances;
  out["cancelled"] = st.cancelled;
  return out;
}

py::dict build_info() {
  py::dict d;
#if defined(ASVP_WITH_CUDA)
  d["cuda_compiled"] = true;
#else
  d["cuda_compiled"] = false;
#endif
  std::string why;
  d["cuda_devices"] = cuda_device_count(&why);
  d["cuda_status"] = why;
  d["cuda_runtime_version"] = cuda_runtime_version();
  d["cuda_driver_version"] = cuda_driver_version();
  d["openmp_threads"] = omp_get_max_threads();
  d["isa"] = std::string(isa_name(active_isa()));
  d["supported_isas"] = supported_isas();
#if defined(ASVP_CUDA_ARCHITECTURES)
  d["cuda_architectures"] = std::string(ASVP_CUDA_ARCHITECTURES);
#endif
  return d;
}

}  // namespace

#if !defined(ASVP_WITH_CUDA)
int cuda_device_count(std::string* why) {
  if (why) *why = "built without CUDA";
  return 0;
}
int cuda_runtime_version() { return 0; }
int cuda_driver_version() { return 0; }
#endif

}  // namespace asvp

namespace asvp {
void register_test_hooks(py::module_& m);
namespace {
double read_sum(const py::array_t<float, py::array::c_style>& a, int threads) {
  const float* data = a.data();
  const int64_t n = a.size();
  py::gil_scoped_release nogil;
  return parallel_read_sum(data, n, threads);
}
}  // namespace
}  // namespace asvp

PYBIND11_MODULE(_C, m) {
  m.doc() = "asvp_fast compiled kernels (private; use the asvp_fast package)";
  m.def("build_info", &asvp::build_info, "Compile-time and run-time facts about the kernels.");
  m.def("read_sum", &asvp::read_sum, py::arg("a"), py::arg("threads") = 0,
        "Sum of a contiguous float32 array read by all threads (a memory read-bandwidth probe).");
  asvp::register_test_hooks(m);
  m.def("set_isa", &asvp::set_active_isa, py::arg("name"), "Select the CPU kernel variant (base, avx2, avx512).");
  m.def("diversity", &asvp::run_diversity, py::arg("method"), py::arg("features"), py::arg("x"), py::arg("from_logits"),
        py::arg("validate"), py::arg("labeled"), py::arg("labeled_nearest"), py::arg("exclude"), py::arg("picks_out"),
        py::arg("distances_out"), py::arg("k"), py::arg("seed"), py::arg("threads"), py::arg("prune"),
        py::arg("use_cuda"), py::arg("stream"), py::arg("progress") = py::none(), py::arg("workspace") = py::none(),
        py::arg("cuda_device") = -1,
        "k-center greedy (0), k-means++ seeding (1) or BADGE (2). Picks are written in place; returns work counts.");
  m.def("shard_fold_in", &asvp::run_shard_fold_in, py::arg("x"), py::arg("centre"), py::arg("r"),
        py::arg("probs") = py::none(), py::arg("y") = py::none(), py::arg("qn") = py::none(),
        py::arg("hn") = py::none(), py::arg("threads") = 0, py::arg("stream") = 0,
        "Sharded selection's per-pick distance update with the kernel's own distances: numpy arrays on the "
        "host (GIL released), CUDA tensors/DLPack capsules on their device (enqueued on `stream`).");
  m.def("shard_badge_norms", &asvp::run_shard_badge_norms, py::arg("probs"), py::arg("features"), py::arg("y"),
        py::arg("qn"), py::arg("hn"), py::arg("stream") = 0,
        "BADGE's per-row predicted class, |q|^2 and |h|^2 of a CUDA shard, as the CUDA kernel computes them.");
  m.def("bald", &asvp::run_bald, py::arg("x"), py::arg("samples"), py::arg("sample_stride"), py::arg("from_logits"),
        py::arg("validate"), py::arg("exclude"), py::arg("scores_out"), py::arg("indices_out"), py::arg("k"),
        py::arg("threads"), py::arg("chunk_bytes"), py::arg("use_cuda"), py::arg("stream"),
        py::arg("progress") = py::none(), py::arg("workspace") = py::none(),
        "BALD of (T, N, C) MC samples (x = sample 0) with streaming top-k; GIL released.");
  m.def("uncertainty", &asvp::run_uncertainty, py::arg("x"), py::arg("kind"), py::arg("from_logits"),
        py::arg("validate"), py::arg("exclude"), py::arg("scores_out"), py::arg("indices_out"), py::arg("k"),
        py::arg("threads"), py::arg("release_pages"), py::arg("chunk_bytes"), py::arg("use_cuda"),
        py::arg("stream"), py::arg("progress") = py::none(), py::arg("workspace") = py::none(),
        py::arg("cuda_device") = -1,
        "Score every row and/or select the k most uncertain rows. Outputs are written in place.");
}
