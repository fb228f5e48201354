// Lets one header of math and per-task algorithms compile for the host (g++)
// and the device (nvcc). The CPU and CUDA kernels run the *same* code; only
// how work is split across lanes differs (kernels/core/lanes.h).
#pragma once
#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define MF_HD __host__ __device__ __forceinline__
#else
#define MF_HD inline
#endif

// Vectorization hints for the host compiler (g++ -fopenmp-simd). A SIMD sum
// reassociates, so the CPU may differ from the GPU in the last bits.
#define MF_PRAGMA(x) _Pragma(#x)
#if defined(__CUDACC__)
#define MF_SIMD
#define MF_SIMD_SUM(v)
#else
#define MF_SIMD MF_PRAGMA(omp simd)
#define MF_SIMD_SUM(v) MF_PRAGMA(omp simd reduction(+ : v))
#endif

namespace metafast {

MF_HD float mf_exp(float x) { return expf(x); }
MF_HD double mf_exp(double x) { return exp(x); }
MF_HD float mf_log(float x) { return logf(x); }
MF_HD double mf_log(double x) { return log(x); }
MF_HD float mf_tanh(float x) { return tanhf(x); }
MF_HD double mf_tanh(double x) { return tanh(x); }

// A quiet NaN of T (host and device), and a NaN test that needs no <cmath>
// overload set (the build never uses -ffast-math, which would break both).
template <typename T>
MF_HD T mf_nan() { return T(__builtin_nan("")); }
template <typename T>
MF_HD auto mf_isnan(T x) { return x != x; }  // bool, or a lane mask for a TaskPack

// Data-dependent choices, written lane-wise so that the same math runs on a
// scalar (one task) and on a TaskPack (one task per SIMD lane, kernels/core/task_pack.h,
// which overloads these for its masks).
template <typename T>
MF_HD T mf_select(bool c, T a, T b) { return c ? a : b; }
MF_HD bool mf_any(bool c) { return c; }
MF_HD bool mf_or(bool a, bool b) { return a || b; }

// The type of a class label: one int64 per task (a pack of them for a TaskPack).
template <typename T>
struct LabelType {
  using type = int64_t;
};
template <typename T>
using label_t = typename LabelType<T>::type;
MF_HD bool label_is(int64_t label, int64_t c) { return label == c; }

}  // namespace metafast
