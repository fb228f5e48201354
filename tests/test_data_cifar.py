"""metafast.data.cifar: CIFAR-FS and FC100 from a synthetic cifar-100-python.tar.gz."""
from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from metafast.data import CIFARFS, FC100, load_few_shot
from metafast.data.cifar import CIFAR_FS_SPLITS, FC100_SPLITS
from helpers import write_cifar_archive

# CIFAR-100's fine classes (label order) by superclass (coarse label order), from its documentation.
SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
COARSE = list(SUPERCLASSES)
FINE = sorted(n for v in SUPERCLASSES.values() for n in v.split())
COARSE_OF = {n: COARSE.index(c) for c, v in SUPERCLASSES.items() for n in v.split()}


def make_fake_cifar100(root: Path, train_per_class=2, test_per_class=1, seed=0, python2_keys=False) -> Path:
    """A tiny cifar-100-python.tar.gz in the official layout: random images, every class."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    key = (lambda k: k.encode()) if python2_keys else (lambda k: k)
    parts = {}
    for part, k in (("train", train_per_class), ("test", test_per_class)):
        fine = np.tile(np.arange(100), k)
        rng.shuffle(fine)
        parts[part] = {key("data"): rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                       key("fine_labels"): fine.tolist(), key("coarse_labels"): [COARSE_OF[FINE[f]] for f in fine],
                       key("filenames"): [f"img{i}.png" for i in range(len(fine))]}
    parts["meta"] = {key("fine_label_names"): FINE, key("coarse_label_names"): COARSE}
    path = root / "cifar-100-python.tar.gz"
    write_cifar_archive(path, parts)
    return path


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "cifar"
    make_fake_cifar100(root)
    return root


def test_published_splits_are_a_partition_of_cifar100():
    assert len(FINE) == 100 and len(set(FINE)) == 100
    cfs = [CIFAR_FS_SPLITS[s] for s in ("train", "val", "test")]
    assert [len(c) for c in cfs] == [64, 16, 20]
    assert sorted(sum(cfs, [])) == FINE
    fc = [FC100_SPLITS[s] for s in ("train", "val", "test")]
    assert [len(c) for c in fc] == [12, 4, 4] and sorted(sum(fc, [])) == sorted(COARSE)


@pytest.mark.parametrize("cls,sizes", [(CIFARFS, (64, 16, 20)), (FC100, (60, 20, 20))])
def test_split_sizes_labels_and_pixels(fake, cls, sizes):
    splits = {s: cls(fake, s, strict=False) for s in ("train", "val", "test")}
    assert tuple(splits[s].num_classes for s in ("train", "val", "test")) == sizes
    assert sorted(sum((d.class_names for d in splits.values()), [])) == FINE  # disjoint, all 100
    for s, d in splits.items():
        assert d.images.shape == (3 * d.num_classes, 32, 32, 3) and d.images.dtype == torch.uint8
        assert d.images_per_class == 3 and d.image_shape == (3, 32, 32)
        if cls is CIFARFS:
            assert sorted(d.class_names) == sorted(CIFAR_FS_SPLITS[s])
        else:
            assert {COARSE[COARSE_OF[n]] for n in d.class_names} == set(FC100_SPLITS[s])
    # pixels are the archive's: class c of the split holds the images whose fine label is that class
    with tarfile.open(fake / "cifar-100-python.tar.gz") as tf:
        raw = {p: pickle.load(tf.extractfile(f"cifar-100-python/{p}")) for p in ("train", "test")}
    d = splits["test"]
    name = d.class_names[1]
    want = [img.reshape(3, 32, 32) for p in ("train", "test")
            for img, f in zip(raw[p]["data"], raw[p]["fine_labels"]) if FINE[f] == name]
    torch.testing.assert_close(d[1], torch.from_numpy(np.stack(want)).float() / 255)


def test_strict_requires_the_published_sizes(fake):
    with pytest.raises(ValueError, match=r"published split has 64 classes of 600 images each.*strict=False"):
        CIFARFS(fake, "train")


def test_python2_pickles_and_extracted_folder(tmp_path):
    root = tmp_path / "c"
    path = make_fake_cifar100(root, python2_keys=True)
    a = CIFARFS(root, "val", strict=False)
    with tarfile.open(path) as tf:
        tf.extractall(tmp_path / "x", filter="data")
    b = CIFARFS(tmp_path / "x", "val", strict=False)
    assert b.path.name == "cifar-100-python" and torch.equal(a.images, b.images)


@pytest.mark.parametrize("how", ["missing", "truncated", "folder"])
def test_errors_name_the_file(fake, tmp_path, how):
    path = fake / "cifar-100-python.tar.gz"
    if how == "missing":
        path.unlink()
        err = FileNotFoundError
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        err = ValueError
    else:
        fake = tmp_path / "nowhere"
        err, path = FileNotFoundError, fake
    with pytest.raises(err) as e:
        FC100(fake, "train", strict=False)
    msg = str(e.value)
    assert str(path) in msg and "cs.toronto.edu/~kriz/cifar.html" in msg and "\n" not in msg


def test_registry_and_episodes(fake):
    d = load_few_shot("CIFAR_FS", fake, "test", strict=False, normalize=True)
    assert isinstance(d, CIFARFS) and d.split == "test"
    ep = d.sample(4, 5, 1, 2, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (4, 5, 3, 32, 32) and ep.query_x.shape == (4, 10, 3, 32, 32)
    assert ep.support_x.dtype == torch.float32 and ep.support_x.min() < 0  # normalised
    assert isinstance(load_few_shot("fc100", fake, "val", strict=False), FC100)
