"""Loads the compiled extension metafast._C, or explains once why it is not used.

Importing _C registers the torch.ops.metafast kernels. An extension built
against another torch is not loaded (it could crash rather than raise): the
version recorded at build time is checked first.
"""
from __future__ import annotations

import importlib
import warnings

import torch

_C = None
UNAVAILABLE_REASON: str | None = None


def _load() -> None:
    global _C, UNAVAILABLE_REASON
    try:
        config = importlib.import_module("metafast._build_config")
    except ImportError:
        UNAVAILABLE_REASON = "metafast._C is not built (install with `pip install --no-build-isolation .`)"
        return
    if config.TORCH_VERSION != torch.__version__:
        UNAVAILABLE_REASON = (
            f"metafast._C was built against torch {config.TORCH_VERSION} but torch {torch.__version__} "
            "is installed; rebuild with `pip install --no-build-isolation .`"
        )
        return
    try:
        _C = importlib.import_module("metafast._C")
    except (ImportError, OSError) as exc:
        UNAVAILABLE_REASON = f"metafast._C failed to load: {exc}"


_load()
if UNAVAILABLE_REASON is not None:
    warnings.warn(f"{UNAVAILABLE_REASON}. Running on the pure-PyTorch path.", RuntimeWarning, stacklevel=2)


def available() -> bool:
    """True when the C++ ops are registered."""
    return _C is not None


def cuda_available() -> bool:
    """True when the CUDA kernels are compiled in."""
    return _C is not None and bool(_C.build_info()["cuda"])
