"""Models that metafast serves."""
from metafast.nn.conv4 import Conv4
from metafast.nn.mlp import MLP, mlp_spec
from metafast.nn.resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "ResNet12", "mlp_spec"]
