"""The few-shot vision benchmarks by name: ``load_few_shot("mini-imagenet", root, "train")``.

One call builds any split of any data set, so a command line can take the
data set's name::

    from metafast.data import FEW_SHOT, load_few_shot
    train = load_few_shot("cifar-fs", "data/cifar100", "train", device="cuda", normalize=True, augment=True)
    spec = FEW_SHOT["cifar-fs"]   # channels, image side, classes per split, where to get the files
    model = metafast.nn.ResNet12(ways=5, in_channels=spec.channels)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["FEW_SHOT", "FewShotSpec", "few_shot_spec", "load_few_shot"]


@dataclass(frozen=True)
class FewShotSpec:
    """What a command needs to know about a data set before loading it."""

    name: str
    loader: str  # class in metafast.data
    channels: int
    image_size: int
    classes: dict  # split -> number of classes of the published split
    files: str  # what the root folder must hold
    aliases: tuple = ()


FEW_SHOT = {
    s.name: s
    for s in (
        FewShotSpec("omniglot", "Omniglot", 1, 28, {"train": 1100, "val": 100, "test": 423},
                    "images_background.zip and images_evaluation.zip"),
        FewShotSpec("mini-imagenet", "MiniImageNet", 3, 84, {"train": 64, "val": 16, "test": 20},
                    "mini-imagenet-cache-{split}.pkl, or {split}.csv and images/", ("miniimagenet",)),
        FewShotSpec("tiered-imagenet", "TieredImageNet", 3, 84, {"train": 351, "val": 97, "test": 160},
                    "{split}_images_png.pkl and {split}_labels.pkl", ("tieredimagenet",)),
        FewShotSpec("cifar-fs", "CIFARFS", 3, 32, {"train": 64, "val": 16, "test": 20},
                    "cifar-100-python.tar.gz", ("cifarfs",)),
        FewShotSpec("fc100", "FC100", 3, 32, {"train": 60, "val": 20, "test": 20},
                    "cifar-100-python.tar.gz", ("fc-100",)),
    )
}


def few_shot_spec(name: str) -> FewShotSpec:
    """The :class:`FewShotSpec` of ``name`` (case, ``_`` and ``-`` are ignored in aliases)."""
    key = name.lower().replace("_", "-")
    for spec in FEW_SHOT.values():
        if key == spec.name or key in spec.aliases or key.replace("-", "") == spec.name.replace("-", ""):
            return spec
    raise ValueError(f"unknown few-shot data set {name!r}; known: {', '.join(FEW_SHOT)}")


def load_few_shot(name: str, root: str | os.PathLike, split: str = "train", **kwargs):
    """One split of the data set ``name`` (see :data:`FEW_SHOT`) from the folder ``root``.

    ``kwargs`` go to the data set's class (``device``, ``normalize``,
    ``augment``, ``strict``, ``cache_dir``, ...; Omniglot takes its own:
    ``rotations``, ``seed``, ``cache_dir``, ...).  Every data set has
    ``sample(tasks, ways, shots, queries, generator, device)`` returning an
    :class:`~metafast.data.Episode`.
    """
    import metafast.data as data

    return getattr(data, few_shot_spec(name).loader)(root, split=split, **kwargs)
