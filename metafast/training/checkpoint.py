"""Checkpoints of a training run: written atomically, read with every problem as one CLIError."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from metafast.training.args import STRUCTURAL, CLIError, setting

NAME = "checkpoint.pt"
FORMAT = "metafast-omniglot-v1"
# what eval and --resume read from a checkpoint
_KEYS = ("iteration", "args", "meta", "optimizer", "generator", "history")
_RUN_ARGS = STRUCTURAL + ("backend", "test_steps", "data_dir", "cache_dir")


def save(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Path) -> dict:
    if path.is_dir():
        path = path / NAME
    if not path.is_file():
        raise CLIError(f"checkpoint {path} does not exist (a run writes {NAME} in its --out folder)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a checkpoint "
                       f"({type(e).__name__})") from e
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise CLIError(f"{path} is not a metafast Omniglot checkpoint (format {FORMAT})")
    missing = [k for k in _KEYS if k not in ck]
    if not missing:
        args = ck["args"] if isinstance(ck["args"], dict) else {}
        missing = [f"args.{k}" for k in _RUN_ARGS if k not in args]
    if missing:
        raise CLIError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")
    ck["path"] = path
    return ck


def check_world_size(ck: dict, world_size: int) -> None:
    """Refuse to continue a run on another number of processes (checkpoints without the key are
    from one process)."""
    saved = int(ck.get("world_size", 1))
    if saved != world_size:
        raise CLIError(f"checkpoint {ck['path']} was written by a run on {saved} process(es) but this one has "
                       f"{world_size}: resume with {saved} (e.g. torchrun --nproc_per_node {saved}"
                       f"{'' if saved > 1 else ', or without torchrun'}); the meta-gradient is summed in an order "
                       f"that depends on it, so another count would not continue the run bit for bit")


def restore(ck: dict, a: argparse.Namespace, meta, opt=None, gen=None) -> None:
    """Load a checkpoint's states; a mismatch with its own arguments is a CLIError."""
    try:
        meta.load_state_dict(ck["meta"])
        if opt is not None:
            opt.load_state_dict(ck["optimizer"])
        if gen is not None:
            gen.set_state(ck["generator"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."  # state_dict errors list every key
        raise CLIError(f"checkpoint {ck['path']} does not fit the run its arguments describe ({setting(a)}, "
                       f"{a.hidden} channels): {detail}") from e
