"""Cost of one MAML meta-training iteration: eager loop vs torch.func.vmap vs metafast.

One iteration = forward and backward of the meta-loss (the inner loop over T
tasks, the query loss, and the meta-gradient into the model's parameters), i.e.
a training step without the optimizer update.

Problems:
  sinusoid      the MAML paper's 1-40-40-1 ReLU regression, T=25 tasks, K=10 support, 10 query, α=0.01
  omniglot-mlp  the paper's non-convolutional Omniglot network 784-256-128-64-64-5 (no batch norm here),
                cross-entropy, 5-way 1-shot and 5-shot (5 or 25 support points), 5 query points per
                class, T=32, α=0.4; random inputs in [0, 1) stand in for images

Variants (one row each):
  eager             metafast.reference.meta_loss: a Python loop over tasks, autograd.grad(create_graph=...)
  l2l-style         a learn2learn-style loop (clone_module / update_module semantics, written here)
  metafast-maml     metafast.MAML clone()/adapt(), the drop-in for learn2learn's MAML
  vmap              torch.func: vmap over tasks of an inner loop of torch.func.grad + functional_call
  metafast-torch    metafast.BatchedMAML(backend="torch")
  metafast-fused    metafast.BatchedMAML(backend="fused") (skipped with a note when the extension is absent)
  metafast-auto     metafast.BatchedMAML(backend="auto"); the table notes which backend it picked
  compile-vmap      (CUDA, first order only) torch.compile of the vmap variant's meta-loss
  compile-func      torch.compile(torch.func.grad_and_value(vmap meta-loss)): the whole meta-gradient,
                    second order included, in one compiled call (the strongest stock baseline)
  metafast-compile  metafast.BatchedMAML(backend="compile")
  cudagraph-torch   (CUDA) the metafast-torch step (forward + backward) captured in one CUDA graph

Before anything is timed, every variant's meta-gradient is compared with the
eager loop's in float64 on a small case of the same problem, steps and order;
a variant that disagrees by more than 1e-8 (relative to the gradient's size)
is not timed and the script exits with status 1.

Usage:
  python benchmarks/bench_sinusoid.py --quick            # about a minute on a laptop CPU
  python benchmarks/bench_sinusoid.py --device cuda      # full grid on a GPU
"""
from __future__ import annotations

import argparse
from collections import OrderedDict
import os
import sys
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

metafast = common.import_metafast()

CHECK_TOL = 1e-8


# --------------------------------------------------------------------------- configurations

@dataclass(frozen=True)
class Config:
    problem: str          # "sinusoid" | "omniglot-mlp"
    sizes: tuple[int, ...]
    loss: str             # "mse" | "cross_entropy"
    tasks: int
    support: int          # support points per task
    query: int            # query points per task
    inner_lr: float
    steps: int
    first_order: bool
    ways: int = 0         # classification only
    shots: int = 0

    @property
    def order(self) -> str:
        return "1st" if self.first_order else "2nd"

    @property
    def label(self) -> str:
        shape = f"{self.ways}-way {self.shots}-shot" if self.ways else f"K={self.support} Q={self.query}"
        return f"T={self.tasks} {shape} steps={self.steps} {self.order}"


def sinusoid(steps: int, first_order: bool) -> Config:
    return Config("sinusoid", (1, 40, 40, 1), "mse", tasks=25, support=10, query=10, inner_lr=0.01,
                  steps=steps, first_order=first_order)


def omniglot_mlp(shots: int, steps: int, first_order: bool) -> Config:
    ways = 5
    return Config("omniglot-mlp", (784, 256, 128, 64, 64, ways), "cross_entropy", tasks=32, support=ways * shots,
                  query=ways * 5, inner_lr=0.4, steps=steps, first_order=first_order, ways=ways, shots=shots)


def configs(quick: bool, steps: list[int], orders: list[bool], problems: list[str],
            tasks: list[int] | None = None) -> list[Config]:
    out: list[Config] = []
    if "sinusoid" in problems:
        out += [replace(sinusoid(s, fo), tasks=t) for t in (tasks or [25]) for s in steps for fo in orders]
    if "omniglot-mlp" in problems:
        if quick:  # one inner step, second order only (plus first order when asked for alone)
            o_steps = [min(steps)]
            o_orders = [False] if False in orders else orders
        else:
            o_steps, o_orders = steps, orders
        out += [omniglot_mlp(k, s, fo) for k in (1, 5) for s in o_steps for fo in o_orders]
    return out


# --------------------------------------------------------------------------- data

@dataclass
class Batch:
    sx: torch.Tensor
    sy: torch.Tensor
    qx: torch.Tensor
    qy: torch.Tensor


def make_batch(cfg: Config, device: torch.device, dtype: torch.dtype, tasks: int | None = None,
               seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    t = tasks or cfg.tasks
    if cfg.problem == "sinusoid":
        b = metafast.data.Sinusoid().sample(num_tasks=t, shots=cfg.support, queries=cfg.query, generator=g,
                                            device="cpu", dtype=dtype)
        sx, sy, qx, qy = b.support_x, b.support_y, b.query_x, b.query_y
    else:
        d = cfg.sizes[0]
        sx = torch.rand(t, cfg.support, d, generator=g, dtype=dtype)
        qx = torch.rand(t, cfg.query, d, generator=g, dtype=dtype)
        sy = torch.arange(cfg.ways).repeat_interleave(cfg.shots).expand(t, -1).contiguous()
        qy = torch.arange(cfg.ways).repeat_interleave(cfg.query // cfg.ways).expand(t, -1).contiguous()
    return Batch(*(x.to(device) for x in (sx, sy, qx, qy)))


def make_model(cfg: Config, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return metafast.nn.MLP(list(cfg.sizes), activation="relu").to(device=device, dtype=dtype)


# --------------------------------------------------------------------------- variants
# A builder returns (step, info): step() zeroes the parameters' gradients and runs one
# forward + backward of the meta-loss, leaving the meta-gradient in p.grad.

class Skip(Exception):
    """The variant does not apply here (reason in the message)."""


def _zero(params):
    for p in params:
        p.grad = None


def build_eager(model, b: Batch, cfg: Config):
    params = list(model.parameters())

    def step():
        _zero(params)
        loss = metafast.reference.meta_loss(model, b.sx, b.sy, b.qx, b.qy, inner_lr=cfg.inner_lr,
                                            inner_steps=cfg.steps, first_order=cfg.first_order, loss=cfg.loss)
        loss.backward()

    return step, {}


def _task_loss_fn(loss: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if loss == "mse":
        return F.mse_loss
    return lambda out, y: F.cross_entropy(out, y)


def vmap_meta_loss(model, cfg: Config) -> Callable[..., torch.Tensor]:
    """The torch.func formulation: vmap over tasks of a differentiable inner loop."""
    meta_loss = functional_meta_loss(model, cfg)
    return lambda sx, sy, qx, qy: meta_loss(dict(model.named_parameters()), sx, sy, qx, qy)


def build_vmap(model, b: Batch, cfg: Config):
    params = list(model.parameters())
    fn = vmap_meta_loss(model, cfg)

    def step():
        _zero(params)
        fn(b.sx, b.sy, b.qx, b.qy).backward()

    return step, {}


def _batched_maml(model, cfg: Config, backend: str, **kwargs):
    try:
        return metafast.BatchedMAML(model, inner_lr=cfg.inner_lr, inner_steps=cfg.steps,
                                    first_order=cfg.first_order, meta_sgd=False, loss=cfg.loss, backend=backend,
                                    **kwargs)
    except Exception as exc:  # the extension may be absent, or the model not served
        raise Skip(f"BatchedMAML(backend={backend!r}) unavailable: {_short(exc)}") from exc


def build_metafast(backend: str):
    def build(model, b: Batch, cfg: Config):
        meta = _batched_maml(model, cfg, backend)
        params = list(model.parameters())
        info: dict[str, Any] = {}

        def step():
            _zero(params)
            out = meta(b.sx, b.sy, b.qx, b.qy)
            out.loss.backward()

        try:
            step()  # fail here (→ skip) rather than inside the timer
        except Exception as exc:
            raise Skip(f"backend {backend!r} raised: {_short(exc)}") from exc
        info["backend_used"] = getattr(meta, "backend_used", None)
        return step, info

    return build


def _l2l_clone(module):
    """learn2learn's clone_module semantics, written here: a shallow copy whose
    parameters are differentiable clones and whose buffers are copies."""
    clone = module.__new__(type(module))
    clone.__dict__ = module.__dict__.copy()
    clone._parameters = OrderedDict((k, None if p is None else p.clone()) for k, p in module._parameters.items())
    clone._buffers = OrderedDict((k, None if v is None else v.clone()) for k, v in module._buffers.items())
    clone._modules = OrderedDict((k, None if m is None else _l2l_clone(m)) for k, m in module._modules.items())
    return clone


def _l2l_update(module, updates):
    """learn2learn's update_module semantics: p ← p + u, module by module."""
    updates = iter(updates)

    def visit(m):
        for k, p in m._parameters.items():
            if p is not None:
                m._parameters[k] = p + next(updates)
        for sub in m._modules.values():
            if sub is not None:
                visit(sub)

    visit(module)


def _per_task_loop(model, b: Batch, cfg: Config, clone, adapt):
    """A learn2learn-style meta-iteration: one task at a time, clone then adapt."""
    params = list(model.parameters())
    loss_fn = _task_loss_fn(cfg.loss)

    def step():
        _zero(params)
        total = 0.0
        for t in range(b.sx.shape[0]):
            learner = clone()
            for _ in range(cfg.steps):
                adapt(learner, loss_fn(learner(b.sx[t]), b.sy[t]))
            total = total + loss_fn(learner(b.qx[t]), b.qy[t])
        (total / b.sx.shape[0]).backward()

    return step, {}


def build_l2l_style(model, b: Batch, cfg: Config):
    def adapt(learner, loss):
        grads = torch.autograd.grad(loss, list(learner.parameters()), create_graph=not cfg.first_order)
        _l2l_update(learner, [-cfg.inner_lr * g for g in grads])

    return _per_task_loop(model, b, cfg, lambda: _l2l_clone(model), adapt)


def build_metafast_maml(model, b: Batch, cfg: Config):
    maml = metafast.MAML(model, lr=cfg.inner_lr, first_order=cfg.first_order)
    return _per_task_loop(model, b, cfg, maml.clone, lambda learner, loss: learner.adapt(loss))


def build_compile_vmap(model, b: Batch, cfg: Config):
    if b.sx.device.type != "cuda":
        raise Skip("CUDA only")
    if not cfg.first_order:
        raise Skip("first order only (torch.compile cannot trace double backward)")
    params = list(model.parameters())
    compiled = torch.compile(vmap_meta_loss(model, cfg))

    def step():
        _zero(params)
        compiled(b.sx, b.sy, b.qx, b.qy).backward()

    try:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    except Exception as exc:
        raise Skip(f"n/a: torch.compile failed: {_short(exc)}") from exc
    return step, {}


def build_compile_func(model, b: Batch, cfg: Config):
    """torch.func's meta-gradient compiled whole; the gradients are written into
    p.grad as a backward would (the first call compiles, 20-60 s)."""
    params = dict(model.named_parameters())
    compiled = torch.compile(torch.func.grad_and_value(functional_meta_loss(model, cfg)))

    def step():
        grads, _ = compiled({n: p.detach() for n, p in params.items()}, b.sx, b.sy, b.qx, b.qy)
        for n, p in params.items():
            p.grad = grads[n]

    try:
        step()
    except Exception as exc:
        raise Skip(f"n/a: torch.compile failed: {_short(exc)}") from exc
    return step, {}


def functional_meta_loss(model, cfg: Config):
    """f(params, sx, sy, qx, qy): the mean query loss of vmap over tasks of an inner
    loop of torch.func.grad, the parameters an argument (what grad differentiates)."""
    loss_fn = _task_loss_fn(cfg.loss)

    def task_loss(params, x, y):
        return loss_fn(functional_call(model, params, (x,)), y)

    def one_task(params, sx, sy, qx, qy):
        for _ in range(cfg.steps):
            g = grad(task_loss)(params, sx, sy)
            if cfg.first_order:
                g = {k: v.detach() for k, v in g.items()}
            params = {k: params[k] - cfg.inner_lr * g[k] for k in params}
        return task_loss(params, qx, qy)

    def meta_loss(params, sx, sy, qx, qy):
        return vmap(one_task, in_dims=(None, 0, 0, 0, 0))(params, sx, sy, qx, qy).mean()

    return meta_loss


def build_cudagraph_torch(model, b: Batch, cfg: Config):
    """Whole-step capture: BatchedMAML(backend="torch") forward + backward in one CUDA graph.

    Inputs are the static tensors in ``b``; the meta-gradient lands in the p.grad
    tensors allocated during capture, overwritten by every replay.
    """
    if b.sx.device.type != "cuda":
        raise Skip("CUDA only")
    # check_inputs=False: the input checks read values back to the host, which capture forbids.
    meta = _batched_maml(model, cfg, "torch", check_inputs=False)
    params = list(model.parameters())
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up outside capture (lazy init, autograd's stream bookkeeping)
                _zero(params)
                meta(b.sx, b.sy, b.qx, b.qy).loss.backward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        _zero(params)
        with torch.cuda.graph(graph):
            static_loss = meta(b.sx, b.sy, b.qx, b.qy).loss
            static_loss.backward()
        graph.replay()
        torch.cuda.synchronize()
    except Exception as exc:
        torch.cuda.synchronize()
        raise Skip(f"n/a: capture failed: {_short(exc)}") from exc

    def step():
        graph.replay()

    step._keepalive = (graph, static_loss, meta)  # type: ignore[attr-defined]
    return step, {"backend_used": "torch (CUDA graph)"}


CUDA_ONLY = ("compile-vmap", "cudagraph-torch")

VARIANTS: dict[str, Callable] = {
    "eager": build_eager,
    "l2l-style": build_l2l_style,
    "metafast-maml": build_metafast_maml,
    "vmap": build_vmap,
    "metafast-torch": build_metafast("torch"),
    "metafast-fused": build_metafast("fused"),
    "metafast-auto": build_metafast("auto"),
    "compile-vmap": build_compile_vmap,
    "compile-func": build_compile_func,
    "metafast-compile": build_metafast("compile"),
    "cudagraph-torch": build_cudagraph_torch,
}


def _s(ms: float | None) -> float | None:
    return None if ms is None else ms / 1e3


def _short(exc: BaseException, limit: int = 160) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- correctness

def check_cfg(cfg: Config) -> Config:
    """The small float64 case on which meta-gradients are compared."""
    return replace(cfg, tasks=3)


def meta_gradient(name: str, cfg: Config, device: torch.device) -> list[torch.Tensor]:
    small = check_cfg(cfg)
    model = make_model(small, device, torch.float64, seed=1)
    b = make_batch(small, device, torch.float64, seed=1)
    step, _ = VARIANTS[name](model, b, small)
    step()
    step()  # a second call: graph replays and compiled code paths run as in timing
    if device.type == "cuda":
        torch.cuda.synchronize()
    grads = []
    for n, p in model.named_parameters():
        if p.grad is None:
            raise AssertionError(f"{name}: no gradient reached {n}")
        grads.append(p.grad.detach().clone())
    return grads


def gradient_error(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    """max |g - g_ref| / max(1, max |g_ref|) over all parameters."""
    scale = max(1.0, max(r.abs().max().item() for r in ref))
    return max((g - r).abs().max().item() for g, r in zip(grads, ref)) / scale


# --------------------------------------------------------------------------- FLOPs

def count_flops(cfg: Config, device: torch.device) -> int | None:
    """Matmul FLOPs of one iteration, as torch.utils.flop_counter counts them on
    the metafast-torch variant (the same count is used for every variant)."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        step, _ = build_metafast("torch")(make_model(cfg, device, torch.float32), make_batch(cfg, device, torch.float32),
                                          cfg)
        with FlopCounterMode(display=False) as counter:
            step()
        return int(counter.get_total_flops())
    except Exception:  # the count is informative; a variant that cannot run is reported elsewhere
        return None


def single_core_sgemm_gflops(device: torch.device, seconds: float = 1.0) -> float | None:
    """One thread's float32 matmul rate (2048², torch's BLAS): what a core
    reaches with fused multiply-adds in a tuned library, the yardstick for the
    kernels' GFLOP/s per core."""
    if device.type != "cpu":
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        a @ b
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            n += 1
        return 2 * 2048 ** 3 * n / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--quick", action="store_true",
                   help="min_run_time 0.3 s and, for omniglot-mlp, one inner step, second order only")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 5], help="inner steps to benchmark")
    p.add_argument("--order", choices=("1", "2", "both"), default="both", help="first, second or both orders")
    p.add_argument("--problems", nargs="+", choices=("sinusoid", "omniglot-mlp"),
                   default=["sinusoid", "omniglot-mlp"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--min-run-time", type=float, default=None,
                   help="seconds of timing per row (default 2, or 0.3 with --quick)")
    p.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                   help="torch CPU threads; several (e.g. 1 2) time every row at each, for thread scaling")
    p.add_argument("--tasks", type=int, nargs="+", default=None,
                   help="sinusoid meta-batch sizes (default: the paper's 25)")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/sinusoid_<device>_<date>.json)")
    p.add_argument("--no-check", action="store_true", help="skip the float64 meta-gradient check (not advised)")
    return p.parse_args(argv)


@dataclass(frozen=True)
class Run:
    """What every row of one invocation shares."""
    device: torch.device
    thread_counts: list[int]
    min_run_time: float


def select_variants(requested: list[str], device: torch.device) -> list[str]:
    """The variants to run, in VARIANTS' order: eager always (the reference of the
    check and of the speedups), the CUDA-only ones only on CUDA (with a note)."""
    names = [n for n in VARIANTS if n in requested]
    if "eager" not in names:
        names.insert(0, "eager")
    if device.type != "cuda":
        dropped = [n for n in names if n in CUDA_ONLY]
        names = [n for n in names if n not in CUDA_ONLY]
        if dropped:
            print(f"note: {', '.join(dropped)} run on CUDA only")
    return names


def describe_environment(run: Run) -> dict[str, Any]:
    """The result file's environment record (with the single-core sgemm rate), printed in brief."""
    env = common.environment(run.device, run.thread_counts[0])
    env["thread_counts"] = run.thread_counts
    sgemm = single_core_sgemm_gflops(run.device)
    env["single_core_sgemm_gflops"] = sgemm
    print(f"device: {env['device_name']} ({run.device}), torch {env['torch']}, metafast {env.get('metafast')}, "
          f"threads {run.thread_counts}, min_run_time {run.min_run_time} s")
    if sgemm:
        print(f"single-core float32 sgemm (torch's BLAS, 2048²): {sgemm:.1f} GFLOP/s")
    if run.device.type == "cpu":
        print("note: on the CPU peak memory is n/a (no per-call allocator statistics); "
              "the process's max RSS is in the JSON")
    return env


def variant_rows(cfg: Config, name: str, flops: int | None, group: str, thread_counts: list[int]) -> list[dict]:
    """One row per thread count for variant ``name`` on ``cfg``, status "ok" until told otherwise."""
    base: dict[str, Any] = {
        "problem": cfg.problem, "config": cfg.label, "variant": name,
        "tasks": cfg.tasks, "support": cfg.support, "query": cfg.query, "ways": cfg.ways or None,
        "shots": cfg.shots or None, "steps": cfg.steps, "order": cfg.order, "inner_lr": cfg.inner_lr,
        "loss": cfg.loss, "sizes": list(cfg.sizes), "flops": flops, "status": "ok",
    }
    return [dict(base, _group=group, threads=th) for th in thread_counts]


def mark(rows: list[dict], name: str, status: str) -> None:
    for r in rows:
        r["status"] = status
    print(f"  {name:16s} {status}")


def check_variant(name: str, cfg: Config, device: torch.device, ref_grads: list[torch.Tensor] | None,
                  rows: list[dict]) -> bool:
    """Records the variant's meta-gradient error against eager's in its rows;
    False (rows marked) when it exceeds CHECK_TOL. True without a reference."""
    if ref_grads is None:
        return True
    err = 0.0 if name == "eager" else gradient_error(meta_gradient(name, cfg, device), ref_grads)
    for r in rows:
        r["check_rel_err"] = err
    if not err <= CHECK_TOL:
        mark(rows, name, f"CHECK FAILED: meta-gradient differs from eager by {err:.2e} (> {CHECK_TOL})")
        return False
    return True


def time_row(step: Callable[[], None], row: dict, name: str, cfg: Config, flops: int | None, run: Run) -> None:
    """Times ``step`` at ``row["threads"]`` threads into ``row`` (after two warm-up calls)."""
    th = row["threads"]
    step()
    step()  # warm-up
    timing = common.time_fn(step, min_run_time=run.min_run_time, threads=th,
                            label=cfg.problem, sub_label=cfg.label, description=name)
    row.update(median_ms=timing.median_s * 1e3, iqr_ms=timing.iqr_s * 1e3,
               mean_ms=timing.mean_s * 1e3, blocks=timing.runs, calls_per_block=timing.per_run)
    if flops:
        row["gflops"] = flops / timing.median_s / 1e9
        row["gflops_per_core"] = row["gflops"] / th if run.device.type == "cpu" else None


def add_memory(step: Callable[[], None], row: dict, device: torch.device) -> None:
    mem = common.peak_memory(step, device)
    row["peak_mib"] = mem["peak_mib"]
    if device.type == "cuda":
        row["peak_total_mib"] = mem["peak_total_mib"]


def print_timed(name: str, row: dict) -> None:
    print(f"  {name:16s} {row['threads']:2d} thr {row['median_ms']:9.3f} ms"
          + (f"  {row['gflops']:6.1f} GFLOP/s" if row.get("gflops") else "")
          + (f"  ({row['backend_used']})" if row.get("backend_used") else ""))


def time_variant(name: str, cfg: Config, flops: int | None, run: Run, rows: list[dict],
                 results: dict[tuple[str, int], dict]) -> None:
    """Builds the variant in float32 and times it at each thread count (one row
    each, entered in ``results`` as it completes); peak memory on the first
    count, thread scaling against it on the others."""
    model = make_model(cfg, run.device, torch.float32)
    b = make_batch(cfg, run.device, torch.float32)
    step, info = VARIANTS[name](model, b, cfg)
    for row in rows:
        torch.set_num_threads(row["threads"])
        row.update(info)
        time_row(step, row, name, cfg, flops, run)
        if row is rows[0]:
            add_memory(step, row, run.device)
        else:
            row["thread_scaling"] = rows[0]["median_ms"] / row["median_ms"]
        results[name, row["threads"]] = row
        print_timed(name, row)


def run_variant(name: str, cfg: Config, flops: int | None, run: Run, ref_grads: list[torch.Tensor] | None,
                rows: list[dict], results: dict[tuple[str, int], dict]) -> bool:
    """Checks, then times, one variant; True when it failed its check or raised (a Skip is no failure)."""
    try:
        if not check_variant(name, cfg, run.device, ref_grads, rows):
            return True
        time_variant(name, cfg, flops, run, rows, results)
    except Skip as exc:
        mark(rows, name, f"skipped: {exc}")
    except Exception as exc:
        mark(rows, name, f"error: {_short(exc, 300)}")
        traceback.print_exc()
        return True
    finally:
        torch.set_num_threads(run.thread_counts[0])
    return False


def run_config(cfg: Config, names: list[str], run: Run, check: bool) -> tuple[list[dict], bool]:
    """Every variant on one configuration: (its rows, whether any variant failed)."""
    group = f"{cfg.problem} {cfg.label}"
    print(f"\n== {group}")
    ref_grads = meta_gradient("eager", cfg, run.device) if check else None
    flops = count_flops(cfg, run.device)
    rows: list[dict] = []
    results: dict[tuple[str, int], dict] = {}
    failed = False
    for name in names:
        vrows = variant_rows(cfg, name, flops, group, run.thread_counts)
        rows.extend(vrows)
        failed |= run_variant(name, cfg, flops, run, ref_grads, vrows, results)
    common.add_speedups(list(results.values()), name_key="variant", time_key="median_ms", group=("threads",))
    return rows, failed


def table_row(r: dict, first_threads: int) -> dict[str, Any]:
    """The printed cells of one result row."""
    gflops = None if r.get("gflops") is None else (
        f"{r['gflops']:.1f}" + (f" ({r['gflops_per_core']:.1f}/core)" if r.get("gflops_per_core")
                                and r["threads"] > 1 else ""))
    mem_na = r.get("median_ms") and r.get("peak_mib") is None and r["threads"] == first_threads
    return {
        "_group": r["_group"], "problem": r["problem"], "config": r["config"], "variant": r["variant"],
        "threads": str(r["threads"]),
        "median": common.fmt_ms(_s(r.get("median_ms"))), "iqr": common.fmt_ms(_s(r.get("iqr_ms"))),
        "eager": common.fmt_ratio(r.get("speedup_vs_eager")), "vmap": common.fmt_ratio(r.get("speedup_vs_vmap")),
        "gflops": gflops,
        "scaling": common.fmt_ratio(r.get("thread_scaling")),
        "mem": "n/a" if mem_na else (None if r.get("peak_mib") is None else f"{r['peak_mib']:.1f}"),
        "err": None if r.get("check_rel_err") is None else f"{r['check_rel_err']:.0e}",
        "note": (r.get("backend_used") or "") if r["status"] == "ok" else r["status"],
    }


def table_columns(thread_counts: list[int]) -> list[tuple[str, str]]:
    """The table's (cell key, header) pairs; the threads and scaling columns only for several thread counts."""
    several = len(thread_counts) > 1
    columns = [("problem", "problem"), ("config", "config"), ("variant", "variant")]
    if several:
        columns.append(("threads", "threads"))
    columns += [("median", "median ms"), ("iqr", "IQR ms"), ("eager", "vs eager"), ("vmap", "vs vmap"),
                ("gflops", "GFLOP/s")]
    if several:
        columns.append(("scaling", f"vs {thread_counts[0]} thr"))
    return columns + [("mem", "peak MiB"), ("err", "grad err"), ("note", "note")]


def print_table(rows: list[dict], thread_counts: list[int]) -> None:
    print()
    table_rows = [table_row(r, thread_counts[0]) for r in rows]
    print(common.format_table(table_rows, table_columns(thread_counts)))


def write_results(args, run: Run, env: dict[str, Any], rows: list[dict], elapsed_s: float) -> None:
    """The result JSON (rows without their table grouping), at --out or the default path."""
    out = args.out or common.default_out_path("sinusoid", run.device)
    for r in rows:
        r.pop("_group", None)
    env["process_max_rss_mib"] = common.max_rss_mib()
    payload = {
        "benchmark": "maml-meta-training-iteration",
        "definition": "median wall time of one forward + backward of the meta-loss (no optimizer step)",
        "environment": env,
        "settings": {"quick": args.quick, "min_run_time_s": run.min_run_time, "threads": run.thread_counts,
                     "tasks": args.tasks or [25], "flops_counted_on": "metafast-torch (torch.utils.flop_counter)",
                     "check": not args.no_check, "check_tolerance": CHECK_TOL, "check_tasks": 3,
                     "check_dtype": "float64", "timed_dtype": "float32"},
        "elapsed_s": elapsed_s,
        "rows": rows,
    }
    common.write_json(out, payload)
    print(f"\nwrote {out}")


def main(argv=None) -> int:
    args = parse_args(argv)
    thread_counts = list(dict.fromkeys(args.threads))
    run = Run(device=common.resolve_device(args.device), thread_counts=thread_counts,
              min_run_time=args.min_run_time if args.min_run_time is not None else (0.3 if args.quick else 2.0))
    torch.set_num_threads(thread_counts[0])
    orders = {"1": [True], "2": [False], "both": [True, False]}[args.order]
    cfgs = configs(args.quick, sorted(set(args.steps)), orders, args.problems, args.tasks)
    names = select_variants(args.variants, run.device)
    env = describe_environment(run)

    rows: list[dict[str, Any]] = []
    failed = False
    t_start = time.perf_counter()
    for cfg in cfgs:
        cfg_rows, cfg_failed = run_config(cfg, names, run, check=not args.no_check)
        rows += cfg_rows
        failed |= cfg_failed
    print_table(rows, thread_counts)
    write_results(args, run, env, rows, time.perf_counter() - t_start)
    if failed:
        print("error: some variants failed their meta-gradient check or raised (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
