// The error check after a CUDA launch (or before one: an earlier call's
// pending error is reported, not swallowed). Torch-free, so that .cu files
// can use it. The library links a static CUDA runtime: cudaGetLastError sees
// only this library's own calls' errors.
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace metafast {

// Throws std::runtime_error("<what>: <context>: <CUDA error>") if this
// library's CUDA runtime has an error pending (cudaGetLastError).
inline void check_launch(const char* what, const char* context) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + context + ": " + cudaGetErrorString(err));
}

}  // namespace metafast
