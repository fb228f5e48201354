"""Few-shot accuracy on held-out tasks, beside the papers' figures."""
from __future__ import annotations

import torch

from metafast import distributed
from metafast.stats import mean_ci95
from metafast.training.args import TEST_SEED

#: MAML paper, Table 1 (Omniglot, convolutional MAML): accuracy % and 95% interval.
PAPER_ACCURACY = {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)}
#: Meta-SGD paper (Li et al., 2017), Omniglot accuracy %.
META_SGD_ACCURACY = {(5, 1): 99.53, (5, 5): 99.93, (20, 1): 95.93, (20, 5): 98.97}
#: MAML++ paper (Antoniou et al., 2019), Omniglot accuracy % (± where reported).
MAML_PP_ACCURACY = {(5, 1): (99.47, None), (5, 5): (99.85, None), (20, 1): (97.65, 0.05), (20, 5): (99.33, 0.03)}
VAL_SEED = 1_000_003  # fixed validation episodes, independent of --seed


def evaluate(meta, dataset, tasks: int, ways: int, shots: int, queries: int, steps: int, batch: int,
             seed: int = TEST_SEED, quiet: bool = True, desc: str = "eval",
             ctx: distributed.Context | None = None) -> dict:
    """Mean query accuracy over ``tasks`` tasks with ``steps`` inner steps, and its 95% interval.
    A query whose logits are not all finite counts as wrong (argmax of NaN means nothing).
    Distributed, every rank draws each batch and adapts its share of the tasks; the per-task
    results are summed over ranks, so every rank returns the result over all tasks."""
    from tqdm.auto import tqdm

    ctx = ctx or distributed.Context()
    g = torch.Generator().manual_seed(seed)
    per_task = []  # [accuracy, 1 if some logits are not finite] for each task
    with tqdm(total=tasks, desc=desc, disable=quiet or not ctx.is_main, leave=False, unit="task") as bar:
        done = 0
        while done < tasks:
            b = min(batch, tasks - done)
            sx, sy, qx, qy = dataset.sample(b, ways, shots, queries, generator=g)
            mine = ctx.share(b)
            rows = torch.zeros(b, 2, dtype=torch.float64)  # zeros outside this rank's share: the sum fills them
            if mine.stop > mine.start:
                with torch.no_grad():
                    params = meta.adapt(sx[mine], sy[mine], steps=steps)
                    logits = meta.predict(params, qx[mine])
                finite = logits.isfinite().all(-1)
                rows[mine, 0] = ((logits.argmax(-1) == qy[mine]) & finite).double().mean(1).cpu()
                rows[mine, 1] = (~finite).any(1).double().cpu()
            per_task.append(ctx.sum(rows))
            done += b
            bar.update(b)
    rows = torch.cat(per_task) if per_task else torch.zeros(0, 2, dtype=torch.float64)
    s = mean_ci95(rows[:, 0])
    nan = float("nan")
    return {"accuracy": 100 * s["mean"] if s["n"] else nan, "ci95": 100 * s["ci95"] if s["ci95"] is not None else nan,
            "tasks": s["n"], "steps": steps, "nonfinite_tasks": int(rows[:, 1].sum())}


def paper_line(ways: int, shots: int, meta_sgd: bool, algorithm: str = "maml") -> str:
    ref = PAPER_ACCURACY.get((ways, shots))
    s = f"MAML paper: {ref[0]:.1f} ± {ref[1]:.1f} %" if ref else "MAML paper: no figure for this setting"
    if meta_sgd and (ways, shots) in META_SGD_ACCURACY:
        s += f"; Meta-SGD paper: {META_SGD_ACCURACY[(ways, shots)]:.2f} %"
    if algorithm == "maml++" and (ways, shots) in MAML_PP_ACCURACY:
        acc, ci = MAML_PP_ACCURACY[(ways, shots)]
        s += f"; MAML++ paper: {acc:.2f}" + (f" ± {ci:.2f} %" if ci is not None else " %")
    return s


def fmt(r: dict) -> str:
    bad = r.get("nonfinite_tasks", 0)
    return f"{r['accuracy']:.2f} ± {r['ci95']:.2f} %" + (f" ({bad} tasks with non-finite logits)" if bad else "")
