"""Batched, on-device image augmentation and normalisation for episodes.

The MAML protocol uses neither (pixels in [0, 1]); the ResNet-12 literature
(MetaOptNet, learn2learn) normalises each channel with the data set's mean and
standard deviation and, for training, pads, randomly crops back to size and
randomly flips left-right.  Everything is vectorised over the images of a
batch of episodes and drawn from the episode's ``torch.Generator``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["normalize", "random_crop_flip", "resolve_normalization"]


def resolve_normalization(normalize, published: tuple[Sequence[float], Sequence[float]], name: str):
    """``(mean, std)`` tuples, or None: ``normalize`` is False, True (``published``) or ``(mean, std)``."""
    if normalize is False or normalize is None:
        return None
    if normalize is True:
        mean, std = published
    else:
        try:
            mean, std = normalize
            mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        except (TypeError, ValueError) as e:
            raise ValueError(f"normalize must be False, True (the published {name} statistics) or a (mean, std) "
                             f"pair of per-channel sequences, got {normalize!r}") from e
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ValueError(f"normalize: mean and std need one entry per channel and std > 0, got {mean}, {std}")
    return tuple(mean), tuple(std)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel; ``x``: ``[..., C, H, W]``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x - m) / s


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad by ``padding``, crop a random ``H x W`` window, flip left-right with probability 1/2.

    ``x``: ``[B, C, H, W]``; one window and one coin per image.
    """
    b, c, h, w = x.shape
    gdev = generator.device if generator is not None else x.device
    if padding > 0:
        x = F.pad(x, (padding, padding, padding, padding))
        top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev).to(x.device)
        left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=gdev).to(x.device)
        rows = (top[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # [B, 1, H, 1]
        cols = (left[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # [B, 1, 1, W]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        x = x[bi, ci, rows, cols]
    if flip:
        coin = torch.rand(b, generator=generator, device=gdev).to(x.device) < 0.5
        x = torch.where(coin[:, None, None, None], x.flip(-1), x)
    return x
