"""The cost of one MAML++ meta-training iteration against MAML's, per backend.

MAML++ here is LSLR (per-step per-tensor rates) + MSL (the query loss after
every step, weighted): the parts that change the inner loop's work. One
iteration = BatchedMAML forward + backward, second order, timed interleaved in
one process. Problems: the sinusoid MLP 1-40-40-1 (K = Q = 10, 5 steps, fused
and torch backends) and Conv-4 64 (5-way 1-shot, 15 queries, 5 steps, torch and
loop backends; per-step batch norm for MAML++).

    python benchmarks/bench_maml_pp.py [--threads 1] [--min-run-time 1]
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

import torch  # noqa: E402

STEPS = 5


def _sinusoid(tasks):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(tasks, 20, 1, generator=g) * 10 - 5
    y = torch.sin(x) * (torch.rand(tasks, 1, 1, generator=g) * 4.9 + 0.1)
    return x[:, :10], y[:, :10], x[:, 10:], y[:, 10:]


def _omniglot(tasks, ways=5):
    g = torch.Generator().manual_seed(0)
    sx, qx = torch.randn(tasks, ways, 1, 28, 28, generator=g), torch.randn(tasks, ways * 15, 1, 28, 28, generator=g)
    sy = torch.arange(ways).repeat(tasks, 1)
    return sx, sy, qx, torch.arange(ways).repeat_interleave(15).repeat(tasks, 1)


def _case(metafast, problem, backend, plus_plus, tasks):
    from metafast.training_schedules import msl_weights

    torch.manual_seed(0)
    if problem == "sinusoid":
        model, data, loss, lr = metafast.nn.MLP([1, 40, 40, 1], "relu"), _sinusoid(tasks), "mse", 0.01
    else:
        model = metafast.nn.Conv4(5, hidden=64, per_step_bn=STEPS if plus_plus else None)
        data, loss, lr = _omniglot(tasks), "cross_entropy", 0.4
    meta = metafast.BatchedMAML(model, inner_lr=lr, inner_steps=STEPS, loss=loss, backend=backend,
                                per_step_rates=plus_plus)
    weights = msl_weights(STEPS, epoch=0, anneal_epochs=10) if plus_plus else None

    def step():
        meta(*data, step_weights=weights).loss.backward()
    step()
    assert meta.backend_used == backend, (meta.backend_used, backend)
    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-run-time", type=float, default=1.0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    metafast = common.import_metafast()
    cases = [("sinusoid", b, 25) for b in ("fused", "torch")] + [("conv4", b, 4) for b in ("torch", "loop")]
    rows = []
    for problem, backend, tasks in cases:
        fns = {pp: _case(metafast, problem, backend, pp, tasks) for pp in (False, True)}
        t = {}
        for _ in range(2):  # interleaved: MAML, MAML++, MAML, MAML++
            for pp, fn in fns.items():
                m = common.time_fn(fn, min_run_time=a.min_run_time, threads=a.threads)
                t[pp] = min(t.get(pp, m.median_s), m.median_s)
        rows.append(dict(problem=problem, tasks=tasks, backend=backend, maml=common.fmt_ms(t[False]),
                         maml_pp=common.fmt_ms(t[True]), ratio=common.fmt_ratio(t[True] / t[False]),
                         maml_s=t[False], maml_pp_s=t[True]))
        print(rows[-1], flush=True)
    print(common.format_table(rows, [("problem", "problem"), ("tasks", "T"), ("backend", "backend"),
                                     ("maml", "MAML"), ("maml_pp", "MAML++ (LSLR+MSL)"),
                                     ("ratio", "MAML++ / MAML")]))
    device = torch.device("cpu")
    out = a.out or common.default_out_path(f"maml_pp_{a.threads}thread", device)
    common.write_json(out, dict(environment=common.environment(device, a.threads), steps=STEPS,
                                second_order=True, rows=rows))
    print("wrote", out)


if __name__ == "__main__":
    main()
