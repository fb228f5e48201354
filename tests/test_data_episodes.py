"""metafast.data.images / episodes / transforms: episodes of FewShotImages on synthetic images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from metafast.data import EpisodeSampler, FewShotImages
from metafast.data.transforms import random_crop_flip


def _images(counts=(5, 5, 5, 5), side=6, seed=0, shuffle=True):
    """Random uint8 images; pixel [0, 0, 0] of each image is its class, [0, 0, 1] its index in the class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(counts)), counts)
    x = rng.integers(0, 256, (len(labels), side, side, 3), dtype=np.uint8)
    x[:, 0, 0, 0] = labels
    x[:, 0, 0, 1] = np.concatenate([np.arange(c) for c in counts])
    if shuffle:
        p = rng.permutation(len(labels))
        x, labels = x[p], labels[p]
    return x, labels


def _ds(counts=(5, 5, 5, 5), **kw):
    x, y = _images(counts)
    return FewShotImages(x, y, [f"c{i}" for i in range(len(counts))], "train", **kw)


def _decode_ids(ep_x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    px = (ep_x[..., :, 0, 0] * 255).round().long()
    return px[..., 0].numpy(), px[..., 1].numpy()  # class, item


@pytest.mark.parametrize("counts", [(5, 5, 5, 5), (3, 7, 4, 9, 5)], ids=["uniform", "variable"])
def test_episode_content(counts):
    ds = _ds(counts)
    assert ds.num_classes == len(counts) and ds.images_per_class == min(counts)
    T, N, K, Q = 50, 3, 1, 2
    ep = ds.sample(T, N, K, Q, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (T, N * K, 3, 6, 6) and ep.query_x.shape == (T, N * Q, 3, 6, 6)
    assert torch.equal(ep.support_y[0], torch.arange(3))
    assert torch.equal(ep.query_y[0], torch.tensor([0, 0, 1, 1, 2, 2]))
    sc, si = _decode_ids(ep.support_x)
    qc, qi = _decode_ids(ep.query_x)
    items = set()
    for t in range(T):
        cls_of = {}
        seen = set()
        for c, i, y in list(zip(sc[t], si[t], ep.support_y[t])) + list(zip(qc[t], qi[t], ep.query_y[t])):
            assert cls_of.setdefault(int(y), c) == c  # one class per label
            assert (c, i) not in seen and i < counts[c]  # distinct images, within the class
            seen.add((c, i))
            items.add((c, i))
        assert len(set(cls_of.values())) == N
    if counts[1] == 7:  # the larger classes' later images are drawn too
        assert any(c == 3 and i >= 5 for c, i in items)
    # every image is the stored one, as float in [0, 1], channels first
    stored = ds[int(sc[0, 0])]
    match = [j for j in range(len(stored)) if torch.equal(stored[j], ep.support_x[0, 0])]
    assert len(match) == 1


def test_determinism_and_sampler():
    ds = _ds()
    a = ds.sample(6, 2, 2, 1, generator=torch.Generator().manual_seed(3))
    b = ds.sample(6, 2, 2, 1, generator=torch.Generator().manual_seed(3))
    c = ds.sample(6, 2, 2, 1, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a.support_x, c.support_x)
    s = EpisodeSampler(ds, 2, 2, 1, tasks_per_batch=6, seed=3)
    assert torch.equal(s.sample().query_x, a.query_x)


def test_bad_episodes():
    ds = _ds((3, 4, 5))
    with pytest.raises(ValueError, match="3 images per class"):
        ds.sample(2, 2, 2, 2)
    with pytest.raises(ValueError, match="classes"):
        ds.sample(2, 4, 1)
    with pytest.raises(ValueError, match="tasks"):
        ds.sample(0, 2, 1)
    with pytest.raises(ValueError, match="split"):
        FewShotImages(*_images(), ["a"] * 4, "dev")
    with pytest.raises(ValueError, match="uint8"):
        FewShotImages(_images()[0].astype(np.float32), _images()[1], ["a"] * 4, "train")


def test_normalize_and_augment():
    plain = _ds()
    norm = _ds(normalize=((0.5, 0.4, 0.3), (0.2, 0.25, 0.5)))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    a, b = plain.sample(3, 2, 1, generator=g()), norm.sample(3, 2, 1, generator=g())
    mean = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)
    torch.testing.assert_close(b.support_x, (a.support_x - mean) / torch.tensor([0.2, 0.25, 0.5]).view(3, 1, 1))
    assert _ds(normalize=True).normalization == FewShotImages.MEAN_STD
    with pytest.raises(ValueError, match="normalize"):
        _ds(normalize="yes")

    aug = _ds(augment=True, crop_padding=2)
    c = aug.sample(3, 2, 1, generator=g())
    assert c.support_x.shape == a.support_x.shape
    assert torch.equal(c.support_y, a.support_y) and not torch.equal(c.support_x, a.support_x)
    assert torch.equal(aug.sample(3, 2, 1, generator=g()).query_x, c.query_x)  # reproducible


def test_random_crop_flip_is_a_shifted_window():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    g = torch.Generator().manual_seed(0)
    out = random_crop_flip(x, padding=1, flip=True, generator=g)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(2):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(3) for c in range(3)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(random_crop_flip(x, 0, False), x)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("augment", [False, True])
def test_cuda_matches_cpu(augment):
    cpu = _ds((3, 7, 4, 9, 5), augment=augment)
    gpu = _ds((3, 7, 4, 9, 5), augment=augment, device="cuda")
    a = cpu.sample(8, 3, 1, 2, generator=torch.Generator().manual_seed(0))
    b = gpu.sample(8, 3, 1, 2, generator=torch.Generator().manual_seed(0))
    assert all(t.is_cuda for t in b) and all(torch.equal(x, y.cpu()) for x, y in zip(a, b))
    c = cpu.sample(2, 2, 1, device="cuda")
    assert c.support_x.is_cuda and cpu.device.type == "cuda"
