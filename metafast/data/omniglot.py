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
import stat
import tempfile
import zipfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

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
_CACHE_VERSION = 1

#: Sizes of the splits of the MAML protocol (characters, before rotation).
FULL_CHARACTERS = 1623
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


def _fingerprint(root: Path) -> str:
    """A fast fingerprint of the two archives: their sizes and central directories.

    The central directory lists every entry with its CRC, so any change of
    content changes the fingerprint; reading it raw avoids parsing 34k entries.
    """
    _check_root(root)
    digest = hashlib.sha1(f"omniglot-cache-v{_CACHE_VERSION}".encode())
    for name in ARCHIVES:
        path = root / name
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
                cd_off, cd_size = size - tail, tail
            if cd_off + cd_size > size:
                raise _bad_zip(path, "central directory beyond the end of the file")
            f.seek(cd_off)
            cd = f.read(cd_size)
        digest.update(f"{name}:{size}:".encode())
        digest.update(cd)
    return digest.hexdigest()


def _scan_archives(root: Path) -> tuple[list[str], list[list[tuple[int, str]]]]:
    """List the characters in the two archives.

    Returns (character names, per character the list of (archive index, entry
    name) of its drawings in sorted order).
    """
    _check_root(root)
    chars: dict[tuple[int, str, str], list[str]] = {}
    for a, name in enumerate(ARCHIVES):
        path = root / name
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise _bad_zip(path, str(e)) from e
        prefix = name[: -len(".zip")]
        n_png = 0
        for info in sorted(infos, key=lambda i: i.filename):
            m = _ENTRY.match(info.filename)
            if m is None or info.is_dir():
                continue
            if m.group(1) != prefix:
                raise _not_omniglot(path, f"entry {info.filename!r} is not under {prefix}/")
            chars.setdefault((a, m.group(2), m.group(3)), []).append(info.filename)
            n_png += 1
        if n_png == 0:
            raise _not_omniglot(path, f"it holds no PNG entries under {prefix}/")
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


def _dir_writable(path: Path) -> bool:
    """Whether we may write in ``path``.

    Respects the folder's permission bits even for root (who bypasses them), so a
    shared folder marked read-only is left alone.
    """
    try:
        st = path.stat()
    except OSError:
        return False
    any_write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
    return path.is_dir() and bool(st.st_mode & any_write) and os.access(path, os.W_OK | os.X_OK)


def default_cache_dir() -> Path:
    env = os.environ.get("METAFAST_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "metafast"


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


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
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer (pixels per side), got {image_size!r}")
    root = Path(root).expanduser()
    fp = _fingerprint(root)
    fname = f"omniglot_{image_size}x{image_size}_{fp[:16]}.npz"
    fallback = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    candidates = [root / fname, fallback / fname]
    for c in candidates:
        if c.is_file():
            try:
                with np.load(c, allow_pickle=False) as z:
                    images, names = z["images"], [str(s) for s in z["names"]]
                if images.ndim == 4 and images.shape[0] == len(names) and images.shape[2:] == (image_size, image_size):
                    return images, names, c
            except Exception:  # unreadable or stale cache: decode again
                pass

    from tqdm.auto import tqdm

    names, drawings = _scan_archives(root)
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

    target = root / fname if _dir_writable(root) else fallback / fname
    try:
        _save_npz_atomic(target, images=images, names=np.array(names))
    except OSError:
        if target != fallback / fname:
            target = fallback / fname
            _save_npz_atomic(target, images=images, names=np.array(names))
        else:
            raise
    return images, names, target


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


# --------------------------------------------------------------------------- #
# Data set and episode sampling
# --------------------------------------------------------------------------- #
class Episode(NamedTuple):
    """A batch of few-shot tasks; the first dimension is the task."""

    support_x: torch.Tensor  # [T, N*K, 1, S, S] float32 in [0, 1]
    support_y: torch.Tensor  # [T, N*K] int64 in 0..N-1
    query_x: torch.Tensor  # [T, N*Q, 1, S, S]
    query_y: torch.Tensor  # [T, N*Q]


class Omniglot:
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
        n_train, n_val: split sizes (the remaining characters are ``"test"``).
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
        n_train: int = N_TRAIN,
        n_val: int = N_VAL,
        progress: bool = True,
    ):
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', not {split!r}")
        images, names, self.cache_path = load_omniglot(root, cache_dir, image_size, progress)
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

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __len__(self) -> int:
        return self.num_classes

    def __getitem__(self, c: int) -> torch.Tensor:
        """All drawings of class ``c``: ``[drawers, 1, S, S]``."""
        if not -self.num_classes <= c < self.num_classes:
            raise IndexError(f"class {c} out of range for {self.num_classes} classes")
        c %= self.num_classes
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
    def sample(
        self,
        tasks: int,
        ways: int,
        shots: int,
        queries: int | None = None,
        generator: torch.Generator | None = None,
        device: str | torch.device | None = None,
    ) -> Episode:
        """Draw ``tasks`` N-way K-shot tasks at once.

        Each task draws ``ways`` distinct classes and, per class, ``shots + queries``
        distinct drawers (``queries`` defaults to ``shots``).  Labels are 0..ways-1
        in the order the classes were drawn; the support and query sets are
        ordered class by class.  With ``device`` the image tensor is first moved
        there (once).  The random draws use ``generator`` (on its own device)
        or the default generator of the images' device.
        """
        queries = shots if queries is None else queries
        _check_episode(self, ways, shots, queries)
        if tasks < 1:
            raise ValueError(f"tasks must be >= 1, got {tasks}")
        if device is not None and torch.device(device) != self.images.device:
            self.to(device)
        dev = self.images.device
        gdev = generator.device if generator is not None else dev
        n = shots + queries
        # Classes: a random subset of size `ways` per task (top-k of uniform noise).
        cls = torch.rand(tasks, self.num_classes, generator=generator, device=gdev).topk(ways, dim=1).indices
        # Drawers: a random subset of size shots + queries per (task, class).
        draw = torch.rand(tasks, ways, self.num_drawers, generator=generator, device=gdev).argsort(dim=-1)[..., :n]
        cls, draw = cls.to(dev), draw.to(dev)
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
        labels = torch.arange(ways, device=dev)
        support_y = labels.repeat_interleave(shots).expand(tasks, -1).contiguous()
        query_y = labels.repeat_interleave(queries).expand(tasks, -1).contiguous()
        return Episode(support_x, support_y, query_x, query_y)


def _check_episode(ds: Omniglot, ways: int, shots: int, queries: int) -> None:
    if ways < 2:
        raise ValueError(f"ways must be >= 2, got {ways}")
    if ways > ds.num_classes:
        raise ValueError(f"ways={ways} exceeds the {ds.num_classes} classes of split {ds.split!r}")
    if shots < 1 or queries < 1:
        raise ValueError(f"shots and queries must be >= 1, got shots={shots}, queries={queries}")
    if shots + queries > ds.num_drawers:
        raise ValueError(
            f"shots + queries = {shots + queries} exceeds the {ds.num_drawers} drawings per class"
        )


class EpisodeSampler:
    """Fixed N-way K-shot Q-query episodes from a data set, on one device.

    ``EpisodeSampler(ds, 5, 1, device="cuda").sample(32, generator)`` is
    ``ds.sample(32, 5, 1, 1, generator, "cuda")``.  Iterating yields batches of
    ``tasks_per_batch`` tasks forever from the sampler's own generator.
    """

    def __init__(
        self,
        dataset: Omniglot,
        ways: int,
        shots: int,
        queries: int | None = None,
        device: str | torch.device | None = None,
        tasks_per_batch: int = 32,
        seed: int | None = None,
    ):
        self.dataset = dataset
        self.ways, self.shots = ways, shots
        self.queries = shots if queries is None else queries
        _check_episode(dataset, ways, shots, self.queries)
        if device is not None:
            dataset.to(device)
        self.tasks_per_batch = tasks_per_batch
        self.generator = torch.Generator()
        if seed is not None:
            self.generator.manual_seed(seed)
        else:
            self.generator.seed()

    def sample(self, tasks: int | None = None, generator: torch.Generator | None = None) -> Episode:
        return self.dataset.sample(
            self.tasks_per_batch if tasks is None else tasks,
            self.ways, self.shots, self.queries,
            generator=self.generator if generator is None else generator,
        )

    def __iter__(self):
        while True:
            yield self.sample()
