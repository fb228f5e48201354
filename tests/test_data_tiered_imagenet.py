"""metafast.data.tiered_imagenet: Ren et al.'s PNG pickles, written small by the tests."""
from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafast.data import TieredImageNet, load_few_shot
from metafast.data.cache import CacheWarning

COUNTS = {"train": (3, 5, 4), "val": (4, 3), "test": (3, 3, 6)}  # classes of unequal sizes, as in tiered


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_fake_tiered(root: Path, seed=0, as_arrays=False) -> dict:
    """{split}_images_png.pkl + {split}_labels.pkl; returns {split: (images, label_specific, names)}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, counts in COUNTS.items():
        labels = np.repeat(np.arange(len(counts)) * 2 + 1, counts)  # sparse label values, like a subset
        rng.shuffle(labels)
        images = rng.integers(0, 256, (len(labels), 84, 84, 3), dtype=np.uint8)
        blobs = [_png(x) for x in images]
        if as_arrays:  # the released files hold uint8 arrays of encoded bytes
            arr = np.empty(len(blobs), dtype=object)
            for i, b in enumerate(blobs):
                arr[i] = np.frombuffer(b, dtype=np.uint8)
            blobs = arr
        names = [f"n{v:03d}" for v in range(2 * len(counts))]
        with open(root / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(blobs, f)
        with open(root / f"{split}_labels.pkl", "wb") as f:
            pickle.dump({"label_specific": labels, "label_general": labels // 4, "label_specific_str": names,
                         "label_general_str": ["g0", "g1"]}, f)
        truth[split] = (images, labels, names)
    return truth


@pytest.mark.parametrize("as_arrays", [False, True], ids=["bytes", "arrays"])
def test_splits_labels_and_pixels(tmp_path, as_arrays):
    truth = make_fake_tiered(tmp_path, as_arrays=as_arrays)
    for split, counts in COUNTS.items():
        ds = TieredImageNet(tmp_path, split, strict=False, progress=False, cache_dir=tmp_path / "c")
        images, labels, names = truth[split]
        values = sorted(set(labels.tolist()))
        assert ds.num_classes == len(counts) and ds.class_names == [names[v] for v in values]
        assert ds.class_count.tolist() == list(counts) and ds.images_per_class == min(counts)
        assert ds.superclass.tolist() == [v // 4 for v in values] and ds.superclass_names == ["g0", "g1"]
        for c, v in enumerate(values):
            got = ds.images[ds.class_start[c]: ds.class_start[c] + ds.class_count[c]].numpy()
            np.testing.assert_array_equal(got, images[labels == v])  # file order within a class


def test_cache_reused_and_validated(tmp_path):
    make_fake_tiered(tmp_path)
    ds = TieredImageNet(tmp_path, "val", strict=False, progress=False)
    assert ds.cache_path.parent == tmp_path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = TieredImageNet(tmp_path, "val", strict=False, progress=False)
    assert again.cache_path == ds.cache_path and torch.equal(again.images, ds.images)
    # a cache of another split's files under this name is refused and rebuilt
    other = TieredImageNet(tmp_path, "test", strict=False, progress=False)
    ds.cache_path.write_bytes(other.cache_path.read_bytes())
    with pytest.warns(CacheWarning, match=str(ds.cache_path)):
        fixed = TieredImageNet(tmp_path, "val", strict=False, progress=False)
    assert torch.equal(fixed.images, ds.images)
    # rewritten label file: new signature, new cache
    make_fake_tiered(tmp_path, seed=1)
    new = TieredImageNet(tmp_path, "val", strict=False, progress=False)
    assert new.cache_path != ds.cache_path and not torch.equal(new.images, ds.images)


def test_strict_episodes_and_registry(tmp_path):
    make_fake_tiered(tmp_path)
    with pytest.raises(ValueError, match="published split has 351 classes"):
        TieredImageNet(tmp_path, "train", progress=False)
    ds = load_few_shot("tiered_imagenet", tmp_path, "test", strict=False, progress=False)
    assert isinstance(ds, TieredImageNet)
    ep = ds.sample(20, 3, 1, 2, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (20, 3, 3, 84, 84) and ep.query_x.shape == (20, 6, 3, 84, 84)
    with pytest.raises(ValueError, match="3 images per class"):
        ds.sample(2, 2, 2, 2)


@pytest.mark.parametrize("what", ["images", "labels", "truncated", "mismatch"])
def test_errors_name_the_file(tmp_path, what):
    make_fake_tiered(tmp_path)
    img, lab = tmp_path / "train_images_png.pkl", tmp_path / "train_labels.pkl"
    err = FileNotFoundError
    if what == "images":
        img.unlink()
        path = img
    elif what == "labels":
        lab.unlink()
        path = lab
    elif what == "truncated":
        img.write_bytes(img.read_bytes()[:5000])
        path, err = img, ValueError
    else:
        with open(img, "wb") as f:
            pickle.dump([_png(np.zeros((84, 84, 3), np.uint8))], f)
        path, err = img, ValueError
    with pytest.raises(err) as e:
        TieredImageNet(tmp_path, "train", strict=False, progress=False, cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "renmengye/few-shot-ssl-public" in msg
