"""Omniglot MAML and MAML++ under the same wall-clock budget on this machine.

Runs ``python -m metafast train omniglot`` for one algorithm in pieces of
``--chunk`` iterations (each piece resumes the last; the schedules are part
of the run, so the pieces make one run), evaluates 600 test tasks after each
piece (the command's own test at the end of a piece) and records iteration,
training seconds (the checkpoint's, evaluation excluded) and test accuracy
with its 95% interval, until ``--budget`` seconds of training are spent.
Start one process per algorithm (one thread each) to compare them side by
side; ``--plot`` draws the curves of finished runs.

    python benchmarks/omniglot_budget.py maml   --out runs/budget --budget 3600 --chunk 800 &
    python benchmarks/omniglot_budget.py maml++ --out runs/budget --budget 3600 --chunk 300 &
    python benchmarks/omniglot_budget.py --plot runs/budget --json benchmarks/results/omniglot_budget.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"
SETUPS = {  # 5-way 1-shot; the algorithm's own defaults otherwise
    "maml": [],
    "maml++": ["--algorithm", "maml++", "--cosine-iterations", "50000"],  # the released schedule's length
}


def run(algorithm: str, out: Path, budget: float, chunk: int, threads: int) -> None:
    folder = out / algorithm
    log = out / f"{algorithm}.jsonl"
    done, spent = 0, 0.0
    while spent < budget:
        cmd = [sys.executable, "-m", "metafast", "train", "omniglot", "--data-dir", str(DATA), "--ways", "5",
               "--shots", "1", "--threads", str(threads), "--iterations", str(done + chunk), "--val-tasks", "0",
               "--test-tasks", "600", "--quiet", "--out", str(folder), *SETUPS[algorithm]]
        if done:
            cmd.append("--resume")
        start = time.time()
        subprocess.run(cmd, check=True, env={**os.environ, "MPLBACKEND": "Agg"})
        res = json.loads((folder / "results.json").read_text())
        done, spent = res["iterations"], res["train_seconds"]
        point = {"algorithm": algorithm, "iteration": done, "train_seconds": spent,
                 "accuracy": res["test"]["accuracy"], "ci95": res["test"]["ci95"], "tasks": res["test"]["tasks"],
                 "piece_wall_seconds": time.time() - start}
        with log.open("a") as f:
            f.write(json.dumps(point) + "\n")
        print(json.dumps(point), flush=True)


def plot(out: Path, json_path: Path | None) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in sorted(out.glob("*.jsonl"))}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, pts in curves.items():
        for ax, key in zip(axes, ("train_seconds", "iteration")):
            ax.errorbar([p[key] / (60 if key == "train_seconds" else 1) for p in pts], [p["accuracy"] for p in pts],
                        yerr=[p["ci95"] for p in pts], marker="o", capsize=3, label=name)
    axes[0].set_xlabel("training wall-clock (minutes, 1 CPU thread)")
    axes[1].set_xlabel("meta-iterations")
    for ax in axes:
        ax.set_ylabel("test accuracy, 600 tasks (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("Omniglot 5-way 1-shot, same wall-clock budget")
    fig.tight_layout()
    fig.savefig(out / "omniglot_budget.png", dpi=120)
    if json_path is not None:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), platform.processor())
        json_path.write_text(json.dumps({"benchmark": "Omniglot 5-way 1-shot, MAML vs MAML++, same budget",
                                         "cpu": cpu, "threads_per_run": 1, "torch": str(torch.__version__),
                                         "curves": curves}, indent=2))
    print(f"wrote {out / 'omniglot_budget.png'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("algorithm", nargs="?", choices=list(SETUPS))
    p.add_argument("--out", type=Path, default=Path("runs/budget"))
    p.add_argument("--budget", type=float, default=3600.0, help="training seconds")
    p.add_argument("--chunk", type=int, default=500, help="iterations between test evaluations")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--plot", type=Path, default=None, help="plot the runs in this folder instead")
    p.add_argument("--json", type=Path, default=None, help="with --plot: also write the curves here")
    a = p.parse_args(argv)
    if a.plot is not None:
        plot(a.plot, a.json)
        return 0
    if a.algorithm is None:
        p.error("name an algorithm, or --plot FOLDER")
    a.out.mkdir(parents=True, exist_ok=True)
    run(a.algorithm, a.out, a.budget, a.chunk, a.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
