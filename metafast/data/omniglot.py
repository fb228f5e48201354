"""Omniglot (Lake et al., 2015) for few-shot classification, MAML protocol.

The loader reads the two official archives, ``images_background.zip`` and
``images_evaluation.zip`` (https://github.com/brendenlake/omniglot, folder
``python/``), unchanged; nothing is ever downloaded.

Protocol of Finn et al. (2017): both archives are pooled (1,623 characters x 20
drawers); a fixed-seed permutation of all characters, irrespective of
alphabet, gives 1,200 meta-training characters (the last 100 of them form the
``"val"`` split, the other 1,100 ``"train"``) and 423 ``"test"`` characters.
Images are resized to 28x28 with LANCZOS and inverted so that ink is 1 on a 0
background; rotations by 0/90/180/270 degrees are new classes.

Decoding the 32,460 PNGs takes a few seconds and happens once: the result is
cached as one ``.npz`` file (uint8 ``[1623, 20, 28, 28]`` plus the character
names) beside the archives if that folder is writable, else in ``cache_dir`` or
``~/.cache/metafast``.  Later loads take a fraction of a second.

Episodes are drawn on the device that holds the images, vectorized over tasks
(no per-task Python loop, no DataLoader), reproducibly from a
``torch.Generator``::

    train = Omniglot("data/omniglot", split="train", device="cuda")
    g = torch.Generator().manual_seed(0)
    sx, sy, qx, qy = train.sample(tasks=32, ways=5, shots=1, queries=1, generator=g)
    # sx: [32, 5, 1, 28, 28], sy: [32, 5] int64 in 0..4, qx/qy likewise
"""
from __future__ import annotations

import hashlib
import io
import numbers
import os
import re
import zipfile
from collections import Counter
from pathlib import Path
import numpy as np
import torch

from metafast.data.cache import blank_images, default_cache_dir, load_cache, save_cache
from metafast.data.episodes import Episode, EpisodeSampler, draw_episode_indices, episode_labels
from metafast.data.images import ClassesOnDevice

__all__ = [
    "ARCHIVES",
    "Episode",
    "EpisodeSampler",
    "Omniglot",
    "load_omniglot",
    "split_characters",
]

ARCHIVES = ("images_background.zip", "images_evaluation.zip")
_SOURCE = (
    "Get the two official archives (unchanged) from the Omniglot repository, "
    "https://github.com/brendenlake/omniglot, folder python/ "
    "(images_background.zip and images_evaluation.zip), and put both in one folder."
)
_ENTRY = re.compile(r"^(images_background|images_evaluation)/([^/]+)/([^/]+)/([^/]+\.png)$")
_CACHE_VERSION = 2  # 2: the cache holds a meta record and is validated against the archives

#: Sizes of the splits of the MAML protocol (characters, before rotation).
FULL_CHARACTERS = 1623
FULL_PER_ARCHIVE = (964, 659)  # images_background, images_evaluation
N_TRAIN = 1100
N_VAL = 100


# --------------------------------------------------------------------------- #
# Reading the archives
# --------------------------------------------------------------------------- #
def _not_omniglot(path: Path, why: str) -> ValueError:
    return ValueError(
        f"{path} does not look like an official Omniglot archive: {why}. Expected "
        f"PNG entries named images_background/<Alphabet>/<characterNN>/<drawing>.png "
        f"(or images_evaluation/...), 20 drawings per character. {_SOURCE}"
    )


def _check_root(root: Path) -> None:
    if not root.exists():
        raise FileNotFoundError(
            f"Omniglot folder {root} does not exist. It must hold {ARCHIVES[0]} and "
            f"{ARCHIVES[1]}. {_SOURCE}"
        )
    if not root.is_dir():
        raise NotADirectoryError(
            f"{root} is not a folder; pass the folder that holds {ARCHIVES[0]} and "
            f"{ARCHIVES[1]}. {_SOURCE}"
        )
    for name in ARCHIVES:
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(
                f"Omniglot archive {path} is missing. The folder {root} must hold "
                f"{ARCHIVES[0]} and {ARCHIVES[1]}. {_SOURCE} Nothing is downloaded "
                f"automatically."
            )


def _bad_zip(path: Path, why: str) -> ValueError:
    return ValueError(
        f"Omniglot archive {path} is not a readable zip file ({why}); it may be "
        f"corrupt or truncated. {_SOURCE}"
    )


def _central_directory(path: Path) -> tuple[int, bytes, bool]:
    """``(size, central directory bytes, zip64)`` of a zip file, read raw.

    The central directory lists every entry with its name and CRC, so it
    fingerprints the content; reading it raw avoids parsing 34k entries
    with ``zipfile``.  For zip64 archives the whole tail is returned instead.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        tail = min(size, 22 + 65535)
        f.seek(size - tail)
        buf = f.read(tail)
        pos = buf.rfind(b"PK\x05\x06")
        if pos < 0 or pos + 22 > len(buf):
            raise _bad_zip(path, "no end-of-central-directory record")
        cd_size = int.from_bytes(buf[pos + 12 : pos + 16], "little")
        cd_off = int.from_bytes(buf[pos + 16 : pos + 20], "little")
        if cd_size == 0xFFFFFFFF or cd_off == 0xFFFFFFFF:  # zip64: hash the whole tail
            return size, buf, True
        if cd_off + cd_size > size:
            raise _bad_zip(path, "central directory beyond the end of the file")
        f.seek(cd_off)
        return size, f.read(cd_size), False


def _entry_names(cd: bytes) -> list[str]:
    """The names of the file entries of a raw (non-zip64) central directory."""
    names, pos = [], 0
    while pos + 46 <= len(cd) and cd[pos : pos + 4] == b"PK\x01\x02":
        flags = int.from_bytes(cd[pos + 8 : pos + 10], "little")
        n, m, k = (int.from_bytes(cd[pos + o : pos + o + 2], "little") for o in (28, 30, 32))
        name = cd[pos + 46 : pos + 46 + n].decode("utf-8" if flags & 0x800 else "cp437")
        if not name.endswith("/"):
            names.append(name)
        pos += 46 + n + m + k
    return names


def _fingerprint_and_entries(root: Path) -> tuple[str, list[list[str]]]:
    """A digest of the two archives (sizes and central directories) and their entry names."""
    _check_root(root)
    digest = hashlib.sha1(f"omniglot-cache-v{_CACHE_VERSION}".encode())
    entries = []
    for name in ARCHIVES:
        path = root / name
        size, cd, zip64 = _central_directory(path)
        digest.update(f"{name}:{size}:".encode())
        digest.update(cd)
        if zip64:
            entries.append(_zip_entries(path))
        else:
            entries.append(_entry_names(cd))
    return digest.hexdigest(), entries


def _fingerprint(root: Path) -> str:
    return _fingerprint_and_entries(root)[0]


def _zip_entries(path: Path) -> list[str]:  # zip64 archives only
    try:
        with zipfile.ZipFile(path) as zf:
            return [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise _bad_zip(path, str(e)) from e


def _group_characters(root: Path, entries: list[list[str]]) -> tuple[list[str], list[list[tuple[int, str]]]]:
    """Characters and their drawings from the entry names of the two archives.

    Returns (character names, per character the list of (archive index, entry
    name) of its drawings in sorted order).
    """
    chars: dict[tuple[int, str, str], list[str]] = {}
    for a, (name, names) in enumerate(zip(ARCHIVES, entries)):
        prefix = name[: -len(".zip")]
        n_png = 0
        for entry in sorted(names):
            m = _ENTRY.match(entry)
            if m is None:
                continue
            if m.group(1) != prefix:
                raise _not_omniglot(root / name, f"entry {entry!r} is not under {prefix}/")
            chars.setdefault((a, m.group(2), m.group(3)), []).append(entry)
            n_png += 1
        if n_png == 0:
            raise _not_omniglot(root / name, f"it holds no PNG entries under {prefix}/")
    keys = sorted(chars)
    names = [f"{ARCHIVES[a][:-4]}/{alpha}/{ch}" for a, alpha, ch in keys]
    drawings = [[(a, n) for n in chars[(a, alpha, ch)]] for a, alpha, ch in keys]
    counts = Counter(len(d) for d in drawings)
    if len(counts) != 1:
        usual = counts.most_common(1)[0][0]
        odd = [(name, d) for name, d in zip(names, drawings) if len(d) != usual]
        name, d = odd[0]
        raise _not_omniglot(  # blame the archive that holds the odd character
            root / ARCHIVES[d[0][0]],
            f"character {name} has {len(d)} drawings where the others have {usual}"
            + (f" ({len(odd)} characters differ)" if len(odd) > 1 else ""),
        )
    return names, drawings


def _decode(data: bytes, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), resample=Image.LANCZOS)
        a = np.asarray(im, dtype=np.uint8)
    return 255 - a  # black ink on white -> ink = 255


def _check_cache(meta: dict, arrays: dict) -> str | None:
    """Why the arrays of a cache do not match its meta record (None if they do)."""
    images, names = arrays["images"], [str(s) for s in arrays["names"]]
    s = meta["image_size"]
    want = (len(meta["classes"]), meta["drawers"], s, s)
    if images.dtype != np.uint8 or images.shape != want:
        return f"its images are {images.dtype} {list(images.shape)}, not uint8 {list(want)}"
    if names != meta["classes"]:
        return "its character names do not match its class list"
    blank = blank_images(images, 2)
    if blank:
        return f"{blank} of its {images.shape[0] * images.shape[1]} images are blank"
    return None


def load_omniglot(
    root: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    progress: bool = True,
) -> tuple[np.ndarray, list[str], Path]:
    """Decode (or load from the cache) all Omniglot images.

    Returns ``(images, names, cache_path)``: ``images`` is uint8
    ``[characters, drawers, image_size, image_size]`` with ink = 255 and
    background 0, ``names`` the ``"<archive>/<Alphabet>/<character>"`` of each
    character in a fixed sorted order.

    The cache is used only if this cache format wrote it from the same
    archives (a digest of their sizes and central directories, which list
    every entry's name and CRC), it lists exactly the archives' characters
    with as many drawings each, and none of its images is blank; otherwise a
    :class:`~metafast.data.cache.CacheWarning` says why, once, and the
    archives are decoded again (overwriting the cache).
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    root = Path(root).expanduser()
    fp, entries = _fingerprint_and_entries(root)
    names, drawings = _group_characters(root, entries)
    fname = f"omniglot_{image_size}x{image_size}_{fp[:16]}.npz"
    fallback = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    candidates = [root / fname, fallback / fname]
    expected = {"format": "metafast-omniglot-cache", "version": _CACHE_VERSION, "fingerprint": fp,
                "image_size": int(image_size), "classes": names, "drawers": len(drawings[0])}
    hit = load_cache(candidates, expected, ("images", "names"), _check_cache, what="Omniglot cache")
    if hit is not None:
        arrays, path = hit
        return arrays["images"], names, path

    from tqdm.auto import tqdm

    n_draw = len(drawings[0])
    images = np.empty((len(names), n_draw, image_size, image_size), dtype=np.uint8)
    zfs = [zipfile.ZipFile(root / a) for a in ARCHIVES]
    try:
        with tqdm(total=len(names) * n_draw, desc="Decoding Omniglot", unit="img",
                  disable=not progress, leave=False) as bar:
            for i, ds in enumerate(drawings):
                for j, (a, entry) in enumerate(ds):
                    try:
                        images[i, j] = _decode(zfs[a].read(entry), image_size)
                    except Exception as e:
                        raise ValueError(
                            f"cannot decode {entry} in {root / ARCHIVES[a]} ({e}); the "
                            f"archive may be corrupt. {_SOURCE}"
                        ) from e
                bar.update(n_draw)
    finally:
        for z in zfs:
            z.close()
    expected.update(classes=names, drawers=n_draw)
    path = save_cache(candidates, expected, images=images, names=np.array(names))
    return images, names, path


def split_characters(
    n: int, seed: int = 0, n_train: int = N_TRAIN, n_val: int = N_VAL
) -> dict[str, np.ndarray]:
    """Indices of the characters of each split, from a fixed-seed permutation.

    The first ``n_train + n_val`` characters of the permutation are for
    meta-training (the last ``n_val`` of those form ``"val"``), the rest ``"test"``.
    """
    if n_train < 1 or n_val < 0 or n_train + n_val >= n:
        raise ValueError(
            f"cannot split {n} characters into {n_train} train, {n_val} val and at "
            f"least 1 test character"
        )
    perm = np.random.RandomState(seed).permutation(n)
    return {
        "train": np.sort(perm[:n_train]),
        "val": np.sort(perm[n_train : n_train + n_val]),
        "test": np.sort(perm[n_train + n_val :]),
    }


def _check_protocol(root: Path, names: list[str]) -> None:
    """The MAML split needs all 1,623 characters: refuse incomplete archives."""
    per = Counter(n.split("/", 1)[0] for n in names)
    want = dict(zip((a[:-4] for a in ARCHIVES), FULL_PER_ARCHIVE))
    bad = [a for a in ARCHIVES if per[a[:-4]] != want[a[:-4]]]
    if bad:
        a = bad[0]
        raise ValueError(
            f"Omniglot archive {root / a} holds {per[a[:-4]]} characters, not {want[a[:-4]]}: the MAML split "
            f"({N_TRAIN} / {N_VAL} / {FULL_CHARACTERS - N_TRAIN - N_VAL}) needs all {FULL_CHARACTERS}, so the "
            f"archive is incomplete or not the official one (pass n_train and n_val to split another set). "
            f"{_SOURCE}"
        )


# --------------------------------------------------------------------------- #
# Data set and episode sampling
# --------------------------------------------------------------------------- #
class Omniglot(ClassesOnDevice):
    """One split of Omniglot under the MAML protocol, images held as one tensor.

    Args:
        root: folder holding ``images_background.zip`` and ``images_evaluation.zip``.
        split: ``"train"`` (1,100 characters), ``"val"`` (100) or ``"test"`` (423).
        cache_dir: where to cache the decoded images when ``root`` is not writable
            (default ``$METAFAST_CACHE`` or ``~/.cache/metafast``).
        seed: seed of the character permutation that defines the splits.
        image_size: side of the resized images (28 in the MAML protocol).
        rotations: if True, rotations by 0/90/180/270 degrees are new classes.
        device: where the image tensor lives (episodes are drawn there).
        n_train, n_val: split sizes (the remaining characters are ``"test"``).  When
            both are left at None the protocol's 1,100 / 100 / 423 split is used and
            the archives must hold all 1,623 characters (else ValueError); pass
            them to split a smaller (e.g. synthetic) set.
        progress: show a progress bar while decoding.

    Attributes:
        images: float32 ``[characters, drawers, image_size, image_size]`` in [0, 1],
            ink = 1 (not rotated).
        characters: names of the split's characters.
        num_classes: ``4 * characters`` with rotations, else ``characters``.
        Class ``c`` is character ``c % characters`` rotated by ``90 * (c // characters)``
        degrees counterclockwise.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        cache_dir: str | os.PathLike | None = None,
        seed: int = 0,
        image_size: int = 28,
        rotations: bool = True,
        device: str | torch.device = "cpu",
        n_train: int | None = None,
        n_val: int | None = None,
        progress: bool = True,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        images, names, self.cache_path = load_omniglot(root, cache_dir, image_size, progress)
        if n_train is None and n_val is None:
            _check_protocol(Path(root).expanduser(), names)
        n_train = N_TRAIN if n_train is None else n_train
        n_val = N_VAL if n_val is None else n_val
        idx = split_characters(len(names), seed, n_train, n_val)[split]
        if len(idx) == 0:
            raise ValueError(f"split {split!r} is empty (n_val={n_val})")
        self.root = Path(root)
        self.split = split
        self.seed = seed
        self.rotations = bool(rotations)
        self.image_size = image_size
        self.character_indices = idx
        self.characters = [names[i] for i in idx]
        self.images = torch.from_numpy(images[idx]).to(device=device, dtype=torch.float32).div_(255.0)

    # -- basic container protocol ------------------------------------------
    @property
    def num_characters(self) -> int:
        return self.images.shape[0]

    @property
    def num_drawers(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return self.num_characters * (4 if self.rotations else 1)

    #: what the episode checks call the images of a class
    item_name = "drawings"

    @property
    def images_per_class(self) -> int:
        return self.num_drawers

    def __getitem__(self, c: int) -> torch.Tensor:
        """All drawings of class ``c``: ``[drawers, 1, S, S]``."""
        c = self._class_index(c)
        x = self.images[c % self.num_characters]
        return torch.rot90(x, c // self.num_characters, dims=(-2, -1)).unsqueeze(1)

    def _rotation_maps(self, device: torch.device) -> torch.Tensor:
        """``[4, S*S]`` int64: flat pixel indices of the stored image for each rotation."""
        maps = getattr(self, "_rot_maps", None)
        if maps is None or maps.device != device:
            s = self.image_size
            base = torch.arange(s * s).view(s, s)
            maps = torch.stack([torch.rot90(base, k, dims=(0, 1)).reshape(-1) for k in range(4)])
            self._rot_maps = maps = maps.to(device)
        return maps

    def to(self, device: str | torch.device) -> "Omniglot":
        """Move the image tensor to ``device`` (in place); returns self."""
        self.images = self.images.to(device)
        return self

    def __repr__(self) -> str:
        return (
            f"Omniglot(split={self.split!r}, characters={self.num_characters}, "
            f"classes={self.num_classes}, drawers={self.num_drawers}, "
            f"image_size={self.image_size}, device={self.device})"
        )

    # -- episodes -----------------------------------------------------------
    def _draw(self, tasks: int, ways: int, shots: int, queries: int, generator: torch.Generator | None,
              dev: torch.device) -> Episode:
        """``sample``: per class ``shots + queries`` distinct drawers."""
        cls, draw = draw_episode_indices(tasks, ways, shots + queries, self.num_drawers, self.num_classes,
                                         generator, dev)
        char = cls % self.num_characters
        s = self.image_size
        flat = self.images.view(self.num_characters, self.num_drawers, s * s)
        if self.rotations:
            # One gather does the rotation too: pixel p of a class rotated by
            # 90*r degrees is pixel _rotation_maps[r][p] of the stored image.
            pix = self._rotation_maps(dev)[cls // self.num_characters]  # [T, N, S*S]
            x = flat[char[:, :, None, None], draw[..., None], pix[:, :, None, :]]
        else:
            x = flat[char[:, :, None], draw]  # [T, N, K+Q, S*S]
        support_x = x[:, :, :shots].reshape(tasks, ways * shots, 1, s, s)
        query_x = x[:, :, shots:].reshape(tasks, ways * queries, 1, s, s)
        support_y, query_y = episode_labels(tasks, ways, shots, queries, dev)
        return Episode(support_x, support_y, query_x, query_y)
