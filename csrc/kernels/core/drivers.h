// The loops that run an op's per-task algorithm over a meta-batch, written
// once for every op and every caller (the CPU kernels, tests/cpp):
//   run_tasks(lanes, a, begin, end)            tasks [begin, end), one after
//                                              another, each with `lanes`
//                                              (SerialLanes: the CPU's per-task path)
//   run_pack<Packed>(a, g, scratch)            pack g: tasks [g·W, g·W + W) of
//                                              the T, W = Packed::kWidth
//   run_packs<Packed>(a, begin, end, scratch)  packs [begin, end)
//   num_packs<Packed>(tasks)                   how many packs hold the tasks
// The GPU's driver, one thread block per task: kernels/core/cuda_driver.cuh.
// Threads over tasks or packs: common/cpu_driver.h (run_on_cpu).
//
// What an op provides (kernels/mlp/task.h and pack.h are the example):
//   - an argument struct Args with a.p.tasks, a.p.workspace (T*, [T, W]) and
//     a.p.workspace_stride (W);
//   - run_task(lanes, a, task, workspace) for each Args, found by
//     argument-dependent lookup: the per-task algorithm;
//   - for task packs, a class Packed with kWidth, run(a, first, n, scratch)
//     (tasks [first, first + n), n <= kWidth) and scratch_bytes(a).
#pragma once
#include <stdint.h>

#include "kernels/core/lanes.h"

namespace metafast {

template <typename Lanes, typename Args>
MF_HD void run_tasks(const Lanes& lanes, const Args& a, int64_t begin, int64_t end) {
  for (int64_t t = begin; t < end; ++t) run_task(lanes, a, int(t), a.p.workspace + t * a.p.workspace_stride);
}

template <typename Packed>
inline int64_t num_packs(int64_t tasks) {
  return (tasks + Packed::kWidth - 1) / Packed::kWidth;
}

template <typename Packed, typename Args>
inline void run_pack(const Args& a, int64_t pack, unsigned char* scratch) {
  const int64_t first = pack * Packed::kWidth, left = a.p.tasks - first;
  Packed::run(a, first, int(left < Packed::kWidth ? left : Packed::kWidth), scratch);
}

template <typename Packed, typename Args>
inline void run_packs(const Args& a, int64_t begin, int64_t end, unsigned char* scratch) {
  for (int64_t g = begin; g < end; ++g) run_pack<Packed>(a, g, scratch);
}

}  // namespace metafast
