"""Meta-training iterations per second on 1 and N processes (metafast.distributed: DDP).

One iteration is a step of ``python -m metafast train``: draw the whole meta-batch
from the seeded generator and keep this rank's share, BatchedMAML forward and
backward (DDP all-reduces the meta-gradient), the all-reduce of the loss and
accuracy, and Adam's step.

Problems (second order, the MAML paper's settings):
  omniglot   Conv-4 (--hidden channels), 5-way 1-shot, meta-batch 32, 1 inner step, inner rate 2.0;
             random 28x28 images stand in for Omniglot (the cost does not depend on the pixels)
  sinusoid   1-40-40-1 ReLU MLP, meta-batch 25, K=10 support and query points, 1 inner step, rate 0.01

Rows:
  CPU   1 process x 1 thread (no process group); 1 process x N threads; N processes x 1 thread (gloo)
  CUDA  1 process (no process group); 1 rank with NCCL (DDP's cost on one GPU); one rank per GPU
        when there are several

Every process of a row is new (metafast.distributed.spawn); rank 0 times --iterations
iterations after --warmup. On a machine with N cores, N processes share them with
everything else that runs there: the speed-up is bounded by the cores.

    python benchmarks/bench_distributed.py                  # CPU (and CUDA when available)
    python benchmarks/bench_distributed.py --quick          # fewer iterations, Conv-4 with 32 channels

writes benchmarks/results/distributed_<device>_<date>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

metafast = common.import_metafast()
from metafast import distributed  # noqa: E402

PROBLEMS = {
    "omniglot": dict(ways=5, shots=1, tasks=32, steps=1, inner_lr=2.0),
    "sinusoid": dict(tasks=25, shots=10, steps=1, inner_lr=0.01),
}


def _problem(name: str, hidden: int, device: torch.device):
    """(BatchedMAML, draw(generator) -> the whole meta-batch on the device)."""
    cfg = PROBLEMS[name]
    torch.manual_seed(0)
    if name == "omniglot":
        n, k, t = cfg["ways"], cfg["shots"], cfg["tasks"]
        model = metafast.nn.Conv4(n, hidden=hidden)
        labels = torch.arange(n, device=device).repeat_interleave(k).expand(t, -1).contiguous()

        def draw(g):
            x = torch.rand(t, 2 * n * k, 1, 28, 28, generator=g).to(device)
            return x[:, :n * k], labels, x[:, n * k:], labels

        loss = "cross_entropy"
    else:
        model = metafast.nn.MLP([1, 40, 40, 1])
        tasks = metafast.data.Sinusoid()

        def draw(g):
            b = tasks.sample(cfg["tasks"], shots=cfg["shots"], queries=cfg["shots"], generator=g)
            return tuple(x.to(device) for x in (b.support_x, b.support_y, b.query_x, b.query_y))

        loss = "mse"
    meta = metafast.BatchedMAML(model.to(device), inner_lr=cfg["inner_lr"], inner_steps=cfg["steps"], loss=loss,
                                backend="auto").to(device)
    return meta, draw, cfg["tasks"]


def measure(problem: str, hidden: int, device_name: str, threads: int, warmup: int, iterations: int,
            out: str | None = None) -> dict:
    """Time ``iterations`` training iterations in this process (a rank when launched)."""
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore", RuntimeWarning)  # "auto" choosing the torch backend for Conv-4
    with distributed.session(device_name) as ctx:
        meta, draw, tasks = _problem(problem, hidden, ctx.device)
        ddp, share, weight = ctx.wrap(meta), ctx.share(tasks), ctx.weight(tasks)
        opt = torch.optim.Adam(meta.parameters(), 1e-3)
        g = torch.Generator().manual_seed(0)

        def step():
            o = ddp(*(x[share] for x in draw(g)))
            opt.zero_grad(set_to_none=True)
            (o.loss if weight == 1 else o.loss * weight).backward()
            stats = torch.stack([o.loss.detach().double(), o.loss.new_tensor(0.0, dtype=torch.float64)])
            ctx.sum(stats).tolist()  # the train command's per-iteration collective (and device sync)
            opt.step()

        for _ in range(warmup):
            step()
        ctx.sum(torch.zeros(1))  # start together
        t0 = time.perf_counter()
        for _ in range(iterations):
            step()
        seconds = time.perf_counter() - t0
        row = {"problem": problem, "processes": ctx.world_size, "process_group": ctx.backend,
               "threads_per_process": threads, "device": str(ctx.device), "backend_used": meta.backend_used,
               "tasks": tasks, "tasks_per_process": "-".join(map(str, sorted({tasks // ctx.world_size,
                                                                               -(-tasks // ctx.world_size)}))),
               "iterations": iterations,
               "seconds": seconds, "it_per_s": iterations / seconds, "ms_per_it": 1e3 * seconds / iterations}
    if ctx.is_main and out:
        with open(out, "w") as f:
            json.dump(row, f)
    return row


def run_row(problem: str, hidden: int, device: str, processes: int | None, threads: int, warmup: int,
            iterations: int) -> dict:
    """``processes=None``: this process, no process group; else that many new ranks."""
    if processes is None:
        return measure(problem, hidden, device, threads, warmup, iterations)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        distributed.spawn(measure, processes, problem, hidden, device, threads, warmup, iterations, out)
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (the CPU, and CUDA when available)")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    p.add_argument("--processes", type=int, default=None,
                   help="ranks of the multi-process CPU rows (default: the CPU count, at least 2)")
    p.add_argument("--hidden", type=int, default=64, help="Conv-4 channels (64 in the paper)")
    p.add_argument("--iterations", type=int, default=None, help="timed iterations per row (default per problem)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="a third of the iterations, Conv-4 with 32 channels")
    p.add_argument("--out", default=None,
                   help="JSON path (default benchmarks/results/distributed_<device>_<date>.json)")
    a = p.parse_args(argv)
    if a.quick:
        a.hidden = min(a.hidden, 32)
    devices = common.devices_for(a.device)
    cores = os.cpu_count() or 1
    n = a.processes or max(2, cores)

    for device in devices:
        rows = []
        env = common.environment(device, 1)
        print(f"{env['device_name']} ({device}), {cores} CPU cores, torch {env['torch']}, metafast {env['metafast']}")
        for problem in a.problems:
            iterations = a.iterations or {"omniglot": 30, "sinusoid": 300}[problem] // (3 if a.quick else 1)
            if device.type == "cpu":
                plan = [("1 process, 1 thread", None, 1), (f"1 process, {n} threads", None, n),
                        (f"{n} processes (gloo), 1 thread each", n, 1)]
            else:
                gpus = torch.cuda.device_count()
                plan = [("1 process", None, 1), ("1 rank, NCCL", 1, 1)]
                plan += [(f"{gpus} ranks, NCCL", gpus, 1)] if gpus > 1 else []
            for label, processes, threads in plan:
                dev = "cpu" if device.type == "cpu" else "cuda" if processes else str(device)
                load = os.getloadavg()[0]  # other jobs on the machine share its cores
                r = run_row(problem, a.hidden, dev, processes, threads, a.warmup, iterations)
                r.update(row=label, hidden=a.hidden if problem == "omniglot" else None,
                         load_average_1min_before=load)
                rows.append(r)
                print(f"  {problem:<9} {label:<34} {r['it_per_s']:9.2f} it/s  {r['ms_per_it']:9.2f} ms/it  "
                      f"({r['backend_used']}, {r['tasks_per_process']} of {r['tasks']} tasks per process; "
                      f"load {load:.1f} before)", flush=True)
            base = next(r["it_per_s"] for r in rows if r["problem"] == problem)
            for r in rows:
                if r["problem"] == problem:
                    r["speedup_vs_1_process_1_thread"] = r["it_per_s"] / base
        path = common.out_path(a.out, "distributed", device, several=len(devices) > 1)
        common.write_json(path, {
            "benchmark": "meta-training iterations per second, 1 and N processes (DDP, metafast.distributed)",
            "environment": env, "settings": {"problems": {k: PROBLEMS[k] for k in a.problems}, "hidden": a.hidden,
                                             "warmup": a.warmup, "quick": a.quick, "order": "second"},
            "note": f"{cores} CPU cores bound the CPU rows: N processes share them with each other and with "
                    "anything else running on the machine", "rows": rows})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
