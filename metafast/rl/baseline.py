"""The linear feature baseline (Duan et al., 2016), fitted per task in closed
form, every task at once: features [obs, obs², t, t², t³, 1] with t = step/100
(the reference port's), ridge regression of the discounted returns."""
from __future__ import annotations

import torch

from metafast._validate import positive_number

TIME_SCALE = 100.0  # the reference divides the step index by 100, whatever the horizon
RETRIES = 5         # as the reference: multiply the ridge by 10 until the solution is finite


def features(observations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[H, tasks, trajectories, 2·obs_dim + 4], zero on padding."""
    ones = mask.unsqueeze(-1)
    t = torch.arange(observations.shape[0], dtype=observations.dtype, device=observations.device)
    t = t.view(-1, *([1] * (observations.dim() - 1))) * ones / TIME_SCALE
    obs = observations * ones
    return torch.cat([obs, obs ** 2, t, t ** 2, t ** 3, ones], dim=-1)


def fit(feats: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, reg: float = 1e-5) -> torch.Tensor:
    """Per-task weights [tasks, F] minimising ||X w - y||² + reg·||w||² over the unpadded steps.
    Solved in float64 (the normal equations of t³ features are badly conditioned in float32)."""
    positive_number(reg, "linear baseline: reg")
    if feats.shape[:-1] != returns.shape or returns.shape != mask.shape or feats.dim() != 4:
        raise ValueError(f"linear baseline: features [H, tasks, trajectories, F], returns and mask [H, tasks, "
                         f"trajectories] expected, got {tuple(feats.shape)}, {tuple(returns.shape)}, "
                         f"{tuple(mask.shape)}")
    x = (feats * mask.unsqueeze(-1)).double()
    y = (returns * mask).double()
    xtx = torch.einsum("htef,hteg->tfg", x, x)
    xty = torch.einsum("htef,hte->tf", x, y)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    ridge = torch.full((x.shape[1], 1, 1), float(reg), dtype=x.dtype, device=x.device)
    for _ in range(RETRIES):
        w, info = torch.linalg.solve_ex(xtx + ridge * eye, xty)
        bad = (info != 0) | ~torch.isfinite(w).all(-1)
        if not bad.any():
            return w.to(feats.dtype)
        ridge = torch.where(bad[:, None, None], ridge * 10, ridge)
    raise RuntimeError("linear baseline: the normal equations stay singular after increasing the ridge "
                       f"{RETRIES} times (non-finite observations or returns?)")


def predict(weights: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Values [H, tasks, trajectories]."""
    return torch.einsum("htef,tf->hte", feats, weights)
