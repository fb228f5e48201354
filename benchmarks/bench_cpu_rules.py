"""The measurements behind metafast's two CPU choices, over a sweep of MLP sizes.

1. Inside the fused CPU kernel: task packs (one task per SIMD lane) or one task
   at a time per thread (METAFAST_CPU_KERNEL=packed|per-task forces either).
   The kernel picks packs while a pack's scratch fits kMaxPackScratch
   (csrc/common/cpu_driver.h).
2. BatchedMAML(backend="auto") on the CPU: the fused kernel or the torch
   backend. auto picks the kernel while parameters x support examples per task
   stay within CPU_FUSED_MAX_WORK (metafast/algorithms/backends/fused.py).

For each size: the second-order meta-gradient iteration (forward + backward,
float32, T tasks) with each choice, timed interleaved (one call of each in turn,
median of the calls over --seconds), so that a busy machine slows all choices
alike. The table says which choice the rule makes and whether it was the faster.

Usage:
  python benchmarks/bench_cpu_rules.py --threads 2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

metafast = common.import_metafast()
from metafast.algorithms.backends.fused import CPU_FUSED_MAX_WORK  # noqa: E402

# (sizes, support examples K, inner steps S)
SWEEP = [
    ([1, 40, 40, 1], 10, 5),          # the MAML paper's sinusoid net
    ([1, 40, 40, 1], 10, 1),
    ([1, 100, 100, 1], 10, 5),
    ([16, 128, 128, 8], 10, 5),
    ([16, 128, 128, 8], 10, 1),
    ([32, 160, 160, 8], 10, 5),
    ([784, 64, 64, 5], 5, 1),
    ([64, 256, 256, 10], 10, 5),
    ([784, 256, 128, 64, 64, 5], 5, 1),   # the paper's Omniglot MLP, 5-way 1-shot
]


def problem(sizes, tasks, shots):
    loss = "mse" if sizes[-1] < 5 else "cross_entropy"
    torch.manual_seed(0)
    model = metafast.nn.MLP(sizes, "relu")
    x, qx = torch.randn(tasks, shots, sizes[0]), torch.randn(tasks, shots, sizes[0])
    if loss == "mse":
        y, qy = torch.randn(tasks, shots, sizes[-1]), torch.randn(tasks, shots, sizes[-1])
    else:
        y, qy = torch.randint(0, sizes[-1], (tasks, shots)), torch.randint(0, sizes[-1], (tasks, shots))
    return model, loss, (x, y, qx, qy)


def interleaved(fns: dict[str, Any], seconds: float) -> dict[str, float]:
    """Median ms of each function, called in turn until `seconds` have passed."""
    for f in fns.values():
        f()
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or min(len(v) for v in times.values()) < 5:
        for k, f in fns.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def with_kernel(kernel: str, fn):
    def run():
        os.environ["METAFAST_CPU_KERNEL"] = kernel
        try:
            fn()
        finally:
            os.environ.pop("METAFAST_CPU_KERNEL", None)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--tasks", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="timing per size and comparison")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/cpu_rules_<date>.json)")
    args = p.parse_args(argv)
    from metafast.ops._dispatch import kernel_unavailable_reason

    why = kernel_unavailable_reason(torch.device("cpu"))
    if why:
        print(f"error: the fused kernel is needed: {why}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    env = common.environment(torch.device("cpu"), args.threads)
    print(f"{env['cpu_model']}, {args.threads} threads, torch {env['torch']}, T={args.tasks}")
    rows = []
    for sizes, shots, steps in SWEEP:
        model, loss, (x, y, qx, qy) = problem(sizes, args.tasks, shots)
        params = sum(q.numel() for q in model.parameters())
        metas = {b: metafast.BatchedMAML(model, inner_lr=0.01, inner_steps=steps, loss=loss, backend=b)
                 for b in ("torch", "fused")}

        def iteration(meta):
            def run():
                model.zero_grad(set_to_none=True)
                meta(x, y, qx, qy).loss.backward()
            return run

        ms = interleaved({"fused-packed": with_kernel("packed", iteration(metas["fused"])),
                          "fused-per-task": with_kernel("per-task", iteration(metas["fused"])),
                          "fused-default": iteration(metas["fused"]),
                          "torch": iteration(metas["torch"])}, args.seconds)
        work = params * shots
        auto_pick = "fused" if work <= CPU_FUSED_MAX_WORK else "torch"
        kernel_best = min(("fused-packed", "fused-per-task"), key=ms.get)
        row = {"sizes": sizes, "shots": shots, "steps": steps, "tasks": args.tasks, "params": params,
               "work": work, "median_ms": ms, "auto_picks": auto_pick,
               "auto_ms": ms["fused-default"] if auto_pick == "fused" else ms["torch"],
               "fastest_ms": min(ms["fused-default"], ms["torch"]), "kernel_faster_path": kernel_best}
        rows.append(row)
        print(f"{str(sizes):28s} K={shots:2d} S={steps} P={params:7d} P*K={work:9d}  "
              + "  ".join(f"{k} {v:8.2f}" for k, v in ms.items())
              + f"  | auto: {auto_pick} ({row['auto_ms'] / row['fastest_ms']:.2f}x the fastest)", flush=True)
    out = args.out or os.path.join(common.RESULTS_DIR, f"cpu_rules_{time.strftime('%Y-%m-%d')}.json")
    common.write_json(out, {"benchmark": "cpu-backend-rules", "environment": env,
                            "settings": {"tasks": args.tasks, "seconds": args.seconds, "threads": args.threads,
                                         "dtype": "float32", "order": "second", "cpu_fused_max_work": CPU_FUSED_MAX_WORK},
                            "rows": rows})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
