"""metafast.nn.MLP: the Linear/activation stack that the fused inner loop serves."""
from __future__ import annotations

import numbers
from typing import Sequence

from torch import nn

from metafast.ops.mlp_adapt import MAX_LAYERS, MAX_WIDTH, within

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Sequential):
    """Linear layers of widths ``sizes`` with ``activation`` between them (none after the last).

    ``MLP([1, 40, 40, 1])`` is the MAML paper's sinusoid network.
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu"):
        if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) for s in sizes):
            raise TypeError(f"MLP: sizes must be integers, got {list(sizes)}")  # 1.5 is not truncated to 1
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) <= 0:
            raise ValueError(f"MLP: sizes must list at least two positive widths, got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation '{activation}' (expected one of {sorted(_ACTIVATIONS)})")
        layers: list[nn.Module] = []
        for i, (din, dout) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(din, dout))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.sizes = sizes
        self.activation = activation


def mlp_spec(model: nn.Module) -> tuple[list[int], str] | str:
    """(sizes, activation) when ``model`` is a Linear/ReLU|Tanh stack the fused
    kernel can run, else a string saying why not."""
    if not isinstance(model, nn.Sequential):
        return f"{type(model).__name__} is not an nn.Sequential of Linear and ReLU/Tanh layers"
    layers = list(model)
    if not layers or not isinstance(layers[0], nn.Linear) or not isinstance(layers[-1], nn.Linear):
        return "the Sequential must start and end with nn.Linear"
    sizes = [layers[0].in_features]
    activation = None
    expect_linear = True
    for layer in layers:
        if expect_linear:
            if not isinstance(layer, nn.Linear) or layer.bias is None:
                return f"expected nn.Linear with bias, found {layer}"
            if layer.in_features != sizes[-1]:
                return "consecutive Linear widths do not match"
            sizes.append(layer.out_features)
        else:
            kind = "relu" if isinstance(layer, nn.ReLU) else "tanh" if isinstance(layer, nn.Tanh) else None
            if kind is None:
                return f"unsupported layer {layer} (the fused kernel serves ReLU and Tanh)"
            if activation not in (None, kind):
                return "mixed activations"
            activation = kind
        expect_linear = not expect_linear
    if not within(len(sizes) - 1, MAX_LAYERS):
        return f"{len(sizes) - 1} Linear layers (the fused kernel serves up to {MAX_LAYERS})"
    if not within(max(sizes), MAX_WIDTH):
        return f"a layer {max(sizes)} wide (the fused kernel serves widths up to {MAX_WIDTH})"
    return sizes, activation or "relu"
