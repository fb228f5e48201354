"""ResNet-12, the few-shot backbone of TADAM / MetaOptNet (as in learn2learn's ``ResNet12``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DropBlock", "ResNet12", "ResNet12Block"]

WIDE = (64, 160, 320, 640)  # MetaOptNet, learn2learn's default
NARROW = (64, 128, 256, 512)  # TADAM; learn2learn's wider=False


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al., 2018): zero ``block_size`` x ``block_size`` squares, in training only.

    Block centres are drawn with the rate that drops about ``drop_prob`` of the
    units, then the kept units are rescaled by (units / kept), as in MetaOptNet.
    Under ``torch.func.vmap`` it needs ``randomness="different"`` (or "same").
    """

    def __init__(self, drop_prob: float = 0.1, block_size: int = 5):
        super().__init__()
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        if block_size < 1 or block_size % 2 == 0:
            raise ValueError(f"block_size must be a positive odd number, got {block_size}")
        self.drop_prob, self.block_size = drop_prob, block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        h, w = x.shape[-2:]
        bs = min(self.block_size, h, w)
        bs -= 1 - bs % 2  # odd, at most the map
        valid_h, valid_w = h - bs + 1, w - bs + 1
        gamma = self.drop_prob / bs**2 * (h * w) / (valid_h * valid_w)
        centres = (torch.rand(*x.shape[:-2], valid_h, valid_w, device=x.device) < gamma).to(x.dtype)
        pad = (bs // 2, bs // 2, bs // 2, bs // 2)
        keep = 1.0 - F.max_pool2d(F.pad(centres, pad), bs, stride=1, padding=bs // 2)  # [.., h, w]
        return x * keep * (keep.numel() / keep.sum().clamp_min(1.0))

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}"


class ResNet12Block(nn.Module):
    """3 x (conv 3x3, BN, LeakyReLU), the last activation after adding a (conv 1x1, BN) shortcut; 2x2 max-pool.

    conv1-bn1-act, conv2-bn2-act, conv3-bn3, + shortcut(x), act, max-pool,
    then the optional DropBlock (MetaOptNet's ``BasicBlock``).
    """

    def __init__(self, in_channels: int, out_channels: int, negative_slope: float = 0.1, eps: float = 1e-5,
                 dropblock: float = 0.0, dropblock_size: int = 5):
        super().__init__()

        def bn():
            return nn.BatchNorm2d(out_channels, eps=eps, affine=True, track_running_stats=False)

        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = bn()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = bn()
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn3 = bn()
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), bn())
        self.act = nn.LeakyReLU(negative_slope)
        self.pool = nn.MaxPool2d(2)
        self.dropblock = DropBlock(dropblock, dropblock_size) if dropblock > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.dropblock(self.pool(self.act(out + self.shortcut(x))))


class ResNet12(nn.Module):
    """Four :class:`ResNet12Block` s, a global average pool and a linear head.

    The MetaOptNet / learn2learn layout: channels 64-160-320-640 (``wide=True``,
    the default) or 64-128-256-512 (``wide=False``, TADAM's), or any four given
    as ``channels``; each block halves the side (84 -> 42 -> 21 -> 10 -> 5,
    32 -> 16 -> 8 -> 4 -> 2), so the input needs a side of at least 16.

    Conventions of :class:`~metafast.nn.Conv4`: convolutions without bias;
    batch norm with a learned affine transform and batch statistics in
    training and evaluation alike (``track_running_stats=False``, no buffers,
    the forward a pure function of the parameters, so it runs under
    ``torch.func.functional_call`` and ``vmap`` over tasks); ``features(x)``
    is the body (``[batch, channels[-1]]`` after the pool) and ``head``, an
    ``nn.Linear``, the only layer that adapts with ANIL (``adapt="head"``).

    Args:
        ways: outputs of the head (classes per task).
        channels: the four block widths (default: ``WIDE`` or ``NARROW`` by ``wide``).
        wide: 64-160-320-640 if True, else 64-128-256-512.
        in_channels: 3 for RGB images.
        dropblock: DropBlock rate in the last two blocks, as MetaOptNet (0 = off,
            the default; MetaOptNet trains with 0.1 and block size 5).
        dropblock_size: DropBlock's block side.
        negative_slope: of the LeakyReLU (0.1).
        eps: batch-norm epsilon.
    """

    def __init__(self, ways: int, channels: Sequence[int] | None = None, wide: bool = True, in_channels: int = 3,
                 dropblock: float = 0.0, dropblock_size: int = 5, negative_slope: float = 0.1, eps: float = 1e-5):
        super().__init__()
        channels = tuple(channels) if channels is not None else (WIDE if wide else NARROW)
        if len(channels) != 4 or min(channels) < 1 or ways < 1 or in_channels < 1:
            raise ValueError(f"need ways >= 1, in_channels >= 1 and four positive channels, got ways={ways}, "
                             f"in_channels={in_channels}, channels={channels}")
        self.ways, self.channels, self.in_channels = ways, channels, in_channels
        blocks, c_in = [], in_channels
        for i, c in enumerate(channels):
            blocks.append(ResNet12Block(c_in, c, negative_slope, eps, dropblock if i >= 2 else 0.0, dropblock_size))
            c_in = c
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(channels[-1], ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[batch, in_channels, H, W]`` -> logits ``[batch, ways]``."""
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"
