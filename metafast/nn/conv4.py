"""The Conv-4 backbone of MAML (Finn et al., 2017; after Vinyals et al., 2016)."""
from __future__ import annotations

import torch
from torch import nn

from metafast.nn.per_step import PerStepBatchNorm2d

__all__ = ["Conv4"]


class Conv4(nn.Module):
    """Four conv blocks, a spatial mean and a linear head.

    Each block is a 3x3 convolution (padding 1, no bias: the batch norm that
    follows subtracts any per-channel constant, so a bias would only add
    parameters whose gradient is exactly zero), batch norm and ReLU:

    * ``pooling="stride"`` (Omniglot in MAML): stride-2 convolutions,
      28 -> 14 -> 7 -> 4 -> 2;
    * ``pooling="max"`` (miniImageNet in MAML): stride-1 convolutions each
      followed by 2x2 max-pooling, 84 -> 42 -> 21 -> 10 -> 5.

    Batch norm always uses the statistics of the current batch, in training and
    in evaluation alike (transductive, as in MAML), with a learned affine
    transform and no running statistics: ``nn.BatchNorm2d(track_running_stats=False)``,
    which is ``F.batch_norm(x, None, None, weight, bias, training=True)``.
    The module therefore holds parameters only (no buffers) and its forward
    is a pure function of them, so it runs under ``torch.func.functional_call``
    and ``torch.func.vmap`` over tasks (each task normalizes with its own
    statistics).

    ``features(x)`` is the body: the four blocks, then the mean over space
    (``[batch, hidden]``); ``head``, an ``nn.Linear``, maps it to ``out_features``
    logits and is the only layer that adapts with ANIL (``adapt="head"``).

    Args:
        out_features: number of classes (ways).
        hidden: channels of every conv layer (64 for Omniglot, 32 for miniImageNet).
        in_channels: 1 for Omniglot, 3 for miniImageNet.
        pooling: ``"stride"`` or ``"max"``.
        eps: batch-norm epsilon.
        per_step_bn: MAML++'s per-step batch-norm weights and biases (BNWB) for
            this many inner steps (metafast.nn.PerStepBatchNorm2d); None: one set.
        per_step_running_stats: with per_step_bn, also running statistics per
            step (BNRS), used in eval mode.
    """

    def __init__(
        self,
        out_features: int,
        hidden: int = 64,
        in_channels: int = 1,
        pooling: str = "stride",
        eps: float = 1e-5,
        per_step_bn: int | None = None,
        per_step_running_stats: bool = False,
    ):
        super().__init__()
        if pooling not in ("stride", "max"):
            raise ValueError(f"pooling must be 'stride' or 'max', not {pooling!r}")
        if out_features < 1 or hidden < 1 or in_channels < 1:
            raise ValueError("out_features, hidden and in_channels must be positive")
        self.out_features = out_features
        self.hidden = hidden
        self.in_channels = in_channels
        self.pooling = pooling
        stride = 2 if pooling == "stride" else 1
        blocks = []
        for i in range(4):
            norm = (nn.BatchNorm2d(hidden, eps=eps, affine=True, track_running_stats=False) if per_step_bn is None
                    else PerStepBatchNorm2d(hidden, per_step_bn, eps=eps, track_running_stats=per_step_running_stats))
            layers = [
                nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, stride=stride, padding=1, bias=False),
                norm,
                nn.ReLU(),
            ]
            if pooling == "max":
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
        # features(x) is the head's input: [batch, hidden] after the spatial mean
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(hidden, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[batch, in_channels, H, W]`` -> logits ``[batch, out_features]``."""
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"pooling={self.pooling!r}"
