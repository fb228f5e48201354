"""Whether a compiled metafast kernel can serve tensors on a given device."""
from __future__ import annotations

import torch

from metafast import _extension


def kernel_available(device: torch.device) -> bool:
    if not _extension.available():
        return False
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return _extension.cuda_available()
    return device.type == "meta"
