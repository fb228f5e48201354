"""MLP policies as distribution heads, evaluated with per-task parameters.

A policy's ``forward(obs)`` returns the distribution's parameters as a tuple
(Gaussian: mean and log-std; categorical: logits); ``log_prob``, ``kl`` and
``sample`` act on such tuples. ``batched(params, obs)`` runs the policy with
parameters that carry a leading task dimension, vmapped over tasks.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from metafast._validate import positive_int, positive_number
from metafast.nn.mlp import MLP

_LOG_2PI = math.log(2 * math.pi)


def _xavier_(module: nn.Module, generator: torch.Generator | None) -> None:
    # The reference port's weight_init: Xavier-uniform weights, zero biases.
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            nn.init.zeros_(m.bias)


def _check_sizes(obs_dim, out_dim, hidden) -> list[int]:
    return [positive_int(obs_dim, "policy: obs_dim"),
            *(positive_int(h, f"policy: hidden[{i}]") for i, h in enumerate(hidden)),
            positive_int(out_dim, "policy: output size")]


def batched_mlp(net: MLP, prefix: str, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``net`` on x [tasks, n, in] with per-task weights params[prefix + "i.weight"] [tasks, out, in]:
    one baddbmm per layer (vmap of functional_call costs ~1 ms per call on the CPU, ~10x this)."""
    act = torch.relu if net.activation == "relu" else torch.tanh
    layers = [i for i, m in enumerate(net) if isinstance(m, nn.Linear)]
    for k, i in enumerate(layers):
        w, b = params[f"{prefix}{i}.weight"], params[f"{prefix}{i}.bias"]
        x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        if k < len(layers) - 1:
            x = act(x)
    return x


class _Policy(nn.Module):
    discrete: bool

    def batched(self, params: dict[str, torch.Tensor], obs: torch.Tensor) -> tuple:
        """Distribution parameters for obs [tasks, n, obs_dim] under params {name: [tasks, ...]}."""
        if obs.dim() != 3 or any(p.shape[0] != obs.shape[0] for p in params.values()):
            raise ValueError(f"policy.batched: obs must be [tasks, n, obs_dim] and every parameter [tasks, ...] "
                             f"with the same tasks, got obs {tuple(obs.shape)}")
        return self._batched(params, obs)

    def _batched(self, params, obs):
        return vmap(lambda p, o: functional_call(self, p, (o,)))(params, obs)


class GaussianMLPPolicy(_Policy):
    """Diagonal Gaussian over actions: mean = MLP(obs), state-independent learned log-std
    (clamped below at log(min_std)), as NormalMLPPolicy of the reference port."""

    discrete = False

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 init_std: float = 1.0, min_std: float = 1e-6, generator: torch.Generator | None = None):
        super().__init__()
        sizes = _check_sizes(obs_dim, act_dim, hidden)
        positive_number(init_std, "GaussianMLPPolicy: init_std")
        positive_number(min_std, "GaussianMLPPolicy: min_std")
        self.mean = MLP(sizes, activation)
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(init_std)))
        self.min_log_std = math.log(min_std)
        _xavier_(self, generator)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(obs)
        return mean, self.log_std.clamp(min=self.min_log_std).expand_as(mean)

    def _batched(self, params, obs):
        mean = batched_mlp(self.mean, "mean.", params, obs)
        return mean, params["log_std"].clamp(min=self.min_log_std).unsqueeze(1).expand_as(mean)

    @staticmethod
    def log_prob(dist, actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = dist
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z * z - log_std - 0.5 * _LOG_2PI).sum(-1)

    @staticmethod
    def kl(dist, old) -> torch.Tensor:
        """KL(dist || old), summed over action dimensions."""
        (m, s), (m0, s0) = dist, old
        return (s0 - s + (torch.exp(2 * s) + (m - m0) ** 2) / (2 * torch.exp(2 * s0)) - 0.5).sum(-1)

    @staticmethod
    def kl_hessian_product(old, tangent) -> tuple:
        """∇² KL(· || old) at old, in distribution-parameter space, applied to a tangent (per row):
        1/σ² on the mean, 2 on the log-std, no cross term."""
        (_, s0), (dm, ds) = old, tangent
        return dm * torch.exp(-2 * s0), 2 * ds

    @staticmethod
    def sample(dist, generator: torch.Generator | None = None) -> torch.Tensor:
        mean, log_std = dist
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(log_std) * noise


class CategoricalMLPPolicy(_Policy):
    """Categorical over ``n_actions`` discrete actions with logits = MLP(obs)."""

    discrete = True

    def __init__(self, obs_dim: int, n_actions: int, hidden: Sequence[int] = (64, 64), activation: str = "tanh",
                 generator: torch.Generator | None = None):
        super().__init__()
        self.logits = MLP(_check_sizes(obs_dim, n_actions, hidden), activation)
        _xavier_(self, generator)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.logits(obs),)

    def _batched(self, params, obs):
        return (batched_mlp(self.logits, "logits.", params, obs),)

    @staticmethod
    def log_prob(dist, actions: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(dist[0], -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def kl(dist, old) -> torch.Tensor:
        logp, logq = torch.log_softmax(dist[0], -1), torch.log_softmax(old[0], -1)
        return (logp.exp() * (logp - logq)).sum(-1)

    @staticmethod
    def kl_hessian_product(old, tangent) -> tuple:
        """∇² KL(· || old) at old in logit space, applied to a tangent: diag(p)·dz − p·(pᵀdz)."""
        p, dz = torch.softmax(old[0], -1), tangent[0]
        return (p * dz - p * (p * dz).sum(-1, keepdim=True),)

    @staticmethod
    def sample(dist, generator: torch.Generator | None = None) -> torch.Tensor:
        probs = torch.softmax(dist[0], -1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return flat.reshape(probs.shape[:-1])


def detach_dist(dist) -> tuple:
    return tuple(t.detach() for t in dist)
