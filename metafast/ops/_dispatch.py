"""Whether a compiled metafast kernel can serve tensors on a given device."""
from __future__ import annotations

import torch

from metafast import _extension


def kernel_unavailable_reason(device: torch.device) -> str | None:
    """None when a compiled kernel serves `device`, else why not."""
    if not _extension.available():
        return _extension.UNAVAILABLE_REASON
    if device.type in ("cpu", "meta"):
        return None
    if device.type != "cuda":
        return f"metafast has no kernels for {device.type} tensors"
    if not _extension.cuda_available():
        return _extension.CUDA_UNAVAILABLE_REASON
    major, minor = torch.cuda.get_device_capability(device)
    if not _extension.runs_on_capability(major, minor):
        return (f"the CUDA kernels were compiled for {_extension.CONFIG.CUDA_ARCHS}, which does not run on "
                f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}); "
                "rebuild with TORCH_CUDA_ARCH_LIST set for it")
    return None


def kernel_available(device: torch.device) -> bool:
    return kernel_unavailable_reason(torch.device(device)) is None
