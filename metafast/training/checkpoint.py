"""Checkpoints of a training run: written atomically, read with every problem as one CLIError.

:func:`read` and :func:`restoring` serve every command (Omniglot and RL); :func:`load` and
:func:`restore` are the few-shot vision runs' (Omniglot, mini-ImageNet, ...)."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Iterable

import torch

from metafast.training import files
from metafast.training.args import STRUCTURAL, CLIError, check_stored_args, setting

NAME = "checkpoint.pt"
FORMAT = "metafast-omniglot-v1"
# what eval and --resume read from a checkpoint
_KEYS = ("iteration", "args", "meta", "optimizer", "generator", "history")
_RUN_ARGS = STRUCTURAL + ("backend", "test_steps", "data_dir", "cache_dir")


def save(path: Path, state: dict) -> None:
    files.save_torch(path, state)


def read(path: Path | str, fmt: str, what: str) -> tuple[dict, Path]:
    """The checkpoint of format ``fmt`` at ``path`` (a file or the run folder holding NAME), and
    its path; ``what`` names the kind in the error when it is another file."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / NAME
    if not path.is_file():
        raise CLIError(f"no checkpoint at {path}: the file does not exist (a run writes {NAME} in its --out folder)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CLIError(f"cannot read checkpoint {path}: the file is corrupt, truncated or not a checkpoint "
                       f"({type(e).__name__})") from e
    if not isinstance(ck, dict) or ck.get("format") != fmt:
        raise CLIError(f"{path} is not {what} (format {fmt})")
    return ck, path


def check_complete(ck: dict, path: Path, keys: Iterable[str], arg_keys: Iterable[str]) -> None:
    missing = [k for k in keys if k not in ck]
    if not missing:
        args = ck["args"] if isinstance(ck["args"], dict) else {}
        missing = [f"args.{k}" for k in arg_keys if k not in args]
    if missing:
        raise CLIError(f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}")


def load(path: Path) -> dict:
    ck, path = read(path, FORMAT, "a metafast Omniglot checkpoint or one of another few-shot vision set")
    check_complete(ck, path, _KEYS, _RUN_ARGS)
    check_stored_args(ck["args"], path)
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


@contextlib.contextmanager
def restoring(what: str):
    """Loading states in the block: a mismatch (wrong shapes, keys, types) is a CLIError ``what: detail``."""
    try:
        yield
    except CLIError:
        raise
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        detail = detail if len(detail) <= 300 else detail[:300] + " ..."  # state_dict errors list every key
        raise CLIError(f"{what}: {detail}") from e


def restore(ck: dict, a: argparse.Namespace, meta, opt=None, gen=None) -> None:
    """Load a checkpoint's states; a mismatch with its own arguments is a CLIError."""
    with restoring(f"checkpoint {ck['path']} does not fit the run its arguments describe ({setting(a)}, "
                   f"{a.hidden} channels)"):
        meta.load_state_dict(ck["meta"])
        if opt is not None:
            opt.load_state_dict(ck["optimizer"])
        if gen is not None:
            gen.set_state(ck["generator"])
