"""Models that metafast serves."""
from metafast.nn.conv4 import Conv4
from metafast.nn.mlp import MLP, mlp_spec

__all__ = ["MLP", "Conv4", "mlp_spec"]
