"""Models that metafast serves."""
from metafast.nn.mlp import MLP, mlp_spec

__all__ = ["MLP", "mlp_spec"]
