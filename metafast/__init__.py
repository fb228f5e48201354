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

__version__ = "0.1.0"


def build_info() -> dict:
    """Versions and capabilities of this installation."""
    import torch

    info = {
        "metafast_version": __version__,
        "torch_version": torch.__version__,
        "extension": _extension.available(),
        "extension_error": _extension.UNAVAILABLE_REASON,
        "built_torch_version": None,
        "cuda_kernels": False,
        "cuda_version": None,
        "cuda_archs": None,
    }
    if _extension.available():
        built = _extension._C.build_info()
        info.update(built_torch_version=built["torch_version"], cuda_kernels=bool(built["cuda"]),
                    cuda_version=built["cuda_version"], cuda_archs=built["cuda_archs"])
    return info


__all__ = ["MAML", "MetaSGD", "BatchedMAML", "MetaOutput", "clone_module", "build_info", "reference", "data", "nn",
           "ops", "__version__"]
