"""The MAML paper's sinusoid regression tasks, sampled a whole meta-batch at once."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class SinusoidBatch:
    support_x: torch.Tensor  # [T, K, 1]
    support_y: torch.Tensor  # [T, K, 1]
    query_x: torch.Tensor    # [T, Q, 1]
    query_y: torch.Tensor    # [T, Q, 1]
    amplitude: torch.Tensor  # [T]
    phase: torch.Tensor      # [T]


class Sinusoid:
    """y = A·sin(x + φ) with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[-5, 5] (Finn et al., 2017)."""

    def __init__(self, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)):
        for name, (lo, hi) in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range)):
            if not lo <= hi:
                raise ValueError(f"Sinusoid: {name} range must satisfy low <= high, got {(lo, hi)}")
        self.amplitude, self.phase, self.x_range = amplitude, phase, x_range

    def sample(self, num_tasks: int, shots: int = 10, queries: int = 10, generator: torch.Generator | None = None,
               device="cpu", dtype=torch.float32) -> SinusoidBatch:
        if num_tasks < 1 or shots < 1 or queries < 0:
            raise ValueError(f"Sinusoid.sample: need num_tasks >= 1, shots >= 1, queries >= 0, "
                             f"got {num_tasks}, {shots}, {queries}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"Sinusoid.sample: dtype must be a floating-point dtype (x and y are real), got {dtype}")
        device = torch.device(device)
        if generator is not None and generator.device != device:
            raise ValueError(f"Sinusoid.sample: generator is on {generator.device} but device is {device}")

        def uniform(shape, lo, hi):
            return torch.rand(shape, generator=generator, device=device, dtype=dtype) * (hi - lo) + lo

        amp = uniform((num_tasks,), *self.amplitude)
        phase = uniform((num_tasks,), *self.phase)
        x = uniform((num_tasks, shots + queries, 1), *self.x_range)
        y = amp[:, None, None] * torch.sin(x + phase[:, None, None])
        return SinusoidBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], amp, phase)

    @staticmethod
    def curve(amplitude: torch.Tensor, phase: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The true function of each task at x [T, N, 1]."""
        return amplitude[:, None, None] * torch.sin(x + phase[:, None, None])
