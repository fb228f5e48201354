"""Sampling: every trajectory of every task rolled out at once, padded to one horizon."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Episodes:
    """Trajectories of a meta-batch, time first as in the reference port's BatchEpisodes.
    Entries after an episode's end are zero (mask 0)."""

    observations: torch.Tensor  # [H, tasks, trajectories, obs_dim]
    actions: torch.Tensor       # [H, tasks, trajectories, act_dim] (discrete: [H, tasks, trajectories])
    rewards: torch.Tensor       # [H, tasks, trajectories]
    mask: torch.Tensor          # [H, tasks, trajectories], 1 while the episode runs

    @property
    def lengths(self) -> torch.Tensor:
        """[tasks, trajectories] steps per episode."""
        return self.mask.sum(0)

    @property
    def returns(self) -> torch.Tensor:
        """[tasks, trajectories] undiscounted return of each episode."""
        return self.rewards.sum(0)


def expand_params(params: dict[str, torch.Tensor], tasks: int) -> dict[str, torch.Tensor]:
    """One copy of shared parameters per task (a view: gradients flow back to params)."""
    return {n: p.expand(tasks, *p.shape) for n, p in params.items()}


@torch.no_grad()
def rollout(env, policy, params: dict[str, torch.Tensor], goals: torch.Tensor, trajectories: int,
            generator: torch.Generator | None = None) -> Episodes:
    """Sample ``trajectories`` episodes per task with per-task parameters {name: [tasks, ...]}.
    The policy sees ``env.observe(state, goals)`` where the environment has it (the half-cheetah:
    its state carries more than the observation), else the state itself."""
    state = env.reset(goals, trajectories, generator)
    observe = getattr(env, "observe", None)
    alive = torch.ones(state.shape[:2], dtype=torch.bool, device=state.device)
    obs, acts, rews, masks = [], [], [], []
    for _ in range(env.max_steps):
        seen = state if observe is None else observe(state, goals)
        action = policy.sample(policy.batched(params, seen), generator)
        next_state, reward, done = env.step(state, action, goals)
        m = alive.to(seen.dtype)
        obs.append(seen * m[..., None])
        acts.append(action * (m[..., None] if action.dim() == 3 else alive))
        rews.append(reward * m)
        masks.append(m)
        state = torch.where(alive[..., None], next_state, state)
        alive = alive & ~done
        if not alive.any():  # one sync per step; ends early once every goal is reached
            break
    return Episodes(torch.stack(obs), torch.stack(acts), torch.stack(rews), torch.stack(masks))
