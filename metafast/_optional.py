"""Imports of what only the demo, the training command and Omniglot decoding
need (the `cli` extra) or the half-cheetah environments need (the `mujoco`
extra), failing with one line that names the fix."""
from __future__ import annotations

import importlib
from types import ModuleType

_PACKAGES = {"tqdm": "tqdm", "matplotlib": "matplotlib", "PIL": "pillow", "mujoco": "mujoco",
             "gymnasium": "gymnasium"}


class MissingExtraError(ImportError):
    pass


def require(module: str, purpose: str, extra: str = "cli") -> ModuleType:
    """import_module(module), or an error saying which extra provides it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise
        raise MissingExtraError(f"{purpose} needs {_PACKAGES.get(top, top)}, which is not installed: "
                                f"pip install 'metafast[{extra}]'") from None
