"""The argument checks every part of metafast shares: each rule written once,
each error one line naming the argument (``what``)."""
from __future__ import annotations

import math
import numbers
import operator

import torch


def _int_at_least(value, what: str, low: int, kind: str) -> int:
    """``value`` as an int >= ``low``: bools and non-integers a TypeError, smaller ones a ValueError."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a {kind} integer, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be a {kind} integer, got {value!r}") from None
    if n < low:
        raise ValueError(f"{what} must be a {kind} integer, got {n}")
    return n


def positive_int(value, what: str) -> int:
    """``value`` as an int >= 1; anything else (None, bool, float, < 1) is an error naming ``what``."""
    return _int_at_least(value, what, 1, "positive")


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


def nonnegative_int(value, what: str) -> int:
    """``value`` as an int >= 0; anything else (None, bool, float, < 0) is an error naming ``what``."""
    return _int_at_least(value, what, 0, "non-negative")


def finite_number(value, what: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float, within ``low`` .. ``high`` where they are given (each end
    closed unless ``low_open`` / ``high_open``); bools and non-numbers are a TypeError, NaN, inf
    and values out of range a ValueError, each naming ``what`` and the range."""
    if low is not None and high is not None:
        rng = f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        rng = f" {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        rng = f" {'<' if high_open else '<='} {high:g}"
    else:
        rng = ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a finite number{rng}, got {value!r}")
    ok = math.isfinite(value)
    ok = ok and (low is None or value > low or (not low_open and value == low))
    ok = ok and (high is None or value < high or (not high_open and value == high))
    if not ok:
        raise ValueError(f"{what} must be a finite number{rng}, got {value!r}")
    return float(value)


def argparse_type(check, parse=int):
    """An argparse ``type=`` that parses the text with ``parse`` and then applies ``check(value,
    what)`` (one of the validators above). A failed check is an ``ArgumentTypeError`` that argparse
    prints after the flag that names it: ``argument --n: must be a positive integer, got 0``; text
    ``parse`` rejects gets argparse's own ``invalid int value: 'x'``."""
    import argparse

    def convert(text: str):
        value = parse(text)
        try:
            return check(value, "")
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc).strip()) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert
