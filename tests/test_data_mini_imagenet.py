"""metafast.data.mini_imagenet: both on-disk formats, written small by the tests."""
from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafast.data import MiniImageNet, load_few_shot
from metafast.data.cache import CacheWarning

CLASSES = {"train": ["n01", "n02", "n03"], "val": ["n04", "n05"], "test": ["n06", "n07", "n08"]}
PER_CLASS = 4


def _pixels(rng, n, side=84):
    x = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    return x


def make_fake_folder(root: Path, side=84, seed=0) -> dict:
    """images/ + train.csv, val.csv, test.csv (PNG files, lossless); returns {split: {class: [arrays]}}."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, classes in CLASSES.items():
        rows, truth[split] = [], {}
        for c in classes:
            truth[split][c] = []
            for i, img in enumerate(_pixels(rng, PER_CLASS, side)):
                name = f"{c}{i:08d}.png"
                Image.fromarray(img).save(root / "images" / name)
                rows.append(f"{name},{c}")
                truth[split][c].append(img)
        rng.shuffle(rows)  # the loader groups by class itself
        (root / f"{split}.csv").write_text("filename,label\n" + "\n".join(rows) + "\n")
    return truth


def make_fake_pickles(root: Path, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    truth = {}
    for split, classes in CLASSES.items():
        n = len(classes) * PER_CLASS
        data = _pixels(rng, n)
        perm = rng.permutation(n)  # class_dict indices need not be contiguous
        class_dict = {c: perm[k * PER_CLASS:(k + 1) * PER_CLASS].tolist() for k, c in enumerate(classes[::-1])}
        with open(root / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": data, "class_dict": class_dict}, f)
        truth[split] = {c: [data[i] for i in idx] for c, idx in class_dict.items()}
    return truth


def _check_split(ds, truth_split):
    assert ds.class_names == sorted(truth_split)  # labels by class name
    assert ds.num_classes == len(truth_split) and ds.images_per_class == PER_CLASS
    for c, name in enumerate(ds.class_names):
        got = ds.images[ds.class_start[c]: ds.class_start[c] + ds.class_count[c]].numpy()
        assert sorted(map(bytes, got)) == sorted(map(bytes, truth_split[name]))


def test_pickle_format(tmp_path):
    truth = make_fake_pickles(tmp_path)
    for split in ("train", "val", "test"):
        ds = MiniImageNet(tmp_path, split, strict=False)
        assert ds.source == "pickle" and ds.cache_path is None
        assert ds.images.shape == (PER_CLASS * len(CLASSES[split]), 84, 84, 3)
        _check_split(ds, truth[split])


def test_images_format_and_its_cache(tmp_path):
    root = tmp_path / "mini"
    truth = make_fake_folder(root)
    ds = MiniImageNet(root, "train", strict=False, progress=False)
    assert ds.source == "images" and ds.cache_path.parent == root
    _check_split(ds, truth["train"])
    # the second load reads the cache; a planted all-zero cache is decoded again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = MiniImageNet(root, "train", strict=False, progress=False)
    assert torch.equal(again.images, ds.images)
    with np.load(ds.cache_path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = np.zeros_like(arrays["images"])
    np.savez(ds.cache_path, **arrays)
    with pytest.warns(CacheWarning, match="images are blank"):
        fixed = MiniImageNet(root, "train", strict=False, progress=False)
    assert torch.equal(fixed.images, ds.images)
    # an edited CSV (one class dropped) is a new split: not served from the old cache
    csv = root / "train.csv"
    csv.write_text("\n".join(l for l in csv.read_text().splitlines() if not l.endswith("n03")) + "\n")
    fewer = MiniImageNet(root, "train", strict=False, progress=False)
    assert fewer.class_names == ["n01", "n02"] and fewer.cache_path != ds.cache_path


def test_images_are_resized_to_84(tmp_path):
    root = tmp_path / "mini"
    make_fake_folder(root, side=100)
    ds = MiniImageNet(root, "val", strict=False, progress=False, cache_dir=tmp_path / "c")
    assert ds.images.shape == (2 * PER_CLASS, 84, 84, 3)


def test_format_choice_and_registry(tmp_path):
    make_fake_folder(tmp_path)
    truth = make_fake_pickles(tmp_path, seed=1)
    auto = load_few_shot("mini-imagenet", tmp_path, "test", strict=False)
    assert isinstance(auto, MiniImageNet) and auto.source == "pickle"
    _check_split(auto, truth["test"])
    assert MiniImageNet(tmp_path, "test", source="images", strict=False, progress=False).source == "images"
    with pytest.raises(ValueError, match="source"):
        MiniImageNet(tmp_path, "test", source="zip")


def test_split_sizes_strict_and_episodes(tmp_path):
    make_fake_pickles(tmp_path)
    with pytest.raises(ValueError, match=r"has 3 classes of 4 to 4 images; the published split has 64 classes"):
        MiniImageNet(tmp_path, "train")
    ds = MiniImageNet(tmp_path, "train", strict=False, normalize=True, augment=True)
    assert ds.crop_padding == 8
    ep = ds.sample(5, 3, 1, 3, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (5, 3, 3, 84, 84) and ep.query_y.shape == (5, 9)
    again = ds.sample(5, 3, 1, 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ep.query_x, again.query_x)


@pytest.mark.parametrize("what", ["folder", "nothing", "image", "truncated pickle", "bad csv"])
def test_errors_name_the_file(tmp_path, what):
    root = tmp_path / "mini"
    if what == "folder":
        path, err = root, FileNotFoundError
    elif what == "nothing":
        root.mkdir()
        path, err = root / "mini-imagenet-cache-train.pkl", FileNotFoundError
    elif what == "image":
        make_fake_folder(root)
        path, err = sorted((root / "images").glob("n02*"))[0], FileNotFoundError
        path.unlink()
    elif what == "truncated pickle":
        make_fake_pickles(root)
        path, err = root / "mini-imagenet-cache-train.pkl", ValueError
        path.write_bytes(path.read_bytes()[:1000])
    else:
        make_fake_folder(root)
        path, err = root / "train.csv", ValueError
        path.write_text("name;class\nx;y\n")
    with pytest.raises(err) as e:
        MiniImageNet(root, "train", strict=False, progress=False)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg and "meta-learning-lstm" in msg


def test_refuses_pickled_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / "mini-imagenet-cache-val.pkl", "wb") as f:
        pickle.dump({"image_data": Evil(), "class_dict": {}}, f)
    with pytest.raises(ValueError, match="refusing to load builtins.print"):
        MiniImageNet(tmp_path, "val", strict=False)
