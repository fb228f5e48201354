// Input checks of the torch-facing layer, on the LibTorch stable ABI.
// MF_CHECK throws std::invalid_argument, which torch turns into a Python
// ValueError (the Python API raises ValueError for the same mistakes).
#pragma once
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <sstream>
#include <stdexcept>
#include <string>

namespace metafast {

using torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;

inline std::ostream& operator<<(std::ostream& os, IntArrayRef sizes) {
  os << '[';
  for (size_t i = 0; i < sizes.size(); ++i) os << (i ? ", " : "") << sizes[i];
  return os << ']';
}

inline std::ostream& operator<<(std::ostream& os, const torch::stable::Device& d) {
  switch (d.type()) {
    case torch::headeronly::DeviceType::CPU: os << "cpu"; break;
    case torch::headeronly::DeviceType::CUDA: os << "cuda"; break;
    case torch::headeronly::DeviceType::Meta: os << "meta"; break;
    default: os << "device type " << int(d.type());
  }
  if (d.index() >= 0) os << ':' << int(d.index());
  return os;
}

template <typename... Args>
[[noreturn]] void throw_value_error(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw std::invalid_argument(os.str());
}

#define MF_CHECK(cond, ...)                                      \
  do {                                                           \
    if (!(cond)) ::metafast::throw_value_error(__VA_ARGS__);     \
  } while (0)

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.device().type() == b.device().type() && a.get_device_index() == b.get_device_index();
}

inline bool same_sizes(IntArrayRef a, IntArrayRef b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

inline bool has_sizes(const Tensor& t, std::initializer_list<int64_t> want) {
  return same_sizes(t.sizes(), IntArrayRef(want));
}

}  // namespace metafast
