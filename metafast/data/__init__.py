"""Task distributions and data sets."""
from metafast.data.omniglot import Episode, EpisodeSampler, Omniglot, load_omniglot, split_characters
from metafast.data.sinusoid import Sinusoid, SinusoidBatch

__all__ = ["Sinusoid", "SinusoidBatch", "Omniglot", "EpisodeSampler", "Episode", "load_omniglot", "split_characters"]
