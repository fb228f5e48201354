"""Loads the compiled kernels, or explains once why they are not used.

metafast._C (op schemas and CPU kernels) and libmetafast_cuda.so (CUDA
kernels) are built on the LibTorch stable ABI: they run with any torch at or
above the build's TORCH_TARGET, checked here before loading. The CUDA library
is loaded only when torch itself has CUDA of the same major version, so one
wheel serves CUDA and CPU-only torch builds alike.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import re
import warnings

import torch

_C = None
CONFIG = None
UNAVAILABLE_REASON: str | None = None
CUDA_UNAVAILABLE_REASON: str | None = None
CUDA_LIBRARY = "libmetafast_cuda.so"


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    if not m:
        raise ValueError(f"unrecognised version {version!r}")
    return int(m.group(1)), int(m.group(2))


def _load_cuda() -> str | None:
    """Loads the CUDA kernels; returns why not, or None."""
    if not CONFIG.WITH_CUDA:
        return "metafast was built without CUDA kernels"
    if not torch.version.cuda:
        return f"torch {torch.__version__} has no CUDA"
    built, running = CONFIG.CUDA_VERSION.split(".")[0], torch.version.cuda.split(".")[0]
    if built != running:
        return f"the CUDA kernels were built with CUDA {CONFIG.CUDA_VERSION} but torch uses CUDA {torch.version.cuda}"
    path = os.path.join(os.path.dirname(importlib.util.find_spec("metafast._C").origin), CUDA_LIBRARY)
    try:
        torch.ops.load_library(path)
    except OSError as exc:
        return f"{CUDA_LIBRARY} failed to load: {exc}"
    return None


def _load() -> None:
    global _C, CONFIG, UNAVAILABLE_REASON, CUDA_UNAVAILABLE_REASON
    try:
        CONFIG = importlib.import_module("metafast._build_config")
    except ImportError:
        UNAVAILABLE_REASON = "metafast._C is not built (install metafast with `pip install .`)"
        return
    if _major_minor(torch.__version__) < _major_minor(CONFIG.TORCH_TARGET):
        # An older libtorch lacks the stable-ABI functions the kernels call.
        UNAVAILABLE_REASON = (f"metafast's kernels need torch >= {CONFIG.TORCH_TARGET}, "
                              f"but torch {torch.__version__} is installed")
        return
    try:
        _C = importlib.import_module("metafast._C")
    except (ImportError, OSError) as exc:
        UNAVAILABLE_REASON = f"metafast._C failed to load: {exc}"
        return
    CUDA_UNAVAILABLE_REASON = _load_cuda()


_load()
if UNAVAILABLE_REASON is not None:
    warnings.warn(f"{UNAVAILABLE_REASON}. Running on the pure-PyTorch path.", RuntimeWarning, stacklevel=2)


def mlp_limits() -> tuple[int | None, int | None, int | None]:
    """The fused MLP kernels' limits (layers, width, inner steps): written once in
    csrc/kernels/mlp/limits.h and copied by the build into _build_config.py.
    Nones where metafast was not built: no kernel runs, and the torch formula has no limit."""
    return tuple(getattr(CONFIG, f"MLP_MAX_{name}", None) for name in ("LAYERS", "WIDTH", "STEPS"))


def available() -> bool:
    """True when the C++ ops are registered."""
    return _C is not None


def cuda_available() -> bool:
    """True when the CUDA kernels are loaded."""
    return _C is not None and CUDA_UNAVAILABLE_REASON is None


def cuda_archs() -> list[tuple[int, int, bool]]:
    """The compiled architectures as (major, minor, is_ptx): "80-real,90" gives
    SASS for sm_80 and SASS + PTX for sm_90."""
    out = []
    for entry in (CONFIG.CUDA_ARCHS if CONFIG else "").split(","):
        m = re.fullmatch(r"(\d+)(\d)[a-z]?(-real)?", entry)  # "90a-real": sm_90a SASS
        if m:
            out.append((int(m.group(1)), int(m.group(2)), m.group(3) is None))
    return out


def runs_on_capability(major: int, minor: int) -> bool:
    """Whether the compiled code runs on a GPU of compute capability major.minor:
    SASS runs on the same major version at an equal or higher minor, PTX is
    compiled by the driver for any equal or newer GPU."""
    for a_major, a_minor, ptx in cuda_archs():
        if a_major == major and a_minor <= minor:
            return True
        if ptx and (a_major, a_minor) <= (major, minor):
            return True
    return False
