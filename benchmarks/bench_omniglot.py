"""Time one Omniglot meta-training iteration (forward + backward) of Conv-4.

Settings (the MAML paper's): 5-way 1-shot with 32 tasks and 1 or 5 inner steps,
20-way 1-shot with 16 tasks and 5 inner steps; first and second order.

Methods:
  eager        metafast.reference.meta_loss: the per-task Python loop with
               torch.autograd.grad (what most MAML code does)
  vmap         plain torch.func: functional_call + torch.func.grad for the inner
               steps, vmapped over tasks, then autograd for the meta-gradient
  compile-func torch.compile over torch.func.grad of the vmap version: the
               strongest stock baseline (second order compiles in torch 2.14;
               inexact through batch norm at second order, like vmap)
  batched      metafast.BatchedMAML(backend="auto")
  batched-torch  metafast.BatchedMAML(backend="torch")
  batched-loop   metafast.BatchedMAML(backend="loop")
  batched-compile  metafast.BatchedMAML(backend="compile")
  batched-long metafast.BatchedMAML(backend="auto", expected_iterations=CPU_COMPILE_MIN_ITERATIONS):
               "auto" told that a long training run follows (it may then compile)

Settings also include functorch's MAML-Omniglot example
(pytorch/pytorch functorch/examples/maml_omniglot: 3 x [conv 3x3 64, batch
norm, ReLU, max-pool 2], 5-way 5-shot, 15 queries per class, 32 tasks, 5
inner steps at 0.1). The first call of each row (warm-up: compilation for the
compiled rows) is reported in its own column.

Inputs are random images of the right shape (the cost does not depend on the
pixels).  Reports the median time per iteration, the speed-up against eager and
against vmap, and peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above
what was allocated before the iteration; on CPU the growth of the peak resident
set size (``ru_maxrss``) of a fresh process per row during the timed iterations
(with ``--no-isolate``, of this process: then only growth beyond earlier rows
shows, a lower bound).

    python benchmarks/bench_omniglot.py --quick            # CPU: a few minutes
    python benchmarks/bench_omniglot.py --device cuda

writes benchmarks/results/omniglot_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

metafast = common.import_metafast()  # the installed package (the source tree only when none is installed)
from metafast import reference  # noqa: E402
from metafast.nn.conv4 import Conv4  # noqa: E402

CONFIGS = {
    "5w1s-T32-1step": dict(ways=5, shots=1, tasks=32, steps=1),
    "5w1s-T32-5step": dict(ways=5, shots=1, tasks=32, steps=5),
    "20w1s-T16-5step": dict(ways=20, shots=1, tasks=16, steps=5),
    "functorch-5w5s": dict(ways=5, shots=5, tasks=32, steps=5, queries=15, inner_lr=0.1, model="functorch"),
}
METHODS = ("eager", "vmap", "compile-func", "batched", "batched-torch", "batched-loop", "batched-compile",
           "batched-long")
INNER_LR = 2.0  # the paper's 0.4 (5-way) / 0.1 (20-way) on a summed loss


# --------------------------------------------------------------------------- problem and steps
def make_problem(cfg: dict, device: torch.device, hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    T, N, K = cfg["tasks"], cfg["ways"], cfg["shots"]
    Q = cfg.get("queries", K)  # the MAML authors' code: K queries per class
    model = (functorch_net(N) if cfg.get("model") == "functorch" else Conv4(N, hidden=hidden)).to(device)
    sx = torch.rand(T, N * K, 1, 28, 28, generator=g).to(device)
    qx = torch.rand(T, N * Q, 1, 28, 28, generator=g).to(device)
    sy = torch.arange(N).repeat_interleave(K).expand(T, -1).contiguous().to(device)
    qy = torch.arange(N).repeat_interleave(Q).expand(T, -1).contiguous().to(device)
    return model, (sx, sy, qx, qy)


def functorch_net(ways: int) -> torch.nn.Module:
    """functorch's MAML-Omniglot network; its batch norms use batch statistics
    (the example calls replace_all_batch_norm_modules_)."""
    layers = []
    for i in range(3):
        layers += [torch.nn.Conv2d(1 if i == 0 else 64, 64, 3), torch.nn.BatchNorm2d(64, track_running_stats=False),
                   torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2)]
    return torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(64, ways))


def vmap_meta_loss(model, params: dict, batch, inner_lr: float, steps: int, first_order: bool):
    """The plain torch.func MAML: per-task inner loop under vmap."""
    sx, sy, qx, qy = batch

    def loss(p, x, y):
        return F.cross_entropy(functional_call(model, p, (x,)), y)

    def task(p, x, y, xq, yq):
        for _ in range(steps):
            g = torch.func.grad(loss)(p, x, y)
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            p = {k: p[k] - inner_lr * g[k] for k in p}
        return loss(p, xq, yq)

    return vmap(task, in_dims=(None, 0, 0, 0, 0))(params, sx, sy, qx, qy).mean()


def make_step(method: str, model, batch, steps: int, first_order: bool, inner_lr: float = INNER_LR):
    """A function that runs one meta-iteration and returns (loss, gradients)."""
    params = list(model.parameters())
    if method == "eager":
        def step():
            loss = reference.meta_loss(model, *batch, inner_lr=inner_lr, inner_steps=steps,
                                       first_order=first_order, loss="cross_entropy")
            return loss, torch.autograd.grad(loss, params)
    elif method == "vmap":
        named = dict(model.named_parameters())

        def step():
            loss = vmap_meta_loss(model, named, batch, inner_lr, steps, first_order)
            return loss, torch.autograd.grad(loss, params)
    elif method == "compile-func":
        names = [n for n, _ in model.named_parameters()]
        meta_grad = torch.compile(torch.func.grad_and_value(
            lambda p: vmap_meta_loss(model, p, batch, inner_lr, steps, first_order)))

        def step():
            grads, loss = meta_grad({n: p.detach() for n, p in model.named_parameters()})
            return loss, [grads[n] for n in names]
    elif method.startswith("batched"):
        backend = {"batched": "auto", "batched-torch": "torch", "batched-loop": "loop",
                   "batched-compile": "compile", "batched-long": "auto"}[method]
        long_run = metafast.algorithms.batched.CPU_COMPILE_MIN_ITERATIONS if method == "batched-long" else None
        meta = metafast.BatchedMAML(model, inner_lr=inner_lr, inner_steps=steps, first_order=first_order,
                                    loss="cross_entropy", backend=backend, expected_iterations=long_run)

        def step():
            loss = meta(*batch).loss
            return loss, torch.autograd.grad(loss, params)
        step.meta = meta
    else:
        raise ValueError(method)
    return step


# --------------------------------------------------------------------------- measuring
def measure(config: str, method: str, order: str, device: torch.device, hidden: int, quick: bool,
            runs: int, min_time: float) -> dict:
    cfg = CONFIGS[config]
    model, batch = make_problem(cfg, device, hidden)
    step = make_step(method, model, batch, cfg["steps"], order == "first", cfg.get("inner_lr", INNER_LR))
    rss0 = common.max_rss_mib()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        mem0 = torch.cuda.memory_allocated(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # BatchedMAML "auto" falling back to torch
        warnings.simplefilter("ignore", UserWarning)     # the compile backend's one-time note
        first = time.perf_counter()
        step()  # warm-up (vmap/autograd caches, cuDNN algorithm choice, compilation)
        common.synchronize(device)
        first = time.perf_counter() - first
        timing = common.time_fn(step, min_run_time=min_time, threads=torch.get_num_threads(), label="omniglot",
                                sub_label=f"{config} {order}", description=method, runs=runs if quick else None)
    if device.type == "cuda":
        mem = (torch.cuda.max_memory_allocated(device) - mem0) / 2**20
        mem_kind = "cuda max_memory_allocated"
    else:
        mem = common.max_rss_mib() - rss0
        mem_kind = "maxrss growth"
    return {"config": config, **cfg, "order": order, "method": method, "median_s": timing.median_s,
            "runs": timing.runs, "first_call_s": round(first, 2), "peak_mem_mib": round(mem, 1), "mem_kind": mem_kind,
            "backend_used": getattr(step, "meta", None) and step.meta.backend_used}


def measure_isolated(args_row: dict, threads: int | None) -> dict:
    """Run one row in a fresh Python process (for an honest CPU peak-RSS figure)."""
    cmd = [sys.executable, __file__, "--_row", json.dumps(args_row)]
    if threads:
        cmd += ["--threads", str(threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"row {args_row} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def check_gradients() -> dict:
    """Relative difference of each method's meta-gradient from eager's, per order.

    A small problem in float64 on CPU (3 tasks, 2 inner steps, 8 channels).  The
    plain vmap version is inexact at second order: the batching rule of batch
    norm's backward is not differentiated correctly (pytorch/functorch#534),
    which BatchedMAML avoids by differentiating the vmapped forward with
    torch.autograd.grad.
    """
    out = {}
    for order in ("first", "second"):
        cfg = dict(ways=5, shots=1, tasks=3, steps=2)
        model, batch = make_problem(cfg, torch.device("cpu"), 8)
        model = model.double()
        batch = (batch[0].double(), batch[1], batch[2].double(), batch[3])
        grads = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for m in [m for m in METHODS if "compile" not in m]:  # compiled rows: tests/test_compiled_backend.py
                _, g = make_step(m, model, batch, 2, order == "first")()
                grads[m] = torch.cat([x.flatten() for x in g])
        for m in [m for m in METHODS[1:] if "compile" not in m]:
            out[f"{m} {order}"] = ((grads[m] - grads["eager"]).norm() / grads["eager"].norm()).item()
    return out


# --------------------------------------------------------------------------- report
def print_table(rows: list[dict]) -> None:
    head = (f"{'setting':<17} {'order':<6} {'method':<16} {'median':>10} {'vs eager':>9} {'vs vmap':>8} "
            f"{'peak MiB':>9} {'first call':>10}")
    print(head)
    print("-" * len(head))
    for r in rows:
        se = common.fmt_ratio(r.get("speedup_vs_eager")) or "-"
        sv = common.fmt_ratio(r.get("speedup_vs_vmap")) or "-"
        t = r["median_s"]
        ts = f"{t * 1e3:.1f} ms" if t < 10 else f"{t:.2f} s"
        mem = "n/a" if r["peak_mem_mib"] is None else f"{r['peak_mem_mib']:.0f}"
        print(f"{r['config']:<17} {r['order']:<6} {r['method']:<16} {ts:>10} {se:>9} {sv:>8} {mem:>9} "
              f"{r.get('first_call_s', 0):>9.1f}s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (CPU, and CUDA when available)")
    p.add_argument("--quick", action="store_true", help="a fixed few runs per row instead of blocked_autorange")
    p.add_argument("--runs", type=int, default=3, help="timed runs per row with --quick")
    p.add_argument("--min-time", type=float, default=2.0, help="blocked_autorange min_run_time (s)")
    p.add_argument("--hidden", type=int, default=64, help="Conv-4 channels (64 in the paper)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--orders", nargs="+", default=["first", "second"], choices=["first", "second"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-isolate", action="store_true", help="CPU: measure rows in this process")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/omniglot_<device>_<date>.json)")
    p.add_argument("--_row", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def report_gradient_check() -> dict:
    err = check_gradients()
    print("meta-gradient vs eager (float64, 3 tasks, 2 steps), relative difference: "
          + ", ".join(f"{k} {v:.1e}" for k, v in err.items()))
    if err.get("vmap second", 0) > 1e-8:
        print("  note: plain vmap + torch.func.grad is inexact at second order through batch norm "
              "(pytorch/functorch#534); its times are for reference only")
    return err


def run_rows(a, device: torch.device) -> list[dict]:
    """Every (setting, order, method) row on ``device``, printed as it completes, with speed-ups."""
    rows = []
    print(f"\nOmniglot Conv-4 ({a.hidden} channels), one meta-iteration, on {common.device_name(device)} "
          f"({torch.get_num_threads()} threads)" if device.type == "cpu" else
          f"\nOmniglot Conv-4 ({a.hidden} channels), one meta-iteration, on {common.device_name(device)}")
    for config in a.configs:
        for order in a.orders:
            for method in a.methods:
                t0 = time.perf_counter()
                row = dict(config=config, method=method, order=order, device=str(device), hidden=a.hidden,
                           quick=a.quick, runs=a.runs, min_time=a.min_time)
                if device.type == "cpu" and not a.no_isolate:
                    r = measure_isolated(row, a.threads)
                else:
                    r = measure(config, method, order, device, a.hidden, a.quick, a.runs, a.min_time)
                rows.append(r)
                print(f"  {config} {order:<6} {method:<14} {r['median_s'] * 1e3:9.1f} ms  "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    common.add_speedups(rows, name_key="method", time_key="median_s", group=("config", "order"))
    return rows


def result_document(a, device: torch.device, err: dict, rows: list[dict]) -> dict:
    """The result file: the environment (from common.environment) under this file's field names, settings, rows."""
    env = common.environment(device, torch.get_num_threads())
    return {
        "benchmark": "omniglot meta-iteration (forward + backward), Conv-4",
        "device": env["device"], "device_name": env["device_name"],
        "threads": env["torch_threads"] if device.type == "cpu" else None,
        "torch_version": str(env["torch"]), "metafast_version": str(env["metafast"]),
        "metafast_build": env.get("metafast_build_info", {}), "python": env["python"], "platform": env["platform"],
        "date": env["date"], "quick": a.quick, "hidden": a.hidden,
        "inner_lr": INNER_LR, "gradient_check_rel_diff_vs_eager": err,
        "memory_note": ("cuda: torch.cuda.max_memory_allocated above the allocation before the iteration"
                        if device.type == "cuda" else
                        "cpu: growth of peak RSS (ru_maxrss) during warm-up and timed runs, "
                        + ("in this process (lower bound)" if a.no_isolate else "fresh process per row")),
        "rows": rows,
    }


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    if a._row:  # child process: one row, JSON on stdout
        r = json.loads(a._row)
        print(json.dumps(measure(r["config"], r["method"], r["order"], torch.device(r["device"]), r["hidden"],
                                 r["quick"], r["runs"], r["min_time"])))
        return 0

    devices = common.devices_for(a.device)
    err = report_gradient_check()
    for device in devices:
        rows = run_rows(a, device)
        print()
        print_table(rows)
        path = common.out_path(a.out, "omniglot", device, several=len(devices) > 1)
        common.write_json(path, result_document(a, device, err, rows))
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
