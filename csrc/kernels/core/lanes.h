// Lanes: who shares a task's work. A per-task algorithm (kernels/mlp/task.h)
// is written once over a Lanes type; loops are written
//   for (int64_t i = lanes.lane(); i < n; i += lanes.count())
// (int64_t: a flattened bound such as K·d may lie within count() of 2^31, so
// an int index would overflow on its last increment) and phases are
// separated by lanes.sync(); lanes.leader() does what one lane must (a sum in
// fixed order, a scalar output). kSerial picks a layer decomposition
// (kernels/mlp/layers.h): true, one lane's contiguous row-by-row loops; false,
// the register blocks the lanes share. kRowBlock: how many rows (examples or
// weight rows) one register block spans (kernels/mlp/layers.h).
//   SerialLanes  the CPU's per-task path: one lane does all of it.
//   BlockLanes   the GPU: a thread block's threads, one block per task.
//   PackLanes    the CPU's task packs (kernels/core/task_pack.h): one lane
//                whose every scalar is a vector of W tasks.
// tests/cpp/lanes_test.cpp runs the same code with N CPU threads as lanes
// (sync() a barrier), comparing with SerialLanes and under ThreadSanitizer.
// The drivers that run a task, a pack or a block per task: kernels/core/drivers.h.
#pragma once
#include "kernels/core/portability.h"

namespace metafast {

struct SerialLanes {
  static constexpr bool kSerial = true;
  static constexpr int kRowBlock = 1;  // unused: the serial layers go row by row
  MF_HD int lane() const { return 0; }
  MF_HD int count() const { return 1; }
  MF_HD void sync() const {}
  MF_HD bool leader() const { return true; }
};

// The lanes a pack runs with: one, taking the GPU's decomposition of each
// layer (parallel_forward_layer / parallel_backward_layer: register blocks of
// kBlock outputs, each summed in a register) rather than SerialLanes'
// row-by-row outer products, which load and store every gradient element once
// per example. For a pack each register is a full vector and nothing is
// stored until the sum is done.
struct PackLanes {
  static constexpr bool kSerial = false;
  // Two rows per block: a pack's weights (a vector per scalar) outgrow the L1
  // cache, so sharing each load halves the traffic from L2; at two, the
  // tangent passes' 16 sums and their operands still fit the 32 registers.
  static constexpr int kRowBlock = 2;
  int lane() const { return 0; }
  int count() const { return 1; }
  void sync() const {}
  bool leader() const { return true; }
};

#if defined(__CUDACC__)
struct BlockLanes {
  static constexpr bool kSerial = false;
  static constexpr int kRowBlock = 1;  // many small work items for the block's threads
  __device__ __forceinline__ int lane() const { return threadIdx.x; }
  __device__ __forceinline__ int count() const { return blockDim.x; }
  __device__ __forceinline__ void sync() const { __syncthreads(); }
  __device__ __forceinline__ bool leader() const { return threadIdx.x == 0; }
};
#endif

}  // namespace metafast
