"""metafast.data.omniglot: archive reading, errors, cache, splits, episodes."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metafast.data import omniglot as om
from helpers import make_fake_omniglot
from metafast.data.cache import CacheWarning
from metafast.data.omniglot import EpisodeSampler, Omniglot, load_omniglot, split_characters

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "omniglot"


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "omniglot"
    n = make_fake_omniglot(root)
    return root, n


def _kw(tmp_path):
    return dict(cache_dir=tmp_path / "cache", n_train=4, n_val=2, progress=False)


# --------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="brendenlake/omniglot") as e:
        Omniglot(tmp_path / "nope", **_kw(tmp_path))
    assert "nope" in str(e.value)


def test_missing_archive(fake, tmp_path):
    root, _ = fake
    (root / "images_evaluation.zip").unlink()
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip") as e:
        Omniglot(root, **_kw(tmp_path))
    assert "brendenlake/omniglot" in str(e.value) and "python/" in str(e.value)


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_corrupt_archive(fake, tmp_path, how):
    root, _ = fake
    path = root / "images_background.zip"
    data = path.read_bytes()
    path.write_bytes(b"not a zip at all" * 10 if how == "garbage" else data[: len(data) // 2])
    with pytest.raises(ValueError, match="images_background.zip") as e:
        Omniglot(root, **_kw(tmp_path))
    assert "brendenlake/omniglot" in str(e.value)


def test_not_omniglot(tmp_path):
    root = tmp_path / "other"
    root.mkdir()
    for name in om.ARCHIVES:
        with zipfile.ZipFile(root / name, "w") as zf:
            zf.writestr("cats/cat1.jpg", b"meow")
    with pytest.raises(ValueError, match="does not look like an official Omniglot archive"):
        Omniglot(root, **_kw(tmp_path))


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        Omniglot(f, **_kw(tmp_path))


def test_bad_split_and_episode_args(fake, tmp_path):
    root, _ = fake
    with pytest.raises(ValueError, match="split"):
        Omniglot(root, split="dev", **_kw(tmp_path))
    ds = Omniglot(root, **_kw(tmp_path))
    with pytest.raises(ValueError, match="drawings"):
        ds.sample(2, ways=2, shots=3, queries=2)  # 5 > 4 drawers
    with pytest.raises(ValueError, match="classes"):
        ds.sample(2, ways=1000, shots=1)
    with pytest.raises(ValueError):
        split_characters(8, n_train=7, n_val=1)  # nothing left for test


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_bad_image_size_is_not_blamed_on_the_archive(fake, tmp_path, size):
    root, _ = fake
    with pytest.raises(ValueError, match=r"image_size must be a positive integer .* got") as e:
        Omniglot(root, image_size=size, **_kw(tmp_path))
    assert "corrupt" not in str(e.value)


@pytest.mark.parametrize("archive", ["images_background", "images_evaluation"])
def test_missing_drawing_blames_its_own_archive(tmp_path, archive):
    root = tmp_path / "omniglot"
    make_fake_omniglot(root)
    path = root / f"{archive}.zip"
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    dropped = sorted(e for e in entries if e.endswith(".png"))[0]  # the first drawing of a character
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            if name != dropped:
                zf.writestr(name, data)
    with pytest.raises(ValueError, match=f"{archive}.zip does not look like") as e:
        Omniglot(root, **_kw(tmp_path))
    character = dropped.rsplit("/", 1)[0]
    assert f"character {character} has 3 drawings where the others have 4" in str(e.value)


# --------------------------------------------------------------------------- format, splits, cache
def test_format_and_splits(fake, tmp_path):
    root, n = fake
    images, names, cache = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    assert images.shape == (n, 4, 28, 28) and images.dtype == np.uint8
    assert len(names) == n == len(set(names))
    assert names == sorted(names)
    assert names[0].startswith("images_background/A/character01")
    assert names[-1].startswith("images_evaluation/C/character03")
    # ink (black in the PNGs) is bright: ~15% ink, so the mean is well below 0.5
    f = images.astype(np.float32) / 255
    assert 0.02 < f.mean() < 0.4

    # the image of one drawing matches a direct decode with inversion
    with zipfile.ZipFile(root / "images_background.zip") as zf:
        entry = sorted(e for e in zf.namelist() if e.endswith(".png"))[0]
        raw = np.asarray(Image.open(io.BytesIO(zf.read(entry))).convert("L").resize((28, 28), Image.LANCZOS))
    np.testing.assert_array_equal(images[0, 0], 255 - raw)

    splits = {s: Omniglot(root, split=s, **_kw(tmp_path)) for s in ("train", "val", "test")}
    assert [splits[s].num_characters for s in ("train", "val", "test")] == [4, 2, n - 6]
    assert splits["train"].num_classes == 16 and len(splits["train"]) == 16
    sets = [set(splits[s].characters) for s in splits]
    assert set.union(*sets) == set(names) and sum(map(len, sets)) == n
    for ds in splits.values():
        assert ds.images.dtype == torch.float32 and ds.images.shape[1:] == (4, 28, 28)
        assert 0 <= ds.images.min() and ds.images.max() <= 1
    # the split is the fixed-seed permutation: val is the last n_val of the first n_train + n_val
    perm = np.random.RandomState(0).permutation(n)
    assert set(splits["val"].characters) == {names[i] for i in perm[4:6]}
    assert set(splits["test"].characters) == {names[i] for i in perm[6:]}
    other = Omniglot(root, split="test", seed=1, **_kw(tmp_path))
    assert set(other.characters) == {names[i] for i in np.random.RandomState(1).permutation(n)[6:]}


def test_full_protocol_split_sizes():
    s = split_characters(1623, seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [1100, 100, 423]
    assert len(np.unique(np.concatenate(list(s.values())))) == 1623


def test_cache_beside_archives_when_writable(fake, tmp_path, monkeypatch):
    root, _ = fake
    _, _, path = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    assert path.parent == root and path.suffix == ".npz"
    assert not (tmp_path / "cache").exists()
    # the second load reads the cache, decoding nothing
    monkeypatch.setattr(om, "_decode", lambda *a: pytest.fail("decoded again"))
    images, names, path2 = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    assert path2 == path


def test_cache_fallback_when_read_only(fake, tmp_path):
    root, _ = fake
    os.chmod(root, 0o555)
    try:
        ds = Omniglot(root, **_kw(tmp_path))
        assert ds.cache_path.parent == tmp_path / "cache"
        assert list(root.iterdir()) and not list(root.glob("*.npz"))
        again = Omniglot(root, **_kw(tmp_path))
        assert again.cache_path == ds.cache_path
        torch.testing.assert_close(again.images, ds.images)
    finally:
        os.chmod(root, 0o755)


def test_cache_invalidated_when_archive_changes(fake, tmp_path):
    root, _ = fake
    a, _, p1 = load_omniglot(root, progress=False)
    make_fake_omniglot(root, seed=1)  # same layout, other pixels
    b, _, p2 = load_omniglot(root, progress=False)
    assert p1 != p2 and not np.array_equal(a, b)


# --------------------------------------------------------------------------- episodes
def _identify(ds: Omniglot, img: torch.Tensor, table: torch.Tensor) -> tuple[int, int]:
    """(class, drawer) of an image by exhaustive comparison."""
    hits = (table == img).flatten(2).all(-1).nonzero()
    assert hits.shape[0] == 1, "image must match exactly one (class, drawer)"
    return int(hits[0, 0]), int(hits[0, 1])


def test_sample_shapes_labels_and_content(fake, tmp_path):
    root, _ = fake
    ds = Omniglot(root, **_kw(tmp_path))
    T, N, K, Q = 5, 3, 1, 2
    g = torch.Generator().manual_seed(0)
    ep = ds.sample(T, N, K, Q, generator=g)
    sx, sy, qx, qy = ep
    assert sx.shape == (T, N * K, 1, 28, 28) and qx.shape == (T, N * Q, 1, 28, 28)
    assert sy.shape == (T, N * K) and qy.shape == (T, N * Q)
    assert sy.dtype == qy.dtype == torch.int64 and sx.dtype == torch.float32
    assert torch.equal(sy[0], torch.tensor([0, 1, 2])) and torch.equal(qy[0], torch.tensor([0, 0, 1, 1, 2, 2]))

    # every sampled image is ds[class][drawer] (rotation included) for a consistent class per label
    table = torch.stack([ds[c] for c in range(ds.num_classes)])  # [classes, D, 1, S, S]
    seen_rot = set()
    for t in range(T):
        cls_of_label: dict[int, int] = {}
        drawers: dict[int, set] = {}
        for x, y in list(zip(sx[t], sy[t])) + list(zip(qx[t], qy[t])):
            c, d = _identify(ds, x, table)
            assert cls_of_label.setdefault(int(y), c) == c
            assert d not in drawers.setdefault(c, set()), "support and query drawers must differ"
            drawers[c].add(d)
            seen_rot.add(c // ds.num_characters)
        assert len(set(cls_of_label.values())) == N, "classes of a task are distinct"
    assert len(seen_rot) > 1  # rotations occur

    # reproducible from the generator; another seed gives other tasks
    again = ds.sample(T, N, K, Q, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(ep, again))
    other = ds.sample(T, N, K, Q, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other.support_x, sx)


def test_rotation_classes(fake, tmp_path):
    root, _ = fake
    ds = Omniglot(root, **_kw(tmp_path))
    C = ds.num_characters
    x = ds.images[1]
    torch.testing.assert_close(ds[1][:, 0], x)
    torch.testing.assert_close(ds[C + 1][:, 0], torch.rot90(x, 1, dims=(-2, -1)))
    torch.testing.assert_close(ds[3 * C + 1][:, 0], torch.rot90(x, 3, dims=(-2, -1)))
    plain = Omniglot(root, rotations=False, **_kw(tmp_path))
    assert plain.num_classes == C
    sx, sy, qx, qy = plain.sample(3, 2, 2, 1, generator=torch.Generator().manual_seed(0))
    table = torch.stack([plain[c] for c in range(C)])
    for img in sx.flatten(0, 1):
        _identify(plain, img, table)


def test_episode_sampler(fake, tmp_path):
    root, _ = fake
    ds = Omniglot(root, **_kw(tmp_path))
    s = EpisodeSampler(ds, ways=2, shots=1, device="cpu", tasks_per_batch=4, seed=3)
    a = s.sample()
    assert a.support_x.shape == (4, 2, 1, 28, 28) and a.query_y.shape == (4, 2)
    b = EpisodeSampler(ds, 2, 1, tasks_per_batch=4, seed=3).sample()
    assert torch.equal(a.query_x, b.query_x)
    assert next(iter(s)).support_x.shape == (4, 2, 1, 28, 28)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_on_cuda(fake, tmp_path):
    root, _ = fake
    ds = Omniglot(root, device="cuda", **_kw(tmp_path))
    g = torch.Generator().manual_seed(0)
    ep = ds.sample(4, 3, 1, 1, generator=g)
    assert all(t.is_cuda for t in ep)
    cpu = Omniglot(root, **_kw(tmp_path)).sample(4, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a.cpu(), b) for a, b in zip(ep, cpu))


# --------------------------------------------------------------------------- real data
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Omniglot archives not at {REAL}")
def test_real_omniglot():
    """The shared archives, cached in $METAFAST_CACHE or ~/.cache/metafast (decoded once)."""
    train = Omniglot(REAL, split="train")
    val, test = Omniglot(REAL, split="val"), Omniglot(REAL, split="test")
    assert train.cache_path == val.cache_path == test.cache_path
    assert (train.num_characters, val.num_characters, test.num_characters) == (1100, 100, 423)
    assert (train.num_classes, val.num_classes, test.num_classes) == (4400, 400, 1692)
    assert train.num_drawers == 20 and train.images.shape[-2:] == (28, 28)
    all_names = set(train.characters) | set(val.characters) | set(test.characters)
    assert len(all_names) == 1623
    assert sum(n.startswith("images_evaluation/") for n in all_names) == 659
    # ink is the minority of pixels and is bright
    m = train.images.mean().item()
    assert 0.03 < m < 0.25, m
    ep = train.sample(32, 20, 5, 5, generator=torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (32, 100, 1, 28, 28) and ep.query_y.shape == (32, 100)


@pytest.mark.slow
@pytest.mark.skipif(not REAL.is_dir(), reason=f"real Omniglot archives not at {REAL}")
def test_real_decode_into_a_fresh_cache(tmp_path, monkeypatch):
    """Decode all 32,460 images into a fresh cache; the second load reads it and decodes nothing."""
    images, names, path = load_omniglot(REAL, cache_dir=tmp_path, progress=False)
    assert images.shape == (1623, 20, 28, 28) and path.parent == tmp_path
    monkeypatch.setattr(om, "_decode", lambda *a: pytest.fail("decoded again"))
    again, _, path2 = load_omniglot(REAL, cache_dir=tmp_path, progress=False)
    assert path2 == path and np.array_equal(again, images)


# --------------------------------------------------------------------------- cache validation
def _rewrite(path: Path, **changes):
    """Rewrite the cache at ``path`` with some arrays (or meta items) replaced."""
    import json

    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"][()]))
    meta.update(changes.pop("meta", {}))
    arrays.update(changes)
    arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def _assert_redecoded(root, tmp_path, want: np.ndarray, path: Path, match: str):
    """The next load warns once (naming the file), decodes again and rewrites a cache that is then trusted."""
    with pytest.warns(CacheWarning, match=match) as rec:
        images, names, p = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    assert len(rec) == 1 and str(path) in str(rec[0].message)
    assert p == path and np.array_equal(images, want) and len(names) == want.shape[0]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again, _, _ = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(again, want)


def test_all_zero_cache_of_the_right_shape_is_decoded_again(fake, tmp_path):
    root, _ = fake
    want, names, path = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    np.savez(path, images=np.zeros_like(want), names=np.array(names))  # planted, no meta record
    _assert_redecoded(root, tmp_path, want, path, "no meta record")
    _rewrite(path, images=np.zeros_like(want))  # planted with a genuine meta record
    _assert_redecoded(root, tmp_path, want, path, r"\d+ of its \d+ images are blank")
    one = want.copy()
    one[2, 1] = 0  # a single blank drawing
    _rewrite(path, images=one)
    _assert_redecoded(root, tmp_path, want, path, "1 of its")


def test_truncated_class_list_is_decoded_again(fake, tmp_path):
    root, n = fake
    want, names, path = load_omniglot(root, cache_dir=tmp_path / "cache", progress=False)
    # fewer characters, consistently in the arrays and the meta record: only the archives tell
    _rewrite(path, images=want[:-2], names=np.array(names[:-2]), meta={"classes": names[:-2]})
    _assert_redecoded(root, tmp_path, want, path, "its classes differs")
    _rewrite(path, names=np.array(names[:-1] + ["images_evaluation/X/character99"]))
    _assert_redecoded(root, tmp_path, want, path, "names do not match")
    _rewrite(path, images=want[:, :3])  # drawers dropped
    _assert_redecoded(root, tmp_path, want, path, "not uint8")
    path.write_bytes(path.read_bytes()[:100])  # truncated file
    _assert_redecoded(root, tmp_path, want, path, "cannot be read")
    assert Omniglot(root, split="test", **_kw(tmp_path)).num_characters == n - 6


def test_cache_from_a_different_archive_is_decoded_again(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_fake_omniglot(a, seed=0)
    make_fake_omniglot(b, seed=1)  # same layout and names, other pixels
    _, _, pa = load_omniglot(a, progress=False)
    want, _, pb = load_omniglot(b, progress=False)
    pb.write_bytes(pa.read_bytes())  # a's cache under b's name
    _assert_redecoded(b, tmp_path, want, pb, "its fingerprint differs")
    # an old (version 1) cache of the same archives is not trusted either
    _rewrite(pb, meta={"version": 1})
    _assert_redecoded(b, tmp_path, want, pb, "its version differs")


def test_protocol_split_refuses_incomplete_archives(fake, tmp_path):
    root, _ = fake
    with pytest.raises(ValueError, match=r"images_background.zip holds 5 characters, not 964") as e:
        Omniglot(root, cache_dir=tmp_path / "cache", progress=False)  # default: the 1,100/100/423 split
    assert "\n" not in str(e.value) and "brendenlake/omniglot" in str(e.value)
