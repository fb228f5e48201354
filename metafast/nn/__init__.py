"""Models that metafast serves."""
from metafast.nn.conv4 import Conv4
from metafast.nn.mlp import MLP, mlp_spec
from metafast.nn.per_step import PerStepBatchNorm2d, inner_step
from metafast.nn.resnet12 import ResNet12

__all__ = ["MLP", "Conv4", "PerStepBatchNorm2d", "ResNet12", "inner_step", "mlp_spec"]
