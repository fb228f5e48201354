"""Decoding encoded images (PNG/JPEG) into one uint8 array, once, behind a validated cache.

Used by the loaders whose files hold encoded images (the mini-ImageNet
``images/`` folder, tiered-ImageNet's PNG pickles).  :func:`cached_images`
returns the decoded split from its cache when the cache is valid for the
current source files (see :mod:`metafast.data.cache`), else decodes and
rewrites the cache.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from metafast.data.cache import blank_images, load_cache, save_cache

__all__ = ["cached_images", "decode_rgb"]


def decode_rgb(data: bytes | Path, size: int) -> np.ndarray:
    """One encoded image (bytes or a file) as uint8 ``[size, size, 3]`` (LANCZOS-resized if needed)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), resample=Image.LANCZOS)
        return np.asarray(im, dtype=np.uint8)


def decode_all(
    n: int, get: Callable[[int], bytes | Path], size: int, name: Callable[[int], str], dataset: str,
    source: str, progress: bool, workers: int | None = None,
) -> np.ndarray:
    """``[n, size, size, 3]`` uint8 from ``get(i)``; a failure names item ``name(i)``."""
    from tqdm.auto import tqdm

    out = np.empty((n, size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        try:
            out[i] = decode_rgb(get(i), size)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"cannot decode {name(i)} ({type(e).__name__}: {e}); the {dataset} file may be "
                             f"corrupt. {source}") from e

    workers = workers or min(8, os.cpu_count() or 1)
    with tqdm(total=n, desc=f"Decoding {dataset}", unit="img", disable=not progress, leave=False) as bar:
        with ThreadPoolExecutor(workers) as pool:  # PIL decodes outside the GIL
            for start in range(0, n, 4096):
                list(pool.map(one, range(start, min(n, start + 4096))))
                bar.update(min(n, start + 4096) - start)
    return out


def _check(meta: dict, arrays: dict) -> str | None:
    images, labels = arrays["images"], arrays["labels"]
    want = (sum(meta["counts"]), *meta["shape"])
    if images.dtype != np.uint8 or images.shape != want:
        return f"its images are {images.dtype} {list(images.shape)}, not uint8 {list(want)}"
    if labels.shape != (want[0],) or np.bincount(labels, minlength=len(meta["counts"])).tolist() != meta["counts"]:
        return "its labels do not match its class counts"
    blank = blank_images(images, 3)
    if blank != meta["blank"]:
        return f"{blank} of its {want[0]} images are blank (there were {meta['blank']} when it was written)"
    return None


def cached_images(
    candidates: list[Path], expected: dict, classes: Sequence[str], counts: Sequence[int], size: int,
    decode: Callable[[], tuple[np.ndarray, np.ndarray]], what: str,
) -> tuple[np.ndarray, np.ndarray, Path]:
    """``(images [N, size, size, 3], labels [N], cache path)`` from a valid cache, else ``decode()``.

    ``expected``: the cache format and the signature of the source files;
    ``classes`` and ``counts`` (images per class): what the source lists now.
    """
    expected = {**expected, "classes": list(classes), "counts": [int(c) for c in counts], "shape": [size, size, 3]}
    hit = load_cache(candidates, expected, ("images", "labels"), lambda m, a: _check(m, a) if "blank" in m
                     else "it has no blank-image count", what=what)
    if hit is not None:
        arrays, path = hit
        return arrays["images"], arrays["labels"], path
    images, labels = decode()
    meta = {**expected, "blank": blank_images(images, 3)}
    path = save_cache(candidates, meta, images=images, labels=np.asarray(labels, dtype=np.int64))
    return images, labels, path
