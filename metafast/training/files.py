"""The files a command writes, and its output folder.

Every output (checkpoints, results, plots) is rendered in memory, written to a fresh temporary file
in the target's folder (``tempfile.mkstemp``: an exclusive new name, so a link planted under a
predictable name such as ``checkpoint.pt.tmp`` is never followed) and renamed over the target with
``os.replace``, which replaces a link at the target rather than writing through it. A reader, or a
run killed mid-write, sees the old file or the new one, never a mix; a write error (disk full) is
one :class:`CLIError` naming the file, with the old file intact and no temporary file left behind.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterable

import torch

from metafast.training.args import CLIError


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; outputs get the usual permissions instead
_MODE = 0o666 & ~_umask()


def write_bytes(path: Path | str, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, atomically."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _MODE)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the data reaches the disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: never leave the temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(e, OSError):
            raise CLIError(f"cannot write {path}: {e.strerror or e}") from e
        raise


def write_rendered(path: Path | str, render: Callable[[BinaryIO], None]) -> None:
    """``render(stream)`` into memory, then replace ``path`` by the result, atomically; an error
    of the rendering (e.g. an OSError from a patched writer) leaves ``path`` as it was."""
    buf = io.BytesIO()
    try:
        render(buf)
    except OSError as e:
        raise CLIError(f"cannot write {path}: {e.strerror or e}") from e
    write_bytes(path, buf.getvalue())


def save_torch(path: Path | str, obj) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    write_rendered(path, lambda f: torch.save(obj, f))


def finite(obj):
    """``obj`` with every non-finite float replaced by None: JSON has no NaN or infinity."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: Path | str, payload: dict) -> None:
    """``payload`` as JSON (non-finite numbers as null, other objects as their str), atomically."""
    text = json.dumps(finite(payload), indent=2, allow_nan=False, default=str) + "\n"
    write_bytes(path, text.encode())


# --------------------------------------------------------------------------- the output folder
def check_out(out: Path) -> None:
    """Refuse an --out that is a file, before any work."""
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, not a folder; pass a folder for the run's outputs")


def make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the output folder {out}: {e.strerror or e}") from e


def outputs_in(out: Path, names: Iterable[str], patterns: Iterable[str] = ()) -> list[Path]:
    """Which of a command's own outputs (``names``, and files matching ``patterns``) ``out`` holds;
    links count as present, whatever they point at."""
    found = [out / n for n in names if os.path.lexists(out / n)]
    for pattern in patterns:
        found += sorted(p for p in out.glob(pattern) if p not in found)
    return found


def remove_outputs(paths: Iterable[Path]) -> None:
    """Delete a previous run's outputs; a link is removed itself, never what it points at."""
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:  # a folder of that name, or no permission: the user's, not ours to delete
            raise CLIError(f"cannot remove {p}, an output of the previous run: {e.strerror or e}") from e


def start_afresh(out: Path, overwrite: bool, names: Iterable[str], patterns: Iterable[str] = (),
                 leftovers: Iterable[str] = ()) -> None:
    """Before a new run in ``out``: refuse while it holds a previous run's outputs (``names``, and
    files matching ``patterns``) unless ``overwrite``, which deletes them, so that a folder never
    holds the files of two runs. Temporary files of a killed run (matching ``leftovers``) are
    deleted either way."""
    if not out.is_dir():
        return
    previous = outputs_in(out, names, patterns)
    if previous and not overwrite:
        raise CLIError(f"{out} holds the outputs of another run ({', '.join(p.name for p in previous)}): pass "
                       f"--overwrite to replace them, or another --out")
    remove_outputs(previous + outputs_in(out, (), leftovers))
