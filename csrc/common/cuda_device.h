// The CUDA device of an op body (see common/device.h): the device guard and
// the current stream, through the stable ABI.
#pragma once
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>

#include "common/device.h"

namespace metafast {

inline cudaStream_t current_cuda_stream(int32_t device_index) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream));
  return static_cast<cudaStream_t>(stream);
}

struct CudaDevice {
  static constexpr const char* kName = "CUDA";
  static constexpr const char* kWhere = "a CUDA device";
  static bool holds(const Tensor& t) { return t.is_cuda(); }
  // The tensor's device is the current one for the call.
  struct Guard {
    torch::stable::accelerator::DeviceGuard guard;
    explicit Guard(const Tensor& t) : guard(t.get_device_index()) {}
  };
  // The stream the call's kernels go on (torch's current one: no host
  // synchronisation, so a call can be captured in a CUDA graph).
  static cudaStream_t stream(const Tensor& t) { return current_cuda_stream(t.get_device_index()); }
};

}  // namespace metafast
