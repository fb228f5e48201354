"""Vectorised environments in torch: one call steps every trajectory of every
task of a meta-batch (state [tasks, trajectories, obs_dim]) on the device."""
from __future__ import annotations

import torch

from metafast._validate import finite_number, positive_int


class Navigation2D:
    """2D navigation (Finn et al., 2017; Navigation2DEnv of tristandeleu/pytorch-maml-rl).

    A point starts at the origin; the action is its velocity, clipped to
    [-max_action, max_action] per coordinate; the reward is minus the Euclidean
    distance to the task's goal after the move. An episode ends when both
    coordinates are within ``tolerance`` of the goal (a box, as in the reference
    code) or after ``max_steps`` steps. Goals are uniform on [low, high]^2.
    """

    obs_dim = 2
    act_dim = 2

    def __init__(self, low: float = -0.5, high: float = 0.5, max_steps: int = 100, max_action: float = 0.1,
                 tolerance: float = 0.01):
        self.low, self.high = finite_number(low, "Navigation2D: low"), finite_number(high, "Navigation2D: high")
        if not self.low < self.high:
            raise ValueError(f"Navigation2D: need low < high, got low={low}, high={high}")
        self.max_steps = positive_int(max_steps, "Navigation2D: max_steps")
        self.max_action = finite_number(max_action, "Navigation2D: max_action", 0.0, low_open=True)
        self.tolerance = finite_number(tolerance, "Navigation2D: tolerance", 0.0, low_open=True)

    def sample_goals(self, tasks: int, generator: torch.Generator | None = None, dtype=torch.float32,
                     device="cpu") -> torch.Tensor:
        """[tasks, 2] goals, uniform on [low, high]^2."""
        tasks = positive_int(tasks, "Navigation2D.sample_goals: tasks")
        u = torch.rand(tasks, 2, generator=generator, dtype=dtype, device=device)
        return self.low + (self.high - self.low) * u

    def reset(self, goals: torch.Tensor, trajectories: int, generator: torch.Generator | None = None
              ) -> torch.Tensor:
        """Initial states [tasks, trajectories, 2] (the origin; ``generator`` is unused: no noise)."""
        self._check_goals(goals)
        trajectories = positive_int(trajectories, "Navigation2D.reset: trajectories")
        return goals.new_zeros(goals.shape[0], trajectories, 2)

    def step(self, state: torch.Tensor, action: torch.Tensor, goals: torch.Tensor):
        """(next state, reward, done) for states and actions [tasks, trajectories, 2]."""
        self._check_goals(goals)
        if state.shape != action.shape or state.dim() != 3 or state.shape[-1] != 2 or state.shape[0] != goals.shape[0]:
            raise ValueError(f"Navigation2D.step: state and action must both be [tasks={goals.shape[0]}, "
                             f"trajectories, 2], got {tuple(state.shape)} and {tuple(action.shape)}")
        state = state + action.clamp(-self.max_action, self.max_action)
        diff = state - goals[:, None, :]
        reward = -torch.sqrt(diff[..., 0] ** 2 + diff[..., 1] ** 2)
        done = (diff.abs() < self.tolerance).all(-1)
        return state, reward, done

    @staticmethod
    def _check_goals(goals) -> None:
        if not isinstance(goals, torch.Tensor) or goals.dim() != 2 or goals.shape[1] != 2 or goals.shape[0] == 0:
            shape = tuple(goals.shape) if isinstance(goals, torch.Tensor) else type(goals).__name__
            raise ValueError(f"Navigation2D: goals must be a [tasks, 2] tensor with at least one task, got {shape}")
        if not goals.dtype.is_floating_point:
            raise ValueError(f"Navigation2D: goals must be floating point, got {goals.dtype}")
