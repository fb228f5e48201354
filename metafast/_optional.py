"""Imports of what only the demo, the training command and Omniglot decoding
need (the `cli` extra), failing with one line that names the fix."""
from __future__ import annotations

import importlib
from types import ModuleType

_PACKAGES = {"tqdm": "tqdm", "matplotlib": "matplotlib", "PIL": "pillow"}


class MissingExtraError(ImportError):
    pass


def require(module: str, purpose: str) -> ModuleType:
    """import_module(module), or an error saying which extra provides it."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != top:
            raise
        raise MissingExtraError(f"{purpose} needs {_PACKAGES.get(top, top)}, which is not installed: "
                                f"pip install 'metafast[cli]'") from None
