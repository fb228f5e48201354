"""The summary statistics every report uses: a mean with its 95% interval, and curve smoothing."""
from __future__ import annotations

import math
from typing import Sequence

import torch


def mean_ci95(values: torch.Tensor | Sequence[float]) -> dict:
    """Mean, sample standard deviation (n - 1) and 95% interval 1.96 std / sqrt(n) of ``values``;
    ``None`` where undefined (the mean of nothing, the spread of fewer than two values)."""
    v = torch.as_tensor(values, dtype=torch.float64).detach().cpu().flatten()
    n = v.numel()
    std = v.std().item() if n > 1 else None
    return {"mean": v.mean().item() if n else None, "std": std,
            "ci95": 1.96 * std / math.sqrt(n) if std is not None else None, "n": n}


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing means over ``window`` consecutive values: ``len(values) - window + 1`` of them
    (the i-th belongs to position ``i + window - 1``)."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    v = torch.as_tensor(list(values), dtype=torch.float64)
    return v.unfold(0, window, 1).mean(1).tolist() if v.numel() >= window else []
