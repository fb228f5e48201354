"""Task distributions and data sets.

Few-shot image benchmarks (one split each, images held on a device, episodes
drawn there vectorised over tasks): :class:`Omniglot`, :class:`MiniImageNet`,
:class:`TieredImageNet`, :class:`CIFARFS`, :class:`FC100`; by name with
:func:`load_few_shot` (see :data:`FEW_SHOT`).
"""
from metafast.data.cifar import CIFARFS, FC100
from metafast.data.episodes import Episode, EpisodeSampler
from metafast.data.images import FewShotImages
from metafast.data.mini_imagenet import MiniImageNet
from metafast.data.omniglot import Omniglot, load_omniglot, split_characters
from metafast.data.registry import FEW_SHOT, FewShotSpec, few_shot_spec, load_few_shot
from metafast.data.sinusoid import Sinusoid, SinusoidBatch
from metafast.data.tiered_imagenet import TieredImageNet

__all__ = [
    "Sinusoid", "SinusoidBatch", "Omniglot", "EpisodeSampler", "Episode", "load_omniglot", "split_characters",
    "FewShotImages", "MiniImageNet", "TieredImageNet", "CIFARFS", "FC100",
    "FEW_SHOT", "FewShotSpec", "few_shot_spec", "load_few_shot",
]
