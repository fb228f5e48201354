"""CIFAR-FS (Bertinetto et al., 2019) and FC100 (Oreshkin et al., 2018) from CIFAR-100.

Both read the standard CIFAR-100 python archive, ``cifar-100-python.tar.gz``
(https://www.cs.toronto.edu/~kriz/cifar.html), unchanged, or the folder
``cifar-100-python/`` it extracts to: the pickles ``train`` and ``test``
(``data`` uint8 ``[N, 3072]``, ``fine_labels``, ``coarse_labels``) and
``meta`` (``fine_label_names``, ``coarse_label_names``).  The 50,000 train and
10,000 test images are pooled: 600 images of 32x32 per class.

* CIFAR-FS: 64 / 16 / 20 classes, the split of Bertinetto et al.'s R2D2
  repository (github.com/bertinetto/r2d2, ``data/cifar-fs/splits/bertinetto/``),
  written below by class name.
* FC100: 60 / 20 / 20 classes, all classes of 12 / 4 / 4 superclasses, the
  superclass split of Oreshkin et al.'s TADAM (NeurIPS 2018).

The class lists were written from the papers' split files as reproduced by
torchmeta (``torchmeta/datasets/assets/cifar100/{cifar-fs,fc100}``).
"""
from __future__ import annotations

import functools
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from metafast.data.files import bad_file, load_pickle, missing_file, require_folder
from metafast.data.images import FewShotImages, check_split, check_split_sizes

__all__ = ["CIFARFS", "CIFAR_FS_SPLITS", "FC100", "FC100_SPLITS", "load_cifar100"]

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
_SOURCE = ("Get cifar-100-python.tar.gz (the CIFAR-100 python version) from "
           "https://www.cs.toronto.edu/~kriz/cifar.html and put it, unchanged, in that folder.")
_NEEDS = f"{ARCHIVE} (or the {FOLDER}/ folder it extracts to)"

# CIFAR-FS, Bertinetto et al. 2019 (R2D2): data/cifar-fs/splits/bertinetto/{train,val,test}.txt
_CIFAR_FS_VAL = (
    "beaver otter flatfish shark lamp television beetle butterfly sea camel cattle crab crocodile maple_tree "
    "motorcycle tractor"
).split()
_CIFAR_FS_TEST = (
    "whale poppy rose sweet_pepper telephone bed table wardrobe leopard plain chimpanzee fox snail worm baby man "
    "woman bicycle pickup_truck rocket"
).split()
_CIFAR_FS_TRAIN = (
    "apple aquarium_fish bear bee bottle bowl boy bridge bus can castle caterpillar chair clock cloud cockroach "
    "couch cup dinosaur dolphin elephant forest girl hamster house kangaroo keyboard lawn_mower lion lizard "
    "lobster mountain mouse mushroom oak_tree orange orchid palm_tree pear pine_tree plate porcupine possum "
    "rabbit raccoon ray road seal shrew skunk skyscraper snake spider squirrel streetcar sunflower tank tiger "
    "train trout tulip turtle willow_tree wolf"
).split()
CIFAR_FS_SPLITS = {"train": _CIFAR_FS_TRAIN, "val": _CIFAR_FS_VAL, "test": _CIFAR_FS_TEST}

# FC100, Oreshkin et al. 2018 (TADAM): superclasses (CIFAR-100 coarse labels) of each split
FC100_SPLITS = {
    "train": ["fish", "flowers", "food_containers", "fruit_and_vegetables", "household_electrical_devices",
              "household_furniture", "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "reptiles",
              "trees", "vehicles_1", "vehicles_2"],
    "val": ["large_carnivores", "large_omnivores_and_herbivores", "non-insect_invertebrates", "small_mammals"],
    "test": ["aquatic_mammals", "insects", "medium_mammals", "people"],
}

#: the per-channel mean and std used for CIFAR-FS and FC100 by MetaOptNet (0-1 units)
CIFAR_MEAN_STD = ((129.37731888 / 255, 124.10583864 / 255, 112.47758569 / 255),
                  (68.20947949 / 255, 65.43124043 / 255, 70.45866994 / 255))


def _locate(root: Path) -> Path:
    root = require_folder(root, "CIFAR-100", _NEEDS, _SOURCE)
    if (root / FOLDER / "meta").is_file():
        return root / FOLDER
    if (root / ARCHIVE).is_file():
        return root / ARCHIVE
    if (root / FOLDER).is_dir():
        for part in ("meta", "train", "test"):
            if not (root / FOLDER / part).is_file():
                raise missing_file(root / FOLDER / part, "CIFAR-100", "meta, train and test", _SOURCE)
    raise missing_file(root / ARCHIVE, "CIFAR-100", _NEEDS, _SOURCE)


@functools.lru_cache(maxsize=1)
def _read(path: str, stamp: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    p = Path(path)
    parts = {}
    if p.is_dir():
        for part in ("meta", "train", "test"):
            if not (p / part).is_file():
                raise missing_file(p / part, "CIFAR-100", "meta, train and test", _SOURCE)
            parts[part] = load_pickle(p / part, "CIFAR-100", _SOURCE)
    else:
        try:
            with tarfile.open(p, "r:gz") as tf:
                for part in ("meta", "train", "test"):
                    try:
                        member = tf.extractfile(f"{FOLDER}/{part}")
                    except KeyError:
                        member = None
                    if member is None:
                        raise bad_file(p, "CIFAR-100", f"it has no {FOLDER}/{part}", _SOURCE)
                    parts[part] = load_pickle(io.BytesIO(member.read()), "CIFAR-100", _SOURCE, name=str(p))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise bad_file(p, "CIFAR-100", f"{type(e).__name__}: {e}", _SOURCE) from e
    try:
        data = np.concatenate([np.asarray(parts[s]["data"], dtype=np.uint8) for s in ("train", "test")])
        fine = np.concatenate([np.asarray(parts[s]["fine_labels"], dtype=np.int64) for s in ("train", "test")])
        coarse = np.concatenate([np.asarray(parts[s]["coarse_labels"], dtype=np.int64) for s in ("train", "test")])
        fine_names = [str(n) for n in parts["meta"]["fine_label_names"]]
        coarse_names = [str(n) for n in parts["meta"]["coarse_label_names"]]
        if data.ndim != 2 or data.shape[1] != 3072 or len(fine) != len(data) or len(coarse) != len(data):
            raise ValueError(f"data is {list(data.shape)} with {len(fine)} labels, expected [N, 3072]")
    except (KeyError, TypeError, ValueError) as e:
        raise bad_file(p, "CIFAR-100", f"{type(e).__name__}: {e}", _SOURCE) from e
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, 32, 32, 3]
    return images, fine, coarse, fine_names, coarse_names


def load_cifar100(root: str | os.PathLike):
    """``(images uint8 [60000, 32, 32, 3], fine labels, coarse labels, fine names, coarse names, path)``.

    The train and test sets pooled; ``path`` is the archive or folder read.
    The last archive read is kept in memory (the three splits read it once).
    """
    path = _locate(Path(root))
    st = path.stat()
    return (*_read(str(path), (st.st_size, st.st_mtime_ns)), path)


def _require(wanted, available, path: Path, what: str) -> None:
    """The archive's meta names every one of ``wanted`` (its ``what``: classes or superclasses)."""
    missing = [c for c in wanted if c not in available]
    if missing:
        raise bad_file(path, "CIFAR-100", f"its meta lacks the {what} {missing[:5]}", _SOURCE)


class _CIFARFewShot(FewShotImages):
    """A split of CIFAR-100's classes: ``_classes_of`` picks them (fine label indices, in label order)."""

    MEAN_STD = CIFAR_MEAN_STD
    CROP_PADDING = 4

    def __init__(self, root, split: str = "train", device: str | torch.device = "cpu", normalize=False,
                 augment: bool = False, crop_padding: int | None = None, flip: bool = True, strict: bool = True):
        check_split(split)
        images, fine, coarse, fine_names, coarse_names, path = load_cifar100(root)
        wanted = self._classes_of(split, fine, coarse, fine_names, coarse_names, path)
        keep = np.isin(fine, wanted)
        remap = np.full(len(fine_names), -1, dtype=np.int64)
        remap[wanted] = np.arange(len(wanted))
        labels = remap[fine[keep]]
        if strict:
            check_split_sizes(self.name, path, split, np.bincount(labels, minlength=len(wanted)), self.SIZES[split],
                              600)
        self.root, self.path = Path(root), path
        super().__init__(images[keep], labels, [fine_names[i] for i in wanted], split, device, normalize,
                         augment, crop_padding, flip)

    def _classes_of(self, split: str, fine: np.ndarray, coarse: np.ndarray, fine_names: list[str],
                    coarse_names: list[str], path: Path) -> np.ndarray:
        raise NotImplementedError


class CIFARFS(_CIFARFewShot):
    """One split of CIFAR-FS: 64 / 16 / 20 CIFAR-100 classes (Bertinetto et al., 2019), 600 images of 32x32.

    Args:
        root: folder holding ``cifar-100-python.tar.gz`` (or ``cifar-100-python/``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        strict: require the published split sizes (64 / 16 / 20 classes of 600
            images); pass False for a smaller (e.g. synthetic) archive.
        device, normalize, augment, crop_padding, flip: see :class:`FewShotImages`.
    """

    name = "CIFAR-FS"
    SIZES = {"train": 64, "val": 16, "test": 20}

    def _classes_of(self, split, fine, coarse, fine_names, coarse_names, path):
        _require(CIFAR_FS_SPLITS[split], fine_names, path, "classes")
        index = {n: i for i, n in enumerate(fine_names)}
        return np.array(sorted(index[c] for c in CIFAR_FS_SPLITS[split] if np.any(fine == index[c])),
                        dtype=np.int64)


class FC100(_CIFARFewShot):
    """One split of FC100: the classes of 12 / 4 / 4 CIFAR-100 superclasses (Oreshkin et al., 2018).

    60 / 20 / 20 classes of 600 images of 32x32.  The superclass of each class
    is the archive's coarse label.  Arguments as :class:`CIFARFS`.
    """

    name = "FC100"
    SIZES = {"train": 60, "val": 20, "test": 20}

    def _classes_of(self, split, fine, coarse, fine_names, coarse_names, path):
        _require(FC100_SPLITS[split], coarse_names, path, "superclasses")
        sup = np.array([coarse_names.index(c) for c in FC100_SPLITS[split]])
        self.superclasses = list(FC100_SPLITS[split])
        return np.unique(fine[np.isin(coarse, sup)])
