"""tiered-ImageNet (Ren et al., 2018): 351 / 97 / 160 classes of 84x84 images.

Read from the files of Ren et al.'s release (github.com/renmengye/few-shot-ssl-public),
unchanged: per split ``{split}_images_png.pkl`` (a list or array of
PNG-encoded images) and ``{split}_labels.pkl`` (a dict with
``label_specific`` [N], ``label_general`` [N], ``label_specific_str`` and
``label_general_str``; Python 2 pickles are read too).  Classes hold 732 to
1,300 images.  The PNGs are decoded once and cached as an ``.npz`` beside the
files, or in ``cache_dir``, validated against the two pickles (their sizes,
modification times and a digest of their ends) and the class list.

Label ``c`` is the ``c``-th distinct ``label_specific`` value, named by
``label_specific_str``; ``superclass`` gives each class's ``label_general``
(index into ``superclass_names``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from metafast.data.cache import default_cache_dir, file_signature
from metafast.data.decode import cached_images, decode_all
from metafast.data.files import as_bytes, bad_file, load_pickle, missing_file, require_folder
from metafast.data.images import check_split, check_split_sizes
from metafast.data.mini_imagenet import ImageNet84

__all__ = ["TieredImageNet"]

_SOURCE = ("tiered-ImageNet is usually obtained as Ren et al.'s tiered-imagenet.tar "
           "(github.com/renmengye/few-shot-ssl-public), which holds {train,val,test}_images_png.pkl and "
           "{train,val,test}_labels.pkl.")
_SIZE = 84
_CACHE_VERSION = 1


def _names(split: str) -> tuple[str, str]:
    return f"{split}_images_png.pkl", f"{split}_labels.pkl"


def _read_labels(path: Path, n_images: int | None = None):
    obj = load_pickle(path, "tiered-ImageNet", _SOURCE)
    try:
        specific = np.asarray(obj["label_specific"], dtype=np.int64).reshape(-1)
        general = np.asarray(obj.get("label_general", np.zeros_like(specific)), dtype=np.int64).reshape(-1)
        specific_str = [str(s) for s in obj.get("label_specific_str", [])]
        general_str = [str(s) for s in obj.get("label_general_str", [])]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise bad_file(path, "tiered-ImageNet", f"expected a dict with label_specific ({e})", _SOURCE) from e
    if len(specific) == 0 or specific.min() < 0 or len(general) != len(specific):
        raise bad_file(path, "tiered-ImageNet", "label_specific is empty or negative, or label_general differs "
                       "in length", _SOURCE)
    return specific, general, specific_str, general_str


class TieredImageNet(ImageNet84):
    """One split of tiered-ImageNet (Ren et al.): 351 / 97 / 160 classes of 84x84 images.

    Args:
        root: folder holding ``{split}_images_png.pkl`` and ``{split}_labels.pkl``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        cache_dir: where to cache the decoded images when ``root`` is not
            writable (default ``$METAFAST_CACHE`` or ``~/.cache/metafast``).
        strict: require the published number of classes (351 / 97 / 160);
            pass False for a smaller (e.g. synthetic) set.
        progress: show a progress bar while decoding.
        device, normalize, augment, crop_padding, flip: see :class:`FewShotImages`.
    """

    name = "tiered-ImageNet"
    SIZES = {"train": 351, "val": 97, "test": 160}

    def __init__(self, root: str | os.PathLike, split: str = "train", device: str | torch.device = "cpu",
                 normalize=False, augment: bool = False, crop_padding: int | None = None, flip: bool = True,
                 cache_dir: str | os.PathLike | None = None, strict: bool = True, progress: bool = True):
        check_split(split)
        img_name, lab_name = _names(split)
        root = require_folder(root, "tiered-ImageNet", f"{img_name} and {lab_name}", _SOURCE)
        img_path, lab_path = root / img_name, root / lab_name
        for p in (img_path, lab_path):
            if not p.is_file():
                raise missing_file(p, "tiered-ImageNet", f"{img_name} and {lab_name}", _SOURCE)
        specific, general, specific_str, general_str = _read_labels(lab_path)
        values = np.unique(specific)
        names = [specific_str[v] if v < len(specific_str) else str(v) for v in values]
        labels = np.searchsorted(values, specific)
        order = np.argsort(labels, kind="stable")  # by class, file order within
        counts = np.bincount(labels, minlength=len(values))
        if strict:
            check_split_sizes(self.name, lab_path, split, counts, self.SIZES[split], None)

        expected = {"format": "metafast-tiered-imagenet-cache", "version": _CACHE_VERSION, "split": split,
                    "images_pkl": file_signature(img_path), "labels_pkl": file_signature(lab_path)}
        key = hashlib.sha1(repr(sorted(expected.items())).encode()).hexdigest()[:16]
        fname = f"tiered-imagenet_{split}_{_SIZE}x{_SIZE}_{key}.npz"
        fallback = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()

        def decode():
            blobs = load_pickle(img_path, "tiered-ImageNet", _SOURCE)
            if not hasattr(blobs, "__len__") or len(blobs) != len(labels):
                n = len(blobs) if hasattr(blobs, "__len__") else "no list of"
                raise bad_file(img_path, "tiered-ImageNet", f"it holds {n} images where {lab_name} labels "
                               f"{len(labels)}", _SOURCE)
            images = decode_all(len(order), lambda i: as_bytes(blobs[order[i]]), _SIZE,
                                lambda i: f"image {order[i]} of {img_path}", "tiered-ImageNet", _SOURCE, progress)
            return images, labels[order]

        images, sorted_labels, self.cache_path = cached_images([root / fname, fallback / fname], expected, names,
                                                               counts, _SIZE, decode, "tiered-ImageNet cache")
        self.root, self.path = root, img_path
        sup = np.zeros(len(values), dtype=np.int64)
        sup[labels] = general
        self.superclass = sup
        self.superclass_names = general_str
        super().__init__(images, sorted_labels, names, split, device, normalize, augment, crop_padding, flip)
