// The devices an op's kernels run on, as an op body (ops/<op>/host.h) sees
// them: a name for messages, whether a tensor is there, and what guards a call
// (nothing on the CPU; the CUDA device guard: common/cuda_device.h).
#pragma once
#include "common/checks.h"

namespace metafast {

struct CpuDevice {
  static constexpr const char* kName = "CPU";
  static constexpr const char* kWhere = "the CPU";
  static bool holds(const Tensor& t) { return t.is_cpu(); }
  struct Guard {
    explicit Guard(const Tensor&) {}
  };
};

// "<op> (<device>): <what> must be on <where>", unless `t` is on Device.
template <typename Device>
void check_device(const Tensor& t, const char* op, const char* what) {
  MF_CHECK(Device::holds(t), op, " (", Device::kName, "): ", what, " must be on ", Device::kWhere);
}

}  // namespace metafast
