"""The argument checks every part of metafast shares: each rule written once,
each error one line naming the argument (``what``)."""
from __future__ import annotations

import math
import numbers
import operator

import torch


def positive_int(value, what: str) -> int:
    """``value`` as an int >= 1; anything else (None, bool, float, < 1) is an error naming ``what``."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a positive integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{what} must be a positive integer, got {n}")
    return n


def check_rate(value, what: str) -> float | torch.Tensor:
    """A learning rate: a finite real number (returned as a float) or a finite one-element
    floating tensor (returned as is: it may be a parameter, and stays differentiable)."""
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point or value.numel() != 1:
            raise TypeError(f"{what} must be a one-element floating-point tensor, got {value.dtype} of shape "
                            f"{tuple(value.shape)}")
        if value.device.type != "meta" and not math.isfinite(value.item()):
            raise ValueError(f"{what} must be finite, got {value.item()}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a finite number or a one-element tensor, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{what} must be finite, got {value}")
    return float(value)


def positive_number(value, what: str) -> float:
    """``value`` as a finite float > 0; bools, NaN, inf and non-numbers are errors naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a positive number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value}")
    return float(value)
