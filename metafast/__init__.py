"""metafast: exact, fast MAML for PyTorch.

- ``MAML`` / ``MetaSGD``: learn2learn-compatible clone/adapt wrappers.
- ``BatchedMAML``: adapts a whole meta-batch at once (fused C++/CUDA inner
  loop for MLPs, torch.func vmap for any model).
- ``reference``: the plain per-task eager loop every path is tested against.
"""
from metafast import _extension
from metafast import data, nn, ops, reference
from metafast.batched import BatchedMAML, MetaOutput
from metafast.maml import MAML, MetaSGD, clone_module

__version__ = "0.2.0"  # the one place the version is written (pyproject reads it)


def build_info() -> dict:
    """Versions and capabilities of this installation."""
    import torch

    info = {
        "metafast_version": __version__,
        "torch_version": torch.__version__,
        "extension": _extension.available(),
        "extension_error": _extension.UNAVAILABLE_REASON,
        "built_torch_version": None,
        "torch_target": None,
        "cuda_kernels": False,
        "cuda_error": None,
        "cuda_version": None,
        "cuda_archs": None,
    }
    config = _extension.CONFIG
    if config is not None:
        info.update(built_torch_version=config.BUILT_WITH_TORCH, torch_target=config.TORCH_TARGET,
                    cuda_version=config.CUDA_VERSION or None, cuda_archs=config.CUDA_ARCHS or None)
    if _extension.available():
        info.update(cuda_kernels=_extension.cuda_available(), cuda_error=_extension.CUDA_UNAVAILABLE_REASON)
    return info


__all__ = ["MAML", "MetaSGD", "BatchedMAML", "MetaOutput", "clone_module", "build_info", "reference", "data", "nn",
           "ops", "__version__"]
