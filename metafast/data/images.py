"""One split of a few-shot RGB image data set, held on a device as one uint8 tensor.

The base of :class:`~metafast.data.MiniImageNet`,
:class:`~metafast.data.TieredImageNet`, :class:`~metafast.data.CIFARFS` and
:class:`~metafast.data.FC100`; the same interface as
:class:`~metafast.data.Omniglot`: ``sample(tasks, ways, shots, queries,
generator, device)`` draws a whole batch of episodes on the device that holds
the images (vectorised over tasks, reproducible from a ``torch.Generator``)
and returns an :class:`~metafast.data.Episode` of float32 images
``[T, N*K, 3, H, W]``.  Images stay uint8 on the device (a quarter of the
memory of float32) and are converted per episode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from metafast.data.episodes import Episode, check_episode, draw_episode_indices, episode_labels
from metafast.data.transforms import normalize, random_crop_flip, resolve_normalization

__all__ = ["ClassesOnDevice", "FewShotImages", "check_split", "check_split_sizes"]

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
    return split


def check_split_sizes(dataset: str, path: Path, split: str, counts: Sequence[int], classes: int,
                      per_class: int | None) -> None:
    """With ``strict``: the split has the published number of classes (and images per class)."""
    counts = list(counts)
    wrong = len(counts) != classes or (per_class is not None and any(c != per_class for c in counts))
    if wrong:
        each = f" of {per_class} images each" if per_class is not None else ""
        got = f"{len(counts)} classes of {min(counts, default=0)} to {max(counts, default=0)} images"
        raise ValueError(
            f"{dataset} split {split!r} from {path} has {got}; the published split has {classes} classes{each}. "
            f"The file is incomplete or holds another split (pass strict=False to use it anyway)."
        )


class ClassesOnDevice:
    """What :class:`FewShotImages` and :class:`~metafast.data.Omniglot` share: the
    container protocol over ``num_classes`` classes and ``sample``'s checks.
    A subclass holds its images as the tensor ``images``, provides
    ``num_classes``, ``to(device)`` and what :func:`check_episode` reads, and
    draws the episodes in ``_draw``."""

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.num_classes

    def _class_index(self, c: int) -> int:
        """Class ``c`` as an index in ``0..num_classes-1`` (a negative ``c`` counts from the end)."""
        if not -self.num_classes <= c < self.num_classes:
            raise IndexError(f"class {c} out of range for {self.num_classes} classes")
        return c % self.num_classes

    def sample(
        self,
        tasks: int,
        ways: int,
        shots: int,
        queries: int | None = None,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> Episode:
        """Draw ``tasks`` N-way K-shot tasks at once.

        Each task draws ``ways`` distinct classes and, per class, ``shots +
        queries`` distinct images (``queries`` defaults to ``shots``).  Labels
        are 0..ways-1 in the order the classes were drawn; the support and
        query sets are ordered class by class.  With ``device`` the images are
        first moved there (once).  The random draws (and the augmentation's,
        where the data set augments) use ``generator`` (on its own device) or
        the default generator of the images' device.
        """
        queries = shots if queries is None else queries
        check_episode(self, ways, shots, queries, tasks)
        if device is not None and torch.device(device) != self.images.device:
            self.to(device)
        return self._draw(tasks, ways, shots, queries, generator, self.images.device)

    def _draw(self, tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator | None,
              dev: torch.device) -> Episode:
        """``sample`` once its arguments are checked and the images are on ``dev``."""
        raise NotImplementedError


class FewShotImages(ClassesOnDevice):
    """Images ``[N, H, W, C]`` uint8 grouped by class, and episodes drawn from them.

    Args:
        images: uint8 ``[N, H, W, C]``, the images of the split.
        labels: int ``[N]``, the class of each image, ``0..classes-1``.
        class_names: name of each class.
        split: ``"train"``, ``"val"`` or ``"test"``.
        device: where the images live (episodes are drawn there).
        normalize: False (the MAML protocol: pixels in [0, 1]), True (the data
            set's published per-channel mean and std) or a ``(mean, std)`` pair.
        augment: pad, random-crop and random-flip every image of every episode
            (training augmentation of the ResNet-12 literature; off in MAML).
        crop_padding: the padding of the random crop (default: the data set's).
        flip: with ``augment``, also flip left-right at random.

    Attributes:
        images: uint8 ``[N, H, W, C]`` on ``device``, class by class.
        class_start, class_count: int64 ``[classes]``: the images of class ``c``
            are ``images[class_start[c] : class_start[c] + class_count[c]]``.
        class_names: names of the split's classes (label ``c`` is ``class_names[c]``).
    """

    name = "images"
    #: the published per-channel mean and std (in [0, 1] units), used by normalize=True
    MEAN_STD: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    CROP_PADDING = 4
    item_name = "images"

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: Sequence[str],
        split: str,
        device: str | torch.device = "cpu",
        normalize: bool | tuple = False,
        augment: bool = False,
        crop_padding: int | None = None,
        flip: bool = True,
    ):
        self.split = check_split(split)
        labels = np.asarray(labels, dtype=np.int64)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise ValueError(f"images must be uint8 [N, H, W, C] with one label each, got {images.dtype} "
                             f"{tuple(images.shape)} and {labels.shape[0]} labels")
        counts = np.bincount(labels, minlength=len(class_names))
        if len(counts) != len(class_names) or (counts == 0).any():
            raise ValueError(f"labels must cover 0..{len(class_names) - 1}, each at least once")
        if (np.diff(labels) < 0).any():  # group by class (a copy only when not grouped yet)
            order = np.argsort(labels, kind="stable")
            images, labels = images[order], labels[order]
        self.class_names = [str(c) for c in class_names]
        self.class_count = torch.from_numpy(counts.astype(np.int64))
        self.class_start = torch.cumsum(self.class_count, 0) - self.class_count
        self.images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        self.normalization = resolve_normalization(normalize, self.MEAN_STD, self.name)
        self.augment = bool(augment)
        self.crop_padding = self.CROP_PADDING if crop_padding is None else int(crop_padding)
        self.flip = bool(flip)
        self._place_index()

    def _place_index(self) -> None:
        dev = self.images.device
        self.class_start, self.class_count = self.class_start.to(dev), self.class_count.to(dev)
        self._uniform = int(self.class_count.min()) if bool((self.class_count == self.class_count[0]).all()) else None
        self._min_count = int(self.class_count.min())

    # -- container protocol -------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def images_per_class(self) -> int:
        """The size of the smallest class (the most shots + queries an episode can take)."""
        return self._min_count

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of an episode's images."""
        n, h, w, c = self.images.shape
        return c, h, w

    def __getitem__(self, c: int) -> torch.Tensor:
        """All images of class ``c``, float32 ``[count, C, H, W]`` in [0, 1] (neither normalised nor augmented)."""
        c = self._class_index(c)
        s, n = int(self.class_start[c]), int(self.class_count[c])
        return self.images[s : s + n].permute(0, 3, 1, 2).float().div_(255.0)

    def to(self, device: str | torch.device):
        """Move the images to ``device`` (in place); returns self."""
        self.images = self.images.to(device)
        self._place_index()
        return self

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"{type(self).__name__}(split={self.split!r}, classes={self.num_classes}, "
                f"images={self.images.shape[0]}, shape={c}x{h}x{w}, normalize={self.normalization is not None}, "
                f"augment={self.augment}, device={self.device})")

    # -- episodes -------------------------------------------------------------
    def _draw(self, tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator | None,
              dev: torch.device) -> Episode:
        """``sample``: per class ``shots + queries`` distinct images, augmented and normalised as set."""
        n = shots + queries
        counts = self._uniform if self._uniform is not None else self.class_count
        cls, items = draw_episode_indices(tasks, ways, n, counts, self.num_classes, generator, dev)
        x = self.images[self.class_start[cls][..., None] + items]  # [T, N, K+Q, H, W, C] uint8
        c, h, w = self.image_shape
        x = x.view(-1, h, w, c).permute(0, 3, 1, 2).float().div_(255.0)  # [T*N*(K+Q), C, H, W]
        if self.augment:
            x = random_crop_flip(x, self.crop_padding, self.flip, generator)
        if self.normalization is not None:
            x = normalize(x, *self.normalization)
        x = x.view(tasks, ways, n, c, h, w)
        support_x = x[:, :, :shots].reshape(tasks, ways * shots, c, h, w)
        query_x = x[:, :, shots:].reshape(tasks, ways * queries, c, h, w)
        support_y, query_y = episode_labels(tasks, ways, shots, queries, dev)
        return Episode(support_x, support_y, query_x, query_y)
