"""The oracle: MAML-RL one task at a time, written like the reference port
(tristandeleu/pytorch-maml-rl): a scalar environment, Python loops for the
returns, GAE and baseline, per-task adaptation with autograd.grad
(create_graph=True), and TRPO's Hessian-vector product as the double backward
of the KL. Tests compare every batched path with it; the benchmark times it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.func import functional_call

from metafast.functional import flat


class NavigationTask:
    """One task of 2D navigation, one trajectory: the port's Navigation2DEnv.step."""

    def __init__(self, goal, max_action: float = 0.1, tolerance: float = 0.01):
        self.goal = np.asarray(goal, dtype=np.float64)
        self.max_action, self.tolerance = max_action, tolerance
        self.state = np.zeros(2)

    def reset(self) -> np.ndarray:
        self.state = np.zeros(2)
        return self.state

    def step(self, action):
        self.state = self.state + np.clip(action, -self.max_action, self.max_action)
        x, y = self.state - self.goal
        return self.state, -np.sqrt(x ** 2 + y ** 2), bool(abs(x) < self.tolerance and abs(y) < self.tolerance)


def discounted_returns(rewards, lengths, gamma):
    """rewards [H, E] of one task; loops as the port's BatchEpisodes.returns."""
    out, ret = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    mask = (torch.arange(rewards.shape[0])[:, None] < lengths[None]).to(rewards.dtype)
    for t in range(rewards.shape[0] - 1, -1, -1):
        ret = gamma * ret + rewards[t] * mask[t]
        out[t] = ret
    return out


def gae(rewards, values, lengths, gamma, gae_lambda):
    """The port's compute_advantages (without normalisation) for one task."""
    mask = (torch.arange(rewards.shape[0])[:, None] < lengths[None]).to(rewards.dtype)
    v = torch.cat([values * mask, torch.zeros_like(values[:1])])
    adv, running = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = running * gamma * gae_lambda + rewards[t] + gamma * v[t + 1] - v[t]
        adv[t] = running
    return adv


def normalize(adv, lengths, eps=1e-8):
    """The port's weighted_normalize for one task."""
    mean = torch.stack([adv[:n, e].sum() / n for e, n in enumerate(lengths.tolist())]).mean()
    out = adv - mean
    for e, n in enumerate(lengths.tolist()):
        out[int(n):, e] = 0
    std = torch.stack([(out[:n, e] ** 2).sum() / n for e, n in enumerate(lengths.tolist())]).mean().sqrt()
    return out / (std + eps)


def fit_baseline(observations, returns, lengths, reg=1e-5):
    """The port's LinearFeatureBaseline.fit for one task: only the unpadded rows, then solve."""
    rows, targets = [], []
    for e, n in enumerate(lengths.tolist()):
        for t in range(int(n)):
            o = observations[t, e]
            rows.append(torch.cat([o, o ** 2, torch.tensor([t / 100, (t / 100) ** 2, (t / 100) ** 3, 1.0],
                                                           dtype=o.dtype)]))
            targets.append(returns[t, e])
    x, y = torch.stack(rows).double(), torch.stack(targets).double()
    return torch.linalg.solve(x.T @ x + reg * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)


# ----------------------------------------------------------------------------- per-task MAML-RL
def reinforce_loss(policy, params, obs, actions, adv, weights):
    """The port's reinforce_loss, on one task's rows."""
    dist = functional_call(policy, params, (obs,))
    return -(weights * adv * policy.log_prob(dist, actions)).sum()


def adapt_task(policy, params: dict, batch, t: int, lr: float, first_order: bool = False) -> dict:
    """The port's update_params for task t of a TaskBatch."""
    loss = reinforce_loss(policy, params, batch.observations[t], batch.actions[t], batch.advantages[t],
                          batch.weights[t])
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=not first_order)
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads)}


def surrogate_and_kl(policy, train, valid, lr: float, first_order: bool = False, adapt: bool = True, old=None):
    """Mean over tasks of the port's surrogate_loss: (loss, kl, old distributions)."""
    params = dict(policy.named_parameters())
    losses, kls, olds = [], [], []
    for t in range(valid.tasks):
        p = adapt_task(policy, params, train, t, lr, first_order) if adapt else params
        dist = functional_call(policy, p, (valid.observations[t],))
        o = tuple(x.detach() for x in dist) if old is None else old[t]
        ratio = torch.exp(policy.log_prob(dist, valid.actions[t]) - policy.log_prob(o, valid.actions[t]))
        losses.append(-(valid.weights[t] * ratio * valid.advantages[t]).sum())
        kls.append((valid.weights[t] * policy.kl(dist, o)).sum())
        olds.append(o)
    return torch.stack(losses).mean(), torch.stack(kls).mean(), olds


def kl_hvp(policy, train, valid, lr: float, vector: torch.Tensor, first_order: bool = False, adapt: bool = True,
           damping: float = 0.0) -> torch.Tensor:
    """The port's hessian_vector_product: double backward of the mean KL."""
    theta = list(policy.parameters())
    _, kl, _ = surrogate_and_kl(policy, train, valid, lr, first_order, adapt)
    g = flat(torch.autograd.grad(kl, theta, create_graph=True))
    hv = torch.autograd.grad(g @ vector, theta)
    return flat(hv) + damping * vector
