"""Task distributions and data sets."""
from metafast.data.episodes import Episode, EpisodeSampler
from metafast.data.omniglot import Omniglot, load_omniglot, split_characters
from metafast.data.sinusoid import Sinusoid, SinusoidBatch

__all__ = ["Sinusoid", "SinusoidBatch", "Omniglot", "EpisodeSampler", "Episode", "load_omniglot", "split_characters"]
