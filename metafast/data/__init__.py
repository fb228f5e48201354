"""Task distributions and data sets."""
from metafast.data.sinusoid import Sinusoid, SinusoidBatch

__all__ = ["Sinusoid", "SinusoidBatch"]
