"""metafast: exact, fast MAML for PyTorch."""
from metafast import _extension
