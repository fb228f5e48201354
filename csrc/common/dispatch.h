// dtype dispatch of the op bodies: f(T{}) with the C++ type of a ScalarType.
#pragma once
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/checks.h"

namespace metafast {

// float32 and float64.
template <typename F>
void dispatch_float(ScalarType t, const char* op, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    default: throw_value_error(op, ": unsupported dtype ", t);
  }
}

// float32, float64 and the 16-bit storage types (c10::Half, c10::BFloat16).
template <typename F>
void dispatch_float_and_16bit(ScalarType t, const char* op, F&& f) {
  switch (t) {
    case ScalarType::Half: return f(c10::Half{});
    case ScalarType::BFloat16: return f(c10::BFloat16{});
    default: return dispatch_float(t, op, f);
  }
}

}  // namespace metafast
