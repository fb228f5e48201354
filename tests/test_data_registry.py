"""metafast.data.registry: load_few_shot and FEW_SHOT, the one-liner a command calls."""
from __future__ import annotations

import pytest
import torch

import metafast.data as data
from metafast.data import FEW_SHOT, few_shot_spec, load_few_shot
from helpers import make_fake_omniglot


def test_specs():
    assert set(FEW_SHOT) == {"omniglot", "mini-imagenet", "tiered-imagenet", "cifar-fs", "fc100"}
    for spec in FEW_SHOT.values():
        cls = getattr(data, spec.loader)
        assert callable(cls) and set(spec.classes) == {"train", "val", "test"}
        sizes = getattr(cls, "SIZES", None)
        assert sizes is None or sizes == spec.classes
    assert FEW_SHOT["mini-imagenet"].classes == {"train": 64, "val": 16, "test": 20}
    assert FEW_SHOT["tiered-imagenet"].classes == {"train": 351, "val": 97, "test": 160}
    assert FEW_SHOT["fc100"].classes == {"train": 60, "val": 20, "test": 20}
    assert (FEW_SHOT["cifar-fs"].channels, FEW_SHOT["cifar-fs"].image_size) == (3, 32)


@pytest.mark.parametrize("alias,name", [("miniImageNet", "mini-imagenet"), ("mini_imagenet", "mini-imagenet"),
                                        ("TIERED-ImageNet", "tiered-imagenet"), ("cifarfs", "cifar-fs"),
                                        ("FC-100", "fc100"), ("Omniglot", "omniglot")])
def test_aliases(alias, name):
    assert few_shot_spec(alias).name == name


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown few-shot data set 'imagenet'; known: omniglot, mini-imagenet"):
        load_few_shot("imagenet", ".")


def test_omniglot_through_the_registry(tmp_path):
    make_fake_omniglot(tmp_path / "o")
    ds = load_few_shot("omniglot", tmp_path / "o", "val", n_train=4, n_val=2, progress=False)
    assert isinstance(ds, data.Omniglot) and ds.split == "val" and ds.num_characters == 2
    ep = ds.sample(2, 2, 1, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (2, 2, 1, 28, 28)
