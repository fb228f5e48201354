"""Discounted returns, GAE and advantage normalisation, batched over tasks and
trajectories. Time is the first dimension; padded steps have mask 0.

The backward recursions x_t = y_t + c·x_{t+1} are one matrix product with the
upper-triangular matrix c^(k-t), so the whole meta-batch needs no Python loop."""
from __future__ import annotations

import torch

from metafast._validate import finite_number


def discount_matrix(horizon: int, factor: float, dtype, device) -> torch.Tensor:
    """M[t, k] = factor^(k - t) for k >= t, else 0."""
    t = torch.arange(horizon, device=device)
    power = (t[None, :] - t[:, None]).to(dtype)
    return torch.where(power >= 0, torch.pow(torch.tensor(factor, dtype=dtype, device=device), power.clamp(min=0)),
                       torch.zeros((), dtype=dtype, device=device))


def _discounted_sum(x: torch.Tensor, factor: float) -> torch.Tensor:
    m = discount_matrix(x.shape[0], factor, x.dtype, x.device)
    return torch.einsum("tk,k...->t...", m, x)


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float) -> torch.Tensor:
    """R_t = r_t + gamma·R_{t+1} within each episode."""
    return _discounted_sum(rewards * mask, finite_number(gamma, "gamma", 0.0, 1.0))


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        gae_lambda: float) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al., 2016); the value after an episode's end is 0."""
    gamma, gae_lambda = finite_number(gamma, "gamma", 0.0, 1.0), finite_number(gae_lambda, "gae_lambda", 0.0, 1.0)
    if not (rewards.shape == values.shape == mask.shape):
        raise ValueError(f"gae: rewards, values and mask must have one shape, got {tuple(rewards.shape)}, "
                         f"{tuple(values.shape)}, {tuple(mask.shape)}")
    v = values * mask
    v_next = torch.cat([v[1:], torch.zeros_like(v[:1])])
    deltas = rewards + gamma * v_next - v
    return _discounted_sum(deltas, gamma * gae_lambda)


def normalize_advantages(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per task, as the reference port's weighted_normalize: subtract the mean over
    trajectories of each trajectory's time-average, divide by the same average of
    squares; zero on padding. Shapes [H, tasks, trajectories]."""
    lengths = mask.sum(0).clamp(min=1)

    def per_task_mean(x):  # [H, T, E] -> [T]
        return ((x * mask).sum(0) / lengths).mean(-1)

    centred = (advantages - per_task_mean(advantages)[None, :, None]) * mask
    std = per_task_mean(centred ** 2).sqrt()
    return centred / (std[None, :, None] + eps)
