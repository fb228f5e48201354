"""BatchedMAML lives in metafast.algorithms.batched; this name stays for existing imports."""
from metafast.algorithms.batched import BACKEND_NAMES, BatchedMAML, MetaOutput  # noqa: F401

__all__ = ["BatchedMAML", "MetaOutput", "BACKEND_NAMES"]
