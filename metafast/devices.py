"""``--device`` for every command and benchmark: one reading of cpu, cuda, cuda:N and auto."""
from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` is cuda when a GPU is visible, else cpu; anything unusable is a ValueError that says why."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device (expected cpu, cuda, cuda:N or auto)") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (f"torch {torch.__version__} is built with CUDA {torch.version.cuda} but sees no GPU"
                   if torch.version.cuda else f"torch {torch.__version__} is built without CUDA")
            raise ValueError(f"--device {name}: CUDA is not available here ({why}); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s) here")
    return device
