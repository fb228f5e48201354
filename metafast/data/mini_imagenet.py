"""mini-ImageNet (Vinyals et al., 2016) with the split of Ravi & Larochelle (2017).

64 / 16 / 20 classes of 600 images of 84x84, read from either format users
have on disk (nothing is downloaded):

* ``images/`` with the split files ``train.csv``, ``val.csv``, ``test.csv``
  (header ``filename,label``; Ravi & Larochelle's files, as in
  github.com/twitter/meta-learning-lstm ``data/miniImagenet/``).  The images
  are decoded once (resized to 84x84 with LANCZOS if they are not, as MAML's
  ``proc_images.py`` does) and cached as an ``.npz`` beside the folder, or in
  ``cache_dir``, validated against the CSV and the image files;
* the pickle caches ``mini-imagenet-cache-{train,val,test}.pkl`` (a dict with
  ``image_data`` uint8 ``[N, 84, 84, 3]`` and ``class_dict`` {class: list of
  indices}), as learn2learn's ``MiniImagenet`` uses them.

Classes are ordered by name (WordNet id); label ``c`` is ``class_names[c]``.
"""
from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from metafast.data.cache import default_cache_dir, file_signature
from metafast.data.decode import cached_images, decode_all
from metafast.data.files import bad_file, load_pickle, missing_file, require_folder
from metafast.data.images import FewShotImages, check_split, check_split_sizes

__all__ = ["MiniImageNet"]

_SOURCE = ("mini-ImageNet is usually obtained as the images/ folder with Ravi & Larochelle's train.csv, val.csv "
           "and test.csv (github.com/twitter/meta-learning-lstm; images extracted from ILSVRC-2012, e.g. by "
           "MAML's proc_images.py), or as the pickles mini-imagenet-cache-{train,val,test}.pkl of learn2learn.")
_SIZE = 84
_CACHE_VERSION = 1
#: the per-channel mean and std used for mini- and tiered-ImageNet by MetaOptNet (0-1 units)
IMAGENET84_MEAN_STD = ((120.39586422 / 255, 115.59361427 / 255, 104.54012653 / 255),
                       (70.68188272 / 255, 68.27635443 / 255, 72.54505529 / 255))


def _pickle_name(split: str) -> str:
    return f"mini-imagenet-cache-{split}.pkl"


def _needs(split: str) -> str:
    return f"{_pickle_name(split)}, or {split}.csv and the images/ folder"


def _read_pickle(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    obj = load_pickle(path, "mini-ImageNet", _SOURCE)
    try:
        data, class_dict = np.asarray(obj["image_data"]), obj["class_dict"]
        names = sorted(str(c) for c in class_dict)
        by_name = {str(c): v for c, v in class_dict.items()}
        idx = [np.asarray(by_name[c], dtype=np.int64).reshape(-1) for c in names]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise bad_file(path, "mini-ImageNet", f"expected a dict with image_data and class_dict ({e})", _SOURCE) from e
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != (_SIZE, _SIZE, 3):
        raise bad_file(path, "mini-ImageNet", f"image_data is {data.dtype} {list(data.shape)}, not uint8 "
                       f"[N, {_SIZE}, {_SIZE}, 3]", _SOURCE)
    order = np.concatenate(idx) if idx else np.zeros(0, np.int64)
    if len(order) and (order.min() < 0 or order.max() >= len(data)):
        raise bad_file(path, "mini-ImageNet", f"class_dict indexes beyond the {len(data)} images", _SOURCE)
    labels = np.repeat(np.arange(len(names)), [len(i) for i in idx])
    images = data if np.array_equal(order, np.arange(len(data))) else data[order]
    return images, labels, names


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as e:
        raise bad_file(path, "mini-ImageNet", str(e), _SOURCE) from e
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise bad_file(path, "mini-ImageNet", "its header is not 'filename,label'", _SOURCE)
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise bad_file(path, "mini-ImageNet", f"line {i} has {len(row)} fields, not 2", _SOURCE)
        out.append((row[0].strip(), row[1].strip()))
    if not out:
        raise bad_file(path, "mini-ImageNet", "it lists no images", _SOURCE)
    return out


def _read_folder(root: Path, split: str, cache_dir, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str], Path]:
    csv_path = root / f"{split}.csv"
    rows = sorted(_read_csv(csv_path), key=lambda r: r[1])  # by class, CSV order within (stable)
    names = sorted({label for _, label in rows})
    index = {c: i for i, c in enumerate(names)}
    labels = np.array([index[label] for _, label in rows], dtype=np.int64)
    files = [root / "images" / f for f, _ in rows]
    stamp = hashlib.sha1()
    for f in files:  # the files' sizes and times (a rewrite or a missing file shows)
        try:
            st = f.stat()
        except FileNotFoundError:
            raise missing_file(f, "mini-ImageNet", f"the images listed in {csv_path.name}", _SOURCE) from None
        stamp.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    expected = {"format": "metafast-mini-imagenet-cache", "version": _CACHE_VERSION, "split": split,
                "csv": file_signature(csv_path, None), "images": stamp.hexdigest()}
    key = hashlib.sha1(repr(sorted(expected.items())).encode()).hexdigest()[:16]
    fname = f"mini-imagenet_{split}_{_SIZE}x{_SIZE}_{key}.npz"
    fallback = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

    def decode():
        images = decode_all(len(files), lambda i: files[i], _SIZE, lambda i: str(files[i]), "mini-ImageNet",
                            _SOURCE, progress)
        return images, labels

    images, labels, path = cached_images([root / fname, fallback / fname], expected, names,
                                         np.bincount(labels, minlength=len(names)), _SIZE, decode,
                                         "mini-ImageNet cache")
    return images, labels, names, path


class ImageNet84(FewShotImages):
    """The base of :class:`MiniImageNet` and :class:`~metafast.data.TieredImageNet`: 84x84
    ImageNet images, normalised (``normalize=True``) with MetaOptNet's ImageNet-84
    statistics, and a random crop (``augment``) that pads by 8."""

    MEAN_STD = IMAGENET84_MEAN_STD
    CROP_PADDING = 8


class MiniImageNet(ImageNet84):
    """One split of mini-ImageNet (Ravi & Larochelle): 64 / 16 / 20 classes of 600 images of 84x84.

    Args:
        root: folder holding ``mini-imagenet-cache-{split}.pkl``, or ``{split}.csv`` and ``images/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        source: ``"auto"`` (the pickle if present, else the CSV and images),
            ``"pickle"`` or ``"images"``.
        cache_dir: where to cache the decoded ``images/`` when ``root`` is not
            writable (default ``$METAFAST_CACHE`` or ``~/.cache/metafast``).
        strict: require the published split sizes (64 / 16 / 20 classes of 600
            images); pass False for a smaller (e.g. synthetic) set.
        progress: show a progress bar while decoding.
        device, normalize, augment, crop_padding, flip: see :class:`FewShotImages`
            (``normalize=True`` uses MetaOptNet's ImageNet-84 statistics; the
            random crop pads by 8).
    """

    name = "mini-ImageNet"
    SIZES = {"train": 64, "val": 16, "test": 20}

    def __init__(self, root: str | os.PathLike, split: str = "train", device: str | torch.device = "cpu",
                 normalize=False, augment: bool = False, crop_padding: int | None = None, flip: bool = True,
                 source: str = "auto", cache_dir: str | os.PathLike | None = None, strict: bool = True,
                 progress: bool = True):
        check_split(split)
        if source not in ("auto", "pickle", "images"):
            raise ValueError(f"source must be 'auto', 'pickle' or 'images', not {source!r}")
        root = require_folder(root, "mini-ImageNet", _needs(split), _SOURCE)
        pkl, csv_path = root / _pickle_name(split), root / f"{split}.csv"
        if source == "pickle" or (source == "auto" and pkl.is_file()):
            if not pkl.is_file():
                raise missing_file(pkl, "mini-ImageNet", _pickle_name(split), _SOURCE)
            images, labels, names = _read_pickle(pkl)
            self.path, self.cache_path, self.source = pkl, None, "pickle"
        else:
            if not csv_path.is_file():
                raise missing_file(pkl if source == "auto" else csv_path, "mini-ImageNet", _needs(split), _SOURCE)
            if not (root / "images").is_dir():
                raise missing_file(root / "images", "mini-ImageNet", f"the images/ folder beside {csv_path.name}",
                                   _SOURCE)
            images, labels, names, self.cache_path = _read_folder(root, split, cache_dir, progress)
            self.path, self.source = csv_path, "images"
        if strict:
            check_split_sizes(self.name, self.path, split, np.bincount(labels, minlength=len(names)),
                              self.SIZES[split], 600)
        self.root = root
        super().__init__(images, labels, names, split, device, normalize, augment, crop_padding, flip)
