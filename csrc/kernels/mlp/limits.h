// The limits of the fused MLP kernels, each written once: the host checks
// (ops/mlp_adapt/host.h) enforce them, the kernels rely on them, and the
// build copies the three kMax values into metafast/_build_config.py for the
// Python checks (metafast/ops/mlp_adapt.py: MAX_LAYERS, MAX_WIDTH, MAX_STEPS).
// CMakeLists.txt reads them as `constexpr <type> kMax<Name> = <digits>;`.
#pragma once
#include <stdint.h>

namespace metafast {

constexpr int kMaxLayers = 8;           // Linear layers: sizes lists 2 to kMaxLayers + 1 widths
constexpr int64_t kMaxWidth = 65536;    // a layer's width, in [1, kMaxWidth]
constexpr int64_t kMaxSteps = 1000;     // inner steps, in [1, kMaxSteps]
// The kernels index one layer's weights (d_l·d_{l-1}) and an activation
// matrix (examples · widest layer) with 32-bit ints: each must stay below this.
constexpr int64_t kIndexLimit = int64_t(1) << 31;

}  // namespace metafast
