"""Few-step adaptation on held-out tasks: the MAML paper's RL evaluation."""
from __future__ import annotations

import math

import torch

from metafast import stats
from metafast._validate import nonnegative_int, positive_number
from metafast.rl.episodes import Episodes, expand_params, rollout
from metafast.rl.maml_rl import inner_step, prepare


def adaptation_returns(env, policy, goals: torch.Tensor, steps: int = 3, trajectories: int = 20, lr: float = 0.1,
                       gamma: float = 0.99, gae_lambda: float = 1.0, generator: torch.Generator | None = None,
                       later_lr: float | None = None):
    """Average return per task after 0..steps policy-gradient steps, each step on fresh
    trajectories of the current adapted policy; step size ``lr``, and ``later_lr`` (default
    ``lr``) from the second step on. Returns ([steps + 1, tasks] returns, the episodes
    sampled at every step)."""
    steps = nonnegative_int(steps, "adaptation_returns: steps")
    later_lr = lr if later_lr is None else later_lr
    for name, rate in (("lr", lr), ("later_lr", later_lr)):
        positive_number(rate, f"adaptation_returns: {name}")
    params = expand_params({n: p.detach() for n, p in policy.named_parameters()}, goals.shape[0])
    returns, episodes = [], []
    for k in range(steps + 1):
        eps: Episodes = rollout(env, policy, params, goals, trajectories, generator)
        returns.append(eps.returns.mean(-1))
        episodes.append(eps)
        if k < steps:
            params = inner_step(policy, params, prepare(eps, gamma, gae_lambda), lr if k == 0 else later_lr)
    return torch.stack(returns), episodes


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """(mean, half-width 1.96·std/√n of a normal 95% interval): metafast.stats.mean_ci95 as a pair,
    NaN where it is undefined."""
    s = stats.mean_ci95(values)
    return (math.nan if s["mean"] is None else s["mean"]), (math.nan if s["ci95"] is None else s["ci95"])
