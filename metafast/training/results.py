"""``results.json`` of a training run and of ``eval --json`` (written by :func:`metafast.training.files.write_json`)."""
from __future__ import annotations

import argparse
import datetime as _dt

import torch

from metafast import distributed
from metafast.training.args import setting
from metafast.training.evaluation import paper_figures


def versions() -> dict:
    try:
        import metafast

        mf = getattr(metafast, "__version__", "unknown")
    except Exception:  # pragma: no cover
        mf = "unknown"
    return {"torch": str(torch.__version__), "metafast": str(mf)}


def device_name(device: torch.device) -> str:
    return str(device) if device.type == "cpu" else torch.cuda.get_device_name(device)


def train_results(a: argparse.Namespace, history: dict, elapsed: float, device: torch.device, backend_used,
                  ctx: distributed.Context, test: dict | None) -> dict:
    last = history["accuracy"][-100:]
    return {
        "setting": setting(a), "dataset": a.dataset, "model": a.model, "args": vars(a), "iterations": a.iterations,
        "train_seconds": elapsed,
        "iterations_per_second": (len(history["iteration"]) / elapsed) if elapsed > 0 else None,
        "device": device_name(device), "backend_used": backend_used, "versions": versions(),
        "processes": ctx.world_size, "process_group_backend": ctx.backend,
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "final_train_accuracy": 100 * sum(last) / len(last) if last else None,
        "validation": [{"iteration": i, "accuracy": v, "ci95": c} for i, v, c in
                       zip(history["val_iteration"], history["val_accuracy"], history["val_ci95"])],
        "paper": paper_figures(a.dataset, a.ways, a.shots),
        "test": test,
    }


def eval_results(checkpoint: str, ck: dict, split: str, run: argparse.Namespace, r: dict) -> dict:
    return {"checkpoint": checkpoint, "iteration": ck["iteration"], "split": split, "setting": setting(run), **r,
            "dataset": getattr(run, "dataset", "omniglot"),
            "paper": paper_figures(getattr(run, "dataset", "omniglot"), run.ways, run.shots).get("maml")}

