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
#: The published figures beside each data set's results: for each method (maml: the base line, always
#: shown; meta_sgd, maml++: beside those runs) its source, accuracy % by (ways, shots) and decimals.
PAPERS = {
    "omniglot": {"maml": ("MAML paper", PAPER_ACCURACY, 1), "meta_sgd": ("Meta-SGD paper", META_SGD_ACCURACY, 2),
                 "maml++": ("MAML++ paper", MAML_PP_ACCURACY, 2)},
    "mini-imagenet": {"maml": ("MAML paper", {(5, 1): (48.70, 1.84), (5, 5): (63.11, 0.92)}, 2),
                      "meta_sgd": ("Meta-SGD paper", {(5, 1): 50.47, (5, 5): 64.03}, 2),
                      "maml++": ("MAML++ paper", {(5, 1): (52.15, 0.26), (5, 5): (68.32, 0.44)}, 2)},
    "tiered-imagenet": {"maml": ("MAML on tiered-ImageNet (not in the MAML papers)", {}, 2)},
    "cifar-fs": {"maml": ("learn2learn's MAML", {(5, 5): (73.6, None)}, 1)},
    "fc100": {"maml": ("learn2learn's MAML", {(5, 5): (49.0, None)}, 1)},
}
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


def paper_figures(dataset: str, ways: int, shots: int) -> dict:
    """The published accuracy of each method of :data:`PAPERS` for this setting (None: no figure)."""
    return {method: table.get((ways, shots)) for method, (_, table, _) in PAPERS.get(dataset, {}).items()}


def paper_line(ways: int, shots: int, meta_sgd: bool, algorithm: str = "maml", dataset: str = "omniglot") -> str:
    papers = PAPERS.get(dataset, {"maml": ("MAML paper", {}, 1)})
    parts = []
    for method, on in (("maml", True), ("meta_sgd", meta_sgd), ("maml++", algorithm == "maml++")):
        if not on or method not in papers:
            continue
        source, table, d = papers[method]
        ref = table.get((ways, shots))
        if ref is None:
            if method == "maml":
                parts.append(f"{source}: no figure for this setting")
            continue
        acc, ci = ref if isinstance(ref, tuple) else (ref, None)
        parts.append(f"{source}: {acc:.{d}f}" + (f" ± {ci:.{d}f} %" if ci is not None else " %"))
    return "; ".join(parts)


def fmt(r: dict) -> str:
    bad = r.get("nonfinite_tasks", 0)
    return f"{r['accuracy']:.2f} ± {r['ci95']:.2f} %" + (f" ({bad} tasks with non-finite logits)" if bad else "")
